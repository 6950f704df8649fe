package guestlib_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/guestlib"
)

// daemon runs a veloced with only the host transport.
func daemon(t *testing.T) (*backend.Daemon, string) {
	t.Helper()
	d, sock, _ := stoppableDaemon(t)
	return d, sock
}

// stoppableDaemon is daemon, also returning a function that stops it
// (and waits for it); the test's end stops it too.
func stoppableDaemon(t *testing.T) (*backend.Daemon, string, func()) {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "app.sock")
	d, err := backend.NewDaemon(backend.DaemonOptions{ControlSocket: filepath.Join(dir, "control.sock"), AppSocket: sock})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil { // the app socket listens
		t.Fatal(err)
	}
	stop := func() {
		if err := d.Close(); err != nil {
			t.Errorf("daemon: %v", err)
		}
	}
	t.Cleanup(stop)
	return d, sock, stop
}

func open(t *testing.T, sock string) *guestlib.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := guestlib.Open(ctx, guestlib.Options{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Two host applications: one emits, the other consumes every message, in
// order, with the bytes intact.
func TestHostApplicationsStream(t *testing.T) {
	_, sock := daemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rx, tx := open(t, sock), open(t, sock)
	rst, err := rx.CreateStream(ctx, guestlib.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sink, err := rst.CreateSink(ctx, 11, guestlib.SinkOptions{Queue: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	tst, _ := tx.CreateStream(ctx, guestlib.StreamOptions{})
	src, err := tst.CreateSource(ctx, 11)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20000
	var consumed atomic.Int64
	go func() {
		for i := 0; i < n; i++ {
			b, err := src.GetBuffer(100)
			if err != nil {
				t.Error(err)
				return
			}
			for j := range b.Data {
				b.Data[j] = byte(i + j)
			}
			if _, err := src.Emit(b); err != nil {
				t.Error(err)
				return
			}
			// Flow control as an application does on a best-effort
			// stream: stay within what the daemon queues for the sink.
			for int64(i)-consumed.Load() > 256 && ctx.Err() == nil {
				time.Sleep(50 * time.Microsecond)
			}
		}
	}()
	var last uint64
	for i := 0; i < n; i++ {
		m, err := sink.Consume(ctx)
		if err != nil {
			t.Fatalf("after %d: %v (dropped %d)", i, err, sink.Dropped())
		}
		if m.Seq != last+1 || len(m.Data) != 100 || m.Data[7] != byte(int(m.Seq-1)+7) || m.Channel != 11 {
			t.Fatalf("message %d: seq %d after %d, %d bytes", i, m.Seq, last, len(m.Data))
		}
		last = m.Seq
		m.Release()
		consumed.Add(1)
	}
	if _, ok := sink.TryConsume(); ok || sink.DataAvailable() != 0 {
		t.Error("more messages than sent")
	}
}

func TestCallbackSinkAndOutcome(t *testing.T) {
	_, sock := daemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := open(t, sock)
	st, _ := s.CreateStream(ctx, guestlib.StreamOptions{Acceleration: true})
	if st.Datapath != "udp" || st.Warning == "" {
		t.Errorf("acceleration on a host without any: datapath %q, warning %q", st.Datapath, st.Warning)
	}
	var got atomic.Int64
	if _, err := st.CreateSink(ctx, 1, guestlib.SinkOptions{Callback: func(m *guestlib.Message) { got.Add(1); m.Release() }}); err != nil {
		t.Fatal(err)
	}
	src, _ := st.CreateSource(ctx, 1)
	for i := 0; i < 100; i++ {
		b, err := src.GetBufferContext(ctx, 8)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := src.Emit(b)
		if err != nil || src.Outcome(tok) != nil {
			t.Fatal(err, src.Outcome(tok))
		}
	}
	for got.Load() < 100 && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	if got.Load() != 100 {
		t.Fatalf("callback sink got %d of 100", got.Load())
	}
	if _, err := src.GetBuffer(s.MaxMessage() + 1); !errors.Is(err, guestlib.ErrTooLarge) {
		t.Errorf("oversized buffer: %v", err)
	}
	// A closed source's emits are refused, and the outcome says why.
	if err := src.Close(ctx); err != nil {
		t.Fatal(err)
	}
	b, _ := src.GetBuffer(8)
	tok, _ := src.Emit(b)
	deadline := time.Now().Add(5 * time.Second)
	for src.Outcome(tok) == nil && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := src.Outcome(tok); !errors.Is(err, guestlib.ErrNotFound) {
		t.Errorf("outcome of an emit on a closed source: %v", err)
	}
	if _, err := st.CreateSink(ctx, 1, guestlib.SinkOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateSource(ctx, 1); !errors.Is(err, guestlib.ErrNotFound) {
		t.Errorf("source on a closed stream: %v", err)
	}
}

// Closing a session releases everything it held in the daemon.
func TestCloseReleasesEverything(t *testing.T) {
	d, sock := daemon(t)
	ctx := context.Background()
	s := open(t, sock)
	st, _ := s.CreateStream(ctx, guestlib.StreamOptions{})
	st.CreateSink(ctx, 2, guestlib.SinkOptions{})
	st.CreateSource(ctx, 2)
	if n := len(d.Streams()); n != 1 {
		t.Fatalf("%d streams", n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(d.Streams()); n != 0 {
		t.Fatalf("%d streams after close", n)
	}
	if _, err := s.CreateStream(ctx, guestlib.StreamOptions{}); !errors.Is(err, guestlib.ErrClosed) {
		t.Errorf("stream on a closed session: %v", err)
	}
}

// pair opens a session with a source and a sink on one channel.
func pair(t *testing.T, sock string, channel uint32) (*guestlib.Session, *guestlib.Source, *guestlib.Sink) {
	t.Helper()
	ctx := context.Background()
	s := open(t, sock)
	st, err := s.CreateStream(ctx, guestlib.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sink, err := st.CreateSink(ctx, channel, guestlib.SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	src, err := st.CreateSource(ctx, channel)
	if err != nil {
		t.Fatal(err)
	}
	return s, src, sink
}

// In the steady state, GetBuffer, Emit, Consume and Release allocate
// nothing — in the application nor in the daemon, which runs in this
// process (AllocsPerRun counts every goroutine's allocations).
func TestHostSteadyStateAllocatesNothing(t *testing.T) {
	_, sock := daemon(t)
	_, src, sink := pair(t, sock, 3)
	ctx := context.Background()
	var n byte
	step := func() {
		b, err := src.GetBuffer(64)
		if err != nil {
			t.Fatal(err)
		}
		n++
		b.Data[0] = n
		if _, err := src.Emit(b); err != nil {
			t.Fatal(err)
		}
		m, err := sink.Consume(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m.Data[0] != n || len(m.Data) != 64 {
			t.Fatalf("got %d (%d bytes), want %d", m.Data[0], len(m.Data), n)
		}
		m.Release()
	}
	for range 5000 { // every slot used
		step()
	}
	if a := testing.AllocsPerRun(5000, step); a != 0 {
		t.Errorf("%.2f allocations per message", a)
	}
}

// Large messages (runs of slots, up to Session.MaxMessage) allocate
// nothing either, on the way in or out; one-slot ones in between stay
// unaffected.
func TestHostLargeMessagesAllocateNothing(t *testing.T) {
	_, sock := daemon(t)
	s, src, sink := pair(t, sock, 4)
	ctx := context.Background()
	sizes := []int{s.MaxMessage(), 2049, 64, 300000}
	var n int
	step := func() {
		size := sizes[n%len(sizes)]
		b, err := src.GetBufferContext(ctx, size)
		if err != nil {
			t.Fatal(err)
		}
		n++
		b.Data[0], b.Data[size-1] = byte(n), byte(n>>8)
		if _, err := src.Emit(b); err != nil {
			t.Fatal(err)
		}
		m, err := sink.Consume(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Data) != size || m.Data[0] != byte(n) || m.Data[size-1] != byte(n>>8) {
			t.Fatalf("message %d: %d bytes, want %d", n, len(m.Data), size)
		}
		m.Release()
	}
	for range 100 {
		step()
	}
	if a := testing.AllocsPerRun(200, step); a != 0 {
		t.Errorf("%.2f allocations per message", a)
	}
}

// Back-pressure: with every TX slot taken, GetBuffer fails with
// ErrNoBuffers at once; GetBufferContext waits, until its context ends
// or a slot comes back.
func TestHostBufferBackPressure(t *testing.T) {
	_, sock := daemon(t)
	_, src, sink := pair(t, sock, 4)
	var held []*guestlib.Buffer
	for {
		b, err := src.GetBuffer(8)
		if err != nil {
			if !errors.Is(err, guestlib.ErrNoBuffers) {
				t.Fatalf("after %d buffers: %v", len(held), err)
			}
			break
		}
		held = append(held, b)
	}
	if len(held) < 2 {
		t.Fatalf("%d buffers before back-pressure", len(held))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err := src.GetBufferContext(ctx, 8)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, guestlib.ErrNoBuffers) {
		t.Errorf("GetBufferContext with every slot taken: %v", err)
	}
	got := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		b, err := src.GetBufferContext(ctx, 8)
		if err == nil {
			_, err = src.Emit(b)
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("GetBufferContext returned with no slot free: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := src.Emit(held[0]); err != nil { // the daemon returns its slot
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("waiting GetBufferContext: %v", err)
	}
	for _, b := range held[1:] {
		if _, err := src.Emit(b); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range len(held) + 1 {
		m, err := sink.Consume(ctx)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		m.Release()
	}
}

// A received message stays readable after its session closed, until it
// is released (its shared memory is unmapped only then).
func TestHostMessageOutlivesSession(t *testing.T) {
	_, sock := daemon(t)
	s, src, sink := pair(t, sock, 6)
	b, _ := src.GetBuffer(5)
	copy(b.Data, "hello")
	src.Emit(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := sink.Consume(ctx)
	if err != nil {
		t.Fatal(err)
	}
	unsent, _ := src.GetBuffer(3)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if string(m.Data) != "hello" {
		t.Errorf("message after close: %q", m.Data)
	}
	m.Release()
	if _, err := src.Emit(unsent); !errors.Is(err, guestlib.ErrClosed) {
		t.Errorf("emit after close: %v", err)
	}
	if _, err := src.GetBuffer(3); !errors.Is(err, guestlib.ErrClosed) {
		t.Errorf("buffer after close: %v", err)
	}
}

// When the daemon goes away, the session notices at once: requests fail
// with ErrNoSession and sinks close.
func TestHostDaemonGoesAway(t *testing.T) {
	_, sock, stop := stoppableDaemon(t)
	s := open(t, sock)
	defer s.Close()
	st, _ := s.CreateStream(context.Background(), guestlib.StreamOptions{})
	sink, err := st.CreateSink(context.Background(), 1, guestlib.SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stop()
	wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer wcancel()
	if _, err := sink.Consume(wctx); !errors.Is(err, guestlib.ErrClosed) {
		t.Errorf("consume after the daemon stopped: %v", err)
	}
	if _, err := s.CreateStream(wctx, guestlib.StreamOptions{}); !errors.Is(err, guestlib.ErrNoSession) {
		t.Errorf("request after the daemon stopped: %v", err)
	}
}

// Refusals past any fixed count are still reported: after more than
// 65,536 refused emits (the size of the table guestlib once kept and never
// pruned) a refused message reports its refusal, never success, and a
// token too old to remember reports ErrOutcomeUnknown.
func TestOutcomeReportsRefusalsPastAnyCount(t *testing.T) {
	_, sock := daemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := open(t, sock)
	st, err := s.CreateStream(ctx, guestlib.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	src, err := st.CreateSource(ctx, 9)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Close(ctx); err != nil { // every emit from now on is refused
		t.Fatal(err)
	}
	// Batches small enough that the daemon's outcome messages never
	// overflow the socket (it drops them rather than wait).
	const total, batch = 1<<16 + 4096, 64
	var first, last guestlib.Token
	for n := 0; n < total; n += batch {
		for range batch {
			b, err := src.GetBufferContext(ctx, 8)
			if err != nil {
				t.Fatal(err)
			}
			if last, err = src.Emit(b); err != nil {
				t.Fatal(err)
			}
			if first == 0 {
				first = last
			}
		}
		deadline := time.Now().Add(10 * time.Second)
		for src.Outcome(last) == nil && time.Now().Before(deadline) {
			time.Sleep(100 * time.Microsecond)
		}
		if err := src.Outcome(last); !errors.Is(err, guestlib.ErrNotFound) {
			t.Fatalf("emit %d, refused: outcome %v", n+batch, err)
		}
	}
	if a := testing.AllocsPerRun(100, func() { src.Outcome(last); src.Outcome(first) }); a != 0 {
		t.Errorf("Outcome: %.2f allocations", a)
	}
	if err := src.Outcome(first); !errors.Is(err, guestlib.ErrOutcomeUnknown) {
		t.Errorf("outcome of the first of %d refused emits: %v, want ErrOutcomeUnknown", total, err)
	}
	if err := src.Outcome(last + 1); !errors.Is(err, guestlib.ErrOutcomeUnknown) {
		t.Errorf("outcome of a token not handed out: %v, want ErrOutcomeUnknown", err)
	}
}

// Closing a source or its stream right after the last Emit loses
// nothing: the close waits until the daemon has taken what was emitted
// (the messages travel in shared memory, the close on the socket, and
// the close could overtake them).
func TestCloseAfterEmitLosesNothing(t *testing.T) {
	_, sock := daemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rx, tx := open(t, sock), open(t, sock)
	rst, _ := rx.CreateStream(ctx, guestlib.StreamOptions{Reliable: true})
	sink, err := rst.CreateSink(ctx, 12, guestlib.SinkOptions{Queue: 1 << 14})
	if err != nil {
		t.Fatal(err)
	}
	const rounds, per = 20, 200
	got := make(chan int, 1)
	go func() {
		n := 0
		defer func() { got <- n }()
		for n < rounds*per {
			c, cancel := context.WithTimeout(ctx, 5*time.Second)
			m, err := sink.Consume(c)
			cancel()
			if err != nil {
				return
			}
			m.Release()
			n++
		}
	}()
	for r := 0; r < rounds; r++ {
		st, _ := tx.CreateStream(ctx, guestlib.StreamOptions{Reliable: true})
		src, err := st.CreateSource(ctx, 12)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < per; i++ {
			b, err := src.GetBufferContext(ctx, 16)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := src.Emit(b); err != nil {
				t.Fatal(err)
			}
		}
		if r%2 == 0 {
			err = src.Close(ctx)
		} else {
			err = st.Close(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := <-got; n != rounds*per {
		t.Fatalf("%d of %d messages arrived", n, rounds*per)
	}
}
