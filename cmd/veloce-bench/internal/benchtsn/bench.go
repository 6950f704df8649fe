// Package benchtsn is veloce-bench tsn: the latency of a time-sensitive
// stream between two daemons in two network namespaces (a veth between
// them, kernel UDP), on an idle link, while a bulk stream saturates the
// link with FIFO scheduling, and the same with an 802.1Qbv gate schedule
// (backend's TX scheduler, veloced --tsn-schedule).
//
// The time-sensitive application sends one message per cycle, at the
// opening of its class's window (as periodic TSN traffic is planned);
// each message carries its send time and the receiving application, in
// the same process, takes the one-way latency from it. Absolute figures
// depend on the host's load; compare the rows of one run.
package benchtsn

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/netns"
	"github.com/veloce-io/veloce/internal/tsn"
	"github.com/veloce-io/veloce/plugins/udp"
)

// Config is one run's parameters.
type Config struct {
	// Duration of each case's measurement.
	Duration time.Duration
	// Schedule is the gate schedule of the scheduled case; the
	// time-sensitive window is the one that opens gate 1.
	Schedule string
	// Size of every message, bytes.
	Size int
}

// Row is one case's result.
type Row struct {
	Case        string  `json:"case"`
	Sent        int     `json:"sent"`
	Messages    int     `json:"messages"`
	P50Micros   float64 `json:"p50_us"`
	P99Micros   float64 `json:"p99_us"`
	MaxMicros   float64 `json:"max_us"`
	BulkPerSec  float64 `json:"bulk_msgs_per_s"`
	P99VsIdle   float64 `json:"p99_vs_idle"`
	Overruns    uint64  `json:"overruns,omitempty"`
	GateWaitsTS uint64  `json:"gate_waits_ts,omitempty"`
}

// Report is the whole run.
type Report struct {
	Schedule string `json:"schedule"`
	Size     int    `json:"size"`
	Rows     []Row  `json:"rows"`
}

const (
	chanTS   = 1
	chanBulk = 2
)

// Main runs the benchmark: veloce-bench tsn [--duration 3s] [--schedule S] [-o json].
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("veloce-bench tsn", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := Config{}
	fs.DurationVar(&cfg.Duration, "duration", 3*time.Second, "measurement time of each case")
	fs.StringVar(&cfg.Schedule, "schedule", "base=0,cycle=1ms,S 01 800us,S 02 200us", "gate schedule of the scheduled case (veloced --tsn-schedule syntax)")
	fs.IntVar(&cfg.Size, "size", 1024, "message size in bytes")
	output := fs.String("o", "table", "output format: table or json")
	if err := benchutil.ParseArgs(fs, args, output); err != nil {
		return err
	}
	if cfg.Duration <= 0 || cfg.Size < 8 || cfg.Size > backend.MaxRemotePayload {
		return fmt.Errorf("--duration must be positive and --size within 8..%d", backend.MaxRemotePayload)
	}
	rep, err := Run(ctx, cfg)
	if done, err := benchutil.Written(stdout, *output, rep, rep != nil && len(rep.Rows) > 0, err, func(w io.Writer) error { return WriteTable(w, rep) }); done {
		return err
	}
	return WriteTable(stdout, rep)
}

// Run measures the three cases.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	sched, err := tsn.Parse(cfg.Schedule)
	if err == nil {
		err = backend.CheckSchedule(sched)
	}
	if err != nil {
		return nil, fmt.Errorf("--schedule: %w", err)
	}
	rep := &Report{Schedule: sched.String(), Size: cfg.Size}
	for _, c := range []struct {
		name  string
		bulk  bool
		sched *tsn.Schedule
	}{{"idle link, FIFO", false, nil}, {"bulk saturating, FIFO", true, nil}, {"bulk saturating, gate schedule", true, sched}} {
		row, err := runCase(ctx, cfg, c.bulk, c.sched, sched)
		if err != nil {
			return rep, fmt.Errorf("%s: %w", c.name, err)
		}
		row.Case = c.name
		if len(rep.Rows) > 0 && rep.Rows[0].P99Micros > 0 {
			row.P99VsIdle = benchutil.Round2(row.P99Micros / rep.Rows[0].P99Micros)
		}
		rep.Rows = append(rep.Rows, row)
	}
	if rep.Rows[0].P99Micros > 0 {
		rep.Rows[0].P99VsIdle = 1
	}
	return rep, nil
}

// WriteTable prints the report.
func WriteTable(w io.Writer, rep *Report) error {
	if rep == nil {
		return nil
	}
	fmt.Fprintf(w, "time-sensitive stream latency, one way, %d B messages; schedule %s\n", rep.Size, rep.Schedule)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CASE\tSENT\tARRIVED\tP50 µs\tP99 µs\tMAX µs\tP99/IDLE\tBULK msg/s\tGATE WAITS\tOVERRUNS")
	for _, r := range rep.Rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.1f\t%.1f\t%.2f\t%.0f\t%d\t%d\n", r.Case, r.Sent, r.Messages, r.P50Micros, r.P99Micros, r.MaxMicros, r.P99VsIdle, r.BulkPerSec, r.GateWaitsTS, r.Overruns)
	}
	return tw.Flush()
}

// runCase starts two daemons (A with sched, nil: FIFO), sends the
// time-sensitive stream A -> B once per cycle of plan, at the opening of
// its window, with or without a bulk stream A -> B, and returns the
// latencies.
func runCase(ctx context.Context, cfg Config, bulk bool, sched, plan *tsn.Schedule) (Row, error) {
	pid := os.Getpid()
	a, b, err := benchutil.NewPair("network namespaces", fmt.Sprintf("vtsn-%d-a", pid), fmt.Sprintf("vtsn-%d-b", pid))
	if err != nil {
		return Row{}, err
	}
	defer benchutil.DelPair(a, b)
	mac := func(end byte) net.HardwareAddr {
		return net.HardwareAddr{0x02, 0x76, 0x03, byte(pid >> 8), byte(pid), end}
	}
	if err := netns.AddVeth(netns.Veth{
		A: netns.VethEnd{NS: a.Name, Name: netns.IfName(fmt.Sprintf("vta%d", pid)), MAC: mac(1), Addr: netip.MustParsePrefix("10.99.78.1/24")},
		B: netns.VethEnd{NS: b.Name, Name: netns.IfName(fmt.Sprintf("vtb%d", pid)), MAC: mac(2), Addr: netip.MustParsePrefix("10.99.78.2/24")},
	}); err != nil {
		return Row{}, err
	}
	open := func(ns *benchutil.Netns, addr string) (p *udp.Plugin, err error) {
		err = ns.Do(func() (err error) {
			p, err = udp.New(udp.Options{Listen: netip.MustParseAddrPort(addr), RecvBuffer: 4 << 20, SendBuffer: 4 << 20})
			return err
		})
		return p, err
	}
	dpA, err := open(a, "10.99.78.1:7078")
	if err != nil {
		return Row{}, err
	}
	dpB, err := open(b, "10.99.78.2:7078")
	if err != nil {
		dpA.Close()
		return Row{}, err
	}
	dir, err := os.MkdirTemp("", "veloce-bench-tsn-")
	if err != nil {
		return Row{}, err
	}
	defer os.RemoveAll(dir)
	mk := func(dp, peer *udp.Plugin, node uint32, name string, s *tsn.Schedule) (*backend.Daemon, error) {
		return backend.NewDaemon(backend.DaemonOptions{ControlSocket: filepath.Join(dir, "control-"+name+".sock"), AppSocket: filepath.Join(dir, name+".sock"),
			Runtime: backend.RuntimeOptions{NodeID: node, Remote: backend.RemoteOptions{Datapath: dp, Schedule: s,
				Peers: []netip.AddrPort{peer.LocalAddr()}, DirectoryInterval: 100 * time.Millisecond}}})
	}
	dA, err := mk(dpA, dpB, 1, "a", sched)
	if err != nil {
		return Row{}, err
	}
	dB, err := mk(dpB, dpA, 2, "b", nil)
	if err != nil {
		return Row{}, err
	}
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for _, d := range []*backend.Daemon{dA, dB} {
		wg.Add(1)
		go func() { defer wg.Done(); d.Run(rctx) }()
	}
	session := func(name string) (*guestlib.Session, error) {
		deadline := time.Now().Add(5 * time.Second)
		for {
			s, err := guestlib.Open(rctx, guestlib.Options{Socket: filepath.Join(dir, name+".sock"), RequestTimeout: 200 * time.Millisecond})
			if err == nil || time.Now().After(deadline) {
				return s, err
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	sa, err := session("a")
	if err != nil {
		return Row{}, err
	}
	defer sa.Close()
	sb, err := session("b")
	if err != nil {
		return Row{}, err
	}
	defer sb.Close()
	// The bulk application is another process's session: it does not
	// share the time-sensitive one's TX slots.
	sbulk, err := session("a")
	if err != nil {
		return Row{}, err
	}
	defer sbulk.Close()
	// The applications' goroutines stop before their sessions close.
	actx, acancel := context.WithCancel(rctx)
	var apps sync.WaitGroup
	defer func() { acancel(); apps.Wait() }()
	tsA, err := sa.CreateStream(rctx, guestlib.StreamOptions{TimeSensitive: true})
	if err != nil {
		return Row{}, err
	}
	bulkA, err := sbulk.CreateStream(rctx, guestlib.StreamOptions{})
	if err != nil {
		return Row{}, err
	}
	stB, err := sb.CreateStream(rctx, guestlib.StreamOptions{})
	if err != nil {
		return Row{}, err
	}
	tsSrc, err := tsA.CreateSource(rctx, chanTS)
	if err != nil {
		return Row{}, err
	}
	bulkSrc, err := bulkA.CreateSource(rctx, chanBulk)
	if err != nil {
		return Row{}, err
	}
	tsSink, err := stB.CreateSink(rctx, chanTS, guestlib.SinkOptions{})
	if err != nil {
		return Row{}, err
	}
	bulkSink, err := stB.CreateSink(rctx, chanBulk, guestlib.SinkOptions{})
	if err != nil {
		return Row{}, err
	}
	// Wait for A to learn of B's sinks: a probe on the time-sensitive
	// channel comes through.
	var lat []time.Duration
	var latMu sync.Mutex
	var measuring atomic.Bool
	var bulkGot atomic.Uint64
	apps.Add(2)
	go func() {
		defer apps.Done()
		for {
			m, err := tsSink.Consume(actx)
			if err != nil {
				return
			}
			now := time.Now().UnixNano()
			sent := int64(binary.LittleEndian.Uint64(m.Data))
			m.Release()
			if measuring.Load() {
				latMu.Lock()
				lat = append(lat, time.Duration(now-sent))
				latMu.Unlock()
			}
		}
	}()
	go func() {
		defer apps.Done()
		for {
			m, err := bulkSink.Consume(actx)
			if err != nil {
				return
			}
			m.Release()
			bulkGot.Add(1)
		}
	}()
	emit := func(src *guestlib.Source) error {
		buf, err := src.GetBufferContext(actx, cfg.Size)
		if err != nil {
			return err
		}
		binary.LittleEndian.PutUint64(buf.Data, uint64(time.Now().UnixNano()))
		_, err = src.Emit(buf)
		return err
	}
	for probe := time.Now(); ; {
		if err := emit(tsSrc); err != nil {
			return Row{}, err
		}
		time.Sleep(20 * time.Millisecond)
		if dB.Remote().Received > 0 {
			break
		}
		if time.Since(probe) > 10*time.Second {
			return Row{}, errors.New("daemon A never learned of B's sinks")
		}
	}
	if bulk {
		apps.Add(1)
		go func() {
			defer apps.Done()
			for actx.Err() == nil {
				if emit(bulkSrc) != nil {
					return
				}
			}
		}()
		time.Sleep(200 * time.Millisecond) // the queues fill
	}
	// One time-sensitive message per cycle, at the opening of its window
	// (plus 10 µs).
	measuring.Store(true)
	bulkStart, start := bulkGot.Load(), time.Now()
	sent := 0
	for time.Since(start) < cfg.Duration && rctx.Err() == nil {
		at, _, _ := plan.NextOpen(time.Now().UnixNano()+int64(50*time.Microsecond), 1<<backend.TrafficClassTimeSensitive)
		time.Sleep(time.Until(time.Unix(0, at+int64(10*time.Microsecond))))
		if err := emit(tsSrc); err != nil {
			return Row{}, err
		}
		sent++
	}
	elapsed := time.Since(start)
	bulkRate := float64(bulkGot.Load()-bulkStart) / elapsed.Seconds()
	time.Sleep(100 * time.Millisecond) // the last ones arrive
	measuring.Store(false)
	row := Row{BulkPerSec: bulkRate, Sent: sent}
	if in := dA.Remote().Datapaths[0].TSN; in != nil {
		row.Overruns, row.GateWaitsTS = in.Overruns, in.Classes[backend.TrafficClassTimeSensitive].Waits
	}
	latMu.Lock()
	l := slices.Clone(lat)
	latMu.Unlock()
	if len(l) == 0 {
		return row, fmt.Errorf("none of %d time-sensitive messages arrived", sent)
	}
	slices.Sort(l)
	row.Messages = len(l)
	row.P50Micros = benchutil.Micros(l[len(l)/2])
	row.P99Micros = benchutil.Micros(l[len(l)*99/100])
	row.MaxMicros = benchutil.Micros(l[len(l)-1])
	return row, nil
}
