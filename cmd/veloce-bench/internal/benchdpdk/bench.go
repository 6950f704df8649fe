// Package benchdpdk measures Veloce on its DPDK datapath against a raw
// DPDK application and against Veloce on kernel UDP, over one veth link
// between two network namespaces, in one run (veloce-bench dpdk).
//
// The link is a veth pair (MTU LinkMTU) between namespaces a and b. Three
// paths use it in turn, one at a time, for each message size:
//
//   - (a) raw DPDK: a net_af_packet port (framecnt=8192) on each veth end,
//     both in this process (one EAL, plugins/dpdk.DefaultEAL). A pinger
//     on A and an echoer on B, each busy-polling on its own locked OS
//     thread, pinned to its core and registered with the EAL. Frames are
//     Ethernet/IPv4/UDP built and parsed with internal/netstack, as the
//     plugin does: the reference for what DPDK on this link can do.
//   - (b) Veloce on DPDK: two daemons (backend.Daemon, as veloced runs
//     it), each with a plugins/dpdk Plugin on its veth end (the same
//     link; polling threads pinned to the same two cores) and an app
//     socket. The applications are host applications like veloce-perf:
//     guestlib sessions over the host transport (unix socket, messages in
//     shared-memory slots) whose streams ask for acceleration, their
//     sinks' callbacks on the session's receive goroutine. So (b) is
//     application to application over DPDK, what a user gets.
//   - (c) Veloce on kernel UDP: the same two daemons and applications with
//     plugins/udp on kernel addresses of the same veth ends (permanent
//     neighbour entries).
//
// Ping-pong: A emits a message on channel 1 (raw: sends a datagram), B
// sends it back on channel 2, A takes it and sends the next; each round
// trip is a sample, after a warm-up, for at most MaxRTTTime. Veloce's
// round trips are also split into four legs on the clock the daemons and
// applications share (Legs): the application's Emit until its daemon's
// datapath's SendBatch is called (by the DPDK polling thread's flush; by
// UDP's sender goroutine), and from there until the other application's
// sink callback runs, each way. Throughput:
// A sends as fast as a window of N messages in flight allows (sent, not
// yet counted by B: in-process credit, the same for every path); the rate
// is what B counted after Warm, the median of its rates over SubWindow
// slices of Duration.
//
// Everything shares one machine: on two cores, the two busy-polling
// threads own one core each, and whatever else runs (the daemons' and
// applications' goroutines, the kernel's UDP work, other load) preempts
// them. The
// three paths run back to back at each size, so their ratios are the
// figures to compare; absolute numbers depend on the machine and its
// load.
package benchdpdk

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchvhost"
	"github.com/veloce-io/veloce/internal/dpdk"
	dpdkplug "github.com/veloce-io/veloce/plugins/dpdk"
)

// Config configures a run; zero fields take the defaults (but see CPUA).
type Config struct {
	// Sizes are the message sizes in bytes (MinSize to MaxSize); default
	// 64, 256, 512, 1024, 1400.
	Sizes []int
	// RoundTrips are timed per ping-pong, after Warmup untimed ones, for
	// at most MaxRTTTime; default 5000, 500, 2 s.
	RoundTrips, Warmup int
	MaxRTTTime         time.Duration
	// Windows are the throughput windows (messages in flight); default 32
	// and 256.
	Windows []int
	// Warm and Duration: each throughput run's warm-up and measured
	// window; default 100 ms and 500 ms.
	Warm, Duration time.Duration
	// CPUA and CPUB are the cores of A's and B's busy-polling threads
	// (the raw pinger and echoer, the plugins' polling threads); -1
	// leaves a thread unpinned. Zero is CPU 0 here; Main's default is 0
	// and 1.
	CPUA, CPUB int
	// GOMAXPROCS for the run; 0: twice the CPUs, as two daemons (each
	// with GOMAXPROCS = CPUs, one P taken by its polling thread) would
	// have between them. The previous value is restored afterwards.
	GOMAXPROCS int
	// SpinIdle and MaxSleep of the DPDK plugins; 0: the plugin's defaults.
	SpinIdle, MaxSleep time.Duration
	// Poll: the applications use polling sessions (StreamOptions.Poll).
	Poll bool
	// Paths are the paths to measure, of PathRaw, PathDPDK and PathUDP;
	// default all three.
	Paths []string
	// ProfileDir, when set, receives a CPU profile of (b)'s ping-pong at
	// each of ProfileSizes (default 64): dpdk-veloce-rtt-64.pprof, ...
	ProfileDir   string
	ProfileSizes []int
	// Log receives progress lines (nil: none).
	Log io.Writer
}

func (c *Config) defaults() {
	if len(c.Sizes) == 0 {
		c.Sizes = []int{64, 256, 512, 1024, 1400}
	}
	if c.RoundTrips <= 0 {
		c.RoundTrips = 5000
	}
	c.Warmup = max(c.Warmup, 0)
	if c.MaxRTTTime <= 0 {
		c.MaxRTTTime = 2 * time.Second
	}
	if len(c.Windows) == 0 {
		c.Windows = []int{32, 256}
	}
	if c.Warm <= 0 {
		c.Warm = 100 * time.Millisecond
	}
	if c.Duration <= 0 {
		c.Duration = 500 * time.Millisecond
	}
	if c.GOMAXPROCS <= 0 {
		c.GOMAXPROCS = 2 * runtime.NumCPU()
	}
	if len(c.Paths) == 0 {
		c.Paths = []string{PathRaw, PathDPDK, PathUDP}
	}
	if c.ProfileSizes == nil {
		c.ProfileSizes = []int{64}
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
}

// The paths' names (--paths).
const (
	PathRaw  = "raw"  // (a) raw DPDK
	PathDPDK = "dpdk" // (b) Veloce on DPDK
	PathUDP  = "udp"  // (c) Veloce on kernel UDP
)

// Path is one path's measurements at one size.
type Path struct {
	RTT Latency `json:"rtt"`
	// Legs split Veloce's round trips (nil for raw DPDK).
	Legs *Legs `json:"rtt_legs,omitempty"`
	// Throughput has one entry per window, in Config.Windows' order.
	Throughput []Throughput `json:"throughput"`
}

// Result is one message size.
type Result struct {
	Size       int  `json:"size"`
	RawDPDK    Path `json:"raw_dpdk"`
	VeloceDPDK Path `json:"veloce_dpdk"`
	VeloceUDP  Path `json:"veloce_udp"`
	// OverheadUS is (b)'s median RTT minus (a)'s.
	OverheadUS float64 `json:"overhead_us"`
	// RatioDPDKRaw and RatioDPDKUDP are (b)'s throughput over (a)'s and
	// over (c)'s, per window.
	RatioDPDKRaw []float64 `json:"tput_ratio_veloce_dpdk_over_raw,omitempty"`
	RatioDPDKUDP []float64 `json:"tput_ratio_veloce_dpdk_over_udp,omitempty"`
	// PollerSleeps are the times A's and B's DPDK polling threads slept
	// (idle policy: Options.SpinIdle, MaxSleep) during (b)'s ping-pong.
	PollerSleeps [2]uint64 `json:"veloce_dpdk_rtt_poller_sleeps"`
	// Profile is the CPU profile of (b)'s ping-pong, if taken.
	Profile string `json:"veloce_dpdk_rtt_profile,omitempty"`
}

// Report is the whole run.
type Report struct {
	Benchmark   string   `json:"benchmark"`
	Notes       []string `json:"notes"`
	CPUs        int      `json:"cpus"`
	GOMAXPROCS  int      `json:"gomaxprocs"`
	Poll        bool     `json:"polling_sessions"`
	CPUA        int      `json:"cpu_a"`
	CPUB        int      `json:"cpu_b"`
	RoundTrips  int      `json:"round_trips"`
	Warmup      int      `json:"warmup"`
	Windows     []int    `json:"windows"`
	Seconds     float64  `json:"duration_seconds"`
	MTU         int      `json:"mtu"`
	Results     []Result `json:"results"`
	LoadBefore  string   `json:"load_average_before"`
	LoadAfter   string   `json:"load_average_after"`
	TotalSecs   float64  `json:"total_seconds"`
	Paths       []string `json:"paths"`
	PluginSpin  string   `json:"dpdk_spin_idle"`
	PluginSleep string   `json:"dpdk_max_sleep"`
}

var notes = []string{
	"one veth pair between two network namespaces; the three paths use it in turn at each size",
	"(a) raw DPDK: net_af_packet ports (framecnt=8192), busy-polling pinger and echoer on their own pinned, EAL-registered threads, frames built and parsed by internal/netstack",
	"(b) Veloce on DPDK: two daemons with plugins/dpdk on the same veth ends, polling threads pinned to the same cores; applications are guestlib host-transport sessions (unix socket, shared-memory slots), sink callbacks on their receive goroutines: application to application",
	"(c) Veloce on kernel UDP: the same two daemons and applications with plugins/udp on kernel addresses of the same veth ends",
	"net_af_packet is a kernel socket: each TxBurst is a sendto(2), and the veth delivers the frame into the peer's ring in softirq on the sender's core; DPDK here saves wake-ups (busy polling), not the kernel",
	"legs of (b) and (c): the SendBatch stamp is a wrapper around the plugin (one wire.Parse and clock read per batch)",
	"RTT: one message in flight, from before the send to after the echo is parsed; throughput: receiver-counted, sender limited to a window of messages in flight (in-process credit)",
}

// Run measures everything; on error it returns what it has so far.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.defaults()
	start := time.Now()
	rep := &Report{Benchmark: "dpdk", Notes: notes, CPUs: runtime.NumCPU(), GOMAXPROCS: cfg.GOMAXPROCS, Poll: cfg.Poll, CPUA: cfg.CPUA, CPUB: cfg.CPUB,
		RoundTrips: cfg.RoundTrips, Warmup: cfg.Warmup, Windows: cfg.Windows, Seconds: cfg.Duration.Seconds(), MTU: LinkMTU,
		LoadBefore: loadAverage(), Paths: cfg.Paths, PluginSpin: orDefault(cfg.SpinIdle, dpdkplug.DefaultSpinIdle),
		PluginSleep: orDefault(cfg.MaxSleep, dpdkplug.DefaultMaxSleep)}
	defer func() {
		rep.TotalSecs = benchutil.Round2(time.Since(start).Seconds())
		rep.LoadAfter = loadAverage()
	}()
	if !dpdk.Available() {
		return rep, errNoDPDK
	}
	for _, s := range cfg.Sizes {
		if s < MinSize || s > MaxSize {
			return rep, fmt.Errorf("message size %d: want %d to %d", s, MinSize, MaxSize)
		}
	}
	for _, c := range []int{cfg.CPUA, cfg.CPUB} {
		if c >= runtime.NumCPU() {
			return rep, fmt.Errorf("CPU %d: this machine has %d", c, runtime.NumCPU())
		}
	}
	if cfg.ProfileDir != "" {
		if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
			return rep, err
		}
	}
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		return rep, err
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(cfg.GOMAXPROCS))
	h, err := newHosts()
	if err != nil {
		return rep, err
	}
	defer h.close()
	if err := dpdk.Init(dpdkplug.DefaultEAL); err != nil {
		return rep, fmt.Errorf("EAL (%s): %w", strings.Join(dpdkplug.DefaultEAL, " "), err)
	}
	log := cfg.Log
	has := func(p string) bool { return slices.Contains(cfg.Paths, p) }
	for _, size := range cfg.Sizes {
		r := Result{Size: size}
		fmt.Fprintf(log, "%4d B:", size)
		sep := " "
		if has(PathRaw) {
			fmt.Fprintf(log, " (a) raw DPDK")
			sep = "; "
			if err := measureRaw(ctx, &cfg, h, size, &r.RawDPDK, log); err != nil {
				fmt.Fprintln(log)
				return rep, fmt.Errorf("raw DPDK, %d B: %w", size, err)
			}
		}
		if has(PathDPDK) {
			fmt.Fprintf(log, "%s(b) Veloce DPDK", sep)
			sep = "; "
			if cfg.ProfileDir != "" && slices.Contains(cfg.ProfileSizes, size) {
				r.Profile = filepath.Join(cfg.ProfileDir, fmt.Sprintf("dpdk-veloce-rtt-%d.pprof", size))
			}
			err := measureVeloce(ctx, &cfg, h, PathDPDK, size, &r.VeloceDPDK, &r.PollerSleeps, r.Profile, log)
			if uerr := benchutil.SetAllThreads(&all); err == nil {
				err = uerr
			}
			if err != nil {
				fmt.Fprintln(log)
				return rep, fmt.Errorf("Veloce on DPDK, %d B: %w", size, err)
			}
		}
		if has(PathUDP) {
			fmt.Fprintf(log, "%s(c) Veloce UDP", sep)
			if err := measureVeloce(ctx, &cfg, h, PathUDP, size, &r.VeloceUDP, nil, "", log); err != nil {
				fmt.Fprintln(log)
				return rep, fmt.Errorf("Veloce on kernel UDP, %d B: %w", size, err)
			}
		}
		fmt.Fprintln(log)
		if has(PathRaw) && has(PathDPDK) {
			r.OverheadUS = benchutil.Round2(r.VeloceDPDK.RTT.MedianUS - r.RawDPDK.RTT.MedianUS)
		}
		for i := range cfg.Windows {
			if has(PathRaw) && has(PathDPDK) {
				r.RatioDPDKRaw = append(r.RatioDPDKRaw, ratio(r.VeloceDPDK.Throughput[i].Mmsgs, r.RawDPDK.Throughput[i].Mmsgs))
			}
			if has(PathUDP) && has(PathDPDK) {
				r.RatioDPDKUDP = append(r.RatioDPDKUDP, ratio(r.VeloceDPDK.Throughput[i].Mmsgs, r.VeloceUDP.Throughput[i].Mmsgs))
			}
		}
		rep.Results = append(rep.Results, r)
	}
	return rep, nil
}

func measureRaw(ctx context.Context, cfg *Config, h *hosts, size int, out *Path, log io.Writer) (err error) {
	rp, err := openRawPair(h, cfg.CPUA, cfg.CPUB)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, rp.close()) }()
	if out.RTT, err = rp.rtt(ctx, size, cfg.Warmup, cfg.RoundTrips, cfg.MaxRTTTime); err != nil {
		return err
	}
	fmt.Fprintf(log, " rtt %.1f µs", out.RTT.MedianUS)
	return measureThroughput(ctx, cfg, size, out, log, rp.throughput)
}

func measureVeloce(ctx context.Context, cfg *Config, h *hosts, kind string, size int, out *Path, sleeps *[2]uint64, profile string, log io.Writer) (err error) {
	r, err := startRig(ctx, h, rigOptions{kind: kind, cpuA: cfg.CPUA, cpuB: cfg.CPUB, directoryInterval: 50 * time.Millisecond,
		spinIdle: cfg.SpinIdle, maxSleep: cfg.MaxSleep, poll: cfg.Poll})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, r.stop()) }()
	a0, b0 := r.dpdkStats()
	if out.RTT, out.Legs, err = r.rtt(ctx, size, cfg.Warmup, cfg.RoundTrips, cfg.MaxRTTTime, profile); err != nil {
		return err
	}
	if sleeps != nil {
		a1, b1 := r.dpdkStats()
		*sleeps = [2]uint64{a1.Sleeps - a0.Sleeps, b1.Sleeps - b0.Sleeps}
	}
	fmt.Fprintf(log, " rtt %.1f µs", out.RTT.MedianUS)
	return measureThroughput(ctx, cfg, size, out, log, r.throughput)
}

// measureThroughput runs throughput at size for each of cfg.Windows and
// appends the results to out.Throughput.
func measureThroughput(ctx context.Context, cfg *Config, size int, out *Path, log io.Writer,
	throughput func(ctx context.Context, size, window int, warm, dur time.Duration) (Throughput, error)) error {
	for _, w := range cfg.Windows {
		th, err := throughput(ctx, size, w, cfg.Warm, cfg.Duration)
		if err != nil {
			return err
		}
		th.Window = w
		out.Throughput = append(out.Throughput, th)
		fmt.Fprintf(log, ", w%d %.3f Mmsg/s", w, th.Mmsgs)
	}
	return nil
}

func ratio(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return benchutil.Round2(a / b)
}

func orDefault(d, def time.Duration) string {
	if d <= 0 {
		d = def
	}
	return d.String()
}

// loadAverage is /proc/loadavg's first three fields.
func loadAverage() string { return benchvhost.LoadAverage() }

// WriteTable prints the report's tables (RTT, its legs, throughput) and
// notes. A path not measured shows as "-".
func WriteTable(w io.Writer, rep *Report) error {
	has := func(p string) bool { return slices.Contains(rep.Paths, p) }
	ra, rb, rc := has(PathRaw), has(PathDPDK), has(PathUDP)
	fmt.Fprintf(w, "dpdk: (a) raw DPDK, (b) Veloce on DPDK, (c) Veloce on kernel UDP: ping-pong and one-way throughput\n")
	fmt.Fprintf(w, "over one veth (MTU %d) between two network namespaces; pollers on CPUs %d and %d, GOMAXPROCS %d of %d CPUs\n",
		rep.MTU, rep.CPUA, rep.CPUB, rep.GOMAXPROCS, rep.CPUs)
	if rep.Poll {
		fmt.Fprintln(w, "applications of (b) and (c) use polling sessions (StreamOptions.Poll): no wake-ups between them and their daemons")
	}
	fmt.Fprintf(w, "\nRTT µs: median and p99 of up to %d round trips after %d warm-up (one message in flight)\n", rep.RoundTrips, rep.Warmup)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "SIZE\t(a) RAW\tp99\t(b) VELOCE DPDK\tp99\t(c) VELOCE UDP\tp99\t(b)-(a)\tLOST a/b/c\t")
	for _, r := range rep.Results {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s/%s/%s\t\n", r.Size,
			opt(ra, "%.1f", r.RawDPDK.RTT.MedianUS), opt(ra, "%.1f", r.RawDPDK.RTT.P99US),
			opt(rb, "%.1f", r.VeloceDPDK.RTT.MedianUS), opt(rb, "%.1f", r.VeloceDPDK.RTT.P99US),
			opt(rc, "%.1f", r.VeloceUDP.RTT.MedianUS), opt(rc, "%.1f", r.VeloceUDP.RTT.P99US),
			opt(ra && rb, "%.1f", r.OverheadUS),
			opt(ra, "%d", r.RawDPDK.RTT.Lost), opt(rb, "%d", r.VeloceDPDK.RTT.Lost), opt(rc, "%d", r.VeloceUDP.RTT.Lost))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if rb || rc {
		fmt.Fprintf(w, "\nVeloce round trips in legs, median µs (p99), on the clock daemons and applications share: EMIT->SEND is an\n"+
			"application's Emit until its daemon's datapath's SendBatch (host transport, runtime queue; DPDK: the polling thread's\n"+
			"flush; UDP: the sender goroutine's wake-up); SEND->SINK from there until the other application's sink callback runs\n"+
			"(frame, send, veth, receive loop, parse, deliver into its RX slot, its receive goroutine)\n")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "SIZE\tPATH\tEMIT->SEND A\tSEND A->SINK B\tEMIT->SEND B\tSEND B->SINK A\tEMIT->SEND SHARE\t")
		for _, r := range rep.Results {
			for _, p := range []struct {
				name string
				l    *Legs
			}{{"(b) dpdk", r.VeloceDPDK.Legs}, {"(c) udp", r.VeloceUDP.Legs}} {
				if p.l == nil {
					continue
				}
				l := p.l
				sum := l.WakeA.MedianUS + l.WireAB.MedianUS + l.WakeB.MedianUS + l.WireBA.MedianUS
				fmt.Fprintf(tw, "%d\t%s\t%.1f (%.0f)\t%.1f (%.0f)\t%.1f (%.0f)\t%.1f (%.0f)\t%.0f%%\t\n", r.Size, p.name,
					l.WakeA.MedianUS, l.WakeA.P99US, l.WireAB.MedianUS, l.WireAB.P99US, l.WakeB.MedianUS, l.WakeB.P99US,
					l.WireBA.MedianUS, l.WireBA.P99US, 100*ratio(l.WakeA.MedianUS+l.WakeB.MedianUS, sum))
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "\nThroughput Mmsg/s: counted by the receiver, median of its rates over %v sub-windows of a %gs run,\n"+
		"sender limited to WINDOW messages in flight\n", SubWindow, rep.Seconds)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "SIZE\tWINDOW\t(a) RAW\t(b) VELOCE DPDK\t(c) VELOCE UDP\t(b)/(a)\t(b)/(c)\t(b) Gbit/s\tLOST a/b/c\t")
	tput := func(ok bool, p *Path, i int) (Throughput, bool) {
		if !ok || i >= len(p.Throughput) {
			return Throughput{}, false
		}
		return p.Throughput[i], true
	}
	at := func(xs []float64, i int) (float64, bool) {
		if i >= len(xs) {
			return 0, false
		}
		return xs[i], true
	}
	for _, r := range rep.Results {
		for i, win := range rep.Windows {
			a, oka := tput(ra, &r.RawDPDK, i)
			b, okb := tput(rb, &r.VeloceDPDK, i)
			c, okc := tput(rc, &r.VeloceUDP, i)
			ba, okba := at(r.RatioDPDKRaw, i)
			bc, okbc := at(r.RatioDPDKUDP, i)
			fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s/%s/%s\t\n", r.Size, win,
				opt(oka, "%.3f", a.Mmsgs), opt(okb, "%.3f", b.Mmsgs), opt(okc, "%.3f", c.Mmsgs),
				opt(okba, "%.2f", ba), opt(okbc, "%.2f", bc), opt(okb, "%.2f", b.Gbps),
				opt(oka, "%d", a.Lost), opt(okb, "%d", b.Lost), opt(okc, "%d", c.Lost))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	for _, n := range rep.Notes {
		fmt.Fprintln(w, "* "+n)
	}
	if rb {
		var sleeps []string
		for _, r := range rep.Results {
			sleeps = append(sleeps, fmt.Sprintf("%d B %d/%d", r.Size, r.PollerSleeps[0], r.PollerSleeps[1]))
		}
		fmt.Fprintf(w, "* (b) polling threads' idle sleeps during the ping-pong, A/B (SpinIdle %s, MaxSleep %s): %s\n",
			rep.PluginSpin, rep.PluginSleep, strings.Join(sleeps, ", "))
	}
	var thin []string
	for _, r := range rep.Results {
		for _, p := range []struct {
			name string
			ok   bool
			l    Latency
		}{{"(a)", ra, r.RawDPDK.RTT}, {"(b)", rb, r.VeloceDPDK.RTT}, {"(c)", rc, r.VeloceUDP.RTT}} {
			if p.ok && p.l.Samples < minSamples(rep.RoundTrips) {
				thin = append(thin, fmt.Sprintf("%s %d B: %d", p.name, r.Size, p.l.Samples))
			}
		}
	}
	if len(thin) > 0 {
		fmt.Fprintf(w, "* CAUTION, ping-pongs with few samples (the cores were taken for seconds): %s\n", strings.Join(thin, ", "))
	}
	fmt.Fprintf(w, "* load average before %s, after %s; whole run %.1f s\n", rep.LoadBefore, rep.LoadAfter, rep.TotalSecs)
	for _, r := range rep.Results {
		if r.Profile != "" {
			fmt.Fprintf(w, "* CPU profile of (b)'s ping-pong, %d B: %s (go tool pprof -top %s)\n", r.Size, r.Profile, r.Profile)
		}
	}
	return nil
}

func opt(ok bool, format string, v any) string {
	if !ok {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

// WriteJSON prints the report as JSON.
func WriteJSON(w io.Writer, rep *Report) error { return benchutil.WriteJSON(w, rep) }

const usage = `usage: veloce-bench dpdk [--sizes 64,256,512,1024,1400] [--windows 32,256]
                         [--round-trips 5000] [--warmup 500] [--max-rtt-time 2s]
                         [--duration 500ms] [--warm 100ms] [--cpus 0,1] [--gomaxprocs N]
                         [--spin-idle D] [--max-sleep D] [--paths raw,dpdk,udp] [--poll]
                         [--cpuprofile DIR] [--profile-sizes 64] [-o table|json] [-v]

Ping-pong RTT and one-way throughput per message size over one veth
between two network namespaces: (a) raw DPDK (net_af_packet, busy-polling
pinger and echoer), (b) Veloce on DPDK (two daemons, plugins/dpdk,
guestlib host applications), (c) Veloce on kernel UDP (the same daemons
and applications, plugins/udp). Needs root and a build with DPDK (make
build).
`

// Main is the dpdk subcommand of veloce-bench.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("veloce-bench dpdk", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	sizes := fs.String("sizes", "64,256,512,1024,1400", "message sizes in bytes, comma-separated")
	windows := fs.String("windows", "32,256", "throughput windows (messages in flight), comma-separated")
	rtts := fs.Int("round-trips", 5000, "timed round trips per ping-pong")
	warmup := fs.Int("warmup", 500, "untimed round trips first")
	maxRTT := fs.Duration("max-rtt-time", 2*time.Second, "time limit of one ping-pong's timed round trips")
	dur := fs.Duration("duration", 500*time.Millisecond, "measured window of a throughput run")
	warm := fs.Duration("warm", 100*time.Millisecond, "warm-up of a throughput run")
	cpus := fs.String("cpus", "0,1", "cores of A's and B's busy-polling threads (-1: unpinned)")
	procs := fs.Int("gomaxprocs", 0, "GOMAXPROCS during the run (0: twice the CPUs, one set per runtime)")
	spin := fs.Duration("spin-idle", 0, "DPDK plugin: spin this long without packets before sleeping (0: plugin default)")
	sleep := fs.Duration("max-sleep", 0, "DPDK plugin: longest idle sleep (0: plugin default)")
	paths := fs.String("paths", "raw,dpdk,udp", "paths to measure: raw (a), dpdk (b), udp (c)")
	profileDir := fs.String("cpuprofile", "", "write CPU profiles of (b)'s ping-pong to this directory")
	profileSizes := fs.String("profile-sizes", "64", "message sizes to profile (with --cpuprofile)")
	output := fs.String("o", "table", "output format: table or json")
	verbose := fs.Bool("v", false, "progress lines on stderr")
	poll := fs.Bool("poll", false, "applications of (b) and (c) use polling sessions (StreamOptions.Poll)")
	if err := benchutil.ParseArgs(fs, args, output); err != nil {
		return err
	}
	cfg := Config{RoundTrips: *rtts, Warmup: *warmup, MaxRTTTime: *maxRTT, Warm: *warm, Duration: *dur, GOMAXPROCS: *procs,
		SpinIdle: *spin, MaxSleep: *sleep, ProfileDir: *profileDir, Poll: *poll}
	if *verbose {
		cfg.Log = stderr
	}
	var err error
	if cfg.Sizes, err = ParseInts(*sizes, "message size", MinSize, MaxSize); err != nil {
		return err
	}
	if cfg.Windows, err = ParseInts(*windows, "window", 1, 4096); err != nil {
		return err
	}
	if cfg.ProfileSizes, err = ParseInts(*profileSizes, "profile size", MinSize, MaxSize); err != nil {
		return err
	}
	for _, p := range strings.Split(*paths, ",") {
		switch p = strings.TrimSpace(p); p {
		case PathRaw, PathDPDK, PathUDP:
			if !slices.Contains(cfg.Paths, p) {
				cfg.Paths = append(cfg.Paths, p)
			}
		case "":
		default:
			return fmt.Errorf("--paths: unknown path %q (want raw, dpdk, udp)", p)
		}
	}
	if len(cfg.Paths) == 0 {
		return errors.New("--paths: no paths")
	}
	cpu, err := ParseInts(*cpus, "CPU", -1, 4095)
	if err != nil {
		return err
	}
	if len(cpu) != 2 || (cpu[0] == cpu[1] && cpu[0] >= 0) {
		return fmt.Errorf("--cpus %q: want two different cores (or -1)", *cpus)
	}
	cfg.CPUA, cfg.CPUB = cpu[0], cpu[1]
	if *rtts < 1 || *warmup < 0 || *dur <= 0 || *warm < 0 || *maxRTT <= 0 || *procs < 0 || *spin < 0 || *sleep < 0 {
		return errors.New("--round-trips, --duration and --max-rtt-time must be positive; --warmup, --warm, --gomaxprocs, --spin-idle and --max-sleep at least 0")
	}
	rep, err := Run(ctx, cfg)
	table := func(w io.Writer) error { return WriteTable(w, rep) }
	if done, err := benchutil.Written(stdout, *output, rep, len(rep.Results) > 0, err, table); done {
		return err
	}
	return table(stdout)
}
