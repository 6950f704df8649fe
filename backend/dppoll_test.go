package backend

import (
	"context"
	"encoding/binary"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/testutil"
)

// udpPing is a ping-pong between a host application on daemon A and one
// on daemon B, over channels ch (A to B) and ch+1 (back).
type udpPing struct {
	aSrc, bSrc   *guestlib.Source
	aSink, bSink *guestlib.Sink
	streams      []*guestlib.Stream
}

func newUDPPing(t *testing.T, ctx context.Context, a, b *guestlib.Session, rtA, rtB *Runtime, ch uint32, opts guestlib.StreamOptions) *udpPing {
	t.Helper()
	ast, err := a.CreateStream(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	bst, err := b.CreateStream(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	p := &udpPing{streams: []*guestlib.Stream{ast, bst}}
	if p.aSink, err = ast.CreateSink(ctx, ch+1, guestlib.SinkOptions{}); err != nil {
		t.Fatal(err)
	}
	if p.bSink, err = bst.CreateSink(ctx, ch, guestlib.SinkOptions{}); err != nil {
		t.Fatal(err)
	}
	waitChannel(t, ctx, rtA, ch)
	waitChannel(t, ctx, rtB, ch+1)
	if p.aSrc, err = ast.CreateSource(ctx, ch); err != nil {
		t.Fatal(err)
	}
	if p.bSrc, err = bst.CreateSource(ctx, ch+1); err != nil {
		t.Fatal(err)
	}
	return p
}

// run makes n round trips; every reply must carry its request's number.
func (p *udpPing) run(t *testing.T, ctx context.Context, n int) {
	t.Helper()
	send := func(src *guestlib.Source, i uint64) error {
		buf, err := src.GetBufferContext(ctx, 8)
		if err != nil {
			return err
		}
		binary.LittleEndian.PutUint64(buf.Data, i)
		_, err = src.Emit(buf)
		return err
	}
	echoed := make(chan error, 1)
	go func() {
		for range n {
			m, err := p.bSink.Consume(ctx)
			if err != nil {
				echoed <- err
				return
			}
			v := binary.LittleEndian.Uint64(m.Data)
			m.Release()
			if err := send(p.bSrc, v); err != nil {
				echoed <- err
				return
			}
		}
		echoed <- nil
	}()
	for i := range n {
		if err := send(p.aSrc, uint64(i)); err != nil {
			t.Fatalf("round trip %d: %v", i, err)
		}
		m, err := p.aSink.Consume(ctx)
		if err != nil {
			t.Fatalf("round trip %d: %v", i, err)
		}
		if v := binary.LittleEndian.Uint64(m.Data); v != uint64(i) {
			t.Fatalf("round trip %d came back as %d", i, v)
		}
		m.Release()
	}
	if err := <-echoed; err != nil {
		t.Fatal(err)
	}
}

// udpLoop returns the kernel-UDP datapath's polling state and counters.
func udpLoop(rt *Runtime) DatapathInfo { return rt.Remote().Datapaths[0] }

// While a daemon has polling sessions, its polling thread drives the
// kernel-UDP datapath: round trips between polling applications on two
// daemons move every batch on the polling threads (PolledBatches) and
// none on the datapath's own goroutines (Wakeups, the batches each taken
// after a wake-up); sleeping sessions take wake-ups, and once the polling
// streams close the goroutines drive the datapath again.
func TestPollingSessionsPollTheUDPDatapath(t *testing.T) {
	testutil.Integration(t)
	dpA, dpB := loopbackPlugin(t), loopbackPlugin(t)
	sockA, sockB := filepath.Join(t.TempDir(), "a.sock"), filepath.Join(t.TempDir(), "b.sock")
	dA, _ := startDaemonWith(t, func(o *DaemonOptions) {
		o.AppSocket = sockA
		o.Runtime = RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Datapath: dpA, Peers: []netip.AddrPort{dpB.LocalAddr()},
			DirectoryInterval: 100 * time.Millisecond}}
	})
	dB, _ := startDaemonWith(t, func(o *DaemonOptions) {
		o.AppSocket = sockB
		o.Runtime = RuntimeOptions{NodeID: 2, Remote: RemoteOptions{Datapath: dpB, Peers: []netip.AddrPort{dpA.LocalAddr()},
			DirectoryInterval: 100 * time.Millisecond}}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a, b := openApp(t, sockA), openApp(t, sockB)
	const n = 1000

	p := newUDPPing(t, ctx, a, b, dA.rt, dB.rt, 50, guestlib.StreamOptions{})
	before := udpLoop(dA.rt).Wakeups + udpLoop(dB.rt).Wakeups
	p.run(t, ctx, n)
	if w := udpLoop(dA.rt).Wakeups + udpLoop(dB.rt).Wakeups - before; w < n {
		t.Errorf("sleeping sessions: the datapaths' goroutines moved %d batches in %d round trips, want at least %d", w, n, n)
	}
	if udpLoop(dA.rt).Polled || udpLoop(dA.rt).PolledBatches != 0 {
		t.Errorf("no session polls, yet the datapath is polled: %+v", udpLoop(dA.rt))
	}

	pp := newUDPPing(t, ctx, a, b, dA.rt, dB.rt, 60, guestlib.StreamOptions{Poll: true})
	if !udpLoop(dA.rt).Polled || !udpLoop(dB.rt).Polled {
		t.Fatalf("polling sessions on both daemons, but the datapaths are not polled: %+v, %+v", udpLoop(dA.rt), udpLoop(dB.rt))
	}
	pp.run(t, ctx, 20) // the goroutines hand over (the receiver's wait is cut short)
	w0, b0 := udpLoop(dA.rt).Wakeups+udpLoop(dB.rt).Wakeups, udpLoop(dA.rt).PolledBatches+udpLoop(dB.rt).PolledBatches
	pp.run(t, ctx, n)
	w1, b1 := udpLoop(dA.rt).Wakeups+udpLoop(dB.rt).Wakeups, udpLoop(dA.rt).PolledBatches+udpLoop(dB.rt).PolledBatches
	if w1 != w0 {
		t.Errorf("polling sessions: the datapaths' goroutines moved %d batches in %d round trips, want 0", w1-w0, n)
	}
	if b1-b0 < 4*n { // each round trip: a send and a receive on each daemon
		t.Errorf("polling sessions: the polling threads moved %d batches in %d round trips, want at least %d", b1-b0, n, 4*n)
	}

	for _, st := range pp.streams {
		if err := st.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if udpLoop(dA.rt).Polled || udpLoop(dB.rt).Polled {
		t.Fatalf("the polling streams closed, but the datapaths are still polled")
	}
	before = udpLoop(dA.rt).Wakeups + udpLoop(dB.rt).Wakeups
	p.run(t, ctx, 100)
	if w := udpLoop(dA.rt).Wakeups + udpLoop(dB.rt).Wakeups - before; w < 100 {
		t.Errorf("after polling: the datapaths' goroutines moved %d batches in 100 round trips, want at least 100", w)
	}
}
