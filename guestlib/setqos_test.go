package guestlib_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/guestlib"
)

// TestHostAppToldOfQoSChange: a host application streams to another while
// the operator changes its stream's QoS twice through the control socket
// (velocectl streams set-qos); this host has kernel UDP only, so asking
// for acceleration falls back with a warning. Every message arrives once
// and in order, and the application gets one event per change, with the
// datapath and warning, and Current follows.
func TestHostAppToldOfQoSChange(t *testing.T) {
	_, sock := daemon(t)
	ctl := control.NewClient(filepath.Join(filepath.Dir(sock), "control.sock"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rx, tx := open(t, sock), open(t, sock)
	rst, _ := rx.CreateStream(ctx, guestlib.StreamOptions{Reliable: true})
	sink, err := rst.CreateSink(ctx, 12, guestlib.SinkOptions{Queue: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	tst, _ := tx.CreateStream(ctx, guestlib.StreamOptions{Reliable: true})
	src, err := tst.CreateSource(ctx, 12)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20000
	go func() {
		for i := 0; i < n; i++ {
			b, err := src.GetBufferContext(ctx, 64)
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := src.Emit(b); err != nil {
				t.Error(err)
				return
			}
			if i%1000 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	changes := []control.StreamOptions{{Acceleration: true, Reliable: true}, {Reliable: true}}
	go func() {
		for _, o := range changes {
			time.Sleep(5 * time.Millisecond)
			if _, err := ctl.SetStreamQoS(ctx, tst.ID(), o); err != nil {
				t.Error(err)
			}
		}
	}()
	var last uint64
	for i := 0; i < n; i++ {
		m, err := sink.Consume(ctx)
		if err != nil {
			t.Fatalf("after %d: %v", i, err)
		}
		if m.Seq != last+1 {
			t.Fatalf("message %d: seq %d after %d", i, m.Seq, last)
		}
		last = m.Seq
		m.Release()
	}
	for i, want := range []bool{true, false} {
		select {
		case ev := <-tst.Events():
			if ev.Datapath != "udp" || (ev.Warning != "") != want {
				t.Errorf("event %d: %+v", i, ev)
			}
		case <-ctx.Done():
			t.Fatalf("event %d never came", i)
		}
	}
	if cur := tst.Current(); cur.Datapath != "udp" || cur.Warning != "" {
		t.Errorf("Current: %+v", cur)
	}
	if cur := rst.Current(); cur.Datapath != "udp" {
		t.Errorf("the other stream: %+v", cur)
	}
}
