// Command velocectl is the operator's CLI for veloced. It speaks the
// control API (package control) and links nothing else of the project.
//
//	velocectl [--control PATH] ports|streams|apps|remote [-o table|json]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/veloce-io/veloce/control"
)

const usage = `usage: velocectl [--control PATH] COMMAND [flags]

Commands:
  ports    list VM ports: state, negotiated features, queues, counters
  streams  list streams: owner, options, datapath (and fallback warning), sources, sinks
  apps     list host applications (the app socket's clients): session, shared
           region, RX slots they hold, malformed ring entries
  remote   list datapaths to other hosts (udp, dpdk) with their counters, and peers
           with the channels they have sinks for

Flags:
  --control PATH   veloced's control socket (default %s)
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "velocectl:", err)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("velocectl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintf(stderr, usage, control.DefaultSocket) }
	socket := fs.String("control", control.DefaultSocket, "veloced's control socket")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("no command")
	}
	client := control.NewClient(*socket)
	cmd, args := fs.Arg(0), fs.Args()[1:]
	switch cmd {
	case "ports":
		return show(ctx, cmd, args, stdout, stderr, client.Ports, func(tw io.Writer, ports []control.PortInfo) {
			fmt.Fprintln(tw, "NAME\tMODE\tSTATE\tQUEUES\tGUEST IP\tGUEST MAC\tTX PKTS\tTX BYTES\tRX PKTS\tRX BYTES\tDROPS\tERRORS\tFEATURES")
			for _, p := range ports {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", p.Name, p.Mode, p.State, p.Queues, p.MaxQueues,
					p.GuestIP, dash(p.GuestMAC), p.GuestTXPackets, p.GuestTXBytes, p.GuestRXPackets, p.GuestRXBytes, p.Drops, p.Errors, p.Features)
			}
		})
	case "streams":
		return show(ctx, cmd, args, stdout, stderr, client.Streams, func(tw io.Writer, streams []control.StreamInfo) {
			fmt.Fprintln(tw, "STREAM\tSESSION\tENDPOINT\tOPTIONS\tDATAPATH\tSOURCES\tSINKS\tWARNING")
			for _, st := range streams {
				var srcs, sinks []string
				for _, so := range st.Sources {
					src := fmt.Sprintf("ch%d:%d", so.Channel, so.Emitted)
					if so.Full > 0 {
						src += fmt.Sprintf("(%d full)", so.Full)
					}
					srcs = append(srcs, src)
				}
				for _, sk := range st.Sinks {
					sinks = append(sinks, fmt.Sprintf("ch%d:%d/%d", sk.Channel, sk.Delivered, sk.Dropped))
				}
				fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", st.Stream, st.Session, st.Endpoint, optionString(st.Options),
					st.Datapath, dash(strings.Join(srcs, ",")), dash(strings.Join(sinks, ",")), dash(st.Warning))
			}
		})
	case "apps":
		return show(ctx, cmd, args, stdout, stderr, client.Apps, func(tw io.Writer, info control.HostAppsInfo) {
			fmt.Fprintln(tw, "CLIENT\tSESSION\tREGION\tTX SLOTS\tRX SLOTS\tRX WITH APP\tMALFORMED\tWAKEUPS")
			for _, c := range info.Clients {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", c.Name, c.Session, c.RegionBytes, c.TXSlots, c.RXSlots, c.RXWithApp, c.Malformed, c.Wakeups)
			}
			fmt.Fprintf(tw, "\nsocket %s: %d sessions, %d bytes mapped, %d malformed in all\n", dash(info.Socket), info.Sessions, info.MappedBytes, info.Malformed)
		})
	case "remote":
		return show(ctx, cmd, args, stdout, stderr, client.Remote, func(tw io.Writer, info control.RemoteInfo) {
			fmt.Fprintln(tw, "DATAPATH\tADDRESS\tDEFAULT\tQUEUED\tREACHES")
			for _, d := range info.Datapaths {
				fmt.Fprintf(tw, "%s\t%s\t%v\t%d\t%s\n", d.Name, d.Addr, d.Default, d.Queued, dash(strings.Join(d.Peers, ",")))
			}
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
			fmt.Fprintf(tw, "\nmessages: %d sent, %d received, %d dropped, %d malformed\n", info.Sent, info.Received, info.Dropped, info.Malformed)
			fmt.Fprintf(tw, "refused: %d from unknown peers, %d bad auth, %d stale, %d bad version; %d directories expired; authenticated %v, boot id %s\n",
				info.UnknownPeer, info.BadAuth, info.Stale, info.BadVersion, info.Expired, info.Authenticated, dash(info.Boot))
		})
	default:
		fs.Usage()
		return fmt.Errorf("unknown command %q", cmd)
	}
}

// show runs one listing command: it parses its -o flag, fetches the data
// with get, and prints it as indented JSON or as the table that table
// writes (tab-separated columns, aligned).
func show[T any](ctx context.Context, cmd string, args []string, stdout, stderr io.Writer,
	get func(context.Context) (T, error), table func(tw io.Writer, v T)) error {
	output, err := parseOutput(cmd, args, stderr)
	if err != nil {
		return err
	}
	v, err := get(ctx)
	if err != nil {
		return err
	}
	if output == "json" {
		e := json.NewEncoder(stdout)
		e.SetIndent("", "  ")
		return e.Encode(v)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	table(tw, v)
	return tw.Flush()
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

// parseOutput parses a command's flags, which are just -o.
func parseOutput(cmd string, args []string, stderr io.Writer) (string, error) {
	sub := flag.NewFlagSet("velocectl "+cmd, flag.ContinueOnError)
	sub.SetOutput(stderr)
	output := sub.String("o", "table", "output format: table or json")
	if err := sub.Parse(args); err != nil {
		return "", err
	}
	if *output != "table" && *output != "json" {
		return "", fmt.Errorf("-o %q: want table or json", *output)
	}
	return *output, nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
