// Package benchxdp measures Veloce on its AF_XDP datapath against a raw
// AF_XDP ping-pong written for the benchmark and against Veloce on kernel
// UDP, over one veth link between two network namespaces, in one run
// (veloce-bench xdp).
//
// The link is a veth pair (MTU LinkMTU, fixed MACs, kernel addresses
// 10.93.1.1/24 and .2 with permanent neighbour entries) between
// namespaces a and b. Three paths use it in turn, one at a time:
//
//   - (a) raw AF_XDP (raw.go): an XDP program and an AF_XDP socket on
//     each end (internal/xdp, copy mode on veth), a pinger on A and an
//     echoer on B that swaps addresses in place, both spinning on locked
//     OS threads. What AF_XDP on this link can do, at a core each.
//   - (b) Veloce on XDP: two daemons (backend.Daemon, as veloced runs it)
//     with plugins/xdp on the veth ends (frugal: the polling threads sleep
//     in poll(2) when idle, unless --busy-poll) and host applications
//     (guestlib over the app socket) on a stream asking for acceleration
//     and frugal resource use: application to application.
//   - (c) Veloce on kernel UDP: the same daemons and applications with
//     plugins/udp on the kernel addresses of the same ends.
//
// Ping-pong: A sends, B echoes, A waits for the answer; each round trip
// after the warm-up is a sample. Throughput: A sends as fast as a window
// of messages in flight allows (sent, not yet counted by B: in-process
// credit, the same for every path); the rate is what B counted over
// Duration after Warm. Idle CPU: two real veloced processes (the binary
// beside veloce-bench, or --veloced) peered over the veth, with --xdp and
// then with --listen: daemon A's CPU time over Idle seconds with nothing
// to carry but the peers' directories. Frugal means near zero.
//
// Everything shares one machine (two cores here, with whatever else
// runs): the three paths run back to back, so the ratios are the figures
// to compare; absolute numbers depend on the machine and its load.
package benchxdp

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchvhost"
	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/netns"
)

// The paths (--paths).
const (
	PathRaw = "raw" // (a) raw AF_XDP
	PathXDP = "xdp" // (b) Veloce on XDP
	PathUDP = "udp" // (c) Veloce on kernel UDP
)

// Ports: the raw sockets', Veloce-on-XDP's and Veloce-on-UDP's.
const (
	rawPort       = 7090
	veloceXDPPort = 7000
	veloceUDPPort = 7079
)

var (
	addrA = netip.MustParsePrefix("10.93.1.1/24")
	addrB = netip.MustParsePrefix("10.93.1.2/24")
)

// LinkMTU is the veth's MTU: a 1400-byte message with the wire header and
// UDP/IPv4 headers is one frame; native veth XDP takes it (it refuses
// MTUs that do not fit a page).
const LinkMTU = 2000

// Config configures a run; zero fields take the defaults.
type Config struct {
	// Sizes are the message sizes in bytes; default 64, 256, 512, 1024,
	// 1400 (guestlib.MaxMessage is the most an application may emit).
	Sizes []int
	// RoundTrips are timed per ping-pong after Warmup, for at most
	// MaxRTTTime; default 2000, 200, 2 s.
	RoundTrips, Warmup int
	MaxRTTTime         time.Duration
	// Window is the throughput window (messages in flight); default 128
	// (a veth with native XDP receives through a 256-frame ring).
	Window int
	// Warm and Duration of each throughput run; default 100 ms, 500 ms.
	Warm, Duration time.Duration
	// Idle is the idle-CPU interval; default 5 s. Zero Veloced skips it.
	Idle time.Duration
	// Veloced is the veloced binary for the idle-CPU measurement.
	Veloced string
	// BusyPoll is the XDP plugins' Options.BusyPoll (0: frugal), SpinIdle
	// their Options.SpinIdle (0: the plugin's default).
	BusyPoll, SpinIdle time.Duration
	// Paths to measure; default all three.
	Paths []string
	// Log receives progress lines (nil: none).
	Log io.Writer
}

func (c *Config) defaults() {
	if len(c.Sizes) == 0 {
		c.Sizes = []int{64, 256, 512, 1024, 1400}
	}
	if c.RoundTrips <= 0 {
		c.RoundTrips = 2000
	}
	if c.Warmup <= 0 {
		c.Warmup = 200
	}
	if c.MaxRTTTime <= 0 {
		c.MaxRTTTime = 2 * time.Second
	}
	if c.Window <= 0 {
		c.Window = 128
	}
	if c.Warm <= 0 {
		c.Warm = 100 * time.Millisecond
	}
	if c.Duration <= 0 {
		c.Duration = 500 * time.Millisecond
	}
	if c.Idle <= 0 {
		c.Idle = 5 * time.Second
	}
	if len(c.Paths) == 0 {
		c.Paths = []string{PathRaw, PathXDP, PathUDP}
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
}

// Latency summarizes round trips, in microseconds.
type Latency struct {
	Samples int     `json:"samples"`
	P50     float64 `json:"p50_us"`
	P99     float64 `json:"p99_us"`
	Mean    float64 `json:"mean_us"`
	Lost    int     `json:"lost"`
}

func summarize(rtts []time.Duration) Latency {
	if len(rtts) == 0 {
		return Latency{}
	}
	s := slices.Clone(rtts)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	pct := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
	return Latency{Samples: len(s), P50: benchutil.Micros(pct(0.5)), P99: benchutil.Micros(pct(0.99)), Mean: benchutil.Micros(sum / time.Duration(len(s)))}
}

// Throughput is one one-way throughput run.
type Throughput struct {
	// Mmsgs is B's receive rate over the measured window, in millions of
	// messages per second; Gbps the payload bits at that rate.
	Mmsgs float64 `json:"mmsgs"`
	Gbps  float64 `json:"gbps"`
	// Sent and Received count the whole run (warm-up included); Lost is
	// what never arrived; Stalls the times the window stayed full for
	// 200 ms and its messages were written off.
	Sent     uint64 `json:"sent"`
	Received uint64 `json:"received"`
	Lost     uint64 `json:"lost"`
	Stalls   int    `json:"stalls"`
}

// meter runs a throughput measurement: send(room) sends up to room
// messages and returns how many went; recv counts what B received.
func meter(ctx context.Context, cfg *Config, window int, send func(room int) int, recv func() uint64) (Throughput, error) {
	var th Throughput
	var sent, writtenOff uint64
	start := time.Now()
	from, to := start.Add(cfg.Warm), start.Add(cfg.Warm+cfg.Duration)
	var t0 time.Time
	var r0 uint64
	stuck := time.Time{}
	for {
		now := time.Now()
		if t0.IsZero() && now.After(from) {
			t0, r0 = now, recv()
		}
		if now.After(to) {
			el := now.Sub(t0)
			th.Mmsgs = benchutil.Round4(float64(recv()-r0) / el.Seconds() / 1e6)
			break
		}
		if ctx.Err() != nil {
			return th, ctx.Err()
		}
		inFlight := int64(sent) - int64(writtenOff) - int64(recv())
		if room := int64(window) - inFlight; room > 0 {
			if k := send(int(room)); k > 0 {
				sent += uint64(k)
				stuck = time.Time{}
				continue
			}
		}
		if stuck.IsZero() {
			stuck = now
		} else if now.Sub(stuck) > 200*time.Millisecond {
			th.Stalls++
			writtenOff = sent - recv()
			stuck = time.Time{}
		}
		runtime.Gosched()
	}
	// Drain: until all arrived or nothing did for 100 ms.
	for last := recv(); recv() < sent; {
		time.Sleep(100 * time.Millisecond)
		if r := recv(); r == last {
			break
		} else {
			last = r
		}
	}
	th.Sent, th.Received = sent, recv()
	if th.Received < sent {
		th.Lost = sent - th.Received
	}
	return th, nil
}

// Result is one message size.
type Result struct {
	Size int `json:"size"`
	// RTT and Throughput per path (PathRaw, PathXDP, PathUDP).
	RTT        map[string]Latency    `json:"rtt"`
	Throughput map[string]Throughput `json:"throughput"`
	// OverheadUS is Veloce on XDP's median RTT minus raw AF_XDP's, and
	// UDP's minus XDP's.
	OverheadXDPRawUS float64 `json:"rtt_overhead_xdp_over_raw_us"`
	OverheadUDPXDPUS float64 `json:"rtt_overhead_udp_over_xdp_us"`
	// Ratios of throughput: Veloce on XDP over raw, and over Veloce on
	// UDP.
	RatioXDPRaw float64 `json:"tput_ratio_xdp_over_raw"`
	RatioXDPUDP float64 `json:"tput_ratio_xdp_over_udp"`
}

// Report is the whole run.
type Report struct {
	Benchmark  string    `json:"benchmark"`
	CPUs       int       `json:"cpus"`
	MTU        int       `json:"mtu"`
	Window     int       `json:"window"`
	RoundTrips int       `json:"round_trips"`
	BusyPoll   string    `json:"xdp_busy_poll"`
	XDPMode    string    `json:"xdp_mode"`
	XDPAttach  string    `json:"xdp_attach"`
	Datapath   string    `json:"veloce_xdp_stream_datapath"`
	Results    []Result  `json:"results"`
	Idle       []IdleCPU `json:"idle_cpu,omitempty"`
	IdleNote   string    `json:"idle_note,omitempty"`
	LoadBefore string    `json:"load_average_before"`
	LoadAfter  string    `json:"load_average_after"`
	Seconds    float64   `json:"total_seconds"`
}

// hosts are the two namespaces and the veth.
type hosts struct {
	a, b       *benchutil.Netns
	va, vb     string
	macA, macB net.HardwareAddr
}

var hostSeq atomic.Uint32

func newHosts() (*hosts, error) {
	pid, seq := os.Getpid(), hostSeq.Add(1)
	a, b, err := benchutil.NewPair("network namespaces, AF_XDP", fmt.Sprintf("vbxdp-%d-%d-a", pid, seq), fmt.Sprintf("vbxdp-%d-%d-b", pid, seq))
	if err != nil {
		return nil, err
	}
	tag := fmt.Sprintf("%d%d", pid%100000, seq)
	h := &hosts{a: a, b: b, va: netns.IfName("vxa" + tag), vb: netns.IfName("vxb" + tag),
		macA: net.HardwareAddr{0x02, 0x76, 0x02, byte(seq), byte(pid), 0x01}, macB: net.HardwareAddr{0x02, 0x76, 0x02, byte(seq), byte(pid), 0x02}}
	if err := netns.AddVeth(netns.Veth{
		A:   netns.VethEnd{NS: a.Name, Name: h.va, MAC: h.macA, Addr: addrA},
		B:   netns.VethEnd{NS: b.Name, Name: h.vb, MAC: h.macB, Addr: addrB},
		MTU: LinkMTU, NoIPv6: true,
	}); err != nil {
		benchutil.DelPair(a, b)
		return nil, err
	}
	// The kernel-UDP path's senders leave checksums to offload a veth
	// does not have; the XDP paths verify them.
	for _, e := range []struct{ ns, dev string }{{a.Name, h.va}, {b.Name, h.vb}} {
		if err := netns.NoTxChecksum(e.ns, e.dev); err != nil {
			benchutil.DelPair(a, b)
			return nil, err
		}
	}
	return h, nil
}

func (h *hosts) close() error { return benchutil.DelPair(h.a, h.b) }

// Run measures every path at every size, then the idle CPU.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.defaults()
	t0 := time.Now()
	rep := &Report{Benchmark: "xdp", CPUs: runtime.NumCPU(), MTU: LinkMTU, Window: cfg.Window, RoundTrips: cfg.RoundTrips,
		BusyPoll: cfg.BusyPoll.String(), LoadBefore: benchvhost.LoadAverage()}
	for _, s := range cfg.Sizes {
		rep.Results = append(rep.Results, Result{Size: s, RTT: map[string]Latency{}, Throughput: map[string]Throughput{}})
	}
	h, err := newHosts()
	if err != nil {
		return nil, err
	}
	defer h.close()
	dir, err := os.MkdirTemp("", "veloce-bench-xdp-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	for _, path := range cfg.Paths {
		if err := runPath(ctx, &cfg, h, path, dir, rep); err != nil {
			return rep, fmt.Errorf("%s: %w", path, err)
		}
	}
	for i := range rep.Results {
		r := &rep.Results[i]
		if raw, x := r.RTT[PathRaw], r.RTT[PathXDP]; raw.Samples > 0 && x.Samples > 0 {
			r.OverheadXDPRawUS = benchutil.Round2(x.P50 - raw.P50)
		}
		if x, u := r.RTT[PathXDP], r.RTT[PathUDP]; x.Samples > 0 && u.Samples > 0 {
			r.OverheadUDPXDPUS = benchutil.Round2(u.P50 - x.P50)
		}
		r.RatioXDPRaw = ratio(r.Throughput[PathXDP].Mmsgs, r.Throughput[PathRaw].Mmsgs)
		r.RatioXDPUDP = ratio(r.Throughput[PathXDP].Mmsgs, r.Throughput[PathUDP].Mmsgs)
	}
	if cfg.Veloced == "" {
		rep.IdleNote = "no veloced binary (--veloced): idle CPU not measured"
	} else if _, err := os.Stat(cfg.Veloced); err != nil {
		rep.IdleNote = fmt.Sprintf("idle CPU not measured: %v (build it: make build, or give --veloced)", err)
	} else {
		for _, path := range []string{PathXDP, PathUDP} {
			fmt.Fprintf(cfg.Log, "%s idle CPU of veloced on %s over %v\n", stamp(), path, cfg.Idle)
			ic, err := idleCPU(ctx, &cfg, h, cfg.Veloced, path, dir)
			if err != nil {
				return rep, fmt.Errorf("idle CPU on %s: %w", path, err)
			}
			rep.Idle = append(rep.Idle, ic)
		}
	}
	rep.LoadAfter = benchvhost.LoadAverage()
	rep.Seconds = benchutil.Round2(time.Since(t0).Seconds())
	return rep, nil
}

func runPath(ctx context.Context, cfg *Config, h *hosts, path, dir string, rep *Report) error {
	if path == PathRaw {
		rp, err := openRawPair(h)
		if err != nil {
			return err
		}
		defer rp.close()
		for i := range rep.Results {
			r := &rep.Results[i]
			fmt.Fprintf(cfg.Log, "%s raw AF_XDP %d B\n", stamp(), r.Size)
			l, err := rp.rtt(ctx, cfg, r.Size)
			if err != nil {
				return err
			}
			th, err := rp.throughput(ctx, cfg, r.Size, cfg.Window)
			if err != nil {
				return err
			}
			th.Gbps = benchutil.Round4(th.Mmsgs * 8 * float64(r.Size) / 1e3)
			r.RTT[path], r.Throughput[path] = l, th
		}
		return nil
	}
	ds, err := startDaemons(ctx, cfg, h, path, dir)
	if err != nil {
		return err
	}
	defer ds.stop()
	if ds.xa != nil {
		s := ds.xa.Stats()
		rep.XDPMode, rep.XDPAttach = s.Mode, s.Attach
	}
	a, err := ds.apps(ctx)
	if err != nil {
		return err
	}
	defer a.close()
	if path == PathXDP {
		rep.Datapath = a.datapath
		if a.datapath != PathXDP {
			return fmt.Errorf("the stream asking for acceleration got %q, not xdp", a.datapath)
		}
	}
	for i := range rep.Results {
		r := &rep.Results[i]
		fmt.Fprintf(cfg.Log, "%s Veloce on %s %d B\n", stamp(), path, r.Size)
		l, err := a.rtt(ctx, cfg, r.Size)
		if err != nil {
			return err
		}
		th, err := a.throughput(ctx, cfg, r.Size, cfg.Window)
		if err != nil {
			return err
		}
		th.Gbps = benchutil.Round4(th.Mmsgs * 8 * float64(r.Size) / 1e3)
		r.RTT[path], r.Throughput[path] = l, th
	}
	return nil
}

func stamp() string { return time.Now().Format("15:04:05") }

func ratio(a, b float64) float64 {
	if a == 0 || b == 0 {
		return 0
	}
	return benchutil.Round2(a / b)
}

// WriteTable prints the report as tables.
func WriteTable(w io.Writer, rep *Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "AF_XDP: raw AF_XDP ping-pong vs Veloce on XDP vs Veloce on kernel UDP, one veth (MTU %d), %d CPUs\n", rep.MTU, rep.CPUs)
	fmt.Fprintf(w, "Veloce on XDP: socket mode %s, program %s, busy poll %s; stream datapath %s\n\n", dash(rep.XDPMode), dash(rep.XDPAttach), rep.BusyPoll, dash(rep.Datapath))
	fmt.Fprintln(tw, "size B\traw p50 µs\txdp p50 µs\tudp p50 µs\txdp-raw µs\tudp-xdp µs\traw p99\txdp p99\tudp p99\t")
	for _, r := range rep.Results {
		fmt.Fprintf(tw, "%d\t%.1f\t%.1f\t%.1f\t%+.1f\t%+.1f\t%.1f\t%.1f\t%.1f\t\n", r.Size, r.RTT[PathRaw].P50, r.RTT[PathXDP].P50, r.RTT[PathUDP].P50,
			r.OverheadXDPRawUS, r.OverheadUDPXDPUS, r.RTT[PathRaw].P99, r.RTT[PathXDP].P99, r.RTT[PathUDP].P99)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nThroughput, window %d, Mmsg/s (Gbit/s of payload):\n", rep.Window)
	fmt.Fprintln(tw, "size B\traw\txdp\tudp\txdp/raw\txdp/udp\tlost raw/xdp/udp\t")
	for _, r := range rep.Results {
		t := r.Throughput
		fmt.Fprintf(tw, "%d\t%.3f (%.2f)\t%.3f (%.2f)\t%.3f (%.2f)\t%.2f\t%.2f\t%d/%d/%d\t\n", r.Size, t[PathRaw].Mmsgs, t[PathRaw].Gbps, t[PathXDP].Mmsgs, t[PathXDP].Gbps,
			t[PathUDP].Mmsgs, t[PathUDP].Gbps, r.RatioXDPRaw, r.RatioXDPUDP, t[PathRaw].Lost, t[PathXDP].Lost, t[PathUDP].Lost)
	}
	tw.Flush()
	if len(rep.Idle) > 0 {
		fmt.Fprintln(w, "\nIdle CPU of a veloced process (all threads), peered, no streams:")
		fmt.Fprintln(tw, "datapath\tseconds\tCPU ms\t% of a core\tpoll(2) sleeps\t")
		for _, ic := range rep.Idle {
			fmt.Fprintf(tw, "%s\t%.1f\t%.2f\t%.3f\t%d\t\n", ic.Path, ic.Seconds, ic.CPUms, ic.Percent, ic.Sleeps)
		}
		tw.Flush()
	}
	if rep.IdleNote != "" {
		fmt.Fprintln(w, "\n"+rep.IdleNote)
	}
	fmt.Fprintf(w, "\nLoad average before %s, after %s. Raw AF_XDP spins a core on each side; Veloce's XDP threads sleep in poll(2)\nwhen idle (frugal). The paths run back to back: compare the ratios, not the absolute numbers.\n", rep.LoadBefore, rep.LoadAfter)
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Main is the xdp command.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("veloce-bench xdp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sizes := fs.String("sizes", "64,256,512,1024,1400", fmt.Sprintf("message sizes in bytes, comma-separated (16 to %d, guestlib.MaxMessage)", guestlib.MaxMessage))
	rounds := fs.Int("round-trips", 2000, "timed round trips per ping-pong")
	warmup := fs.Int("warmup", 200, "untimed round trips first")
	window := fs.Int("window", 128, "throughput: messages in flight")
	dur := fs.Duration("duration", 500*time.Millisecond, "throughput: measured window per size")
	idle := fs.Duration("idle", 5*time.Second, "idle CPU: interval measured")
	exe, _ := os.Executable()
	veloced := fs.String("veloced", filepath.Join(filepath.Dir(exe), "veloced"), "veloced binary for the idle-CPU measurement; empty: skip it")
	busy := fs.Duration("busy-poll", 0, "Veloce on XDP: the plugins' busy polling (SO_BUSY_POLL, spin before sleeping); 0: frugal")
	spin := fs.Duration("spin", 0, "Veloce on XDP: how long the polling threads spin without traffic before sleeping; 0: the plugin's default")
	paths := fs.String("paths", "raw,xdp,udp", "paths to measure: raw, xdp, udp")
	output := fs.String("o", "table", "output format: table or json")
	quiet := fs.Bool("q", false, "no progress lines on stderr")
	if err := benchutil.ParseArgs(fs, args, output); err != nil {
		return err
	}
	cfg := Config{RoundTrips: *rounds, Warmup: *warmup, Window: *window, Duration: *dur, Idle: *idle, Veloced: *veloced, BusyPoll: *busy, SpinIdle: *spin, Log: stderr}
	if *quiet {
		cfg.Log = io.Discard
	}
	var err error
	if cfg.Sizes, err = benchutil.ParseInts(*sizes, "size", 16, guestlib.MaxMessage); err != nil {
		return err
	}
	for _, p := range splitList(*paths) {
		if p != PathRaw && p != PathXDP && p != PathUDP {
			return fmt.Errorf("--paths: %q: want raw, xdp or udp", p)
		}
		cfg.Paths = append(cfg.Paths, p)
	}
	if *rounds < 1 || *warmup < 0 || *window < 1 || *dur <= 0 || *idle <= 0 || *busy < 0 || *spin < 0 {
		return errors.New("--round-trips, --window, --duration and --idle must be positive, --warmup, --busy-poll and --spin not negative")
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, XDP programs, AF_XDP sockets)")
	}
	rep, err := Run(ctx, cfg)
	if done, werr := benchutil.Written(stdout, *output, rep, rep != nil && len(rep.Results) > 0, err, func(w io.Writer) error { return WriteTable(w, rep) }); done {
		return werr
	}
	return WriteTable(stdout, rep)
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
