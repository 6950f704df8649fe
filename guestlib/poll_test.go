package guestlib_test

import (
	"context"
	"testing"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/guestlib/guestlibtest"
)

// pingPong is a ping-pong between two host applications over channels
// ch (a to b) and ch+1 (back), on streams with the same options.
type pingPong struct {
	guestlibtest.PingPong
	t        *testing.T
	ast, bst *guestlib.Stream
}

func newPingPong(t *testing.T, a, b *guestlib.Session, ch uint32, opts guestlib.StreamOptions) *pingPong {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := &pingPong{t: t}
	var err error
	if p.ast, err = a.CreateStream(ctx, opts); err != nil {
		t.Fatal(err)
	}
	if p.bst, err = b.CreateStream(ctx, opts); err != nil {
		t.Fatal(err)
	}
	p.ASrc, _ = p.ast.CreateSource(ctx, ch)
	p.ASink, _ = p.ast.CreateSink(ctx, ch+1, guestlib.SinkOptions{})
	p.BSrc, _ = p.bst.CreateSource(ctx, ch+1)
	if p.BSink, err = p.bst.CreateSink(ctx, ch, guestlib.SinkOptions{}); err != nil {
		t.Fatal(err)
	}
	return p
}

// run makes n round trips, checking every reply carries its request's
// number.
func (p *pingPong) run(n int) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p.Run(p.t, ctx, n)
}

// wakeups returns the daemon's RX wake-ups of host applications so far,
// and how many of its clients poll.
func wakeups(d *backend.Daemon) (n uint64, polling int) {
	info := d.HostApps()
	for _, c := range info.Clients {
		if c.Polling {
			polling++
		}
	}
	return info.Wakeups, polling
}

// A polling stream (StreamOptions.Poll) makes its session spin at both
// ends: round trips between two host applications take no eventfd
// wake-up from the daemon. Without Poll the same exchange wakes the
// applications (each Consume sleeps), and closing the polling streams
// takes the sessions back to wake-ups.
func TestPollingSessionsTakeNoWakeups(t *testing.T) {
	d, sock := daemon(t)
	ctx := context.Background()
	const n = 2000

	newPingPong(t, open(t, sock), open(t, sock), 21, guestlib.StreamOptions{}).run(n)
	w0, polling := wakeups(d)
	if polling != 0 || w0 == 0 {
		t.Fatalf("sleeping sessions: %d wake-ups for %d round trips, %d polling clients; want some, none", w0, n, polling)
	}

	// A second polling stream per session: the sessions poll until both
	// have closed. A time-sensitive stream alone does not poll.
	pa, pb := open(t, sock), open(t, sock)
	p := newPingPong(t, pa, pb, 31, guestlib.StreamOptions{Poll: true})
	tsa, _ := pa.CreateStream(ctx, guestlib.StreamOptions{Poll: true})
	tsb, _ := pb.CreateStream(ctx, guestlib.StreamOptions{Poll: true})
	if _, err := open(t, sock).CreateStream(ctx, guestlib.StreamOptions{TimeSensitive: true}); err != nil {
		t.Fatal(err)
	}
	p.run(10)
	before, polling := wakeups(d)
	if polling != 2 {
		t.Fatalf("%d polling clients, want 2", polling)
	}
	if p.ast.Warning != "" {
		t.Errorf("a polling stream on the host transport has a warning: %q", p.ast.Warning)
	}
	p.run(n)
	after, _ := wakeups(d)
	if after != before {
		t.Errorf("polling sessions: %d wake-ups in %d round trips, want 0", after-before, n)
	}
	for _, st := range []*guestlib.Stream{p.ast, p.bst} {
		if err := st.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, polling := wakeups(d); polling != 2 {
		t.Errorf("%d clients poll with a second polling stream each left open (and one time-sensitive session), want 2", polling)
	}
	for _, st := range []*guestlib.Stream{tsa, tsb} {
		if err := st.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, polling := wakeups(d); polling != 0 {
		t.Errorf("%d clients still poll after their polling streams closed", polling)
	}
	// Back to wake-ups, and still working.
	p = newPingPong(t, pa, pb, 41, guestlib.StreamOptions{})
	before, _ = wakeups(d)
	p.run(200)
	if after, _ := wakeups(d); after == before {
		t.Errorf("sessions that stopped polling took no wake-ups in 200 round trips")
	}
}
