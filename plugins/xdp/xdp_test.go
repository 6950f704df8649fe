package xdp

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/internal/wire"
)

// An XDP host and a kernel-UDP host speak the same wire: 100,000 data
// messages each way at once, every one received once, intact and in
// order, while the XDP host's kernel still answers ARP and ping on the
// interface the program is attached to.
func TestInteropWithKernelUDP100kBothWays(t *testing.T) {
	a, b := vethHosts(t, true)
	// The kernel-UDP end sends from a veth, which leaves UDP checksums to
	// offload that does not exist; the XDP end checks them.
	testutil.NoTxChecksum(t, b.Netns, b.dev)
	x := a.newXDP(t, Options{})
	u := b.newUDP(t, "10.99.0.2:7000")
	if x.LocalAddr() != netip.MustParseAddrPort("10.99.0.1:7000") {
		t.Fatalf("LocalAddr %v", x.LocalAddr())
	}
	if !a.xdpAttached(t) {
		t.Fatal("no XDP program on the interface after New")
	}
	na, nb := &node{name: "xdp", dp: x}, &node{name: "udp", dp: u}
	const total = 100_000
	flows := []*flow{
		{src: wire.NewSourceID(1, 1), from: na, to: nb, total: total},
		{src: wire.NewSourceID(2, 1), from: nb, to: na, total: total},
	}
	// Ping and ARP through the XDP interface while traffic runs: B
	// forgets A's MAC, so its kernel must ask again, and A's kernel must
	// answer (the program passes ARP and ICMP up).
	pinged := make(chan int, 1)
	go func() {
		time.Sleep(200 * time.Millisecond)
		nh, err := handleIn(b.Name)
		if err == nil {
			if ns, _ := nh.NeighList(b.link(t).Attrs().Index, unix.AF_INET); len(ns) > 0 {
				nh.NeighDel(&ns[0])
			}
			nh.Close()
		}
		pinged <- ping(t, b.Netns, netip.MustParseAddr("10.99.0.1"), 5)
	}()
	exchange(t, flows, func(seq uint64) int { return wire.HeaderLen + int(seq*37%(1400-wire.HeaderLen+1)) })
	if n := <-pinged; n < 4 {
		t.Errorf("the XDP host's kernel answered %d of 5 pings during the exchange", n)
	}
	st := x.Stats()
	t.Logf("xdp: %+v", st)
	t.Logf("udp: %+v", u.Stats())
	if st.RxPackets < total || st.TxPackets < total {
		t.Errorf("xdp counted %d received, %d sent; want at least %d each", st.RxPackets, st.TxPackets, total)
	}
	if st.Mode != "copy" {
		t.Errorf("mode %q on veth, want copy", st.Mode)
	}
}

// Two XDP hosts, no permanent neighbour entries (the plugin has the
// kernel resolve the peer): 1,000,000 messages from two sources sending
// at once on A, received by B's polling thread (Poll), all delivered once
// and in order per source.
func TestXDPToXDPMillionFromTwoSenders(t *testing.T) {
	a, b := vethHosts(t, false)
	xa := a.newXDP(t, Options{})
	xb := b.newXDP(t, Options{Burst: batch}) // polled hands whole bursts to a batch-sized receiver
	na := &node{name: "xdp-a", dp: xa}
	nb := &node{name: "xdp-b", dp: &polled{p: xb}}
	const total = 1_000_000
	flows := []*flow{
		{src: wire.NewSourceID(1, 1), from: na, to: nb, total: total / 2},
		{src: wire.NewSourceID(1, 2), from: na, to: nb, total: total / 2},
	}
	nb.dp.(*polled).start(t)
	exchange(t, flows, func(seq uint64) int { return wire.HeaderLen + 8 + int(seq%97) })
	t.Logf("a: %+v", xa.Stats())
	t.Logf("b: %+v", xb.Stats())
	if s := xa.Stats(); s.Solicits == 0 && s.Neighbours == 0 {
		t.Errorf("A resolved nobody: %+v", s)
	}
}

// polled receives through Poll on its own thread and hands batches to
// RecvBatch callers through a channel: the exchange's receiver stays the
// same while B's plugin runs its real polling loop.
type polled struct {
	p      *Plugin
	ch     chan []wire.Packet
	back   chan struct{}
	cancel context.CancelFunc
	done   chan error
}

func (q *polled) start(t *testing.T) {
	q.ch, q.back, q.done = make(chan []wire.Packet), make(chan struct{}), make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	q.cancel = cancel
	go func() {
		q.done <- q.p.Poll(ctx, func(pkts []wire.Packet) {
			select {
			case q.ch <- pkts:
				<-q.back // the views stay valid until the receiver copied them
			case <-ctx.Done():
			}
		}, nil)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-q.done; err != nil {
			t.Errorf("Poll: %v", err)
		}
	})
}

func (q *polled) RecvBatch(pkts []wire.Packet, timeout time.Duration) (int, error) {
	select {
	case got := <-q.ch:
		n := min(len(got), len(pkts))
		for i := range n {
			pkts[i].Addr, pkts[i].N = got[i].Addr, copy(pkts[i].Buf, got[i].Bytes())
		}
		q.back <- struct{}{}
		if n < len(got) {
			panic("batch larger than the receiver's")
		}
		return n, nil
	case <-time.After(timeout):
		return 0, nil
	}
}

func (q *polled) SendBatch(pkts []wire.Packet) (int, error) { return q.p.SendBatch(pkts) }
func (q *polled) LocalAddr() netip.AddrPort                 { return q.p.LocalAddr() }

// When XDP cannot attach, New says why and wraps ErrUnavailable, so the
// runtime can fall back to kernel UDP: an interface that does not exist,
// and native mode on a bridge, whose driver has no XDP.
func TestUnavailable(t *testing.T) {
	ns := testutil.NewNetns(t)
	nh, err := handleIn(ns.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	if err := nh.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		opts   Options
		reason string
	}{
		{"no such interface", Options{Interface: "nosuch0", Addr: netip.MustParsePrefix("10.0.0.1/24")}, "find interface"},
		{"native XDP on a bridge", Options{Interface: "br0", Addr: netip.MustParsePrefix("10.0.0.1/24"), Attach: AttachNative}, "attach XDP program"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ns.Do(func() error {
				p, err := New(tc.opts)
				if err == nil {
					p.Close()
				}
				return err
			})
			var ue *UnavailableError
			if !errors.Is(err, ErrUnavailable) || !errors.As(err, &ue) || ue.Reason != tc.reason {
				t.Fatalf("New = %v, want an UnavailableError for %q", err, tc.reason)
			}
			if !strings.Contains(err.Error(), tc.opts.Interface) {
				t.Errorf("error %q does not name the interface", err)
			}
			t.Log(err)
		})
	}
}

// Close detaches the program: nothing is left on the interface, and the
// kernel gets every frame again.
func TestCloseLeavesNoProgram(t *testing.T) {
	a, _ := vethHosts(t, true)
	var p *Plugin
	if err := a.Do(func() (err error) { p, err = New(Options{Interface: a.dev}); return err }); err != nil {
		t.Fatal(err)
	}
	if !a.xdpAttached(t) {
		t.Fatal("no XDP program after New")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if a.xdpAttached(t) {
		t.Fatalf("XDP program still on %s after Close: %+v", a.dev, a.link(t).Attrs().Xdp)
	}
	if _, err := p.SendBatch(make([]wire.Packet, 1)); err != ErrClosed {
		t.Errorf("SendBatch after Close = %v", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

// A SendBatch and RecvBatch round allocates nothing, with the program in
// the veth driver and in generic mode with busy polling on.
func TestRoundAllocatesNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"native", Options{Attach: AttachNative}},
		{"generic busy-poll", Options{Attach: AttachGeneric, Bind: BindCopy, BusyPoll: 50 * time.Microsecond}},
	} {
		t.Run(tc.name, func(t *testing.T) { testRoundAllocatesNothing(t, tc.opts) })
	}
}

func testRoundAllocatesNothing(t *testing.T, opts Options) {
	a, b := vethHosts(t, true)
	xa, xb := a.newXDP(t, opts), b.newXDP(t, opts)
	if s := xa.Stats(); s.Attach != opts.Attach.String() || s.Mode != "copy" || s.BusyPoll != (opts.BusyPoll > 0) {
		t.Errorf("stats %+v for options %+v", s, opts)
	}
	tx, rx := make([]wire.Packet, batch), make([]wire.Packet, batch)
	for i := range tx {
		tx[i] = wire.Packet{Addr: xb.LocalAddr(), Buf: make([]byte, 256)}
		tx[i].N = fillMessage(tx[i].Buf, 1, uint64(i), 200)
		rx[i].Buf = make([]byte, 2048)
	}
	round := func() {
		if n, err := xa.SendBatch(tx); n != len(tx) || err != nil {
			t.Fatalf("SendBatch = %d, %v", n, err)
		}
		for got := 0; got < len(tx); {
			n, err := xb.RecvBatch(rx, time.Second)
			if err != nil || n == 0 {
				t.Fatalf("RecvBatch = %d, %v after %d", n, err, got)
			}
			got += n
		}
	}
	round() // warm up: neighbour lookups, first-use paths
	if allocs := testing.AllocsPerRun(200, round); allocs != 0 {
		t.Errorf("a SendBatch+RecvBatch round of %d datagrams allocates %v times", batch, allocs)
	}
}

// An idle Poll loop sleeps in poll(2): over three idle seconds its thread
// uses next to no CPU (a resource bound, not a timing assertion), and Wake
// and the end of the context still reach it.
func TestIdlePollCostsNoCPU(t *testing.T) {
	a, _ := vethHosts(t, true)
	x := a.newXDP(t, Options{})
	var tid atomic.Int64
	var flushes atomic.Uint64
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	var perr error
	go func() {
		defer wg.Done()
		perr = x.Poll(ctx, func([]wire.Packet) {}, func() bool {
			if tid.Load() == 0 {
				tid.Store(int64(unix.Gettid()))
			}
			flushes.Add(1)
			return false
		})
	}()
	for tid.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // past the spin
	before, f0 := threadCPU(t, int(tid.Load())), flushes.Load()
	time.Sleep(3 * time.Second)
	used, f1 := threadCPU(t, int(tid.Load()))-before, flushes.Load()
	t.Logf("polling thread used %v of CPU over 3 idle seconds; %d turns; %+v", used, f1-f0, x.Stats())
	if used >= 100*time.Millisecond {
		t.Errorf("idle Poll used %v of CPU in 3 s, want < 100ms", used)
	}
	x.Wake()
	for flushes.Load() == f1 {
		time.Sleep(time.Millisecond) // Wake must end the sleep (the test times out otherwise)
	}
	cancel()
	wg.Wait()
	if perr != nil {
		t.Errorf("Poll = %v", perr)
	}
}

// Zero-copy, when demanded, fails on veth (its driver has no AF_XDP
// buffer pool) with ErrUnavailable; the default (BindAuto) gets copy mode.
func TestZeroCopyRefusedOnVeth(t *testing.T) {
	a, _ := vethHosts(t, true)
	err := a.Do(func() error {
		p, err := New(Options{Interface: a.dev, Bind: BindZeroCopy})
		if err == nil {
			p.Close()
		}
		return err
	})
	var ue *UnavailableError
	if !errors.As(err, &ue) || !errors.Is(err, ErrUnavailable) || ue.Reason != "open AF_XDP socket" {
		t.Fatalf("New with BindZeroCopy on veth = %v, want an UnavailableError", err)
	}
	t.Log(err)
	if a.xdpAttached(t) {
		t.Error("the failed New left its program on the interface")
	}
}
