// Package guestlibtest holds test helpers for guestlib applications,
// shared by the tests of guestlib and of the daemon.
package guestlibtest

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/veloce-io/veloce/guestlib"
)

// PingPong is a ping-pong between two applications, A and B: A emits on
// ASrc and consumes the echo on ASink; B consumes on BSink and echoes on
// BSrc. Streams are the streams they were made on, for the test to close.
type PingPong struct {
	ASrc, BSrc   *guestlib.Source
	ASink, BSink *guestlib.Sink
	Streams      []*guestlib.Stream
}

// Run makes n round trips, each message carrying its number, and fails
// t when a reply carries another or an operation fails.
func (p *PingPong) Run(t testing.TB, ctx context.Context, n int) {
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
			m, err := p.BSink.Consume(ctx)
			if err != nil {
				echoed <- err
				return
			}
			v := binary.LittleEndian.Uint64(m.Data)
			m.Release()
			if err := send(p.BSrc, v); err != nil {
				echoed <- err
				return
			}
		}
		echoed <- nil
	}()
	for i := range n {
		if err := send(p.ASrc, uint64(i)); err != nil {
			t.Fatalf("round trip %d: %v", i, err)
		}
		m, err := p.ASink.Consume(ctx)
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
