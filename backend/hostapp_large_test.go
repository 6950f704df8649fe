package backend

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/testutil"
)

// largeSizes are the host tests' message sizes: 1 MiB, around a slot and
// a fragment, and one-slot ones in between.
func largeSizes(seq uint64) int {
	switch seq % 6 {
	case 0:
		return DefaultMaxMessage
	case 1:
		return DefaultMaxMessage - 1
	case 2:
		return hostSlotSize + 1
	case 3:
		return 3*fragSize + 1
	case 4:
		return 100
	}
	return 5 * hostSlotSize
}

// emitLarge emits n messages of largeSizes on src, each bigMessage(seq),
// waiting for slots (GetBufferContext).
func emitLarge(ctx context.Context, t *testing.T, src *guestlib.Source, n uint64) {
	for seq := uint64(1); seq <= n; seq++ {
		b, err := src.GetBufferContext(ctx, largeSizes(seq))
		if err != nil {
			t.Errorf("message %d: %v", seq, err)
			return
		}
		fillBig(b.Data, seq)
		if _, err := src.Emit(b); err != nil {
			t.Errorf("emit %d: %v", seq, err)
			return
		}
	}
}

// consumeLarge consumes n messages from sink, checking order and every
// byte.
func consumeLarge(ctx context.Context, t *testing.T, sink *guestlib.Sink, n uint64) {
	t.Helper()
	for seq := uint64(1); seq <= n; seq++ {
		m, err := sink.Consume(ctx)
		if err != nil {
			t.Fatalf("after %d messages: %v (dropped %d)", seq-1, err, sink.Dropped())
		}
		if m.Seq != seq || !bytes.Equal(m.Data, bigMessage(seq, largeSizes(seq))) {
			t.Fatalf("message %d: seq %d, %d bytes (want %d), intact %v", seq, m.Seq, len(m.Data), largeSizes(seq),
				m.Seq == seq && bytes.Equal(m.Data, bigMessage(seq, len(m.Data))))
		}
		m.Release()
	}
}

// TestHostLargeMessagesOneDaemon (issue 13, item 5): host application to
// host application on one daemon, messages of up to 1 MiB (runs of TX
// and RX slots), on a reliable stream so that none is dropped: all
// arrive in order, byte for byte. The session's limit is the daemon's
// (1 MiB by default), and GetBuffer refuses more.
func TestHostLargeMessagesOneDaemon(t *testing.T) {
	_, sock := hostDaemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rx, tx := openApp(t, sock), openApp(t, sock)
	if rx.MaxMessage() != DefaultMaxMessage || tx.MaxMessage() != DefaultMaxMessage {
		t.Fatalf("sessions' largest message %d and %d, want %d", rx.MaxMessage(), tx.MaxMessage(), DefaultMaxMessage)
	}
	rst, _ := rx.CreateStream(ctx, guestlib.StreamOptions{Reliable: true})
	sink, err := rst.CreateSink(ctx, 21, guestlib.SinkOptions{Queue: 64})
	if err != nil {
		t.Fatal(err)
	}
	tst, _ := tx.CreateStream(ctx, guestlib.StreamOptions{Reliable: true})
	src, err := tst.CreateSource(ctx, 21)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{tx.MaxMessage() + 1, 64 << 20} {
		if _, err := src.GetBuffer(n); !errors.Is(err, guestlib.ErrTooLarge) {
			t.Errorf("GetBuffer(%d): %v, want ErrTooLarge", n, err)
		}
	}
	const n = 60
	start := time.Now()
	go emitLarge(ctx, t, src, n)
	consumeLarge(ctx, t, sink, n)
	t.Logf("%d messages (%d MiB) in %v", n, totalLarge(n)>>20, time.Since(start).Round(time.Millisecond))
}

// totalLarge is the bytes of messages 1 to n of largeSizes.
func totalLarge(n uint64) int {
	sum := 0
	for seq := uint64(1); seq <= n; seq++ {
		sum += largeSizes(seq)
	}
	return sum
}

// TestHostLargeMessagesTwoDaemons: host application to host application
// through two daemons over kernel UDP on loopback: the sending daemon
// takes the run in place and sends it as fragments, the receiving one
// reassembles it and copies it into a run of the receiver's RX slots.
// Reliable, so every message arrives, in order, byte for byte.
func TestHostLargeMessagesTwoDaemons(t *testing.T) {
	testutil.Integration(t)
	dA, _, sockA, sockB := appDaemons(t, loopbackPlugin(t), loopbackPlugin(t), false)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rx, tx := openApp(t, sockB), openApp(t, sockA)
	rst, _ := rx.CreateStream(ctx, guestlib.StreamOptions{Reliable: true})
	sink, err := rst.CreateSink(ctx, 22, guestlib.SinkOptions{Queue: 64})
	if err != nil {
		t.Fatal(err)
	}
	waitChannel(t, ctx, dA.rt, 22)
	tst, _ := tx.CreateStream(ctx, guestlib.StreamOptions{Reliable: true})
	src, err := tst.CreateSource(ctx, 22)
	if err != nil {
		t.Fatal(err)
	}
	const n = 30
	start := time.Now()
	go emitLarge(ctx, t, src, n)
	consumeLarge(ctx, t, sink, n)
	t.Logf("%d messages (%d MiB) in %v; A: %+v", n, totalLarge(n)>>20, time.Since(start).Round(time.Millisecond), dA.Remote().Large)
	if l := dA.Remote().Large; l.Sent < n*4/6 {
		t.Errorf("A sent %d messages as fragments, want at least %d", l.Sent, n*4/6)
	}
}

// TestHostSlowSinkOfLargeMessages: a sink that does not consume while
// 1 MiB messages arrive on a best-effort stream holds the RX runs its
// region has room for (two such messages); the rest are dropped and
// counted, one-slot messages still get through (their pool is apart),
// and once it consumes and releases, large messages arrive again.
func TestHostSlowSinkOfLargeMessages(t *testing.T) {
	d, sock := hostDaemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rx, tx := openApp(t, sock), openApp(t, sock)
	rst, _ := rx.CreateStream(ctx, guestlib.StreamOptions{})
	sink, err := rst.CreateSink(ctx, 23, guestlib.SinkOptions{Queue: 64})
	if err != nil {
		t.Fatal(err)
	}
	tst, _ := tx.CreateStream(ctx, guestlib.StreamOptions{})
	src, err := tst.CreateSource(ctx, 23)
	if err != nil {
		t.Fatal(err)
	}
	emit := func(seq uint64, size int) {
		b, err := src.GetBufferContext(ctx, size)
		if err != nil {
			t.Fatalf("message %d: %v", seq, err)
		}
		fillBig(b.Data, seq)
		if _, err := src.Emit(b); err != nil {
			t.Fatal(err)
		}
	}
	held := uint64((hostLayout.RXSlots - hostRXSlots) / hostLayout.SlotsFor(DefaultMaxMessage))
	const n = 10
	for seq := uint64(1); seq <= n; seq++ {
		emit(seq, DefaultMaxMessage)
	}
	eventually(t, "every large message counted", func() bool { sk := sinkInfo(d, rx.ID())[0]; return sk.Delivered+sk.Dropped == n })
	if sk := sinkInfo(d, rx.ID())[0]; sk.Delivered != held || sk.Dropped != n-held {
		t.Fatalf("slow sink: delivered %d, dropped %d; want %d and %d", sk.Delivered, sk.Dropped, held, n-held)
	}
	emit(n+1, 100) // a one-slot message passes
	eventually(t, "the one-slot message delivered", func() bool { return sinkInfo(d, rx.ID())[0].Delivered == held+1 })
	for want := uint64(1); want <= held; want++ {
		m, err := sink.Consume(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m.Seq != want || !bytes.Equal(m.Data, bigMessage(want, DefaultMaxMessage)) {
			t.Fatalf("held message %d: seq %d, %d bytes", want, m.Seq, len(m.Data))
		}
		m.Release()
	}
	if m, err := sink.Consume(ctx); err != nil || !bytes.Equal(m.Data, bigMessage(n+1, 100)) {
		t.Fatalf("the one-slot message: %v", err)
	} else {
		m.Release()
	}
	// Released: the runs are free again.
	emit(n+2, DefaultMaxMessage)
	m, err := sink.Consume(ctx)
	if err != nil || !bytes.Equal(m.Data, bigMessage(n+2, DefaultMaxMessage)) {
		t.Fatalf("a large message after the release: %v", err)
	}
	m.Release()
}
