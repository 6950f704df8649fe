package pubsub_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/examples/pubsub"
	"github.com/veloce-io/veloce/guestlib"
)

// Two applications on one host share topics through the daemon: each
// subscriber gets its topic's messages, in order, and nothing else.
func TestTopics(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "app.sock")
	d, err := backend.NewDaemon(backend.DaemonOptions{ControlSocket: filepath.Join(dir, "control.sock"), AppSocket: sock})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.Start(ctx); err != nil { // the app socket listens
		t.Fatal(err)
	}
	defer d.Close()
	open := func() *guestlib.Session {
		s, err := guestlib.Open(ctx, guestlib.Options{Socket: sock})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	pubBus, _ := pubsub.New(ctx, open(), guestlib.StreamOptions{})
	subBus, _ := pubsub.New(ctx, open(), guestlib.StreamOptions{})

	var mu sync.Mutex
	got := map[string][]string{}
	for _, topic := range []string{"sensors/temp", "sensors/humidity"} {
		if err := subBus.Subscribe(ctx, topic, func(topic string, data []byte) {
			mu.Lock()
			got[topic] = append(got[topic], string(data))
			mu.Unlock()
		}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 50; i++ {
		pubBus.Publish(ctx, "sensors/temp", []byte{'t', byte('0' + i%10)})
		pubBus.Publish(ctx, "sensors/humidity", []byte{'h', byte('0' + i%10)})
		pubBus.Publish(ctx, "nobody/listens", []byte("x"))
	}
	for {
		mu.Lock()
		n := len(got["sensors/temp"]) + len(got["sensors/humidity"])
		mu.Unlock()
		if n == 100 || ctx.Err() != nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, topic := range []string{"sensors/temp", "sensors/humidity"} {
		msgs := got[topic]
		if len(msgs) != 50 {
			t.Fatalf("%s: %d messages, want 50", topic, len(msgs))
		}
		for i, m := range msgs {
			if m[0] != topic[8] || m[1] != byte('0'+i%10) {
				t.Fatalf("%s message %d: %q", topic, i, m)
			}
		}
	}
	if err := pubBus.Publish(ctx, "", nil); err != pubsub.ErrTopic {
		t.Errorf("empty topic: %v", err)
	}
}
