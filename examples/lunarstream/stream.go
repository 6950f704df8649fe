package lunarstream

import (
	"context"
	"fmt"
	"time"

	"github.com/veloce-io/veloce/guestlib"
)

// Produce opens a stream (QoS Reliable when reliable is set) and a source
// on channel in sess and sends o's frames on it as messages of at most
// messageSize bytes (0: MessageSize(sess)). The stream stays open: the
// last frames may still be on their way, and closing the session (which
// first waits for the daemon to take every emitted message) closes it.
func Produce(ctx context.Context, sess *guestlib.Session, channel uint32, reliable bool, messageSize int, o Options) (SenderSummary, error) {
	st, err := sess.CreateStream(ctx, guestlib.StreamOptions{Reliable: reliable})
	if err != nil {
		return SenderSummary{}, fmt.Errorf("lunarstream: create stream: %w", err)
	}
	src, err := st.CreateSource(ctx, channel)
	if err != nil {
		return SenderSummary{}, fmt.Errorf("lunarstream: create source: %w", err)
	}
	if messageSize == 0 {
		messageSize = MessageSize(sess)
	}
	e := &SourceEmitter{Src: src, MessageSize: messageSize}
	s, err := Run(ctx, o, e)
	s.Transport, s.Messages = "veloce", e.Messages
	return s, err
}

// Consumer is a stream's sink of frames (OpenConsumer, then Run).
type Consumer struct {
	st *guestlib.Stream
	sk *guestlib.Sink
	r  *Receiver
}

// OpenConsumer opens a stream (Reliable when reliable is set) and a sink
// on channel in sess, for frames frames (0: unknown) in messages of at
// most messageSize bytes (0: MessageSize(sess)). Frames sent from now on
// reach it; Run receives them.
func OpenConsumer(ctx context.Context, sess *guestlib.Session, channel uint32, reliable bool, frames, messageSize int) (*Consumer, error) {
	st, err := sess.CreateStream(ctx, guestlib.StreamOptions{Reliable: reliable})
	if err != nil {
		return nil, fmt.Errorf("lunarstream: create stream: %w", err)
	}
	sk, err := st.CreateSink(ctx, channel, guestlib.SinkOptions{})
	if err != nil {
		st.Close(ctx)
		return nil, fmt.Errorf("lunarstream: create sink: %w", err)
	}
	if messageSize == 0 {
		messageSize = MessageSize(sess)
	}
	return &Consumer{st: st, sk: sk, r: NewReceiver(frames, messageSize)}, nil
}

// Run receives and verifies frames until the last expected one is
// finished, nothing arrived for idle after the first, or ctx ends
// (ConsumeSink), closes the stream and returns the summary.
func (c *Consumer) Run(ctx context.Context, idle time.Duration) (Summary, error) {
	err := ConsumeSink(ctx, c.sk, c.r, idle)
	s := c.r.Summary()
	cur := c.st.Current()
	s.Transport, s.Datapath, s.Warning, s.SinkDropped = "veloce", cur.Datapath, cur.Warning, c.sk.Dropped()
	c.st.Close(context.WithoutCancel(ctx))
	return s, err
}
