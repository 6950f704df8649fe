package backend

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/internal/wire"
)

// faultyPoller is faultyLink around a Poller datapath (DPDK): the polling
// thread still runs to completion, sending through the damaged SendBatch.
type faultyPoller struct {
	*faultyLink
	inner Poller
}

func (f *faultyPoller) Poll(ctx context.Context, handle func([]wire.Packet), flush func() bool) error {
	return f.inner.Poll(ctx, handle, flush)
}
func (f *faultyPoller) Wake() { f.inner.Wake() }

// TestDPDKReliableStreamOverLossyLink (issue 13): the reliable stream on
// the DPDK datapath (its polling thread sends acks and retransmissions),
// two hosts in namespaces over a veth, 5 % loss, duplication and
// reordering both ways (faultyLink: no netem here): 200,000 messages
// arrive once and in order.
func TestDPDKReliableStreamOverLossyLink(t *testing.T) {
	requireDPDK(t)
	a, b := testutil.NewNetns(t), testutil.NewNetns(t)
	va, vb := testutil.BareVeth(t, a, b)
	dpA, dpB := openDPDK(t, a, va, "10.98.3.1/24"), openDPDK(t, b, vb, "10.98.3.2/24")
	fa := &faultyPoller{newFaultyLink(dpA, 3, 0.05, 0.05, 0.05), dpA}
	fb := &faultyPoller{newFaultyLink(dpB, 4, 0.05, 0.05, 0.05), dpB}
	opts := func(node uint32, dp Datapath, peer netip.AddrPort) RuntimeOptions {
		return RuntimeOptions{NodeID: node, Remote: RemoteOptions{Accelerated: []Datapath{dp}, Peers: []netip.AddrPort{peer},
			DirectoryInterval: 100 * time.Millisecond, DirectoryExpiry: time.Minute}}
	}
	rtA, rtB := NewRuntime(opts(1, fa, dpB.LocalAddr())), NewRuntime(opts(2, fb, dpA.LocalAddr()))
	ctx := runRuntimes(t, rtA, rtB)

	check := &orderCheck{last: map[uint64]uint64{}}
	sb := rtB.OpenSession(check, netip.AddrPort{})
	stb, _ := sb.CreateStream(StreamOptions{Acceleration: true, Reliable: true})
	sb.CreateSink(stb.ID, 5)
	waitDirectory(t, ctx, rtA, 5)
	sa := rtA.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
	sta, _ := sa.CreateStream(StreamOptions{Acceleration: true, Reliable: true})
	if sta.Datapath != DatapathDPDK {
		t.Fatalf("stream on %q, want dpdk", sta.Datapath)
	}
	src, _ := sa.CreateSource(sta.ID, 5)
	const total = 200_000
	payload := make([]byte, 256)
	start := time.Now()
	for range total {
		emitReliable(t, ctx, rtA, src, payload)
	}
	for check.got.Load() < total && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	elapsed := time.Since(start)
	t.Logf("%d reliable messages over DPDK in %v (%.0f msg/s); %d retransmits; link A->B dropped %d, duplicated %d, reordered %d",
		check.got.Load(), elapsed.Round(time.Millisecond), float64(check.got.Load())/elapsed.Seconds(),
		rtA.remote.rel.retransmits.Load(), fa.dropped.Load(), fa.duplicated.Load(), fa.reordered.Load())
	check.mu.Lock()
	defer check.mu.Unlock()
	if check.got.Load() != total || len(check.problems) > 0 {
		t.Fatalf("received %d of %d; problems: %v", check.got.Load(), total, check.problems)
	}
	if fa.dropped.Load() == 0 || rtA.remote.rel.retransmits.Load() == 0 {
		t.Error("the link did no damage: the test proves nothing")
	}
}
