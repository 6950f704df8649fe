package benchstreams

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/plugins/udp"
)

// Channels of the Veloce measurements.
const (
	chanPing = 1 // A -> B (and the throughput channel)
	chanPong = 2 // B -> A
)

// daemons are the two in-process veloced instances, one per namespace.
type daemons struct {
	sockA, sockB string
	dA, dB       *backend.Daemon
	cancel       context.CancelFunc
	wg           sync.WaitGroup
	errs         chan error
}

func (b *bench) startDaemons(ctx context.Context, dir string) (*daemons, error) {
	const port = 7078
	dpA, err := b.udpPlugin(b.h.a, b.h.addrA, port)
	if err != nil {
		return nil, err
	}
	dpB, err := b.udpPlugin(b.h.b, b.h.addrB, port)
	if err != nil {
		dpA.Close()
		return nil, err
	}
	ds := &daemons{sockA: filepath.Join(dir, "app-a.sock"), sockB: filepath.Join(dir, "app-b.sock"), errs: make(chan error, 2)}
	mk := func(dp, peer *udp.Plugin, node uint32, name, sock string) (*backend.Daemon, error) {
		return backend.NewDaemon(backend.DaemonOptions{ControlSocket: filepath.Join(dir, "control-"+name+".sock"), AppSocket: sock,
			Runtime: backend.RuntimeOptions{NodeID: node, Remote: backend.RemoteOptions{Datapath: dp,
				Peers: []netip.AddrPort{peer.LocalAddr()}, DirectoryInterval: b.cfg.DirectoryInterval}}})
	}
	if ds.dA, err = mk(dpA, dpB, 1, "a", ds.sockA); err == nil {
		ds.dB, err = mk(dpB, dpA, 2, "b", ds.sockB)
	}
	if err != nil {
		dpA.Close()
		dpB.Close()
		return nil, err
	}
	rctx, cancel := context.WithCancel(ctx)
	ds.cancel = cancel
	for _, d := range []*backend.Daemon{ds.dA, ds.dB} {
		ds.wg.Add(1)
		go func() {
			defer ds.wg.Done()
			if err := d.Run(rctx); err != nil {
				ds.errs <- err
			}
		}()
	}
	// Wait until both answer on their app sockets.
	deadline := time.Now().Add(5 * time.Second)
	for _, sock := range []string{ds.sockA, ds.sockB} {
		for {
			s, err := guestlib.Open(ctx, guestlib.Options{Socket: sock, RequestTimeout: 50 * time.Millisecond})
			if err == nil {
				s.Close()
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				ds.stop()
				return nil, fmt.Errorf("daemon at %s did not answer: %w", sock, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return ds, nil
}

func (ds *daemons) stop() error {
	ds.cancel()
	ds.wg.Wait()
	close(ds.errs)
	return <-ds.errs
}

func (b *bench) udpPlugin(ns *benchutil.Netns, addr string, port uint16) (*udp.Plugin, error) {
	var p *udp.Plugin
	err := ns.Do(func() (err error) {
		p, err = udp.New(udp.Options{Listen: netip.AddrPortFrom(netip.MustParseAddr(addr), port), RecvBuffer: 16 << 20, SendBuffer: 16 << 20})
		return err
	})
	return p, err
}

func open(ctx context.Context, sock string) (*guestlib.Session, error) {
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return guestlib.Open(octx, guestlib.Options{Socket: sock})
}

// emitSize emits a message of size bytes from src, waiting for a buffer
// while every one is in flight.
func emitSize(ctx context.Context, src *guestlib.Source, size int) error {
	buf, err := src.GetBufferContext(ctx, size)
	if err != nil {
		return err
	}
	_, err = src.Emit(buf)
	return err
}

// veloceRTT: an application on A (at sockA) emits on channel 1; one on B
// (at sockB) consumes each message from its sink and emits it back on
// channel 2; A consumes it. With sockA == sockB both applications are on
// one daemon and no datapath is involved. With profile set, a CPU profile of the measured round trips goes
// there.
func (b *bench) veloceRTT(ctx context.Context, sockA, sockB string, size int, poll bool, profile string) (Latency, error) {
	if poll {
		// The applications and daemons share this process, and each
		// polling goroutine (the daemons' polling thread, both
		// applications' Consumes) keeps a P busy: with no P idle the Go
		// netpoller, which the kernel-UDP datapath waits on, is polled
		// only by sysmon, every 10 ms. Separate processes each keep a P
		// idle; give this one as many more Ps as it has spinners.
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(runtime.NumCPU() + 3))
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sa, err := open(ctx, sockA)
	if err != nil {
		return Latency{}, err
	}
	defer sa.Close()
	sb, err := open(ctx, sockB)
	if err != nil {
		return Latency{}, err
	}
	defer sb.Close()
	stA, err := sa.CreateStream(ctx, guestlib.StreamOptions{Poll: poll})
	if err != nil {
		return Latency{}, err
	}
	srcA, err := stA.CreateSource(ctx, chanPing)
	if err != nil {
		return Latency{}, err
	}
	sinkA, err := stA.CreateSink(ctx, chanPong, guestlib.SinkOptions{})
	if err != nil {
		return Latency{}, err
	}
	stB, err := sb.CreateStream(ctx, guestlib.StreamOptions{Poll: poll})
	if err != nil {
		return Latency{}, err
	}
	sinkB, err := stB.CreateSink(ctx, chanPing, guestlib.SinkOptions{})
	if err != nil {
		return Latency{}, err
	}
	srcB, err := stB.CreateSource(ctx, chanPong)
	if err != nil {
		return Latency{}, err
	}
	go func() { // B: echo
		for {
			m, err := sinkB.Consume(ctx)
			if err != nil {
				return
			}
			buf, err := srcB.GetBufferContext(ctx, len(m.Data))
			if err != nil {
				m.Release()
				return
			}
			copy(buf.Data, m.Data)
			m.Release()
			if _, err := srcB.Emit(buf); err != nil {
				return
			}
		}
	}()
	// Both daemons learn of the other's sinks by directory: ping until an
	// answer comes, then let stragglers arrive and drop them.
	if err := ready(ctx, func() error { return emitSize(ctx, srcA, size) }, func(c context.Context) error {
		m, err := sinkA.Consume(c)
		if err == nil {
			m.Release()
		}
		return err
	}); err != nil {
		return Latency{}, err
	}
	drain(sinkA)
	ping := func() error { return emitSize(ctx, srcA, size) }
	pong := func() error {
		m, err := sinkA.Consume(ctx)
		if err != nil {
			return err
		}
		m.Release()
		return nil
	}
	var perr error
	var pf *os.File
	onMeasure := func(start bool) {
		if profile == "" {
			return
		}
		if start {
			if pf, perr = os.Create(profile); perr == nil {
				if perr = pprof.StartCPUProfile(pf); perr != nil {
					pf.Close()
					pf = nil
				}
			}
			return
		}
		if pf != nil {
			pprof.StopCPUProfile()
			perr = pf.Close()
		}
	}
	l, err := pingPong(ctx, b.cfg.Warmup, b.cfg.RoundTrips, b.cfg.MaxRTTTime, ping, pong, onMeasure)
	if err == nil && perr != nil {
		err = fmt.Errorf("cpu profile: %w", perr)
	}
	return l, err
}

// ready calls probe every 20 ms until answer returns nil.
func ready(ctx context.Context, probe func() error, answer func(context.Context) error) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := probe(); err != nil {
			return err
		}
		c, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		err := answer(c)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return errors.New("the daemons never exchanged a message (directory)")
		}
	}
}

// drain drops what a sink receives until it has been quiet for 50 ms.
func drain(sk *guestlib.Sink) {
	for quiet := time.Now(); time.Since(quiet) < 50*time.Millisecond; {
		if m, ok := sk.TryConsume(); ok {
			m.Release()
			quiet = time.Now()
			continue
		}
		time.Sleep(time.Millisecond)
	}
}

// VeloceDrops are the places a Veloce throughput run lost messages.
type VeloceDrops struct {
	// Guestlib counts messages B's sinks dropped with their queue full.
	Guestlib uint64 `json:"guestlib_sink_queue"`
	// DaemonSink counts B's daemon's deliveries refused for want of a free
	// RX slot in the sink's session (velocectl streams' dropped).
	DaemonSink uint64 `json:"daemon_sink"`
	// SourceFull counts A's messages its daemon found no room for on the
	// way to B (the source's full: refused, so lost to the bench, which
	// does not re-send); Malformed the bad ring entries both daemons
	// counted (HostAppsInfo.Malformed: none from guestlib).
	SourceFull uint64 `json:"source_full"`
	Malformed  uint64 `json:"malformed"`
	// Wakeups is not a loss: the eventfd writes B's daemon made to wake
	// sleeping applications (HostAppsInfo.Wakeups) during the run.
	Wakeups uint64 `json:"daemon_wakeups"`
	// CPUPerMessageUS is not a loss either: the CPU time the whole process
	// (both daemons, all applications, kernel time included) spent per
	// message sent, warm-up and drain included, in µs. On a machine whose
	// cores are busy with other work the rate follows the share of them
	// the process gets; this figure much less so.
	CPUPerMessageUS float64 `json:"cpu_per_message_us"`
}

// processCPU is the process's user and system CPU time so far, in ns.
func processCPU() int64 {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// veloceThroughput: an application on A emits on channel 1 as fast as
// the window (per sink) allows; sinks on B (each in its own session: its own socket
// to the daemon) consume and count.
//
// With profile set, a CPU profile of the measured run goes there.
func (b *bench) veloceThroughput(ctx context.Context, ds *daemons, size, sinks, window int, profile string) (Throughput, VeloceDrops, error) {
	var vd VeloceDrops
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sa, err := open(ctx, ds.sockA)
	if err != nil {
		return Throughput{}, vd, err
	}
	defer sa.Close()
	stA, err := sa.CreateStream(ctx, guestlib.StreamOptions{})
	if err != nil {
		return Throughput{}, vd, err
	}
	srcA, err := stA.CreateSource(ctx, chanPing)
	if err != nil {
		return Throughput{}, vd, err
	}
	sc := newSinkCounts(sinks)
	var sks []*guestlib.Sink
	var wg sync.WaitGroup
	defer wg.Wait()
	for range sinks {
		sb, err := open(ctx, ds.sockB)
		if err != nil {
			return Throughput{}, vd, err
		}
		defer sb.Close()
		stB, err := sb.CreateStream(ctx, guestlib.StreamOptions{})
		if err != nil {
			return Throughput{}, vd, err
		}
		sk, err := stB.CreateSink(ctx, chanPing, guestlib.SinkOptions{Queue: 8192})
		if err != nil {
			return Throughput{}, vd, err
		}
		sks = append(sks, sk)
	}
	first := make(chan struct{}, 1)
	var started atomic.Bool
	for i, sk := range sks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				m, err := sk.Consume(ctx)
				if err != nil {
					return
				}
				m.Release()
				// Count what waits already too, then once: the counter
				// is the bench's, not the runtime's, cost.
				k := uint64(1)
				for ; k < 64; k++ {
					m, ok := sk.TryConsume()
					if !ok {
						break
					}
					m.Release()
				}
				sc.add(i, k)
				if !started.Load() && started.CompareAndSwap(false, true) {
					first <- struct{}{} // once: the buffer holds it
				}
			}
		}()
	}
	if err := ready(ctx, func() error { return emitSize(ctx, srcA, size) }, func(c context.Context) error {
		select {
		case <-first:
			return nil
		case <-c.Done():
			return c.Err()
		}
	}); err != nil {
		return Throughput{}, vd, err
	}
	// Let the probes' copies reach every sink.
	for last := sc.total(); ; {
		time.Sleep(50 * time.Millisecond)
		if n := sc.total(); n == last {
			break
		} else {
			last = n
		}
	}
	g0, d0, w0 := sinkDrops(sks), daemonSinkDrops(ds.dB), ds.dB.HostApps().Wakeups
	f0, m0 := sourceFull(ds.dA), ds.dA.HostApps().Malformed+ds.dB.HostApps().Malformed
	send := func() error { return emitSize(ctx, srcA, size) }
	stop, err := startProfile(profile)
	if err != nil {
		return Throughput{}, vd, err
	}
	cpu0 := processCPU()
	th, err := throughput(ctx, b.cfg.Warm, b.cfg.Duration, window, send, sc)
	if th.Sent > 0 {
		vd.CPUPerMessageUS = benchutil.Round4(float64(processCPU()-cpu0) / 1e3 / float64(th.Sent))
	}
	if perr := stop(); err == nil && perr != nil {
		err = fmt.Errorf("cpu profile: %w", perr)
	}
	vd.Guestlib, vd.DaemonSink, vd.Wakeups = sinkDrops(sks)-g0, daemonSinkDrops(ds.dB)-d0, ds.dB.HostApps().Wakeups-w0
	vd.SourceFull, vd.Malformed = sourceFull(ds.dA)-f0, ds.dA.HostApps().Malformed+ds.dB.HostApps().Malformed-m0
	return th, vd, err
}

// startProfile starts a CPU profile into path (none if empty) and
// returns the function that stops it.
func startProfile(path string) (stop func() error, err error) {
	if path == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() error { pprof.StopCPUProfile(); return f.Close() }, nil
}

func sinkDrops(sks []*guestlib.Sink) uint64 {
	var n uint64
	for _, sk := range sks {
		n += sk.Dropped()
	}
	return n
}

func sourceFull(d *backend.Daemon) uint64 {
	var n uint64
	for _, st := range d.Streams() {
		for _, so := range st.Sources {
			n += so.Full
		}
	}
	return n
}

func daemonSinkDrops(d *backend.Daemon) uint64 {
	var n uint64
	for _, st := range d.Streams() {
		for _, sk := range st.Sinks {
			n += sk.Dropped
		}
	}
	return n
}
