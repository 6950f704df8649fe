package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

func init() { register(newRemoteCmd) }

func newRemoteCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "remote",
		Short:   "Show datapaths to other hosts (udp, dpdk, ...) and peers with the channels they sink",
		GroupID: groupShow,
		Long: `Show the daemon's side towards other hosts: each datapath (udp, dpdk, ...)
with its address, whether it is the default, the messages queued and the peers
it reaches; each peer with its node id and the channels it has sinks for; and
the message totals.

With an RDMA datapath (veloced --rdma) it also shows each RDMA device (netdev,
port, address, RoCE v2 GID, MTU), the queue pair to each peer with its state
(RTS when up; connecting, down, no-rdma, failed) and its QPN and first PSN and
the peer's, and the datapath's counters.

With an AF_XDP datapath (veloced --xdp) it also shows the interface and queue,
the socket's mode (copy or zero-copy), where the XDP program runs (native or
generic), whether busy polling is on, and the datapath's and the kernel's
counters.

-o json prints one object: datapaths (a list; each with its own "stats"
object: for rdma, the device, "queue_pairs" and the counters), peers (a list),
sent, received, dropped, malformed.`,
		Args: argsRange(0, 0, ""),
		RunE: func(*cobra.Command, []string) error {
			info, err := a.client().Remote(a.ctx)
			if err != nil {
				return err
			}
			return a.print(info, func(tw io.Writer, wide bool) {
				fmt.Fprintln(tw, "DATAPATH\tADDRESS\tDEFAULT\tQUEUED\tREACHES")
				for _, d := range info.Datapaths {
					fmt.Fprintf(tw, "%s\t%s\t%v\t%d\t%s\n", d.Name, d.Addr, d.Default, d.Queued, dash(strings.Join(d.Peers, ",")))
				}
				printRDMA(tw, info)
				fmt.Fprintln(tw)
				fmt.Fprintln(tw, "PEER\tNODE\tSTATE\tCHANNELS\tLAST DIRECTORY\tRESTARTS\tBAD AUTH\tSTALE\tMALFORMED\tBAD VERSION")
				for _, p := range info.Peers {
					var chans []string
					for _, c := range p.Channels {
						chans = append(chans, strconv.FormatUint(uint64(c), 10))
					}
					fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", p.Addr, p.Node, dash(p.State), dash(strings.Join(chans, ",")), dash(p.LastSeen),
						p.Restarts, p.BadAuth, p.Stale, p.Malformed, p.BadVersion)
				}
				printXDP(tw, info)
				fmt.Fprintf(tw, "\nmessages: %d sent, %d received, %d dropped, %d malformed\n", info.Sent, info.Received, info.Dropped, info.Malformed)
				fmt.Fprintf(tw, "refused: %d from unknown peers, %d bad auth, %d stale, %d bad version; %d directories expired; authenticated %v, boot id %s\n",
					info.UnknownPeer, info.BadAuth, info.Stale, info.BadVersion, info.Expired, info.Authenticated, dash(info.Boot))
				r := info.Reliable
				fmt.Fprintf(tw, "reliable: %d windows, %d receivers; %d retransmits, %d duplicates, %d window full, %d unreachable, %d overflow\n",
					r.Windows, r.Receivers, r.Retransmits, r.Duplicates, r.WindowFull, r.Unreachable, r.Overflow)
				if wide {
					fmt.Fprintln(tw, "\nDATAPATH\tCOUNTER\tVALUE")
					for _, d := range info.Datapaths {
						for _, c := range flatten(d.Stats) {
							fmt.Fprintf(tw, "%s\t%s\t%s\n", d.Name, c.name, c.value)
						}
					}
				}
			})
		},
	}
}
