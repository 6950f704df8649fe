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
// lost in r's Summary); ctx's error otherwise.
func ConsumeSink(ctx context.Context, sk *guestlib.Sink, r *Receiver, idle time.Duration) error {
	for got := false; !r.Done(); {
		c, cancel := ctx, context.CancelFunc(func() {})
		if got && idle > 0 {
			c, cancel = context.WithTimeout(ctx, idle)
		}
		m, err := sk.Consume(c)
		cancel()
		if err != nil {
			if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				return nil // idle: the producer is gone
			}
			return err
		}
		got = true
		r.Accept(m.Data, time.Now()) // malformed messages are counted
		m.Release()
	}
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
		if err != nil || h.Offset != 0 {
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
