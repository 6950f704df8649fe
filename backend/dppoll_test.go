package backend

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/guestlib/guestlibtest"
	"github.com/veloce-io/veloce/internal/testutil"
)

// newUDPPing makes a ping-pong between a host application on daemon A
// (runtime rtA) and one on daemon B, over channels ch (A to B) and ch+1
// (back), once each daemon knows of the other's sink.
func newUDPPing(t *testing.T, ctx context.Context, a, b *guestlib.Session, rtA, rtB *Runtime, ch uint32, opts guestlib.StreamOptions) *guestlibtest.PingPong {
	t.Helper()
	ast, err := a.CreateStream(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	bst, err := b.CreateStream(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	p := &guestlibtest.PingPong{Streams: []*guestlib.Stream{ast, bst}}
	if p.ASink, err = ast.CreateSink(ctx, ch+1, guestlib.SinkOptions{}); err != nil {
		t.Fatal(err)
	}
	if p.BSink, err = bst.CreateSink(ctx, ch, guestlib.SinkOptions{}); err != nil {
		t.Fatal(err)
	}
	waitChannel(t, ctx, rtA, ch)
	waitChannel(t, ctx, rtB, ch+1)
	if p.ASrc, err = ast.CreateSource(ctx, ch); err != nil {
		t.Fatal(err)
	}
	if p.BSrc, err = bst.CreateSource(ctx, ch+1); err != nil {
		t.Fatal(err)
	}
	return p
}

// appDaemons starts two daemons, A (node 1) on datapath dpA and B (node 2)
// on dpB, peers of each other (directories every 100 ms), each with an
// application socket; accelerated gives the datapaths as
// RemoteOptions.Accelerated rather than as the default.
func appDaemons(t *testing.T, dpA, dpB Datapath, accelerated bool) (dA, dB *Daemon, sockA, sockB string) {
	t.Helper()
	sockA, sockB = filepath.Join(t.TempDir(), "a.sock"), filepath.Join(t.TempDir(), "b.sock")
	start := func(node uint32, sock string, dp, peer Datapath) *Daemon {
		d, _ := startDaemonWith(t, func(o *DaemonOptions) {
			o.AppSocket = sock
			ro := RemoteOptions{Datapath: dp, Peers: []netip.AddrPort{peer.LocalAddr()}, DirectoryInterval: 100 * time.Millisecond}
			if accelerated {
				ro.Datapath, ro.Accelerated = nil, []Datapath{dp}
			}
			o.Runtime = RuntimeOptions{NodeID: node, Remote: ro}
		})
		return d
	}
	return start(1, sockA, dpA, dpB), start(2, sockB, dpB, dpA), sockA, sockB
}

// udpLoop returns the kernel-UDP datapath's polling state and counters.
func udpLoop(rt *Runtime) DatapathInfo { return rt.Remote().Datapaths[0] }

// While a daemon has polling sessions, its polling thread drives the
// kernel-UDP datapath: round trips between polling applications on two
// daemons move every batch on the polling threads (PolledBatches) and
// none on the datapath's own goroutines (Wakeups, the batches each taken
// after a wake-up); sleeping sessions take wake-ups (on the receiving
// side: each application's drain sends its messages itself,
// InlineBatches), and once the polling streams close the goroutines
// drive the datapath again.
func TestPollingSessionsPollTheUDPDatapath(t *testing.T) {
	testutil.Integration(t)
	dA, dB, sockA, sockB := appDaemons(t, loopbackPlugin(t), loopbackPlugin(t), false)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a, b := openApp(t, sockA), openApp(t, sockB)
	const n = 1000

	p := newUDPPing(t, ctx, a, b, dA.rt, dB.rt, 50, guestlib.StreamOptions{})
	before := udpLoop(dA.rt).Wakeups + udpLoop(dB.rt).Wakeups
	inline := udpLoop(dA.rt).InlineBatches + udpLoop(dB.rt).InlineBatches
	p.Run(t, ctx, n)
	if w := udpLoop(dA.rt).Wakeups + udpLoop(dB.rt).Wakeups - before; w < n {
		t.Errorf("sleeping sessions: the datapaths' goroutines moved %d batches in %d round trips, want at least %d", w, n, n)
	}
	// Each application's drain sends its own messages (but when the
	// sender goroutine holds the datapath, sending a directory).
	if i := udpLoop(dA.rt).InlineBatches + udpLoop(dB.rt).InlineBatches - inline; i < 2*n*9/10 {
		t.Errorf("sleeping sessions: %d of %d messages sent by the emitting application's drain, want nearly all", i, 2*n)
	}
	if udpLoop(dA.rt).Polled || udpLoop(dA.rt).PolledBatches != 0 {
		t.Errorf("no session polls, yet the datapath is polled: %+v", udpLoop(dA.rt))
	}

	pp := newUDPPing(t, ctx, a, b, dA.rt, dB.rt, 60, guestlib.StreamOptions{Poll: true})
	if !udpLoop(dA.rt).Polled || !udpLoop(dB.rt).Polled {
		t.Fatalf("polling sessions on both daemons, but the datapaths are not polled: %+v, %+v", udpLoop(dA.rt), udpLoop(dB.rt))
	}
	pp.Run(t, ctx, 20) // the goroutines hand over (the receiver's wait is cut short)
	w0, b0 := udpLoop(dA.rt).Wakeups+udpLoop(dB.rt).Wakeups, udpLoop(dA.rt).PolledBatches+udpLoop(dB.rt).PolledBatches
	pp.Run(t, ctx, n)
	w1, b1 := udpLoop(dA.rt).Wakeups+udpLoop(dB.rt).Wakeups, udpLoop(dA.rt).PolledBatches+udpLoop(dB.rt).PolledBatches
	if w1 != w0 {
		t.Errorf("polling sessions: the datapaths' goroutines moved %d batches in %d round trips, want 0", w1-w0, n)
	}
	if b1-b0 < 4*n { // each round trip: a send and a receive on each daemon
		t.Errorf("polling sessions: the polling threads moved %d batches in %d round trips, want at least %d", b1-b0, n, 4*n)
	}

	for _, st := range pp.Streams {
		if err := st.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if udpLoop(dA.rt).Polled || udpLoop(dB.rt).Polled {
		t.Fatalf("the polling streams closed, but the datapaths are still polled")
	}
	before = udpLoop(dA.rt).Wakeups + udpLoop(dB.rt).Wakeups
	p.Run(t, ctx, 100)
	if w := udpLoop(dA.rt).Wakeups + udpLoop(dB.rt).Wakeups - before; w < 100 {
		t.Errorf("after polling: the datapaths' goroutines moved %d batches in 100 round trips, want at least 100", w)
	}
}
