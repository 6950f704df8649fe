// Package benchlunar measures Lunar Streaming (examples/lunarstream, the
// INSANE paper's section 6.2) between two hosts on Veloce against the same
// frames over a plain TCP connection, in one run (veloce-bench lunar).
//
// The two hosts are two network namespaces joined by a veth (10.99.78.1
// and .2). Veloce is two in-process daemons (backend.Daemon), one per
// namespace, on the kernel-UDP datapath opened inside it, each the other's
// peer, with --max-message MaxMessage (4 MiB: a 1280x720 RGB frame is one
// message, in fragments between the daemons); the producer is a host
// application on A, the consumer one on B, on a reliable stream. The
// reference is a TCP connection from A to B carrying the same frames
// length-prefixed, produced and verified by the same code. Each side sends
// Frames frames at FPS, then (unless NoMaxRate) as fast as they go, and
// reports the frames per second the consumer verified and the frame
// latency (send start to last byte verified; both namespaces share the
// host's clock). At a rate both keep up with, the latency tells the
// transports apart; as fast as they go, the frame rate does.
//
// Everything runs in one process on a shared machine: absolute numbers
// depend on it and its load; the ratios (Veloce over TCP) are the result.
package benchlunar

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
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/examples/lunarstream"
	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/netns"
	"github.com/veloce-io/veloce/plugins/udp"
)

// Config configures a run.
type Config struct {
	// FrameSize is each frame's body; default lunarstream.DefaultFrameSize.
	FrameSize int
	// FPS is the producers' frame rate (0: as fast as they go); Frames how
	// many each sends.
	FPS    float64
	Frames int
	// MaxMessage is both daemons' --max-message (at least FrameSize plus
	// lunarstream.HeaderLen for one message a frame).
	MaxMessage int
	// NoMaxRate skips the second round, as fast as the frames go.
	NoMaxRate bool
	// Log receives progress lines.
	Log io.Writer
}

// Side is what one transport measured: the consumer's summary.
type Side = lunarstream.Summary

// Round is one frame rate's measurement on both transports.
type Round struct {
	FPS    float64 `json:"fps_asked"` // 0: as fast as they go
	Veloce Side    `json:"veloce"`
	TCP    Side    `json:"tcp"`
	// Messages a frame took on the Veloce stream.
	MessagesPerFrame float64 `json:"messages_per_frame"`
	// Reliable is the producer's daemon's reliable-delivery account
	// (retransmits, window full...) after the Veloce half.
	Reliable control.ReliableInfo `json:"veloce_reliable"`
	// Ratios, Veloce over TCP.
	FPSRatio float64 `json:"fps_ratio"`
	P50Ratio float64 `json:"latency_p50_ratio"`
	P99Ratio float64 `json:"latency_p99_ratio"`
}

// Report is a run's result: a round at the asked frame rate, then
// (unless it was 0 or NoMaxRate) one as fast as the frames go.
type Report struct {
	FrameSize int     `json:"frame_size"`
	Frames    int     `json:"frames"`
	Rounds    []Round `json:"rounds"`
}

// Main is veloce-bench lunar.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("veloce-bench lunar", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c Config
	fs.IntVar(&c.FrameSize, "frame-size", lunarstream.DefaultFrameSize, "frame body in bytes (1280x720 RGB)")
	fs.Float64Var(&c.FPS, "fps", 30, "frame rate of both producers (0: as fast as they go)")
	fs.IntVar(&c.Frames, "frames", 90, "frames per transport")
	fs.IntVar(&c.MaxMessage, "max-message", 4<<20, "both daemons' --max-message in bytes")
	output := fs.String("o", "table", "output format: table or json")
	fs.BoolVar(&c.NoMaxRate, "no-max-rate", false, "skip the round as fast as the frames go (--fps 0)")
	quiet := fs.Bool("q", false, "no progress lines on stderr")
	if err := benchutil.ParseArgs(fs, args, output); err != nil {
		return err
	}
	if c.FrameSize < 1 || c.FrameSize > lunarstream.MaxFrameSize || c.Frames < 2 || c.FPS < 0 {
		return fmt.Errorf("want --frame-size 1..%d, --frames >= 2, --fps >= 0", lunarstream.MaxFrameSize)
	}
	if c.MaxMessage < backend.MaxRemotePayload || c.MaxMessage > backend.MaxMaxMessage {
		return fmt.Errorf("--max-message %d not within %d..%d", c.MaxMessage, backend.MaxRemotePayload, backend.MaxMaxMessage)
	}
	c.Log = stderr
	if *quiet {
		c.Log = io.Discard
	}
	rep, err := Run(ctx, c)
	if done, werr := benchutil.Written(stdout, *output, rep, rep != nil, err, func(w io.Writer) error { return WriteTable(w, rep) }); done {
		return werr
	}
	return WriteTable(stdout, rep)
}

// hosts are the two namespaces joined by a veth.
type hosts struct {
	a, b         *benchutil.Netns
	addrA, addrB string
}

func newHosts() (*hosts, error) {
	pid := os.Getpid()
	a, b, err := benchutil.NewPair("network namespaces", fmt.Sprintf("vlunar-%d-a", pid), fmt.Sprintf("vlunar-%d-b", pid))
	if err != nil {
		return nil, err
	}
	h := &hosts{a: a, b: b, addrA: "10.99.78.1", addrB: "10.99.78.2"}
	mac := func(end byte) net.HardwareAddr {
		return net.HardwareAddr{0x02, 0x76, 0x03, byte(pid >> 8), byte(pid), end}
	}
	if err := netns.AddVeth(netns.Veth{
		A: netns.VethEnd{NS: a.Name, Name: netns.IfName(fmt.Sprintf("vla%d", pid)), MAC: mac(1), Addr: netip.MustParsePrefix(h.addrA + "/24")},
		B: netns.VethEnd{NS: b.Name, Name: netns.IfName(fmt.Sprintf("vlb%d", pid)), MAC: mac(2), Addr: netip.MustParsePrefix(h.addrB + "/24")},
	}); err != nil {
		benchutil.DelPair(a, b)
		return nil, err
	}
	return h, nil
}

const channel = 7

// Run measures Veloce, then TCP, between two fresh namespaces. It needs
// root.
func Run(ctx context.Context, c Config) (*Report, error) {
	if c.Log == nil {
		c.Log = io.Discard
	}
	h, err := newHosts()
	if err != nil {
		return nil, err
	}
	defer benchutil.DelPair(h.a, h.b)
	rep := &Report{FrameSize: c.FrameSize, Frames: c.Frames}
	rates := []float64{c.FPS}
	if c.FPS != 0 && !c.NoMaxRate {
		rates = append(rates, 0)
	}
	var bad []string
	for i, fps := range rates {
		r, err := round(ctx, h, c, fps, uint16(7079+10*i))
		if err != nil {
			return rep, err
		}
		rep.Rounds = append(rep.Rounds, r)
		for _, s := range []Side{r.Veloce, r.TCP} {
			if s.Verified != uint64(c.Frames) {
				bad = append(bad, fmt.Sprintf("%s at %g fps: %d of %d frames verified (%d corrupt, %d lost)", s.Transport, fps, s.Verified, c.Frames, s.Corrupt, s.Lost))
			}
		}
	}
	if bad != nil {
		return rep, errors.New(strings.Join(bad, "; "))
	}
	return rep, nil
}

// round measures Veloce, then TCP, at fps, on ports from port on.
func round(ctx context.Context, h *hosts, c Config, fps float64, port uint16) (Round, error) {
	r := Round{FPS: fps}
	o := lunarstream.Options{FrameSize: c.FrameSize, FPS: fps, Frames: c.Frames}
	fmt.Fprintf(c.Log, "lunar: %d frames of %d bytes at %g fps (0: as fast as they go) over Veloce (two daemons, kernel UDP)\n", c.Frames, c.FrameSize, fps)
	var msgs uint64
	var err error
	if r.Veloce, msgs, r.Reliable, err = runVeloce(ctx, h, c, o, port); err != nil {
		return r, fmt.Errorf("veloce: %w", err)
	}
	r.MessagesPerFrame = benchutil.Round2(float64(msgs) / float64(c.Frames))
	fmt.Fprintf(c.Log, "lunar: the same over TCP\n")
	if r.TCP, err = runTCP(ctx, h, o, port+1); err != nil {
		return r, fmt.Errorf("tcp: %w", err)
	}
	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return benchutil.Round2(a / b)
	}
	r.FPSRatio = ratio(r.Veloce.FPS, r.TCP.FPS)
	r.P50Ratio = ratio(r.Veloce.LatencyP50, r.TCP.LatencyP50)
	r.P99Ratio = ratio(r.Veloce.LatencyP99, r.TCP.LatencyP99)
	return r, nil
}

func runVeloce(ctx context.Context, h *hosts, c Config, o lunarstream.Options, port uint16) (s Side, msgs uint64, rel control.ReliableInfo, err error) {
	dir, err := os.MkdirTemp("", "veloce-bench-lunar-")
	if err != nil {
		return s, 0, rel, err
	}
	defer os.RemoveAll(dir)
	plugin := func(ns *benchutil.Netns, addr string) (*udp.Plugin, error) {
		var p *udp.Plugin
		err := ns.Do(func() (err error) {
			p, err = udp.New(udp.Options{Listen: netip.AddrPortFrom(netip.MustParseAddr(addr), port), RecvBuffer: 16 << 20, SendBuffer: 16 << 20})
			return err
		})
		return p, err
	}
	pa, err := plugin(h.a, h.addrA)
	if err != nil {
		return s, 0, rel, err
	}
	pb, err := plugin(h.b, h.addrB)
	if err != nil {
		pa.Close()
		return s, 0, rel, err
	}
	daemon := func(name string, node uint32, dp, peer *udp.Plugin) (*backend.Daemon, string, error) {
		sock := filepath.Join(dir, "app-"+name+".sock")
		d, err := backend.NewDaemon(backend.DaemonOptions{ControlSocket: filepath.Join(dir, "control-"+name+".sock"), AppSocket: sock,
			Runtime: backend.RuntimeOptions{NodeID: node, Remote: backend.RemoteOptions{Datapath: dp, Peers: []netip.AddrPort{peer.LocalAddr()},
				DirectoryInterval: 50 * time.Millisecond, MaxMessage: c.MaxMessage}}})
		if err != nil {
			return nil, "", err
		}
		if err := d.Start(ctx); err != nil {
			d.Close()
			return nil, "", err
		}
		return d, sock, nil
	}
	dA, sockA, err := daemon("a", 1, pa, pb)
	if err != nil {
		pa.Close()
		pb.Close()
		return s, 0, rel, err
	}
	defer dA.Close()
	dB, sockB, err := daemon("b", 2, pb, pa)
	if err != nil {
		pb.Close()
		return s, 0, rel, err
	}
	defer dB.Close()
	sa, err := guestlib.Open(ctx, guestlib.Options{Socket: sockA})
	if err != nil {
		return s, 0, rel, err
	}
	defer sa.Close()
	sb, err := guestlib.Open(ctx, guestlib.Options{Socket: sockB})
	if err != nil {
		return s, 0, rel, err
	}
	defer sb.Close()
	cons, err := lunarstream.OpenConsumer(ctx, sb, channel, true, o.Frames, 0)
	if err != nil {
		return s, 0, rel, err
	}
	// A source sends only where the directory says someone listens.
	for deadline := time.Now().Add(10 * time.Second); !knowsSink(dA); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return s, 0, rel, errors.New("daemon A never learned of B's sink (directory)")
		}
	}
	done := make(chan Side, 1)
	go func() {
		s, _ := cons.Run(ctx, 10*time.Second) // what did not arrive counts as lost
		done <- s
	}()
	ps, err := lunarstream.Produce(ctx, sa, channel, true, 0, o)
	s = <-done
	return s, ps.Messages, dA.Remote().Reliable, err
}

func knowsSink(d *backend.Daemon) bool {
	for _, p := range d.Remote().Peers {
		if slices.Contains(p.Channels, channel) {
			return true
		}
	}
	return false
}

func runTCP(ctx context.Context, h *hosts, o lunarstream.Options, port uint16) (Side, error) {
	addr := net.JoinHostPort(h.addrB, strconv.Itoa(int(port)))
	var ln net.Listener
	if err := h.b.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		return Side{}, err
	}
	defer ln.Close()
	var conn net.Conn
	if err := h.a.Do(func() (err error) {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "tcp", addr)
		return err
	}); err != nil {
		return Side{}, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close(); ln.Close() })
	defer stop()
	peer, err := ln.Accept()
	if err != nil {
		return Side{}, err
	}
	defer peer.Close()
	r := lunarstream.NewReceiver(o.Frames, 1<<20)
	done := make(chan error, 1)
	go func() { done <- lunarstream.ConsumeStream(peer, r) }()
	_, err = lunarstream.Run(ctx, o, &lunarstream.StreamEmitter{W: conn})
	conn.Close() // the consumer sees the end after the last frame
	if cerr := <-done; err == nil {
		err = cerr
	}
	s := r.Summary()
	s.Transport = "tcp"
	return s, err
}

// WriteTable prints the report as a table.
func WriteTable(w io.Writer, rep *Report) error {
	if rep == nil {
		return nil
	}
	fmt.Fprintf(w, "Lunar Streaming: %d frames of %d bytes, A -> B (namespaces, veth); fps 0: as fast as they go\n", rep.Frames, rep.FrameSize)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "FPS ASKED\tTRANSPORT\tVERIFIED\tFPS\tLATENCY p50 µs\tp99 µs\tmax µs\t")
	for _, r := range rep.Rounds {
		for _, s := range []Side{r.Veloce, r.TCP} {
			name := s.Transport
			if name == "veloce" {
				name = fmt.Sprintf("veloce (%s, %g msgs/frame)", s.Datapath, r.MessagesPerFrame)
			}
			fmt.Fprintf(tw, "%g\t%s\t%d/%d\t%.2f\t%.0f\t%.0f\t%.0f\t\n", r.FPS, name, s.Verified, s.Frames, s.FPS, s.LatencyP50, s.LatencyP99, s.LatencyMax)
		}
		fmt.Fprintf(tw, "%g\tratio veloce/tcp\t\t%.2f\t%.2f\t%.2f\t\t\n", r.FPS, r.FPSRatio, r.P50Ratio, r.P99Ratio)
		fmt.Fprintf(tw, "%g\tveloce retransmits, window full\t%d, %d\t\t\t\t\t\n", r.FPS, r.Reliable.Retransmits, r.Reliable.WindowFull)
	}
	return tw.Flush()
}
