package main

import (
	"fmt"
	"github.com/veloce-io/veloce/control"
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

With a gate schedule (veloced --tsn-schedule) it shows each datapath's
schedule, the gates open now, and per traffic class (0 bulk, 1
time-sensitive) the messages held behind the gate, sent, and the times the
sender waited for the gate to open; overruns count batches whose send ended
after their window.

The directory line says where peers come from: static (veloced --peer, with
directory datagrams) and etcd (veloced --etcd, the fleet directory), and for
etcd its endpoints, whether it is connected, the last error, the store
revision the directory is current to, the daemons it holds, and this daemon's
puts and watch events. Each peer's SOURCE is static or etcd (which wins for
an address in both).

-o json prints one object: directory (sources, and etcd: endpoints,
prefix, key, connected, last_error, revision, nodes, puts, events,
put_bytes, read_bytes), datapaths (a list; each with its own "stats"
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
				printTSN(tw, info)
				printRDMA(tw, info)
				fmt.Fprintln(tw)
				fmt.Fprintln(tw, "PEER\tNODE\tSOURCE\tSTATE\tCHANNELS\tLAST DIRECTORY\tRESTARTS\tBAD AUTH\tSTALE\tMALFORMED\tBAD VERSION")
				for _, p := range info.Peers {
					var chans []string
					for _, c := range p.Channels {
						chans = append(chans, strconv.FormatUint(uint64(c), 10))
					}
					fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", p.Addr, p.Node, dash(p.Source), dash(p.State), dash(strings.Join(chans, ",")), dash(p.LastSeen),
						p.Restarts, p.BadAuth, p.Stale, p.Malformed, p.BadVersion)
				}
				printXDP(tw, info)
				printDirectory(tw, info.Directory)
				fmt.Fprintf(tw, "\nmessages: %d sent, %d received, %d dropped, %d malformed\n", info.Sent, info.Received, info.Dropped, info.Malformed)
				fmt.Fprintf(tw, "refused: %d from unknown peers, %d bad auth, %d stale, %d bad version; %d directories expired; authenticated %v, boot id %s\n",
					info.UnknownPeer, info.BadAuth, info.Stale, info.BadVersion, info.Expired, info.Authenticated, dash(info.Boot))
				r := info.Reliable
				fmt.Fprintf(tw, "reliable: %d windows, %d receivers; %d retransmits, %d duplicates, %d window full, %d unreachable, %d overflow\n",
					r.Windows, r.Receivers, r.Retransmits, r.Duplicates, r.WindowFull, r.Unreachable, r.Overflow)
				l := info.Large
				fmt.Fprintf(tw, "large messages (max %d B): %d sent (%d fragments), %d too large; %d received, %d reliable; dropped: %d lost fragment, %d overflow, %d inconsistent fragments, %d duplicate fragments, %d over the limit, %d reliable too large for their sink; %d pending\n",
					l.MaxMessage, l.Sent, l.Fragments, l.TooLarge, l.Received, l.ReliableReceived, l.Lost, l.Overflow, l.Inconsistent, l.Duplicates, l.RefusedTooLarge,
					l.Undeliverable, l.Pending)
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

// printTSN prints the gate scheduler of each datapath that has one.
func printTSN(tw io.Writer, info control.RemoteInfo) {
	head := false
	for _, d := range info.Datapaths {
		if d.TSN == nil {
			continue
		}
		if !head {
			fmt.Fprintln(tw, "\nDATAPATH\tSCHEDULE\tGATES\tCLASS\tHELD\tSENT\tWAITS\tOVERRUNS")
			head = true
		}
		for _, c := range d.TSN.Classes {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d %s\t%d\t%d\t%d\t%d\n", d.Name, d.TSN.Schedule, d.TSN.Gates, c.Class, c.Name, c.Held, c.Sent, c.Waits, d.TSN.Overruns)
		}
	}
}

// printDirectory prints where the peers come from and etcd's health.
func printDirectory(tw io.Writer, d control.DirectoryInfo) {
	fmt.Fprintf(tw, "\ndirectory: %s\n", dash(strings.Join(d.Sources, "+")))
	if e := d.Etcd; e != nil {
		state := "connected"
		if !e.Connected {
			state = "disconnected"
		}
		fmt.Fprintf(tw, "etcd: %s (%s), key %s, revision %d, %d nodes; %d puts (%d bytes), %d events, %d bytes read; last error: %s\n",
			strings.Join(e.Endpoints, ","), state, dash(e.Key), e.Revision, e.Nodes, e.Puts, e.PutBytes, e.Events, e.ReadBytes, dash(e.LastError))
	}
}
