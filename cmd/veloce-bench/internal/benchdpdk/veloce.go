package benchdpdk

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
	"github.com/veloce-io/veloce/internal/wire"
	dpdkplug "github.com/veloce-io/veloce/plugins/dpdk"
	"github.com/veloce-io/veloce/plugins/udp"
)

// Veloce: two runtimes in this process, A with its datapath on the veth
// end in namespace a, B on the end in b, each the other's peer. The
// applications are local sessions (backend.Runtime.OpenLocalSession):
// functions the runtime calls synchronously on its receive loop (for the
// DPDK plugin, its pinned polling thread). So the Veloce path of a
// message is Emit (wire header, copy into a slot, queue, wake the
// polling thread) -> its flush: SendBatch (frame headers, copy into an
// mbuf, TxBurst) -> veth -> polling thread: RxBurst, parse, deliver ->
// the sink's function. No application transport (guestlib, host socket)
// is involved: that is veloce-bench streams' subject.

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

// rig is the two runtimes with their sessions; one of kind "dpdk" or
// "udp".
type rig struct {
	kind       string
	rtA, rtB   *backend.Runtime
	dpA, dpB   *dpdkplug.Plugin // kind dpdk
	srcA, srcB *backend.Source
	cancel     context.CancelFunc
	wg         sync.WaitGroup

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
}

// startRig opens both datapaths inside their namespaces, starts the
// runtimes and the sessions, and waits until a ping gets its pong (both
// directories known, ARP resolved).
func startRig(ctx context.Context, h *hosts, o rigOptions) (*rig, error) {
	r := &rig{kind: o.kind, counted: benchutil.NewProgress(), probe: make(chan struct{}, 1)}
	r.echo.Store(true)
	var optsA, optsB backend.RemoteOptions
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
			return nil, fmt.Errorf("DPDK plugin A: %w", err)
		}
		if r.dpB, err = open(h.b, h.vb, dpdkAddrB, o.cpuB); err != nil {
			r.dpA.Close()
			return nil, fmt.Errorf("DPDK plugin B: %w", err)
		}
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
			return nil, fmt.Errorf("UDP plugin A: %w", err)
		}
		b, err := open(h.b, kernAddrB)
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("UDP plugin B: %w", err)
		}
		optsA = backend.RemoteOptions{Datapath: &timedUDP{a, r.stampSend(false)}, Peers: []netip.AddrPort{b.LocalAddr()}}
		optsB = backend.RemoteOptions{Datapath: &timedUDP{b, r.stampSend(true)}, Peers: []netip.AddrPort{a.LocalAddr()}}
	default:
		return nil, fmt.Errorf("unknown rig %q", o.kind)
	}
	optsA.DirectoryInterval, optsB.DirectoryInterval = o.directoryInterval, o.directoryInterval
	r.rtA = backend.NewRuntime(backend.RuntimeOptions{NodeID: 1, Remote: optsA})
	r.rtB = backend.NewRuntime(backend.RuntimeOptions{NodeID: 2, Remote: optsB})
	rctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	for _, rt := range []*backend.Runtime{r.rtA, r.rtB} {
		r.wg.Add(1)
		go func() { defer r.wg.Done(); rt.Run(rctx) }() // closes the datapath on return
	}
	if err := r.sessions(); err != nil {
		r.stop()
		return nil, err
	}
	if err := r.ready(ctx); err != nil {
		r.stop()
		return nil, err
	}
	return r, nil
}

// sessions opens A's (source 1, sink 2) and B's (sink 1, source 2).
func (r *rig) sessions() error {
	opts := backend.StreamOptions{Acceleration: r.kind == "dpdk"}
	sa := r.rtA.OpenLocalSession(r.deliverA)
	sb := r.rtB.OpenLocalSession(r.deliverB)
	stA, err := sa.CreateStream(opts)
	if err != nil {
		return err
	}
	stB, err := sb.CreateStream(opts)
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
	// Sources before sinks: the sink functions read them, and creating a
	// sink is what orders these writes before the first delivery.
	if r.srcA, err = sa.CreateSource(stA.ID, chanPing); err != nil {
		return err
	}
	if r.srcB, err = sb.CreateSource(stB.ID, chanPong); err != nil {
		return err
	}
	if _, err = sa.CreateSink(stA.ID, chanPong); err != nil {
		return err
	}
	_, err = sb.CreateSink(stB.ID, chanPing)
	return err
}

// ready pings every 20 ms until a pong comes, then lets stragglers in.
func (r *rig) ready(ctx context.Context) error {
	buf := make([]byte, MinSize)
	binary.LittleEndian.PutUint64(buf, ^uint64(0))
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.rtA.Emit(r.srcA, buf)
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
			return fmt.Errorf("the %s runtimes never exchanged a message (directory, ARP); remote A: %+v", r.kind, r.rtA.Remote())
		}
	}
}

// deliverB is B's sink on the ping channel, on B's receive loop.
func (r *rig) deliverB(_ uint32, _, _ uint64, payload []byte) bool {
	if r.echo.Load() {
		if ps := r.ping.Load(); ps != nil {
			ps.t2.Store(ps.now())
		}
		r.rtB.Emit(r.srcB, payload) // copies payload
		return true
	}
	r.counted.Add(1)
	return true
}

// deliverA is A's sink on the pong channel, on A's receive loop.
func (r *rig) deliverA(_ uint32, _, _ uint64, payload []byte) bool {
	if ps := r.ping.Load(); ps != nil {
		ps.pong(payload)
		return true
	}
	select {
	case r.probe <- struct{}{}:
	default:
	}
	return true
}

// stop ends the runtimes (closing their datapaths).
func (r *rig) stop() {
	r.cancel()
	r.wg.Wait()
}

// pingState is one ping-pong. The first ping comes from the driver; every
// later one from A's pong handler, on A's receive loop: one round trip
// is Emit on A ... B's sink emits back ... A's sink, and the next ping
// leaves from there, with no goroutine of the bench in the loop.
type pingState struct {
	rt      *backend.Runtime
	src     *backend.Source
	base    time.Time
	size    int
	warm    uint64 // warm-up rounds (at most max long)
	count   int    // measured rounds (at most max long)
	max     time.Duration
	warmEnd int64

	round    atomic.Uint64 // the round whose pong is awaited
	t0       atomic.Int64  // its ping's time, ns since base
	repinged atomic.Bool   // the watchdog re-sent this round's ping
	// The round's legs: A's sender took the ping (t1), B's sink got it
	// (t2), B's sender took the pong (t3); A's sink getting it ends it.
	t1, t2, t3 atomic.Int64
	finished   atomic.Bool
	done       chan struct{}

	// Owned by the pong handler (A's receive loop) until done.
	buf       []byte
	measuring bool
	end       int64 // ns since base
	rtts      []time.Duration
	legs      [4][]time.Duration
	lost      int
}

func (ps *pingState) now() int64 { return int64(time.Since(ps.base)) }

func (ps *pingState) send(buf []byte, round uint64) {
	binary.LittleEndian.PutUint64(buf, round)
	ps.t1.Store(0)
	ps.t2.Store(0)
	ps.t3.Store(0)
	ps.t0.Store(ps.now())
	ps.rt.Emit(ps.src, buf)
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
	ps.send(ps.buf, cur+1)
}

// rtt runs a ping-pong of up to warmup rounds (at most maxTime), then up
// to count measured ones (at most maxTime, unless that leaves fewer than
// minSamples), with a CPU profile to profile if set.
func (r *rig) rtt(ctx context.Context, size, warmup, count int, maxTime time.Duration, profile string) (Latency, *Legs, error) {
	ps := &pingState{rt: r.rtA, src: r.srcA, base: time.Now(), size: size, warm: uint64(warmup), count: count,
		max: maxTime, warmEnd: int64(maxTime), done: make(chan struct{}), buf: make([]byte, size),
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
	ps.send(make([]byte, size), 0)
	// Watchdog: a round with no pong for a second is re-pinged (counted
	// lost, not measured); deadAfter of them in a row end the run.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	wbuf := make([]byte, size)
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
					return Latency{}, nil, fmt.Errorf("%s ping-pong: %d round trips in a row lost at round %d; remote A: %+v",
						r.kind, deadAfter, cur, r.rtA.Remote())
				}
				ps.repinged.Store(true)
				ps.send(wbuf, cur)
				since = now
			}
		}
	}
}

// Legs split Veloce's round trips, timed on the one clock both runtimes
// share: the median and p99 of each leg, in µs. The legs of one round
// trip add up to its RTT, but medians need not.
type Legs struct {
	Samples int `json:"samples"`
	// WakeA: Emit on A until the message reaches the datapath's
	// SendBatch: the runtime's queue, then the DPDK polling thread's
	// flush (UDP: the sender goroutine's wake-up).
	WakeA LegStat `json:"emit_to_sendbatch_a"`
	// WireAB: from there until B's sink function runs: frame, TxBurst
	// (or sendmmsg), veth, B's receive loop noticing it, parse, deliver.
	WireAB LegStat `json:"sendbatch_to_sink_b"`
	// WakeB: B's sink emits the echo until B's sender hands it over.
	WakeB LegStat `json:"emit_to_sendbatch_b"`
	// WireBA: from there until A's sink function runs.
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

// throughput: the bench's goroutine emits on A as fast as the window
// allows and sleeps (on a channel) until half the window is counted when
// it is full; B's sink counts on B's receive loop.
func (r *rig) throughput(ctx context.Context, size, window int, warm, dur time.Duration) (Throughput, error) {
	r.echo.Store(false)
	defer r.echo.Store(true)
	p := r.counted
	base := p.Count()
	recv := func() uint64 { return p.Count() - base }
	payload := make([]byte, size)
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
		binary.LittleEndian.PutUint64(payload, m.sent)
		r.rtA.Emit(r.srcA, payload)
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
