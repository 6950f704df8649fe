// Package benchstreams measures Veloce's stream runtime between two hosts
// against raw UDP over the same link, in one run (veloce-bench streams).
//
// The two hosts are two network namespaces (internal/netns) joined by a veth,
// addressed 10.99.77.1 and .2. The reference is plain Go UDP sockets, one
// opened inside each namespace: ping-pong round trips (A sends, B echoes)
// and one-way throughput (A sends, B counts). Veloce is two in-process
// daemons (backend.Daemon), one per namespace, each with the kernel-UDP
// datapath (plugins/udp) opened inside its namespace, the other as its
// peer, and an app socket; applications use guestlib's host transport.
// The Veloce path of one message is thus app -> shared-memory slot ->
// daemon -> udp plugin -> veth -> udp plugin -> daemon -> shared-memory
// slot -> app.
//
//   - Ping-pong: A's application emits on channel 1; B's consumes each
//     message from its sink and emits it back on channel 2; A consumes it.
//     After Warmup round trips, RoundTrips are timed (at most MaxRTTTime).
//   - Throughput: A sends as fast as it can while at most Window messages
//     per sink are in flight (sent, not yet counted by that receiver: the
//     receivers' counts are shared in-process, simple credit flow control
//     that the slowest receiver drives, the same for raw and Veloce); the
//     rate is what the receivers counted over Duration after Warm.
//     Messages still missing after a drain are lost.
//   - Sinks: Veloce throughput with N sinks on B (each in its own session)
//     on channel 1: the rate per sink and all deliveries.
//   - One daemon: the Veloce ping-pong at the first size with both
//     applications on daemon A: the host transport alone, no datapath (to
//     tell where the overhead goes).
//
// Everything runs in one process on a shared two-core machine: the
// sender, receiver, both daemons' threads and the Go runtime share the
// cores, so absolute numbers depend on the machine and its load; the raw
// reference is measured in the same run, just before Veloce at each size.
package benchstreams

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchvhost"
)

// Config configures a run.
type Config struct {
	// Sizes are the message sizes (payload bytes); nil: 64, 256, 1024,
	// 1400; empty: none (only the sinks rows).
	Sizes []int
	// SinkCounts are the sink counts of the sinks rows; default 1 and 8.
	SinkCounts []int
	// SinkSize is the message size of the sinks rows; default 64.
	SinkSize int
	// SinkRounds is how many rounds of the sinks rows run, alternating
	// the counts; each count's best is reported. Default 1.
	SinkRounds int
	// RoundTrips timed per ping-pong after Warmup; at most MaxRTTTime.
	RoundTrips, Warmup int
	MaxRTTTime         time.Duration
	// Warm and Duration: throughput warm-up and measured window.
	Warm, Duration time.Duration
	// Window is the most messages per sink in flight (default 256);
	// SinkWindow the same for the sinks rows (default 512: twice that
	// fits the 1,024 RX slots of each sink's session, so that no sink
	// runs out even after a stall wrote a window off; the slowest sink
	// holds the sender back, and with eight sinks 256 left the sender
	// waiting for the last of them most of the time, where one window
	// shared by all let a sink fall 2,048 behind).
	Window, SinkWindow int
	// DirectoryInterval of both daemons.
	DirectoryInterval time.Duration
	// ProfileDir, when set, receives CPU profiles of the Veloce ping-pongs
	// at ProfileSizes: streams-veloce-rtt-64.pprof, ..., and with polling
	// sessions streams-veloce-poll-rtt-64.pprof, ...
	ProfileDir   string
	ProfileSizes []int
	// NoLocal skips the ping-pong with both applications on one daemon
	// (at the first size): the host transport alone, no datapath.
	NoLocal bool
	// Log receives progress lines.
	Log io.Writer
}

func (c *Config) defaults() {
	if c.Sizes == nil {
		c.Sizes = []int{64, 256, 1024, 1400}
	}
	if c.SinkCounts == nil {
		c.SinkCounts = []int{1, 8}
	}
	if c.SinkSize == 0 {
		c.SinkSize = 64
	}
	if c.SinkRounds <= 0 {
		c.SinkRounds = 1
	}
	if c.RoundTrips <= 0 {
		c.RoundTrips = 20000
	}
	if c.Warmup < 0 {
		c.Warmup = 0
	}
	if c.MaxRTTTime <= 0 {
		c.MaxRTTTime = 5 * time.Second
	}
	if c.Warm <= 0 {
		c.Warm = 250 * time.Millisecond
	}
	if c.Duration <= 0 {
		c.Duration = 2 * time.Second
	}
	if c.Window <= 0 {
		c.Window = 256
	}
	if c.SinkWindow <= 0 {
		c.SinkWindow = 512
	}
	if c.DirectoryInterval <= 0 {
		c.DirectoryInterval = 50 * time.Millisecond
	}
	if c.ProfileSizes == nil {
		c.ProfileSizes = []int{64}
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
}

// Result is one message size.
type Result struct {
	Size      int     `json:"size"`
	RawRTT    Latency `json:"raw_rtt"`
	VeloceRTT Latency `json:"veloce_rtt"`
	// OverheadUS is the median RTT of Veloce minus raw UDP's.
	OverheadUS float64 `json:"overhead_us"`
	// PollRTT is VeloceRTT with polling sessions (StreamOptions.Poll),
	// PollOverheadUS its median minus raw UDP's.
	PollRTT        Latency    `json:"veloce_poll_rtt"`
	PollOverheadUS float64    `json:"poll_overhead_us"`
	RawTput        Throughput `json:"raw_throughput"`
	VeloceTput     Throughput `json:"veloce_throughput"`
	// Ratio is Veloce's throughput over raw UDP's.
	Ratio       float64     `json:"ratio"`
	VeloceDrops VeloceDrops `json:"veloce_drops"`
	Profile     string      `json:"veloce_rtt_profile,omitempty"`
	PollProfile string      `json:"veloce_poll_rtt_profile,omitempty"`
}

// SinkResult is one sinks row: Veloce throughput with Sinks sinks on B.
type SinkResult struct {
	Sinks int         `json:"sinks"`
	Size  int         `json:"size"`
	Tput  Throughput  `json:"veloce_throughput"`
	Drops VeloceDrops `json:"veloce_drops"`
	// RawMmsgs is the raw UDP reference at Size (one receiver), and
	// Ratio the per-sink rate over it.
	RawMmsgs float64 `json:"raw_mmsgs"`
	Ratio    float64 `json:"ratio"`
	// VsOne is the per-sink rate over one sink's (0 without a row for
	// one sink): the figure. Tput is the best of Rounds (each
	// round's per-sink Mmsg/s).
	VsOne  float64   `json:"vs_one_sink"`
	Rounds []float64 `json:"rounds_mmsgs"`
}

// LocalResult is the Veloce ping-pong with both applications on daemon A:
// unix sockets and one daemon, no datapath, no veth.
type LocalResult struct {
	Size    int     `json:"size"`
	RTT     Latency `json:"veloce_rtt"`
	PollRTT Latency `json:"veloce_poll_rtt"`
}

// Report is the whole run.
type Report struct {
	Benchmark   string       `json:"benchmark"`
	LoadAverage string       `json:"load_average"`
	CPUs        int          `json:"cpus"`
	RoundTrips  int          `json:"round_trips"`
	Window      int          `json:"window"`
	SinkWindow  int          `json:"sink_window"`
	Seconds     float64      `json:"duration_seconds"`
	Results     []Result     `json:"results"`
	Sinks       []SinkResult `json:"sinks"`
	Local       *LocalResult `json:"one_daemon,omitempty"`
	TotalSecs   float64      `json:"total_seconds"`
}

type bench struct {
	cfg Config
	h   *hosts
}

// Run measures everything; on error it returns what it has so far.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.defaults()
	start := time.Now()
	rep := &Report{Benchmark: "streams", CPUs: runtime.NumCPU(), RoundTrips: cfg.RoundTrips, Window: cfg.Window, SinkWindow: cfg.SinkWindow, Seconds: cfg.Duration.Seconds()}
	if cfg.ProfileDir != "" {
		if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
			return rep, err
		}
	}
	h, err := newHosts()
	if err != nil {
		return rep, err
	}
	defer h.close()
	dir, err := os.MkdirTemp("", "veloce-bench-streams-")
	if err != nil {
		return rep, err
	}
	defer os.RemoveAll(dir)
	b := &bench{cfg: cfg, h: h}
	ds, err := b.startDaemons(ctx, dir)
	if err != nil {
		return rep, err
	}
	defer ds.stop()
	log := cfg.Log
	raw := map[int]float64{}
	for _, size := range cfg.Sizes {
		r := Result{Size: size}
		fmt.Fprintf(log, "%4d B: raw rtt", size)
		if r.RawRTT, err = b.rawRTT(ctx, size); err != nil {
			return rep, fmt.Errorf("raw rtt %d B: %w", size, err)
		}
		fmt.Fprintf(log, " %.1f µs, veloce rtt", r.RawRTT.MedianUS)
		profile := ""
		if cfg.ProfileDir != "" && contains(cfg.ProfileSizes, size) {
			profile = filepath.Join(cfg.ProfileDir, fmt.Sprintf("streams-veloce-rtt-%d.pprof", size))
		}
		if r.VeloceRTT, err = b.veloceRTT(ctx, ds.sockA, ds.sockB, size, false, profile); err != nil {
			return rep, fmt.Errorf("veloce rtt %d B: %w", size, err)
		}
		r.Profile = profile
		r.OverheadUS = benchutil.Round2(r.VeloceRTT.MedianUS - r.RawRTT.MedianUS)
		fmt.Fprintf(log, " %.1f µs, polling", r.VeloceRTT.MedianUS)
		pollProfile := ""
		if profile != "" {
			pollProfile = filepath.Join(cfg.ProfileDir, fmt.Sprintf("streams-veloce-poll-rtt-%d.pprof", size))
		}
		r.PollProfile = pollProfile
		if r.PollRTT, err = b.veloceRTT(ctx, ds.sockA, ds.sockB, size, true, pollProfile); err != nil {
			return rep, fmt.Errorf("veloce rtt with polling sessions %d B: %w", size, err)
		}
		r.PollOverheadUS = benchutil.Round2(r.PollRTT.MedianUS - r.RawRTT.MedianUS)
		fmt.Fprintf(log, " %.1f µs; raw tput", r.PollRTT.MedianUS)
		if r.RawTput, err = b.rawThroughput(ctx, size); err != nil {
			return rep, fmt.Errorf("raw throughput %d B: %w", size, err)
		}
		fmt.Fprintf(log, " %.3f Mmsg/s, veloce tput", r.RawTput.Mmsgs)
		if r.VeloceTput, r.VeloceDrops, err = b.veloceThroughput(ctx, ds, size, 1, b.cfg.Window, ""); err != nil {
			return rep, fmt.Errorf("veloce throughput %d B: %w", size, err)
		}
		fmt.Fprintf(log, " %.3f Mmsg/s\n", r.VeloceTput.Mmsgs)
		if r.RawTput.Mmsgs > 0 {
			r.Ratio = benchutil.Round2(r.VeloceTput.Mmsgs / r.RawTput.Mmsgs)
		}
		raw[size] = r.RawTput.Mmsgs
		rep.Results = append(rep.Results, r)
	}
	if !cfg.NoLocal && len(cfg.Sizes) > 0 {
		size := cfg.Sizes[0]
		fmt.Fprintf(log, "%4d B: veloce rtt, both applications on daemon A", size)
		l, err := b.veloceRTT(ctx, ds.sockA, ds.sockA, size, false, "")
		if err != nil {
			return rep, fmt.Errorf("veloce rtt on one daemon, %d B: %w", size, err)
		}
		lp, err := b.veloceRTT(ctx, ds.sockA, ds.sockA, size, true, "")
		if err != nil {
			return rep, fmt.Errorf("veloce rtt on one daemon with polling sessions, %d B: %w", size, err)
		}
		fmt.Fprintf(log, " %.1f µs, polling %.1f µs\n", l.MedianUS, lp.MedianUS)
		rep.Local = &LocalResult{Size: size, RTT: l, PollRTT: lp}
	}
	if err := b.sinkRows(ctx, ds, raw, rep); err != nil {
		return rep, err
	}
	rep.TotalSecs = benchutil.Round2(time.Since(start).Seconds())
	rep.LoadAverage = loadAverage()
	return rep, nil
}

// sinkRows measures the sinks rows: SinkRounds rounds, each going
// through every sink count in turn (so that a count's rounds are spread
// over the run, not bunched where the machine happened to be busy), and
// keeps each count's best round. VsOne compares the best per-sink rates.
func (b *bench) sinkRows(ctx context.Context, ds *daemons, raw map[int]float64, rep *Report) error {
	cfg, log := b.cfg, b.cfg.Log
	if len(cfg.SinkCounts) == 0 {
		return nil
	}
	if _, ok := raw[cfg.SinkSize]; !ok {
		th, err := b.rawThroughput(ctx, cfg.SinkSize)
		if err != nil {
			return fmt.Errorf("raw throughput %d B: %w", cfg.SinkSize, err)
		}
		raw[cfg.SinkSize] = th.Mmsgs
	}
	rows := make([]SinkResult, len(cfg.SinkCounts))
	for round := range cfg.SinkRounds {
		for i, n := range cfg.SinkCounts {
			fmt.Fprintf(log, "round %d, %d sink(s), %d B: veloce tput", round+1, n, cfg.SinkSize)
			profile := ""
			if cfg.ProfileDir != "" && round == 0 {
				profile = filepath.Join(cfg.ProfileDir, fmt.Sprintf("streams-veloce-sinks-%d.pprof", n))
			}
			th, drops, err := b.veloceThroughput(ctx, ds, cfg.SinkSize, n, cfg.SinkWindow, profile)
			if err != nil {
				return fmt.Errorf("veloce throughput, %d sinks: %w", n, err)
			}
			fmt.Fprintf(log, " %.3f Mmsg/s per sink, %.3f deliveries, lost %d\n", th.Mmsgs, th.DeliveriesMmsgs, th.Lost)
			r := &rows[i]
			r.Rounds = append(r.Rounds, th.Mmsgs)
			if round == 0 || th.Mmsgs > r.Tput.Mmsgs {
				r.Tput, r.Drops = th, drops
			}
		}
	}
	var one float64
	for i, n := range cfg.SinkCounts {
		r := &rows[i]
		r.Sinks, r.Size, r.RawMmsgs = n, cfg.SinkSize, raw[cfg.SinkSize]
		if r.RawMmsgs > 0 {
			r.Ratio = benchutil.Round2(r.Tput.Mmsgs / r.RawMmsgs)
		}
		if n == 1 {
			one = r.Tput.Mmsgs
		}
	}
	for i := range rows {
		if one > 0 {
			rows[i].VsOne = benchutil.Round2(rows[i].Tput.Mmsgs / one)
		}
	}
	rep.Sinks = append(rep.Sinks, rows...)
	return nil
}

func contains(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// WriteTable prints the report's tables.
func WriteTable(w io.Writer, rep *Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "SIZE\tRAW RTT µs\t(p99)\tVELOCE RTT µs\t(p99)\tOVERHEAD µs\tPOLLING RTT µs\t(p99)\tOVERHEAD µs\tRAW Mmsg/s\tVELOCE Mmsg/s\tRATIO\tLOST raw/veloce\t")
	for _, r := range rep.Results {
		fmt.Fprintf(tw, "%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.3f\t%.3f\t%.2f\t%d/%d\t\n", r.Size, r.RawRTT.MedianUS, r.RawRTT.P99US,
			r.VeloceRTT.MedianUS, r.VeloceRTT.P99US, r.OverheadUS, r.PollRTT.MedianUS, r.PollRTT.P99US, r.PollOverheadUS,
			r.RawTput.Mmsgs, r.VeloceTput.Mmsgs, r.Ratio, r.RawTput.Lost, r.VeloceTput.Lost)
	}
	for _, s := range rep.Sinks {
		fmt.Fprintf(tw, "%d, %d sink%s\t-\t-\t-\t-\t-\t-\t-\t-\t%.3f\t%.3f\t%.2f\t-/%d\t\n", s.Size, s.Sinks, plural(s.Sinks), s.RawMmsgs, s.Tput.Mmsgs, s.Ratio, s.Tput.Lost)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if l := rep.Local; l != nil {
		fmt.Fprintf(w, "Veloce RTT with both applications on one daemon (host transport only, no datapath), %d B: %.1f µs (p99 %.1f); polling sessions %.1f µs (p99 %.1f)\n",
			l.Size, l.RTT.MedianUS, l.RTT.P99US, l.PollRTT.MedianUS, l.PollRTT.P99US)
	}
	if len(rep.Sinks) > 0 {
		fmt.Fprintln(w, "Sinks rows: Veloce Mmsg/s is per sink (each in its own session); all deliveries:")
		for _, s := range rep.Sinks {
			fmt.Fprintf(w, "  %d sink%s: %.3f M deliveries/s, lost %d (guestlib queue %d, daemon: no RX slot %d, A refused %d, malformed %d), %d stalls, %d wake-ups, %.2f µs CPU per message",
				s.Sinks, plural(s.Sinks), s.Tput.DeliveriesMmsgs, s.Tput.Lost, s.Drops.Guestlib, s.Drops.DaemonSink, s.Drops.SourceFull, s.Drops.Malformed, s.Tput.Stalls, s.Drops.Wakeups, s.Drops.CPUPerMessageUS)
			if s.VsOne > 0 {
				fmt.Fprintf(w, "; per sink %.2f of one sink's", s.VsOne)
			}
			if len(s.Rounds) > 1 {
				fmt.Fprintf(w, " (best of %d rounds: %s Mmsg/s)", len(s.Rounds), joinRates(s.Rounds))
			}
			fmt.Fprintln(w)
		}
	}
	return nil
}

func joinRates(rs []float64) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = fmt.Sprintf("%.3f", r)
	}
	return strings.Join(parts, ", ")
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// WriteJSON prints the report as JSON.
func WriteJSON(w io.Writer, rep *Report) error { return benchutil.WriteJSON(w, rep) }

func loadAverage() string { return benchvhost.LoadAverage() }

const usage = `usage: veloce-bench streams [--sizes 64,256,1024,1400] [--sinks 1,8] [--sink-size 64] [--sink-rounds 1]
                            [--round-trips 20000] [--warmup 2000] [--duration 2s] [--window 256] [--sink-window 512]
                            [--cpuprofile DIR] [--profile-sizes 64] [--no-local] [-o table|json] [-q]

Raw UDP vs Veloce (two in-process daemons, guestlib host applications)
between two network namespaces joined by a veth: ping-pong RTT and
one-way throughput per message size, and throughput with N sinks
(--sizes "": the sinks rows only). With --cpuprofile, the first round
of each sinks row is profiled too. Needs root.
`

// Main is the streams subcommand of veloce-bench.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("veloce-bench streams", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	sizes := fs.String("sizes", "64,256,1024,1400", "message sizes in bytes, comma-separated")
	sinks := fs.String("sinks", "1,8", "sink counts of the sinks rows (empty: none)")
	sinkSize := fs.Int("sink-size", 64, "message size of the sinks rows")
	sinkRounds := fs.Int("sink-rounds", 1, "rounds of the sinks rows, alternating the counts (best kept)")
	rtts := fs.Int("round-trips", 20000, "timed round trips per ping-pong")
	warmup := fs.Int("warmup", 2000, "untimed round trips first")
	maxRTT := fs.Duration("max-rtt-time", 5*time.Second, "time limit of one ping-pong's timed round trips")
	dur := fs.Duration("duration", 2*time.Second, "measured window of a throughput run (after 250 ms of warm-up)")
	window := fs.Int("window", 256, "flow control: most messages per sink in flight")
	sinkWindow := fs.Int("sink-window", 512, "the same for the sinks rows")
	profileDir := fs.String("cpuprofile", "", "write CPU profiles of the Veloce ping-pong to this directory")
	profileSizes := fs.String("profile-sizes", "64", "message sizes to profile (with --cpuprofile)")
	output := fs.String("o", "table", "output format: table or json")
	quiet := fs.Bool("q", false, "no progress lines on stderr")
	noLocal := fs.Bool("no-local", false, "skip the ping-pong with both applications on one daemon")
	if err := benchutil.ParseArgs(fs, args, output); err != nil {
		return err
	}
	cfg := Config{RoundTrips: *rtts, Warmup: *warmup, MaxRTTTime: *maxRTT, Duration: *dur, Window: *window, SinkWindow: *sinkWindow,
		ProfileDir: *profileDir, SinkSize: *sinkSize, SinkRounds: *sinkRounds, NoLocal: *noLocal, Log: stderr}
	if *quiet {
		cfg.Log = io.Discard
	}
	var err error
	if strings.TrimSpace(*sizes) == "" {
		cfg.Sizes = []int{} // the sinks rows only
	} else if cfg.Sizes, err = ParseSizes(*sizes); err != nil {
		return err
	}
	if cfg.ProfileSizes, err = ParseSizes(*profileSizes); err != nil {
		return err
	}
	if cfg.SinkCounts, err = ParseCounts(*sinks); err != nil {
		return err
	}
	if cfg.SinkCounts == nil {
		cfg.SinkCounts = []int{}
	}
	if *sinkRounds < 1 {
		return errors.New("--sink-rounds must be at least 1")
	}
	if *sinkSize < 8 || *sinkSize > MaxSize {
		return fmt.Errorf("--sink-size %d: want 8 to %d", *sinkSize, MaxSize)
	}
	if *rtts < 1 || *warmup < 0 || *window < 1 || *sinkWindow < 1 || *dur <= 0 || *maxRTT <= 0 {
		return errors.New("--round-trips, --window, --duration and --max-rtt-time must be positive, --warmup at least 0")
	}
	rep, err := Run(ctx, cfg)
	table := func(w io.Writer) error { return WriteTable(w, rep) }
	if done, err := benchutil.Written(stdout, *output, rep, len(rep.Results)+len(rep.Sinks) > 0, err, table); done {
		return err
	}
	fmt.Fprintf(stdout, "streams: raw UDP vs Veloce (guestlib host apps, two daemons, kernel-UDP datapath), two netns joined by a veth\n"+
		"(RTT: median (p99) of %d round trips; throughput: receiver-counted over %v, window %d per sink, %d in the sinks rows; lost after drain)\n", cfg.RoundTrips, cfg.Duration, cfg.Window, cfg.SinkWindow)
	if err := WriteTable(stdout, rep); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Load average at the end %s on %d CPUs; whole run %.1f s.\n", rep.LoadAverage, rep.CPUs, rep.TotalSecs)
	for _, r := range rep.Results {
		if r.Profile != "" {
			fmt.Fprintf(stdout, "CPU profile of the Veloce ping-pong, %d B: %s (go tool pprof -top %s)\n", r.Size, r.Profile, r.Profile)
		}
		if r.PollProfile != "" {
			fmt.Fprintf(stdout, "CPU profile of the polling ping-pong, %d B: %s\n", r.Size, r.PollProfile)
		}
	}
	return nil
}
