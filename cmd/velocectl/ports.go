package main

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/veloce-io/veloce/control"
)

func init() { register(newPortsCmd) }

func newPortsCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "ports [NAME...]",
		Short:   "List VM ports: state, negotiated features, queues, counters",
		GroupID: groupShow,
		Long: `List the daemon's VM ports (vhost-user): mode (server: veloced listens;
client: veloced connects), state (waiting, connected, running, failed), queue
pairs in use and offered, the guest's address, and the guest's packet counters.
NAMEs list only those ports; an unknown NAME is an error.

-o json prints a JSON list, one object per port, with at least name, socket,
state, features (negotiated, hex), queues, guest_ip, guest_tx_packets,
guest_tx_bytes, guest_rx_packets, guest_rx_bytes, drops, errors (a contract:
fields are added, never renamed). -o wide adds the link peer's counters,
sessions and the last error.`,
		Example: `  velocectl ports
  velocectl ports vm0 -o json`,
		ValidArgsFunction: a.completePorts(true),
		RunE: func(c *cobra.Command, args []string) error {
			ports, err := a.ports(args)
			if err != nil {
				return err
			}
			return a.print(ports, func(tw io.Writer, wide bool) {
				head := "NAME\tMODE\tSTATE\tQUEUES\tGUEST IP\tGUEST MAC\tTX PKTS\tTX BYTES\tRX PKTS\tRX BYTES\tDROPS\tERRORS\tFEATURES"
				if wide {
					head += "\tSOCKET\tMTU\tSERVICE IP\tSESSIONS\tDIRTY LOG\tLAST ERROR"
				}
				fmt.Fprintln(tw, head)
				for _, p := range ports {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s", p.Name, p.Mode, p.State, p.Queues, p.MaxQueues,
						p.GuestIP, dash(p.GuestMAC), p.GuestTXPackets, p.GuestTXBytes, p.GuestRXPackets, p.GuestRXBytes, p.Drops, p.Errors, p.Features)
					if wide {
						fmt.Fprintf(tw, "\t%s\t%d\t%s\t%d\t%v\t%s", p.Socket, p.MTU, p.ServiceIP, p.Sessions, p.Logging, dash(p.LastError))
					}
					fmt.Fprintln(tw)
				}
			})
		},
	}
}

// ports fetches the daemon's ports, only those called names when names
// are given (in their order); an unknown name is an error naming it.
func (a *app) ports(names []string) ([]control.PortInfo, error) {
	all, err := a.client().Ports(a.ctx)
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return all, nil
	}
	out := make([]control.PortInfo, 0, len(names))
	for _, n := range names {
		i := slices.IndexFunc(all, func(p control.PortInfo) bool { return p.Name == n })
		if i < 0 {
			return nil, fmt.Errorf("no port %q on veloced at %s (ports: %s)", n, a.socket, portNameList(all))
		}
		out = append(out, all[i])
	}
	return out, nil
}

func portNameList(ports []control.PortInfo) string {
	if len(ports) == 0 {
		return "none; velocectl add-port adds one"
	}
	names := make([]string, len(ports))
	for i, p := range ports {
		names[i] = p.Name
	}
	return strings.Join(names, ", ")
}
