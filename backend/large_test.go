package backend

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/internal/wire"
)

// bigMessage is message seq of n bytes: its sequence number, then bytes
// that depend on both.
func bigMessage(seq uint64, n int) []byte {
	b := make([]byte, n)
	fillBig(b, seq)
	return b
}

func fillBig(b []byte, seq uint64) {
	x := uint32(seq*2654435761 + 1)
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	if len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, seq)
	}
}

// bigCheck is an endpoint that checks every message byte for byte
// against bigMessage(seq, size(seq)) and the order of sequence numbers.
type bigCheck struct {
	size func(seq uint64) int // +checklocksignore: set before use

	mu       sync.Mutex
	last     uint64        // +checklocks:mu
	scratch  []byte        // +checklocks:mu
	problems []string      // +checklocks:mu
	got      atomic.Uint64 // +checklocksignore: atomic
	bytes    atomic.Uint64 // +checklocksignore: atomic
}

func (c *bigCheck) deliver(_ *Sink, _, seq uint64, payload []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.size(seq)
	if cap(c.scratch) < n {
		c.scratch = make([]byte, n)
	}
	want := c.scratch[:n]
	fillBig(want, seq)
	switch {
	case seq <= c.last:
		c.problems = append(c.problems, fmt.Sprintf("seq %d after %d", seq, c.last))
	case len(payload) != n:
		c.problems = append(c.problems, fmt.Sprintf("seq %d: %d bytes, want %d", seq, len(payload), n))
	case string(payload) != string(want):
		c.problems = append(c.problems, fmt.Sprintf("seq %d: %d bytes differ from what was sent", seq, n))
	}
	c.last = seq
	c.got.Add(1)
	c.bytes.Add(uint64(len(payload)))
	return true
}
func (c *bigCheck) String() string         { return "test" }
func (c *bigCheck) sessionClosed(*Session) {}

// largeSizes are the reliable test's message sizes, by sequence number:
// 1 MiB, one byte over a datagram, tiny, exactly two fragments, 1 MiB - 1.
func largeSize(seq uint64) int {
	return [...]int{DefaultMaxMessage, MaxRemotePayload + 1, 3, 2 * fragSize, DefaultMaxMessage - 1}[seq%5]
}

// exchangeLarge streams count messages from rtA to a sink on rtB and
// checks them; best-effort messages are paced (a few in flight, fewer
// than the receiver reassembles at once) and may be lost (counted: every
// message arrives or is counted lost or evicted), reliable ones must all
// arrive in order.
func exchangeLarge(t *testing.T, ctx context.Context, rtA, rtB *Runtime, opts StreamOptions, count int, size func(uint64) int) *bigCheck {
	t.Helper()
	check := &bigCheck{size: size}
	sb := rtB.OpenSession(check, netip.AddrPort{})
	stb, _ := sb.CreateStream(opts)
	if _, err := sb.CreateSink(stb.ID, 9); err != nil {
		t.Fatal(err)
	}
	waitDirectory(t, ctx, rtA, 9)
	sa := rtA.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
	sta, _ := sa.CreateStream(opts)
	src, _ := sa.CreateSource(sta.ID, 9)
	lost := func() uint64 { l := rtB.Remote().Large; return l.Lost + l.Overflow }
	start := time.Now()
	for seq := uint64(1); seq <= uint64(count); seq++ {
		msg := bigMessage(seq, size(seq))
		if opts.Reliable {
			emitReliable(t, ctx, rtA, src, msg)
			continue
		}
		if taken, _ := rtA.emit(src, msg); taken == 0 {
			t.Fatalf("message %d refused; remote: %+v", seq, rtA.Remote())
		}
		// A few in flight: wait until the older ones arrived or were
		// dropped (counted).
		for queued(rtA) > 0 || check.got.Load()+lost()+4 < seq {
			if ctx.Err() != nil {
				t.Fatalf("message %d neither arrived nor counted lost; A: %+v; B: %+v", seq, rtA.Remote().Large, rtB.Remote().Large)
			}
			time.Sleep(time.Millisecond)
		}
	}
	for opts.Reliable && check.got.Load() < uint64(count) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	for !opts.Reliable && check.got.Load()+lost() < uint64(count) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	t.Logf("%d of %d messages (%d MiB) in %v (%.1f MiB/s); A: %+v; B: %+v; B reliable: %+v", check.got.Load(), count,
		check.bytes.Load()>>20, elapsed.Round(time.Millisecond), float64(check.bytes.Load())/(1<<20)/elapsed.Seconds(),
		rtA.Remote().Large, rtB.Remote().Large, rtB.Remote().Reliable)
	check.mu.Lock()
	problems := slices.Clone(check.problems)
	check.mu.Unlock()
	if len(problems) > 0 {
		t.Fatalf("%d problems: %v", len(problems), problems[:min(10, len(problems))])
	}
	if opts.Reliable && check.got.Load() != uint64(count) {
		t.Fatalf("received %d of %d reliable messages", check.got.Load(), count)
	}
	if !opts.Reliable && (check.got.Load()+lost() != uint64(count) || check.got.Load() < uint64(count)/2) {
		t.Fatalf("best effort: received %d, counted lost %d, of %d", check.got.Load(), lost(), count)
	}
	return check
}

// TestLargeMessagesOverUDP (issue 13, item 5): two hosts (namespaces
// joined by a veth) on kernel UDP. 1 MiB best-effort messages go as 529
// fragments each and arrive whole, byte for byte (or are counted lost);
// then a reliable stream on a lossy link (faultyLink: 5 % loss,
// duplication and reordering both ways) carries messages of 1 MiB and of
// sizes around the fragment boundaries: all arrive once, in order, byte
// for byte.
func TestLargeMessagesOverUDP(t *testing.T) {
	a, b := testutil.NewNetns(t), testutil.NewNetns(t)
	testutil.Veth(t, a, "10.99.13.1/24", b, "10.99.13.2/24")
	t.Run("best-effort", func(t *testing.T) {
		dpA, dpB := openUDP(t, a, "10.99.13.1:7078"), openUDP(t, b, "10.99.13.2:7078")
		rtA, rtB, ctx, _ := reliablePair(t, dpA, dpB, 30*time.Second)
		exchangeLarge(t, ctx, rtA, rtB, StreamOptions{}, 50, func(uint64) int { return DefaultMaxMessage })
		if l := rtA.Remote().Large; l.Sent != 50 || l.Fragments != 50*uint64(fragments(DefaultMaxMessage)) {
			t.Errorf("A counted %+v, want 50 messages of %d fragments", l, fragments(DefaultMaxMessage))
		}
	})
	t.Run("best-effort-lossy", func(t *testing.T) {
		// 0.05 % of the datagrams lost: about a third of the messages
		// (754 fragments each) lose one and are dropped, counted.
		linkA := newFaultyLink(openUDP(t, a, "10.99.13.1:7080"), 21, 0.0005, 0.01, 0.01)
		rtA, rtB, ctx, _ := reliablePair(t, linkA, openUDP(t, b, "10.99.13.2:7080"), 30*time.Second)
		exchangeLarge(t, ctx, rtA, rtB, StreamOptions{}, 50, func(uint64) int { return DefaultMaxMessage })
		if l := rtB.Remote().Large; linkA.dropped.Load() == 0 || l.Lost+l.Overflow == 0 || l.Duplicates == 0 {
			t.Errorf("no message lost (link dropped %d datagrams; B: %+v): the test proves nothing", linkA.dropped.Load(), l)
		}
	})
	t.Run("reliable-lossy", func(t *testing.T) {
		linkA := newFaultyLink(openUDP(t, a, "10.99.13.1:7079"), 11, 0.05, 0.05, 0.05)
		linkB := newFaultyLink(openUDP(t, b, "10.99.13.2:7079"), 12, 0.05, 0.05, 0.05)
		rtA, rtB, ctx, _ := reliablePair(t, linkA, linkB, 30*time.Second)
		exchangeLarge(t, ctx, rtA, rtB, StreamOptions{Reliable: true}, 50, largeSize)
		if linkA.dropped.Load() == 0 || rtA.remote.rel.retransmits.Load() == 0 {
			t.Error("the link did no damage: the test proves nothing")
		}
		if got := rtB.Remote().Large.ReliableReceived; got != 40 {
			t.Errorf("B joined %d fragmented reliable messages, want 40", got)
		}
	})
}

// TestLargeMessagesOverDPDK: the same over the DPDK datapath
// (net_af_packet on a veth between namespaces), best effort and reliable
// on a lossy link.
func TestLargeMessagesOverDPDK(t *testing.T) {
	requireDPDK(t)
	run := func(t *testing.T, net string, lossy bool, opts StreamOptions, size func(uint64) int) {
		a, b := testutil.NewNetns(t), testutil.NewNetns(t)
		va, vb := testutil.BareVeth(t, a, b)
		dpA, dpB := openDPDK(t, a, va, net+".1/24"), openDPDK(t, b, vb, net+".2/24")
		var da, db Datapath = dpA, dpB
		var fa *faultyPoller
		if lossy {
			fa = &faultyPoller{newFaultyLink(dpA, 13, 0.05, 0.05, 0.05), dpA}
			da, db = fa, &faultyPoller{newFaultyLink(dpB, 14, 0.05, 0.05, 0.05), dpB}
		}
		ropts := func(node uint32, dp Datapath, peer netip.AddrPort) RuntimeOptions {
			return RuntimeOptions{NodeID: node, Remote: RemoteOptions{Accelerated: []Datapath{dp}, Peers: []netip.AddrPort{peer},
				DirectoryInterval: 100 * time.Millisecond, DirectoryExpiry: time.Minute, ReliableTimeout: 30 * time.Second}}
		}
		rtA, rtB := NewRuntime(ropts(1, da, dpB.LocalAddr())), NewRuntime(ropts(2, db, dpA.LocalAddr()))
		ctx := runRuntimes(t, rtA, rtB)
		exchangeLarge(t, ctx, rtA, rtB, opts, 50, size)
		if s := dpA.Stats(); s.TxDatagrams < 50 {
			t.Errorf("A's DPDK port sent %d datagrams", s.TxDatagrams)
		}
		if lossy && (fa.dropped.Load() == 0 || rtA.remote.rel.retransmits.Load() == 0) {
			t.Error("the link did no damage: the test proves nothing")
		}
	}
	t.Run("best-effort", func(t *testing.T) {
		run(t, "10.98.13", false, StreamOptions{Acceleration: true}, func(uint64) int { return DefaultMaxMessage })
	})
	t.Run("reliable-lossy", func(t *testing.T) {
		run(t, "10.98.14", true, StreamOptions{Acceleration: true, Reliable: true}, largeSize)
	})
	// Over the port's MTU (1,472-byte datagrams) but under
	// MaxRemotePayload: fragmented on DPDK too (before, the port refused
	// them and none arrived).
	t.Run("over-mtu", func(t *testing.T) {
		run(t, "10.98.15", false, StreamOptions{Acceleration: true}, func(uint64) int { return 1800 })
	})
	t.Run("over-mtu-reliable", func(t *testing.T) {
		run(t, "10.98.16", true, StreamOptions{Acceleration: true, Reliable: true}, func(uint64) int { return 1800 })
	})
}

// smallSink is bigCheck for a transport whose slots hold 2 KiB.
type smallSink struct{ bigCheck }

func (s *smallSink) maxDeliver() int { return 2048 }

// TestReliableLargeMessageSkipsSinkTooSmall: a reliable stream's sinks
// on one channel, one of them on a transport that cannot carry 1 MiB
// (sizedEndpoint, as a host application's slots): it gets the small
// messages and its large ones are dropped and counted, while the other
// sink gets everything in order; the stream does not stall behind the
// message that never fits. Kernel UDP over loopback.
func TestReliableLargeMessageSkipsSinkTooSmall(t *testing.T) {
	rtA, rtB, ctx, _ := reliablePair(t, loopbackPlugin(t), loopbackPlugin(t), 30*time.Second)
	small := &smallSink{bigCheck{size: largeSize}}
	sb := rtB.OpenSession(small, netip.AddrPort{})
	stb, _ := sb.CreateStream(StreamOptions{Reliable: true})
	if _, err := sb.CreateSink(stb.ID, 9); err != nil {
		t.Fatal(err)
	}
	check := exchangeLarge(t, ctx, rtA, rtB, StreamOptions{Reliable: true}, 20, largeSize)
	for small.got.Load() < 8 && ctx.Err() == nil { // seq%5 == 1, 2: 1,969 and 3 bytes
		time.Sleep(5 * time.Millisecond)
	}
	small.mu.Lock()
	problems := slices.Clone(small.problems)
	small.mu.Unlock()
	l := rtB.Remote().Large
	t.Logf("full sink %d, small sink %d; B: %+v", check.got.Load(), small.got.Load(), l)
	if small.got.Load() != 8 || len(problems) > 0 || l.Undeliverable != 12 {
		t.Fatalf("small sink got %d (want the 8 that fit 2 KiB), problems %v; %d counted undeliverable, want 12",
			small.got.Load(), problems, l.Undeliverable)
	}
}

// The best-effort large path allocates nothing per message once the
// receiver's buffer exists: emit of 1 MiB (754 fragments), reassembly and
// delivery.
func TestLargePathAllocatesNothing(t *testing.T) {
	dpA, dpB := loopbackPlugin(t), loopbackPlugin(t)
	defer dpA.Close()
	defer dpB.Close()
	rtA, rtB, src, sink := steppedPair(dpA, dpB, nil)
	rx, st := rtB.remote.newReceiveState(0), rtA.remote.dps[0]
	pkts := make([]wire.Packet, 1)
	payload := bigMessage(1, DefaultMaxMessage)
	one := func() {
		if taken, _ := rtA.emit(src, payload); taken != 1 {
			t.Fatal("emit not taken")
		}
		for {
			id, ok := st.ready.Pop()
			if !ok {
				break
			}
			pkts[0] = rtA.remote.packet(id)
			pkts[0].Addr = dpA.LocalAddr()
			rx.handle(pkts)
			rtA.remote.slots.Put(id)
		}
	}
	one() // the receiver's buffer
	if n := testing.AllocsPerRun(20, one); n != 0 {
		t.Fatalf("%v allocations per 1 MiB message", n)
	}
	if l := rtB.Remote().Large; sink.n.Load() != 22 || l.Received != 22 {
		t.Fatalf("delivered %d of 22; %+v", sink.n.Load(), l)
	}
}

// MaxDatagram passes the wrapped port's limit through (DatagramLimiter),
// as the runtime needs it to fragment what the port cannot send whole.
func (f *faultyPoller) MaxDatagram() int {
	if l, ok := f.inner.(DatagramLimiter); ok {
		return l.MaxDatagram()
	}
	return wire.MaxPayload
}
