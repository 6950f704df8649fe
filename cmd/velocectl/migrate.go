package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/migration/hypervisor"
	"github.com/veloce-io/veloce/migration/hypervisor/chv"
	"github.com/veloce-io/veloce/migration/hypervisor/qemu"
)

func init() { register(newMigrateCmd) }

// migrateOptions are velocectl migrate's flags.
type migrateOptions struct {
	port       string
	toControl  string // the destination daemon's control socket
	destPort   string
	destSocket string
	destClient bool
	destAddr   string // the destination daemon's migration listener, as the source daemon reaches it

	hypervisor string // qemu or chv
	qmp        string
	destQMP    string
	uri        string
	apiSocket  string
	destAPI    string
	local      bool

	maxBandwidth  int64
	downtimeLimit time.Duration
	timeout       time.Duration
}

// migrateSummary is what velocectl migrate prints at the end (-o json:
// this object).
type migrateSummary struct {
	Port            string  `json:"port"`
	Hypervisor      string  `json:"hypervisor"`
	Status          string  `json:"status"`
	TotalMs         float64 `json:"total_time_ms"`
	DowntimeMs      float64 `json:"downtime_ms"`
	DowntimeKnown   bool    `json:"downtime_reported"`
	TransferredMiB  float64 `json:"transferred_mib"`
	StateBytes      int     `json:"state_bytes"`
	Sessions        int     `json:"sessions"`
	Streams         int     `json:"streams"`
	Sources         int     `json:"sources"`
	Sinks           int     `json:"sinks"`
	QueuedMoved     int     `json:"queued_messages"`
	Forwarded       uint64  `json:"messages_forwarded"`
	HandoffMs       float64 `json:"handoff_ms"`
	StreamsResumed  bool    `json:"streams_resumed_on_source,omitempty"`
	Error           string  `json:"error,omitempty"`
	DestinationPort string  `json:"destination_port"`
}

func newMigrateCmd(a *app) *cobra.Command {
	o := &migrateOptions{}
	c := &cobra.Command{
		Use:     "migrate PORT --to-control PATH (--qmp PATH --uri URI | --hypervisor chv --api-socket PATH --uri URL)",
		Short:   "Live-migrate a VM and its streams to another veloced",
		GroupID: groupChange,
		Long: `Live-migrate the VM on port PORT of this veloced (--control) to the veloced
whose control socket is --to-control, with its streams: run it on the source
host.

It prepares the destination daemon (the port must be idle there; --dest-socket
creates it), starts the hypervisor's migration (QEMU over QMP: --qmp, and
--dest-qmp for a destination QEMU started with -incoming; Cloud Hypervisor over
its API socket: --hypervisor chv --api-socket, --dest-api-socket), shows
progress on stderr (phase, MiB sent, dirty rate), and at the switchover has the
source daemon hand the port's stream state — sessions, streams, sources with
their sequence numbers, sinks with their undelivered messages — to the
destination daemon's --migration-listen address, authenticated with the fleet's
migration key. Messages that still reach the source afterwards are forwarded to
the destination until the peers point there.

QEMU: velocectl sets pause-before-switchover, so the hand-off runs while the
guest is paused and its rings are stopped, before the destination resumes it:
nothing the guest sent or was sent is lost, and the hand-off counts in QEMU's
downtime. If QEMU's migration then fails, the destination drops the state and
the streams resume on the source. Cloud Hypervisor has no such pause: the
hand-off runs once the guest runs on the destination, whose streams wait
for it meanwhile.

Ctrl-C cancels the migration (QEMU: migrate_cancel) and leaves the VM and its
streams on the source.

-o json prints one object: status, total_time_ms, downtime_ms, state_bytes,
messages_forwarded and the rest of the summary.`,
		Example: `  velocectl migrate vm1 --to-control /run/veloce/dst.sock \
      --qmp /run/vm1/qmp.sock --dest-qmp /run/vm1-in/qmp.sock --uri tcp:10.0.0.2:4444
  velocectl migrate vm1 --to-control /run/veloce/dst.sock --dest-addr 10.0.0.2:7079 \
      --hypervisor chv --api-socket /run/ch/src.sock --dest-api-socket /run/ch/dst.sock --uri tcp:10.0.0.2:6000`,
		Args: argsRange(1, 1, "PORT (the VM's port on this veloced)"),
		RunE: func(c *cobra.Command, args []string) error {
			o.port = args[0]
			if err := o.check(c); err != nil {
				return err
			}
			sum, err := runMigrate(a.ctx, a.client(), control.NewClient(o.toControl), o, a.stderr)
			if sum == nil {
				return err
			}
			perr := a.print(sum, func(tw io.Writer, _ bool) {
				fmt.Fprintln(tw, "PORT\tSTATUS\tTOTAL\tDOWNTIME\tMEMORY\tSTATE\tSESSIONS\tSTREAMS\tQUEUED\tFORWARDED")
				down := fmt.Sprintf("%.0f ms", sum.DowntimeMs)
				if !sum.DowntimeKnown {
					down = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%.0f ms\t%s\t%.1f MiB\t%d B\t%d\t%d\t%d\t%d\n", sum.Port, sum.Status, sum.TotalMs, down,
					sum.TransferredMiB, sum.StateBytes, sum.Sessions, sum.Streams, sum.QueuedMoved, sum.Forwarded)
			})
			if err != nil {
				return err
			}
			return perr
		},
	}
	f := c.Flags()
	f.StringVar(&o.toControl, "to-control", "", "the destination veloced's control `PATH` (required; reach a remote one through an ssh-forwarded socket)")
	f.StringVar(&o.destPort, "dest-port", "", "the port's name on the destination (default PORT)")
	f.StringVar(&o.destSocket, "dest-socket", "", "create the destination port, listening on this vhost-user socket `PATH`, if it does not exist")
	f.BoolVar(&o.destClient, "dest-client", false, "with --dest-socket: the destination daemon connects to the socket instead")
	f.StringVar(&o.destAddr, "dest-addr", "", "the destination daemon's migration listener `HOST:PORT` as the source daemon reaches it (default what it reports, if not 0.0.0.0)")
	f.StringVar(&o.hypervisor, "hypervisor", "qemu", "qemu or chv (Cloud Hypervisor)")
	f.StringVar(&o.qmp, "qmp", "", "QEMU: the source QEMU's QMP socket `PATH`")
	f.StringVar(&o.destQMP, "dest-qmp", "", "QEMU: the destination QEMU's QMP socket (started with -incoming URI or -incoming defer); optional")
	f.StringVar(&o.uri, "uri", "", "where the hypervisor's migration goes: QEMU tcp:HOST:PORT or unix:PATH; Cloud Hypervisor its destination_url")
	f.StringVar(&o.apiSocket, "api-socket", "", "Cloud Hypervisor: the source VMM's --api-socket `PATH`")
	f.StringVar(&o.destAPI, "dest-api-socket", "", "Cloud Hypervisor: the destination VMM's --api-socket (velocectl sends vm.receive-migration there)")
	f.BoolVar(&o.local, "local", false, "Cloud Hypervisor: local migration (same host, unix: URL, memory passed as file descriptors)")
	f.Int64Var(&o.maxBandwidth, "max-bandwidth", 0, "QEMU: migration bandwidth limit, bytes/s (0: QEMU's)")
	f.DurationVar(&o.downtimeLimit, "downtime-limit", 0, "QEMU: downtime limit (0: QEMU's, 300ms)")
	f.DurationVar(&o.timeout, "timeout", 30*time.Minute, "give up (and cancel) after this long")
	return c
}

func (o *migrateOptions) check(c *cobra.Command) error {
	if o.toControl == "" {
		return usageErrorf(c, "--to-control: give the destination veloced's control socket")
	}
	if o.uri == "" {
		return usageErrorf(c, "--uri: give where the hypervisor's migration goes (tcp:HOST:PORT)")
	}
	switch o.hypervisor {
	case "qemu":
		if o.qmp == "" {
			return usageErrorf(c, "--qmp: give the source QEMU's QMP socket")
		}
	case "chv":
		if o.apiSocket == "" {
			return usageErrorf(c, "--api-socket: give the source Cloud Hypervisor's API socket")
		}
	default:
		return usageErrorf(c, "--hypervisor %q: give qemu or chv", o.hypervisor)
	}
	if o.destPort == "" {
		o.destPort = o.port
	}
	return nil
}

// runMigrate migrates o.port from the daemon src to the daemon dst, with
// progress on progress. It returns the summary (nil when it failed before
// the migration started) and the error.
func runMigrate(ctx context.Context, src, dst *control.Client, o *migrateOptions, progress io.Writer) (*migrateSummary, error) {
	ctx, cancelAll := context.WithTimeout(ctx, o.timeout)
	defer cancelAll()
	sum := &migrateSummary{Port: o.port, Hypervisor: o.hypervisor, DestinationPort: o.destPort}
	// 1. The destination daemon: the port, ready for the import.
	prep, err := dst.MigratePrepare(ctx, control.MigratePrepareRequest{Port: o.destPort, Socket: o.destSocket, Client: o.destClient})
	if err != nil {
		return nil, fmt.Errorf("prepare the destination daemon: %w", err)
	}
	addr := o.destAddr
	if addr == "" {
		addr = prep.Listen
		if host, _, err := net.SplitHostPort(addr); err != nil || net.ParseIP(host) == nil || net.ParseIP(host).IsUnspecified() {
			return nil, fmt.Errorf("the destination daemon listens for migrations on %s: give --dest-addr HOST:PORT, as the source daemon reaches it", addr)
		}
	}
	if ports, err := src.Ports(ctx); err == nil && !hasPort(ports, o.port) {
		return nil, fmt.Errorf("no port %s on the source daemon (velocectl ports lists them)", o.port)
	}
	fmt.Fprintf(progress, "destination port %s ready (%s), stream state goes to %s\n", o.destPort, prep.Port.State, addr)

	// 2. The hypervisor driver, with the hand-off at the switchover.
	var (
		mu      sync.Mutex
		out     *control.MigrateOutResult
		hookErr error
	)
	hooks := hypervisor.Hooks{
		Switchover: func(hctx context.Context) error {
			r, err := src.MigrateOut(hctx, control.MigrateOutRequest{Port: o.port, Destination: addr, DestinationPort: o.destPort})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				hookErr = err
				return err
			}
			out = &r
			fmt.Fprintf(progress, "switchover: stream state handed over (%d bytes, %d sessions, %d queued messages) in %.1f ms\n",
				r.Bytes, r.Sessions, r.Queued, float64(r.HandoffMicros)/1000)
			return nil
		},
		Progress: func(p hypervisor.Progress) {
			if p.Reported {
				fmt.Fprintf(progress, "%-14s %6.1fs  %8.1f MiB sent  %8.1f MiB left  dirty %d pages/s\n", p.Status, p.Elapsed.Seconds(),
					float64(p.Transferred)/(1<<20), float64(p.Remaining)/(1<<20), p.DirtyRate)
			} else {
				fmt.Fprintf(progress, "%-14s %6.1fs\n", p.Status, p.Elapsed.Seconds())
			}
		},
	}
	drv, closeDrv, err := o.driver(ctx, hooks)
	if err != nil {
		return nil, err
	}
	defer closeDrv()
	if err := drv.Prepare(ctx); err != nil {
		return nil, fmt.Errorf("prepare the destination hypervisor: %w", err)
	}
	begun := time.Now()
	if err := drv.Start(ctx); err != nil {
		return nil, fmt.Errorf("start the migration: %w", err)
	}
	// 3. Wait; Ctrl-C (ctx) cancels.
	bg := context.WithoutCancel(ctx)
	type waited struct {
		s   *hypervisor.Summary
		err error
	}
	done := make(chan waited, 1)
	go func() {
		s, err := drv.Wait(bg)
		done <- waited{s, err}
	}()
	var w waited
	select {
	case w = <-done:
	case <-ctx.Done():
		fmt.Fprintf(progress, "cancelling the migration (%v)...\n", context.Cause(ctx))
		cctx, cancel := context.WithTimeout(bg, time.Minute)
		cerr := drv.Cancel(cctx)
		cancel()
		w = <-done
		if cerr != nil && !errors.Is(cerr, hypervisor.ErrCompleted) && w.err == nil {
			w.err = cerr
		}
		if errors.Is(cerr, hypervisor.ErrNotSupported) {
			fmt.Fprintln(progress, "the hypervisor cannot cancel a migration under way: it goes on")
		}
	}
	if w.s != nil {
		sum.Status = string(w.s.Status)
		sum.TotalMs = float64(w.s.TotalTime) / float64(time.Millisecond)
		sum.DowntimeMs, sum.DowntimeKnown = float64(w.s.Downtime)/float64(time.Millisecond), w.s.DowntimeReported
		sum.TransferredMiB = float64(w.s.Transferred) / (1 << 20)
	} else {
		sum.Status = string(hypervisor.StatusFailed)
		sum.TotalMs = float64(time.Since(begun)) / float64(time.Millisecond)
	}
	mu.Lock()
	handed := out
	herr := hookErr
	mu.Unlock()
	if handed != nil {
		sum.StateBytes, sum.Sessions, sum.Streams, sum.Sources, sum.Sinks = handed.Bytes, handed.Sessions, handed.Streams, handed.Sources, handed.Sinks
		sum.QueuedMoved, sum.HandoffMs = handed.Queued, float64(handed.HandoffMicros)/1000
	}
	// 4. Commit, or give the streams back to the source.
	if w.err == nil && w.s != nil && w.s.Status == hypervisor.StatusCompleted && handed != nil {
		c, err := src.MigrateCommit(bg, control.MigratePortRequest{Port: o.port})
		sum.Forwarded = c.Forwarded
		if err != nil {
			sum.Error = err.Error()
			return sum, fmt.Errorf("the VM runs on the destination, but: %w", err)
		}
		return sum, nil
	}
	// Not completed: whatever the source daemon handed over comes back
	// (also when the hook's answer was lost on the way).
	if _, aerr := src.MigrateAbort(bg, control.MigratePortRequest{Port: o.port}); aerr == nil || isNotFound(aerr) {
		sum.StreamsResumed = true
	} else if w.err == nil {
		w.err = fmt.Errorf("give the streams back to the source: %w", aerr)
	}
	if w.err == nil && handed == nil && w.s != nil && w.s.Status == hypervisor.StatusCompleted {
		w.err = fmt.Errorf("the migration completed without a stream hand-off: %v", herr)
	}
	if w.err != nil {
		sum.Error = w.err.Error()
	}
	return sum, w.err
}

func isNotFound(err error) bool {
	ae, ok := errors.AsType[*control.APIError](err)
	return ok && ae.Status == http.StatusNotFound
}

func hasPort(ports []control.PortInfo, name string) bool {
	for _, p := range ports {
		if p.Name == name {
			return true
		}
	}
	return false
}

// driver builds the hypervisor driver; closeDrv releases its connections.
func (o *migrateOptions) driver(ctx context.Context, hooks hypervisor.Hooks) (d hypervisor.Driver, closeDrv func(), err error) {
	switch o.hypervisor {
	case "chv":
		drv, err := chv.New(chv.Options{Hooks: hooks, SourceSocket: o.apiSocket, DestinationSocket: o.destAPI, URL: o.uri, Local: o.local})
		if err != nil {
			return nil, nil, err
		}
		return drv, func() { drv.Close() }, nil
	}
	srcMon, err := qemu.Dial(ctx, o.qmp)
	if err != nil {
		return nil, nil, fmt.Errorf("--qmp %s: %w", o.qmp, err)
	}
	opts := qemu.Options{Hooks: hooks, Source: srcMon, URI: o.uri, MaxBandwidth: o.maxBandwidth, DowntimeLimit: o.downtimeLimit}
	closers := []func() error{srcMon.Close}
	if o.destQMP != "" {
		dstMon, err := qemu.Dial(ctx, o.destQMP)
		if err != nil {
			srcMon.Close()
			return nil, nil, fmt.Errorf("--dest-qmp %s: %w", o.destQMP, err)
		}
		opts.Destination = dstMon
		closers = append(closers, dstMon.Close)
	}
	drv, err := qemu.New(opts)
	if err != nil {
		for _, c := range closers {
			c()
		}
		return nil, nil, err
	}
	return drv, func() {
		drv.Close()
		for _, c := range closers {
			c()
		}
	}, nil
}

func init() { register(newMigrationCmd) }

func newMigrationCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "migration",
		Short:   "Show the daemon's live-migration setup and hand-offs",
		GroupID: groupShow,
		Long: `Show whether the daemon takes part in live migrations (it has a migration key),
where it accepts migrated guests' stream state (--migration-listen), how many
hand-offs left and arrived, how many were refused (not authenticated, corrupt,
not fitting the port), and the ports with a hand-off under way.

-o json prints one object: enabled, listen, exported, imported, rejected,
outgoing, incoming.`,
		Args: argsRange(0, 0, ""),
		RunE: func(*cobra.Command, []string) error {
			info, err := a.client().Migration(a.ctx)
			if err != nil {
				return err
			}
			return a.print(info, func(tw io.Writer, _ bool) {
				fmt.Fprintln(tw, "ENABLED\tLISTEN\tEXPORTED\tIMPORTED\tREJECTED\tOUTGOING\tINCOMING")
				fmt.Fprintf(tw, "%v\t%s\t%d\t%d\t%d\t%s\t%s\n", info.Enabled, dash(info.Listen), info.Exported, info.Imported, info.Rejected,
					dash(strings.Join(info.Outgoing, ",")), dash(strings.Join(info.Incoming, ",")))
			})
		},
	}
}
