package lunarstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/veloce-io/veloce/guestlib"
)

// Options configure a producer.
type Options struct {
	// FrameSize is each frame's body length; default DefaultFrameSize, at
	// most MaxFrameSize.
	FrameSize int
	// FPS is the frame rate: frame n leaves at start + n/FPS, or at once
	// when the producer is behind. 0 sends as fast as the transport takes
	// them.
	FPS float64
	// Frames is how many frames to send (numbered from 0); at least 1.
	Frames int
}

// Emitter carries one frame: its header (Offset 0) and its whole body.
type Emitter interface {
	EmitFrame(ctx context.Context, h Header, body []byte) error
}

// SenderSummary is what a producer reports.
type SenderSummary struct {
	Role      string  `json:"role"` // "producer"
	Transport string  `json:"transport"`
	FrameSize int     `json:"frame_size"`
	Frames    int     `json:"frames"`
	Messages  uint64  `json:"messages"` // stream messages (TCP: frames)
	Seconds   float64 `json:"seconds"`  // first frame begun to last frame sent
	FPS       float64 `json:"fps"`      // (frames-1)/seconds
}

// Run sends o.Frames frames through e at o.FPS. It returns when all are
// sent, on e's first error, or when ctx ends.
func Run(ctx context.Context, o Options, e Emitter) (SenderSummary, error) {
	if o.FrameSize == 0 {
		o.FrameSize = DefaultFrameSize
	}
	if o.FrameSize < 0 || o.FrameSize > MaxFrameSize {
		return SenderSummary{}, fmt.Errorf("lunarstream: frame size %d not within 0..%d", o.FrameSize, MaxFrameSize)
	}
	if o.Frames < 1 || o.FPS < 0 {
		return SenderSummary{}, errors.New("lunarstream: want at least 1 frame and a frame rate of at least 0")
	}
	s := SenderSummary{Role: "producer", FrameSize: o.FrameSize, Frames: o.Frames}
	body := make([]byte, o.FrameSize)
	var interval time.Duration
	if o.FPS > 0 {
		interval = time.Duration(float64(time.Second) / o.FPS)
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	start := time.Now()
	for f := range o.Frames {
		if interval > 0 {
			if wait := time.Until(start.Add(time.Duration(f) * interval)); wait > 0 {
				timer.Reset(wait)
				select {
				case <-timer.C:
				case <-ctx.Done():
					return s, ctx.Err()
				}
			}
		}
		Fill(body, uint64(f), 0)
		h := Header{Frame: uint64(f), SendTime: time.Now().UnixNano(), Length: uint32(len(body)), Checksum: Checksum(body)}
		if err := e.EmitFrame(ctx, h, body); err != nil {
			return s, fmt.Errorf("lunarstream: frame %d: %w", f, err)
		}
	}
	if d := time.Since(start); d > 0 {
		s.Seconds = round2(d.Seconds())
		if o.Frames > 1 {
			s.FPS = round2(float64(o.Frames-1) / d.Seconds()) // as the consumer counts: between first and last
		}
	}
	return s, nil
}

// SourceEmitter sends each frame on src as messages of at most
// messageSize bytes (header included): one when the frame fits, else
// consecutive parts. It waits for TX buffers (GetBufferContext).
type SourceEmitter struct {
	Src *guestlib.Source
	// MessageSize is the largest message the session takes (a header and
	// at least one byte of body: over HeaderLen).
	MessageSize int
	// Messages counts what was emitted.
	Messages uint64
}

// EmitFrame implements Emitter.
func (e *SourceEmitter) EmitFrame(ctx context.Context, h Header, body []byte) error {
	room := e.MessageSize - HeaderLen
	if room < 1 {
		return fmt.Errorf("message size %d leaves no room after the %d-byte header", e.MessageSize, HeaderLen)
	}
	for off := 0; ; {
		n := min(room, len(body)-off)
		buf, err := e.Src.GetBufferContext(ctx, HeaderLen+n)
		if err != nil {
			return err
		}
		h.Offset = uint32(off)
		h.Put(buf.Data)
		copy(buf.Data[HeaderLen:], body[off:off+n])
		if _, err := e.Src.Emit(buf); err != nil {
			return err
		}
		e.Messages++
		if off += n; off >= len(body) {
			return nil
		}
	}
}

// StreamEmitter writes each frame to w (a TCP connection) as its header
// and body: the header's Length is the frame's length prefix.
type StreamEmitter struct {
	W   io.Writer
	hdr [HeaderLen]byte
}

// EmitFrame implements Emitter.
func (e *StreamEmitter) EmitFrame(_ context.Context, h Header, body []byte) error {
	h.Offset = 0
	h.Put(e.hdr[:])
	if _, err := e.W.Write(e.hdr[:]); err != nil {
		return err
	}
	_, err := e.W.Write(body)
	return err
}

var (
	_ Emitter = (*SourceEmitter)(nil)
	_ Emitter = (*StreamEmitter)(nil)
)

// MessageSize is the largest message s emits (Session.MaxMessage): the
// daemon's --max-message as the session learned it (give the daemon
// 4 MiB for one 2,764,800-byte frame a message). A sink in a VM receives
// at most guestlib.MaxMessage for now: a consumer there opens with that
// message size, and its producer must send parts of that size.
func MessageSize(s *guestlib.Session) int { return s.MaxMessage() }
