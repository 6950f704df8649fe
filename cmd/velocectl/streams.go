package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/veloce-io/veloce/control"
)

func init() { register(newStreamsCmd) }

func newStreamsCmd(a *app) *cobra.Command {
	var port string
	var session uint32
	c := &cobra.Command{
		Use:     "streams [--port NAME] [--session ID]",
		Short:   "List streams: owner, options, datapath (and warning when an option is not met), sources, sinks",
		GroupID: groupShow,
		Long: `List the daemon's streams: the session that opened each, its endpoint (vm:PORT
for a guest, the host application's name otherwise), the QoS options asked
for, the datapath chosen (with a warning when an option is not met: acceleration
fell back, or the datapath does not honour an option yet), and
its sources (channel:emitted, with "(N full)" for back-pressure and
"(peer-unreachable)" for a failed reliable source) and sinks
(channel:delivered/dropped).
--port keeps the streams of one VM port's guest, --session those of one session.

-o json prints a JSON list, one object per stream (session, stream, endpoint,
options, datapath, warning, sources, sinks: a contract, as ports').`,
		Example: `  velocectl streams
  velocectl streams --port vm0 -o json`,
		Args: argsRange(0, 0, ""),
		RunE: func(c *cobra.Command, _ []string) error {
			if c.Flags().Changed("port") {
				if _, err := a.ports([]string{port}); err != nil {
					return fmt.Errorf("--port: %w", err)
				}
			}
			all, err := a.client().Streams(a.ctx)
			if err != nil {
				return err
			}
			streams := make([]control.StreamInfo, 0, len(all))
			for _, st := range all {
				if (c.Flags().Changed("port") && st.Endpoint != "vm:"+port) || (c.Flags().Changed("session") && st.Session != session) {
					continue
				}
				streams = append(streams, st)
			}
			return a.print(streams, func(tw io.Writer, wide bool) {
				head := "STREAM\tSESSION\tENDPOINT\tOPTIONS\tDATAPATH\tTC\tSOURCES\tSINKS\tWARNING"
				if wide {
					head += "\tSESSION ADDR"
				}
				fmt.Fprintln(tw, head)
				for _, st := range streams {
					var srcs, sinks []string
					for _, so := range st.Sources {
						src := fmt.Sprintf("ch%d:%d", so.Channel, so.Emitted)
						if so.Full > 0 {
							src += fmt.Sprintf("(%d full)", so.Full)
						}
						if so.State != "" {
							src += "(" + so.State + ")"
						}
						srcs = append(srcs, src)
					}
					for _, sk := range st.Sinks {
						sinks = append(sinks, fmt.Sprintf("ch%d:%d/%d", sk.Channel, sk.Delivered, sk.Dropped))
					}
					fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%d\t%s\t%s\t%s", st.Stream, st.Session, st.Endpoint, optionString(st.Options),
						st.Datapath, st.TrafficClass, dash(strings.Join(srcs, ",")), dash(strings.Join(sinks, ",")), dash(st.Warning))
					if wide {
						fmt.Fprintf(tw, "\t%s", dash(st.SessionRemote))
					}
					fmt.Fprintln(tw)
				}
			})
		},
	}
	c.Flags().StringVar(&port, "port", "", "only the streams of this VM port's guest")
	c.Flags().Uint32Var(&session, "session", 0, "only the streams of this session id")
	c.RegisterFlagCompletionFunc("port", func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		return a.portNames(nil), cobra.ShellCompDirectiveNoFileComp
	})
	c.AddCommand(newSetQoSCmd(a))
	return c
}

// newSetQoSCmd is velocectl streams set-qos (INSANE's /change/qos).
func newSetQoSCmd(a *app) *cobra.Command {
	var o control.StreamOptions
	c := &cobra.Command{
		Use:   "set-qos STREAM [--accel] [--frugal] [--time-sensitive] [--reliable]",
		Short: "Change a running stream's QoS options: it moves to the datapath they map to",
		Long: `Give a running stream new QoS options (those not given are off). The daemon
maps them to a datapath as it does for a new stream (with the same fallback
and warning); when that is another datapath, the stream's emits pause, what
its old datapath holds is sent (and, for a reliable stream, acknowledged),
the stream switches and resumes: no message is lost, duplicated or
reordered. The stream's application is told (guestlib: Stream.Events).
STREAM is the id velocectl streams shows. Prints the stream as it is now
(-o json: the same object as velocectl streams -o json).`,
		Example: `  velocectl streams set-qos 7 --accel --reliable
  velocectl streams set-qos 7 --reliable -o json`,
		Args: argsRange(1, 1, "STREAM"),
		RunE: func(c *cobra.Command, args []string) error {
			id, err := strconv.ParseUint(args[0], 10, 32)
			if err != nil {
				return fmt.Errorf("stream %q: give the numeric id velocectl streams shows", args[0])
			}
			st, err := a.client().SetStreamQoS(a.ctx, uint32(id), o)
			if err != nil {
				return err
			}
			return a.print(st, func(tw io.Writer, _ bool) {
				fmt.Fprintln(tw, "STREAM\tSESSION\tOPTIONS\tDATAPATH\tWARNING")
				fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\n", st.Stream, st.Session, optionString(st.Options), st.Datapath, dash(st.Warning))
			})
		},
	}
	c.Flags().BoolVar(&o.Acceleration, "accel", false, "ask for a kernel-bypass datapath (RDMA, DPDK, AF_XDP)")
	c.Flags().BoolVar(&o.Frugal, "frugal", false, "resource use matters (prefer AF_XDP to DPDK's polling cores)")
	c.Flags().BoolVar(&o.TimeSensitive, "time-sensitive", false, "schedule by the 802.1Qbv gate schedule")
	c.Flags().BoolVar(&o.Reliable, "reliable", false, "exactly-once, in-order delivery")
	return c
}

func optionString(o control.StreamOptions) string {
	var parts []string
	for _, f := range []struct {
		on   bool
		name string
	}{{o.Acceleration, "accel"}, {o.Frugal, "frugal"}, {o.TimeSensitive, "tsn"}, {o.Reliable, "reliable"}} {
		if f.on {
			parts = append(parts, f.name)
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ",")
}
