package benchdpdk

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/wire"
	dpdkplug "github.com/veloce-io/veloce/plugins/dpdk"
	"github.com/veloce-io/veloce/plugins/udp"
)

// Veloce: two daemons (backend.Daemon, what veloced runs) in this
// process, A with its datapath on the veth end in namespace a, B on the
// end in b, each the other's peer, each with an app socket. The
// applications are host applications, as veloce-perf is: guestlib
// sessions over the host transport (unix socket, messages in shared
// memory slots), their sinks' callbacks running on the session's receive
// goroutine. So the Veloce path of a message is GetBuffer and Emit in A's
// application (written in place into a TX slot) -> A's daemon takes it
// off the TX ring and emits it (wire header, queue, wake the polling
// thread) -> its flush: SendBatch (frame headers into the remote slot's
// headroom, an mbuf attached to the slot, TxBurst) -> veth -> B's polling thread: RxBurst, parse, deliver into an
// RX slot of B's application -> its receive goroutine -> the sink's
// callback: application to application, the figure users get.

// Channels.
const (
	chanPing = 1 // A -> B (and the throughput channel)
	chanPong = 2 // B -> A
)

const veloceUDPPort = 7078

// timedDPDK and timedUDP are the plugins with a SendBatch that first
// notes when the runtime's sender handed it a data message during a
// ping-pong: the stamp that splits a round trip into its legs (Legs).
// It costs a wire.Parse and a clock read per batch. They embed the
// plugin, so the runtime still sees its Poll (Poller), Reaches (Reacher)
// and DatapathStats.
type timedDPDK struct {
	*dpdkplug.Plugin
	stamp func(pkts []wire.Packet)
}

// The runtime lays its slots in the plugin's memory through the wrapper
// too (backend.SlotMemory): what (b) measures is the path without the copy
// into an mbuf.
var _ backend.SlotMemory = (*timedDPDK)(nil)

func (t *timedDPDK) SendBatch(pkts []wire.Packet) (int, error) {
	t.stamp(pkts)
	return t.Plugin.SendBatch(pkts)
}

type timedUDP struct {
	*udp.Plugin
	stamp func(pkts []wire.Packet)
}

func (t *timedUDP) SendBatch(pkts []wire.Packet) (int, error) {
	t.stamp(pkts)
	return t.Plugin.SendBatch(pkts)
}

// stampSend records, during a ping-pong, when A's (b == false) or B's
// sender passed a data message to the datapath.
func (r *rig) stampSend(b bool) func(pkts []wire.Packet) {
	return func(pkts []wire.Packet) {
		ps := r.ping.Load()
		if ps == nil || len(pkts) == 0 {
			return
		}
		if h, _, err := wire.Parse(pkts[0].Bytes()); err != nil || h.Kind != wire.KindData {
			return // a directory
		}
		if b {
			ps.t3.Store(ps.now())
		} else {
			ps.t1.Store(ps.now())
		}
	}
}

// rig is the two daemons with their applications' sessions; one of kind
// "dpdk" or "udp".
type rig struct {
	kind       string
	poll       bool
	dA, dB     *backend.Daemon
	dpA, dpB   *dpdkplug.Plugin // kind dpdk
	dir        string           // the daemons' sockets
	sA, sB     *guestlib.Session
	srcA, srcB *guestlib.Source
	cancel     context.CancelFunc
	wg         sync.WaitGroup
	errs       chan error

	// B: echo (ping-pong) or count (throughput).
	echo    atomic.Bool
	counted *benchutil.Progress
	// A: the ping-pong under way, or nil (probing: any pong is news).
	ping  atomic.Pointer[pingState]
	probe chan struct{}
}

type rigOptions struct {
	kind               string
	cpuA, cpuB         int
	directoryInterval  time.Duration
	spinIdle, maxSleep time.Duration
	// poll: the applications' streams poll (StreamOptions.Poll).
	poll bool
}

// startRig opens both datapaths inside their namespaces, starts the
// daemons, connects the applications, and waits until a ping gets its
// pong (both directories known, ARP resolved).
func startRig(ctx context.Context, h *hosts, o rigOptions) (*rig, error) {
	r := &rig{kind: o.kind, poll: o.poll, counted: benchutil.NewProgress(), probe: make(chan struct{}, 1), errs: make(chan error, 2)}
	r.echo.Store(true)
	var optsA, optsB backend.RemoteOptions
	var closeDP func()
	switch o.kind {
	case "dpdk":
		open := func(ns *benchutil.Netns, iface string, addr netip.Prefix, cpu int) (p *dpdkplug.Plugin, err error) {
			err = ns.Do(func() error {
				p, err = dpdkplug.New(dpdkplug.Options{Device: "net_af_packet_" + iface + ",iface=" + iface, Addr: addr,
					Port: veloceUDPPort, MTU: LinkMTU, CPU: cpu, SpinIdle: o.spinIdle, MaxSleep: o.maxSleep})
				return err
			})
			return p, err
		}
		var err error
		if r.dpA, err = open(h.a, h.va, dpdkAddrA, o.cpuA); err != nil {
			return nil, fmt.Errorf("open DPDK plugin A: %w", err)
		}
		if r.dpB, err = open(h.b, h.vb, dpdkAddrB, o.cpuB); err != nil {
			r.dpA.Close()
			return nil, fmt.Errorf("open DPDK plugin B: %w", err)
		}
		closeDP = func() { r.dpA.Close(); r.dpB.Close() }
		optsA = backend.RemoteOptions{Accelerated: []backend.Datapath{&timedDPDK{r.dpA, r.stampSend(false)}}, Peers: []netip.AddrPort{r.dpB.LocalAddr()}}
		optsB = backend.RemoteOptions{Accelerated: []backend.Datapath{&timedDPDK{r.dpB, r.stampSend(true)}}, Peers: []netip.AddrPort{r.dpA.LocalAddr()}}
	case "udp":
		open := func(ns *benchutil.Netns, addr netip.Prefix) (p *udp.Plugin, err error) {
			err = ns.Do(func() error {
				p, err = udp.New(udp.Options{Listen: netip.AddrPortFrom(addr.Addr(), veloceUDPPort), RecvBuffer: 16 << 20, SendBuffer: 16 << 20})
				return err
			})
			return p, err
		}
		a, err := open(h.a, kernAddrA)
		if err != nil {
			return nil, fmt.Errorf("open UDP plugin A: %w", err)
		}
		b, err := open(h.b, kernAddrB)
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("open UDP plugin B: %w", err)
		}
		closeDP = func() { a.Close(); b.Close() }
		optsA = backend.RemoteOptions{Datapath: &timedUDP{a, r.stampSend(false)}, Peers: []netip.AddrPort{b.LocalAddr()}}
		optsB = backend.RemoteOptions{Datapath: &timedUDP{b, r.stampSend(true)}, Peers: []netip.AddrPort{a.LocalAddr()}}
	default:
		return nil, fmt.Errorf("unknown rig %q", o.kind)
	}
	optsA.DirectoryInterval, optsB.DirectoryInterval = o.directoryInterval, o.directoryInterval
	var err error
	if r.dir, err = os.MkdirTemp("", "veloce-bench-dpdk-"); err != nil {
		closeDP()
		return nil, err
	}
	mk := func(node uint32, name string, remote backend.RemoteOptions) (*backend.Daemon, error) {
		return backend.NewDaemon(backend.DaemonOptions{ControlSocket: filepath.Join(r.dir, "control-"+name+".sock"),
			AppSocket: filepath.Join(r.dir, "app-"+name+".sock"), Runtime: backend.RuntimeOptions{NodeID: node, Remote: remote}})
	}
	if r.dA, err = mk(1, "a", optsA); err == nil {
		r.dB, err = mk(2, "b", optsB)
	}
	if err != nil {
		closeDP()
		os.RemoveAll(r.dir)
		return nil, fmt.Errorf("create daemons: %w", err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	for _, d := range []*backend.Daemon{r.dA, r.dB} {
		r.wg.Add(1)
		go func() { // the runtime closes its datapaths when Run returns
			defer r.wg.Done()
			if err := d.Run(rctx); err != nil {
				r.errs <- err
			}
		}()
	}
	if err := r.sessions(ctx); err != nil {
		return nil, errors.Join(err, r.stop())
	}
	if err := r.ready(ctx); err != nil {
		return nil, errors.Join(err, r.stop())
	}
	return r, nil
}

// connect opens a host-transport session on the daemon's app socket,
// retrying until the daemon listens.
func connect(ctx context.Context, sock string) (*guestlib.Session, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, err := guestlib.Open(ctx, guestlib.Options{Socket: sock, RequestTimeout: 50 * time.Millisecond})
		if err == nil {
			return s, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("connect to daemon at %s: %w", sock, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sessions connects A's application (source 1, sink 2) and B's (sink 1,
// source 2).
func (r *rig) sessions(ctx context.Context) (err error) {
	if r.sA, err = connect(ctx, filepath.Join(r.dir, "app-a.sock")); err != nil {
		return err
	}
	if r.sB, err = connect(ctx, filepath.Join(r.dir, "app-b.sock")); err != nil {
		return err
	}
	opts := guestlib.StreamOptions{Acceleration: r.kind == "dpdk", Poll: r.poll}
	stA, err := r.sA.CreateStream(ctx, opts)
	if err != nil {
		return err
	}
	stB, err := r.sB.CreateStream(ctx, opts)
	if err != nil {
		return err
	}
	want := backend.DatapathUDP
	if r.kind == "dpdk" {
		want = backend.DatapathDPDK
	}
	if stA.Datapath != want || stB.Datapath != want {
		return fmt.Errorf("streams got datapaths %q and %q, want %q (%s)", stA.Datapath, stB.Datapath, want, stA.Warning)
	}
	// Sources before sinks: the sink callbacks use them.
	if r.srcA, err = stA.CreateSource(ctx, chanPing); err != nil {
		return err
	}
	if r.srcB, err = stB.CreateSource(ctx, chanPong); err != nil {
		return err
	}
	if _, err = stA.CreateSink(ctx, chanPong, guestlib.SinkOptions{Callback: r.deliverA}); err != nil {
		return err
	}
	_, err = stB.CreateSink(ctx, chanPing, guestlib.SinkOptions{Callback: r.deliverB})
	return err
}

// emit sends a message of size bytes from src, its first 8 bytes v,
// without waiting for a TX slot.
func emit(src *guestlib.Source, size int, v uint64) error {
	b, err := src.GetBuffer(size)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint64(b.Data, v)
	_, err = src.Emit(b)
	return err
}

// ready pings every 20 ms until a pong comes, then lets stragglers in.
func (r *rig) ready(ctx context.Context) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		emit(r.srcA, MinSize, ^uint64(0)) // a full TX ring retries next time
		select {
		case <-r.probe:
			for quiet := false; !quiet; {
				select {
				case <-r.probe:
				case <-time.After(50 * time.Millisecond):
					quiet = true
				}
			}
			return nil
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the %s daemons never exchanged a message (directory, ARP); streams on A: %+v", r.kind, r.dA.Streams())
		}
	}
}

// deliverB is B's sink callback on the ping channel, on B's session's
// receive goroutine.
func (r *rig) deliverB(m *guestlib.Message) {
	defer m.Release()
	if !r.echo.Load() {
		r.counted.Add(1)
		return
	}
	if ps := r.ping.Load(); ps != nil {
		ps.t2.Store(ps.now())
	}
	b, err := r.srcB.GetBuffer(len(m.Data))
	if err != nil {
		return // every TX slot in flight: A's watchdog re-pings
	}
	copy(b.Data, m.Data)
	r.srcB.Emit(b)
}

// deliverA is A's sink callback on the pong channel, on A's session's
// receive goroutine.
func (r *rig) deliverA(m *guestlib.Message) {
	defer m.Release()
	if ps := r.ping.Load(); ps != nil {
		ps.pong(m.Data)
		return
	}
	select {
	case r.probe <- struct{}{}:
	default:
	}
}

// stop closes the applications' sessions and ends the daemons (whose
// runtimes close their datapaths).
func (r *rig) stop() error {
	var err error
	for _, s := range []*guestlib.Session{r.sA, r.sB} {
		if s != nil {
			err = errors.Join(err, s.Close())
		}
	}
	r.cancel()
	r.wg.Wait()
	close(r.errs)
	for e := range r.errs {
		err = errors.Join(err, e)
	}
	return errors.Join(err, os.RemoveAll(r.dir))
}

// pingState is one ping-pong. The first ping comes from the driver; every
// later one from A's pong callback, on A's session's receive goroutine:
// one round trip is Emit in A's application ... B's sink callback emits
// back ... A's sink callback, and the next ping leaves from there, with
// no other goroutine of the bench in the loop.
type pingState struct {
	src     *guestlib.Source
	base    time.Time
	size    int
	warm    uint64 // warm-up rounds (at most max long)
	count   int    // measured rounds (at most max long)
	max     time.Duration
	warmEnd int64

	round    atomic.Uint64 // the round whose pong is awaited
	t0       atomic.Int64  // its ping's time, ns since base
	repinged atomic.Bool   // the watchdog re-sent this round's ping
	// The round's legs: A's daemon handed the ping to its datapath (t1),
	// B's sink callback got it (t2), B's daemon handed the pong to its
	// datapath (t3); A's sink callback getting it ends it.
	t1, t2, t3 atomic.Int64
	finished   atomic.Bool
	done       chan struct{}

	// Owned by the pong callback (A's receive goroutine) until done.
	measuring bool
	end       int64 // ns since base
	rtts      []time.Duration
	legs      [4][]time.Duration
	lost      int
}

func (ps *pingState) now() int64 { return int64(time.Since(ps.base)) }

// send emits round's ping. A ping that finds every TX slot in flight is
// not sent: the watchdog re-pings the round.
func (ps *pingState) send(round uint64) {
	b, err := ps.src.GetBuffer(ps.size)
	if err != nil {
		return
	}
	binary.LittleEndian.PutUint64(b.Data, round)
	ps.t1.Store(0)
	ps.t2.Store(0)
	ps.t3.Store(0)
	ps.t0.Store(ps.now())
	ps.src.Emit(b)
}

func (ps *pingState) pong(payload []byte) {
	if ps.finished.Load() {
		return
	}
	cur := ps.round.Load()
	if len(payload) != ps.size || binary.LittleEndian.Uint64(payload) != cur {
		return // a straggler
	}
	now := ps.now()
	if ps.repinged.Swap(false) {
		if ps.measuring {
			ps.lost++
		}
	} else if ps.measuring {
		t0, t1, t2, t3 := ps.t0.Load(), ps.t1.Load(), ps.t2.Load(), ps.t3.Load()
		ps.rtts = append(ps.rtts, time.Duration(now-t0))
		if t0 <= t1 && t1 <= t2 && t2 <= t3 && t3 <= now {
			for i, d := range [4]int64{t1 - t0, t2 - t1, t3 - t2, now - t3} {
				ps.legs[i] = append(ps.legs[i], time.Duration(d))
			}
		}
	}
	if !ps.measuring && (cur+1 >= ps.warm || now > ps.warmEnd) {
		ps.measuring, ps.end = true, now+int64(ps.max)
	} else if ps.measuring && (len(ps.rtts)+ps.lost >= ps.count ||
		now > ps.end && (len(ps.rtts) >= minSamples(ps.count) || now > ps.end+int64(overtime))) {
		ps.finished.Store(true)
		close(ps.done)
		return
	}
	ps.round.Store(cur + 1)
	ps.send(cur + 1)
}

// rtt runs a ping-pong of up to warmup rounds (at most maxTime), then up
// to count measured ones (at most maxTime, unless that leaves fewer than
// minSamples), with a CPU profile to profile if set.
func (r *rig) rtt(ctx context.Context, size, warmup, count int, maxTime time.Duration, profile string) (Latency, *Legs, error) {
	ps := &pingState{src: r.srcA, base: time.Now(), size: size, warm: uint64(warmup), count: count,
		max: maxTime, warmEnd: int64(maxTime), done: make(chan struct{}),
		measuring: warmup == 0, end: int64(maxTime), rtts: make([]time.Duration, 0, count)}
	r.echo.Store(true)
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return Latency{}, nil, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return Latency{}, nil, err
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	r.ping.Store(ps)
	defer r.ping.Store(nil)
	ps.send(0)
	// Watchdog: a round with no pong for a second is re-pinged (counted
	// lost, not measured); deadAfter of them in a row end the run.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last, since, inRow := ps.round.Load(), time.Now(), 0
	for {
		select {
		case <-ps.done:
			l := Summarize(ps.rtts)
			l.Lost = ps.lost
			return l, ps.summarizeLegs(), nil
		case <-ctx.Done():
			ps.finished.Store(true)
			return Latency{}, nil, ctx.Err()
		case now := <-tick.C:
			if cur := ps.round.Load(); cur != last {
				last, since, inRow = cur, now, 0
			} else if now.Sub(since) >= lostAfter {
				if inRow++; inRow == deadAfter {
					ps.finished.Store(true)
					return Latency{}, nil, fmt.Errorf("%s ping-pong: %d round trips in a row lost at round %d; streams on A: %+v",
						r.kind, deadAfter, cur, r.dA.Streams())
				}
				ps.repinged.Store(true)
				ps.send(cur)
				since = now
			}
		}
	}
}

// Legs split Veloce's round trips, timed on the one clock both daemons
// and applications share: the median and p99 of each leg, in µs. The legs
// of one round trip add up to its RTT, but medians need not.
type Legs struct {
	Samples int `json:"samples"`
	// WakeA: Emit in A's application until the message reaches A's
	// datapath's SendBatch: the host transport's TX ring, A's daemon
	// taking it off, the runtime's queue, then the DPDK polling thread's
	// flush (UDP: the sender goroutine's wake-up).
	WakeA LegStat `json:"emit_to_sendbatch_a"`
	// WireAB: from there until B's sink callback runs: frame, TxBurst (or
	// sendmmsg), veth, B's receive loop noticing it, parse, deliver into
	// an RX slot of B's application, its receive goroutine.
	WireAB LegStat `json:"sendbatch_to_sink_b"`
	// WakeB: B's sink callback emits the echo until B's datapath's
	// SendBatch gets it.
	WakeB LegStat `json:"emit_to_sendbatch_b"`
	// WireBA: from there until A's sink callback runs.
	WireBA LegStat `json:"sendbatch_to_sink_a"`
}

// LegStat is one leg's median and p99 in µs.
type LegStat struct {
	MedianUS float64 `json:"median_us"`
	P99US    float64 `json:"p99_us"`
}

func (ps *pingState) summarizeLegs() *Legs {
	if len(ps.legs[0]) == 0 {
		return nil
	}
	var st [4]LegStat
	for i, l := range ps.legs {
		s := Summarize(l)
		st[i] = LegStat{s.MedianUS, s.P99US}
	}
	return &Legs{Samples: len(ps.legs[0]), WakeA: st[0], WireAB: st[1], WakeB: st[2], WireBA: st[3]}
}

// throughput: the bench's goroutine, A's application, emits as fast as
// the window (and its session's TX slots) allow and sleeps (on a
// channel) until half the window is counted when it is full; B's sink
// callback counts on B's session's receive goroutine.
func (r *rig) throughput(ctx context.Context, size, window int, warm, dur time.Duration) (Throughput, error) {
	r.echo.Store(false)
	defer r.echo.Store(true)
	p := r.counted
	base := p.Count()
	recv := func() uint64 { return p.Count() - base }
	m := newMeter(size, window, warm, dur, recv)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for i := 0; ; i++ {
		if i&63 == 0 && (!m.tick(time.Now()) || ctx.Err() != nil) {
			break
		}
		if m.room() == 0 {
			before := recv()
			target := m.sent - m.writtenOff - uint64(window/2)
			if !p.WaitAtLeast(target+base, timer, stallAfter) && recv() == before {
				m.stalled()
			}
			continue
		}
		b, err := r.srcA.GetBufferContext(ctx, size)
		if err != nil {
			break // ctx ended
		}
		binary.LittleEndian.PutUint64(b.Data, m.sent)
		if _, err := r.srcA.Emit(b); err != nil {
			return Throughput{}, fmt.Errorf("emit: %w", err)
		}
		m.sent++
	}
	th := m.drain(ctx)
	return th, ctx.Err()
}

// dpdkStats are the plugins' counters (kind dpdk).
func (r *rig) dpdkStats() (a, b dpdkplug.Stats) {
	if r.dpA != nil {
		a, b = r.dpA.Stats(), r.dpB.Stats()
	}
	return
}
