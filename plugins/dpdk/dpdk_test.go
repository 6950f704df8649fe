package dpdk

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/dpdk"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/internal/wire"
)

func requireDPDK(t *testing.T) {
	t.Helper()
	testutil.RequiresRoot(t)
	testutil.Require(t, Available(), "needs DPDK: build with -tags dpdk and cgo")
}

func TestUnavailableOrBadDevice(t *testing.T) {
	if !Available() {
		_, err := New(Options{Device: "net_null0", Addr: netip.MustParsePrefix("10.0.0.1/24")})
		if !errors.Is(err, dpdk.ErrUnavailable) {
			t.Fatalf("New without DPDK: %v, want ErrUnavailable", err)
		}
		return
	}
	testutil.RequiresRoot(t)
	_, err := New(Options{Device: "net_nosuchdriver0", Addr: netip.MustParsePrefix("10.0.0.1/24")})
	if err == nil {
		t.Fatal("New accepted a device that does not exist")
	}
	t.Logf("bad device: %v", err)
	for _, o := range []Options{{}, {Device: "net_null0"}, {Device: "net_null0", Addr: netip.MustParsePrefix("2001:db8::1/64")}} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
}

// pair opens plugins on the two ends of a bare veth between two
// namespaces.
func pair(t *testing.T) (a, b *Plugin) {
	t.Helper()
	na, nb := testutil.NewNetns(t), testutil.NewNetns(t)
	va, vb := testutil.BareVeth(t, na, nb)
	open := func(ns *testutil.Netns, iface, addr string) *Plugin {
		var p *Plugin
		if err := ns.Do(func() (err error) {
			p, err = New(Options{Device: "net_af_packet_" + iface + ",iface=" + iface, Addr: netip.MustParsePrefix(addr), CPU: -1})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	return open(na, va, "10.97.0.1/24"), open(nb, vb, "10.97.0.2/24")
}

// TestSendAndPoll: datagrams sent by one plugin arrive at the other's
// polling thread in order, after ARP; sending and receiving allocate
// nothing per packet.
func TestSendAndPoll(t *testing.T) {
	requireDPDK(t)
	a, b := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var got atomic.Uint64
	var bad atomic.Uint64
	var wg sync.WaitGroup
	wg.Add(2)
	// a's polling thread takes in b's ARP reply.
	go func() { defer wg.Done(); a.Poll(ctx, func([]wire.Packet) {}, nil) }()
	go func() {
		defer wg.Done()
		b.Poll(ctx, func(pkts []wire.Packet) {
			for i := range pkts {
				h, _, err := wire.Parse(pkts[i].Bytes())
				if err != nil || h.Seq != got.Load()+1 || pkts[i].Addr != a.LocalAddr() {
					bad.Add(1)
				}
				got.Add(1)
			}
		}, nil)
	}()
	defer func() { cancel(); wg.Wait() }()

	const count = 20000
	bufs := make([][]byte, 32)
	for i := range bufs {
		bufs[i] = make([]byte, 512)
	}
	pkts := make([]wire.Packet, 32)
	seq := uint64(0)
	send := func() {
		for i := range pkts {
			seq++
			h := wire.Header{Kind: wire.KindData, FragCount: 1, PayloadLen: 100, Channel: 1, Source: 1, Seq: seq}
			buf := bufs[i]
			n, _ := h.MarshalPacket(buf, buf[wire.HeaderLen:wire.HeaderLen+100])
			pkts[i] = wire.Packet{Addr: b.LocalAddr(), Buf: buf, N: n}
		}
		done := 0
		for done < len(pkts) {
			k, err := a.SendBatch(pkts[done:])
			if err != nil {
				t.Fatalf("SendBatch: %v", err)
			}
			done += k
			if k == 0 {
				time.Sleep(50 * time.Microsecond)
			}
		}
		for seq-got.Load() > 2048 && ctx.Err() == nil {
			time.Sleep(20 * time.Microsecond)
		}
	}
	for seq < count {
		send()
	}
	allocs := testing.AllocsPerRun(50, send)
	// A datagram over the MTU is refused, not sent to be lost; the one
	// before it in the batch goes.
	seq++
	h := wire.Header{Kind: wire.KindData, FragCount: 1, PayloadLen: 100, Channel: 1, Source: 1, Seq: seq}
	n, _ := h.MarshalPacket(bufs[0], bufs[0][wire.HeaderLen:wire.HeaderLen+100])
	big := make([]byte, 1600)
	k, err := a.SendBatch([]wire.Packet{{Addr: b.LocalAddr(), Buf: bufs[0], N: n}, {Addr: b.LocalAddr(), Buf: big, N: len(big)}})
	if k != 1 || !errors.Is(err, ErrTooLong) || a.Stats().TooLong != 1 {
		t.Errorf("batch with a datagram over the MTU: sent %d, %v, stats %+v", k, err, a.Stats())
	}
	for got.Load() < seq && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	if got.Load() != seq || bad.Load() != 0 {
		t.Fatalf("received %d of %d, %d out of order or malformed; a %+v b %+v", got.Load(), seq, bad.Load(), a.Stats(), b.Stats())
	}
	if allocs != 0 {
		t.Errorf("SendBatch allocates %.1f per batch of 32", allocs)
	}
	sa, sb := a.Stats(), b.Stats()
	t.Logf("a: %+v\nb: %+v", sa, sb)
	if sa.ARPRequests == 0 || sb.ARPReplies == 0 || sa.TxDatagrams != seq || sb.RxDatagrams != seq {
		t.Errorf("counters: a %+v b %+v", sa, sb)
	}
	if b.Poll(ctx, func([]wire.Packet) {}, nil) == nil {
		t.Error("a second Poll on the same port was allowed")
	}
}

// TestUnresolvedAndOffLink: a destination on the link that never answers
// ARP is given up after a second (ErrUnresolved); one off the link at
// once.
func TestUnresolvedAndOffLink(t *testing.T) {
	requireDPDK(t)
	a, _ := pair(t)
	buf := make([]byte, 64)
	pkts := []wire.Packet{{Addr: netip.MustParseAddrPort("10.97.0.99:7000"), Buf: buf, N: 64}}
	start := time.Now()
	for {
		k, err := a.SendBatch(pkts)
		if k != 0 {
			t.Fatalf("sent %d to a host that does not exist", k)
		}
		if err != nil {
			if !errors.Is(err, ErrUnresolved) {
				t.Fatalf("err %v, want ErrUnresolved", err)
			}
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("never gave up on an address that does not answer")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s := a.Stats(); s.ARPRequests < 1 || s.Unresolved == 0 {
		t.Errorf("ARP requests %d, unresolved %d", s.ARPRequests, s.Unresolved)
	}
	pkts[0].Addr = netip.MustParseAddrPort("192.0.2.1:7000")
	if _, err := a.SendBatch(pkts); !errors.Is(err, ErrUnresolved) {
		t.Errorf("off-link destination: %v", err)
	}
	if a.Reaches(netip.MustParseAddr("192.0.2.1")) || !a.Reaches(netip.MustParseAddr("10.97.0.2")) {
		t.Error("Reaches is not the link's prefix")
	}
}

// TestRecvBatch: the pull interface copies datagrams out and answers ARP
// on the caller's thread.
func TestRecvBatch(t *testing.T) {
	requireDPDK(t)
	a, b := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); a.Poll(ctx, func([]wire.Packet) {}, nil) }()
	defer func() { cancel(); wg.Wait() }()

	const count = 300
	errc := make(chan error, 1)
	go func() {
		payload := make([]byte, 64)
		for seq := uint64(1); seq <= count; {
			h := wire.Header{Kind: wire.KindData, FragCount: 1, PayloadLen: 64, Channel: 2, Source: 3, Seq: seq}
			buf := make([]byte, 128)
			n, _ := h.MarshalPacket(buf, payload)
			k, err := a.SendBatch([]wire.Packet{{Addr: b.LocalAddr(), Buf: buf, N: n}})
			if err != nil {
				errc <- err
				return
			}
			if k == 1 {
				seq++
				time.Sleep(100 * time.Microsecond)
			} else {
				time.Sleep(time.Millisecond)
			}
		}
		errc <- nil
	}()
	pkts := make([]wire.Packet, 8)
	for i := range pkts {
		pkts[i].Buf = make([]byte, 2048)
	}
	want := uint64(1)
	for want <= count && ctx.Err() == nil {
		n, err := b.RecvBatch(pkts, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		for i := range pkts[:n] {
			h, _, err := wire.Parse(pkts[i].Bytes())
			if err != nil || h.Seq != want || pkts[i].Addr != a.LocalAddr() {
				t.Fatalf("datagram %d: %+v %v from %v", want, h, err, pkts[i].Addr)
			}
			want++
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if want != count+1 {
		t.Fatalf("received %d of %d", want-1, count)
	}
	if _, err := b.RecvBatch(pkts, time.Millisecond); err != nil {
		t.Errorf("idle RecvBatch: %v", err)
	}
}
