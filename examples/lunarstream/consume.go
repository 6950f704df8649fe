package lunarstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/veloce-io/veloce/guestlib"
)

// ConsumeSink feeds r from sk until r is Done, ctx ends, or (after the
// first message) nothing arrives for idle (0: wait for ctx). It returns
// nil in the first case, and in the last (what was missing counts as
// lost in r's Summary); ctx's error otherwise. It allocates nothing per
// message (one timer, reset, bounds the idle time).
func ConsumeSink(ctx context.Context, sk *guestlib.Sink, r *Receiver, idle time.Duration) error {
	c, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var timer *time.Timer
	if idle > 0 {
		timer = time.AfterFunc(time.Hour, func() { cancel(errIdle) })
		timer.Stop() // armed by the first message
		defer timer.Stop()
	}
	for !r.Done() {
		if err := consumeOne(c, sk, r); err != nil {
			if ctx.Err() == nil && context.Cause(c) == errIdle {
				return nil // idle: the producer is gone
			}
			return err
		}
		if timer != nil {
			timer.Reset(idle)
		}
	}
	return nil
}

var errIdle = errors.New("lunarstream: nothing arrived for the idle time")

// consumeOne waits for one message of sk and feeds it to r (a malformed
// one is counted).
func consumeOne(ctx context.Context, sk *guestlib.Sink, r *Receiver) error {
	m, err := sk.Consume(ctx)
	if err != nil {
		return err
	}
	r.Accept(m.Data, time.Now())
	m.Release()
	return nil
}

// ErrStreamHeader is returned by ConsumeStream for a frame header that does
// not parse: the byte stream is out of step and cannot be resynchronised.
var ErrStreamHeader = errors.New("lunarstream: bad frame header on the byte stream")

// ConsumeStream feeds r from rd (a TCP connection: header, body, header,
// ...) until r is Done or rd ends (io.EOF after whole frames: nil).
// A header that does not parse ends it with ErrStreamHeader.
func ConsumeStream(rd io.Reader, r *Receiver) error {
	var hdr [HeaderLen]byte
	for !r.Done() {
		if _, err := io.ReadFull(rd, hdr[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		h, err := Parse(hdr[:], 0)
		if err == nil && h.Offset != 0 {
			err = fmt.Errorf("offset %d, want 0", h.Offset)
		}
		if err != nil {
			r.malformed++
			return fmt.Errorf("%w: %v", ErrStreamHeader, err)
		}
		if h.Length == 0 {
			r.AcceptPart(h, nil, time.Now())
			continue
		}
		for off := uint32(0); off < h.Length; {
			n := min(int(h.Length-off), len(r.buf()))
			p := r.buf()[:n]
			if _, err := io.ReadFull(rd, p); err != nil {
				return fmt.Errorf("lunarstream: frame %d: %w", h.Frame, err)
			}
			h.Offset = off
			r.AcceptPart(h, p, time.Now())
			off += uint32(n)
		}
	}
	return nil
}

// buf is the receiver's read buffer for byte streams (made on first use,
// the size of its scratch).
func (r *Receiver) buf() []byte {
	if r.rbuf == nil {
		r.rbuf = make([]byte, len(r.scratch))
	}
	return r.rbuf
}
