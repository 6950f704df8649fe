package lunarstream

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/testutil"
)

// Sending a frame (SourceEmitter) and receiving and verifying it
// (ConsumeSink's step) allocate nothing, as one message and in parts, on
// the host transport.
func TestStreamPathAllocatesNothing(t *testing.T) {
	testutil.Integration(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "app.sock")
	d, err := backend.NewDaemon(backend.DaemonOptions{ControlSocket: filepath.Join(dir, "control.sock"), AppSocket: sock,
		Runtime: backend.RuntimeOptions{Remote: backend.RemoteOptions{MaxMessage: 4 << 20}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	s, err := guestlib.Open(ctx, guestlib.Options{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := s.CreateStream(ctx, guestlib.StreamOptions{Reliable: true})
	if err != nil {
		t.Fatal(err)
	}
	const ch = 9
	sk, err := st.CreateSink(ctx, ch, guestlib.SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	src, err := st.CreateSource(ctx, ch)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name           string
		size, msgSize  int
		wantMsgsAFrame int
	}{
		{"one message", 200000, MessageSize(s), 1},
		{"parts", 10000, guestlib.MaxMessage, 8},
	} {
		t.Run(c.name, func(t *testing.T) {
			const runs = 50
			e := &SourceEmitter{Src: src, MessageSize: c.msgSize}
			r := NewReceiver(runs+1, c.msgSize)
			body := make([]byte, c.size)
			f := uint64(0)
			allocs := testing.AllocsPerRun(runs, func() {
				Fill(body, f, 0)
				h := Header{Frame: f, SendTime: time.Now().UnixNano(), Length: uint32(len(body)), Checksum: Checksum(body)}
				f++
				before := e.Messages
				if err := e.EmitFrame(ctx, h, body); err != nil {
					t.Fatal(err)
				}
				for range e.Messages - before {
					if err := consumeOne(ctx, sk, r); err != nil {
						t.Fatal(err)
					}
				}
			})
			if s := r.Summary(); s.Verified != runs+1 || e.Messages != uint64(c.wantMsgsAFrame*(runs+1)) {
				t.Fatalf("%d messages; %+v", e.Messages, s)
			}
			if allocs != 0 {
				t.Errorf("%.1f allocations a frame", allocs)
			}
		})
	}
}
