package guestlib

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/internal/shm"
)

// TestHostReceiveSkipsASlotStillHeld: a Message is its RX slot's own
// (hostShm.msgs), so an entry naming a slot the application still holds
// — which no working daemon sends — is skipped, not allowed to overwrite
// the message in the application's hands; once released, the slot's next
// delivery is taken, and the slot went back to the daemon once.
func TestHostReceiveSkipsASlotStillHeld(t *testing.T) {
	l := shm.Layout{SlotSize: 2048, TXSlots: 512, RXSlots: 1024}
	d, err := shm.Create("guestlib-test", l)
	if err != nil {
		t.Fatalf("create a shared-memory region: %v", err)
	}
	defer d.Close()
	tx, _ := shm.NewNotifier()
	rx, _ := shm.NewNotifier()
	defer tx.Close()
	defer rx.Close()
	fds := make([]int, 3)
	for i, fd := range []int{d.FD(), tx.FD(), rx.FD()} {
		if fds[i], err = unix.Dup(fd); err != nil {
			t.Fatal(err)
		}
	}
	h, err := newHostShm(fds, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer h.unref()
	sk := &Sink{id: 7, channel: 5, queue: make(chan *Message, 8)}
	s := &Session{host: h, sinks: map[uint32]*Sink{7: sk}}
	sk.s = s
	ring, free := d.RXProducer(), d.FreeConsumer()
	deliver := func(slot uint32, seq uint64) {
		copy(d.RXSlot(slot), "hello")
		shm.PutRX(ring.Entry(0), shm.RXEntry{Slot: slot, Len: 5, Sink: 7, Source: 1, Seq: seq})
		ring.Publish(1)
		h.rxPoll.Lock()
		h.receiveOnce(s)
		h.rxPoll.Unlock()
	}
	deliver(3, 1)
	deliver(3, 2) // slot 3 is still the application's
	if len(sk.queue) != 1 {
		t.Fatalf("%d messages queued, want 1: an entry for a slot still held was taken", len(sk.queue))
	}
	m := <-sk.queue
	if m.Seq != 1 || string(m.Data) != "hello" {
		t.Fatalf("the held message changed: seq %d, %q", m.Seq, m.Data)
	}
	m.Release()
	if m.host != nil {
		t.Error("Release left the slot's Message in use")
	}
	deliver(3, 3)
	if len(sk.queue) != 1 {
		t.Fatalf("%d messages queued after the release, want 1", len(sk.queue))
	}
	if m2 := <-sk.queue; m2.Seq != 3 {
		t.Errorf("seq %d, want 3", m2.Seq)
	}
	if n, _ := free.Available(); n != 1 || shm.GetID(free.Entry(0)) != 3 {
		t.Errorf("%d slots freed, want slot 3 once", n)
	}
	if got := h.refs.Load(); got != 2 { // the session's and the message in hand
		t.Errorf("%d references, want 2", got)
	}
}
