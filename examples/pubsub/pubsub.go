// Package pubsub is a small publish/subscribe message bus on the Veloce
// API, after the INSANE paper's LunarMoM: a topic is a channel (its name
// hashed to a channel id), a publisher is a source, a subscriber a sink.
// Every message carries its topic's name, so two topics whose names hash
// to the same channel stay apart.
//
//	bus, _ := pubsub.New(ctx, session, guestlib.StreamOptions{})
//	bus.Subscribe(ctx, "sensors/temp", func(topic string, data []byte) { ... })
//	bus.Publish("sensors/temp", []byte("21.5"))
package pubsub

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"

	"github.com/veloce-io/veloce/guestlib"
)

// MaxTopic is the longest topic name.
const MaxTopic = 255

// Channel returns the channel id of a topic.
func Channel(topic string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(topic))
	return h.Sum32()
}

// Bus publishes and subscribes on one stream of a session.
type Bus struct {
	st *guestlib.Stream

	mu         sync.Mutex
	publishers map[string]*guestlib.Source // +checklocks:mu
	subs       []*guestlib.Sink            // +checklocks:mu
}

// New opens the bus's stream on s with opts.
func New(ctx context.Context, s *guestlib.Session, opts guestlib.StreamOptions) (*Bus, error) {
	st, err := s.CreateStream(ctx, opts)
	if err != nil {
		return nil, err
	}
	return &Bus{st: st, publishers: map[string]*guestlib.Source{}}, nil
}

// Warning returns the stream's fallback warning, if any.
func (b *Bus) Warning() string { return b.st.Warning }

// ErrTopic is returned for an empty or overlong topic name.
var ErrTopic = errors.New("pubsub: topic name must be 1 to 255 bytes")

// Publish sends data on topic.
func (b *Bus) Publish(ctx context.Context, topic string, data []byte) error {
	if len(topic) == 0 || len(topic) > MaxTopic {
		return ErrTopic
	}
	b.mu.Lock()
	src := b.publishers[topic]
	b.mu.Unlock()
	if src == nil {
		var err error
		if src, err = b.st.CreateSource(ctx, Channel(topic)); err != nil {
			return err
		}
		b.mu.Lock()
		if old := b.publishers[topic]; old != nil {
			src.Close(ctx)
			src = old
		} else {
			b.publishers[topic] = src
		}
		b.mu.Unlock()
	}
	buf, err := src.GetBufferContext(ctx, 1+len(topic)+len(data))
	if err != nil {
		return fmt.Errorf("pubsub: publish on %q: %w", topic, err)
	}
	buf.Data[0] = byte(len(topic))
	copy(buf.Data[1:], topic)
	copy(buf.Data[1+len(topic):], data)
	_, err = src.Emit(buf)
	return err
}

// Subscribe calls handler for every message published on topic from now
// on, on the session's receive goroutine; data is valid during the call.
func (b *Bus) Subscribe(ctx context.Context, topic string, handler func(topic string, data []byte)) error {
	if len(topic) == 0 || len(topic) > MaxTopic {
		return ErrTopic
	}
	sk, err := b.st.CreateSink(ctx, Channel(topic), guestlib.SinkOptions{Callback: func(m *guestlib.Message) {
		defer m.Release()
		if len(m.Data) < 1 || len(m.Data) < 1+int(m.Data[0]) {
			return
		}
		t := m.Data[1 : 1+int(m.Data[0])]
		if string(t) != topic {
			return // another topic on the same channel
		}
		handler(topic, m.Data[1+len(t):])
	}})
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.subs = append(b.subs, sk)
	b.mu.Unlock()
	return nil
}

// Close closes the bus's stream with its publishers and subscriptions.
func (b *Bus) Close(ctx context.Context) error { return b.st.Close(ctx) }
