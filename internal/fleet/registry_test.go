package fleet

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/testutil"
)

// events collects a registry's events for a test to wait on.
type events chan Event

func (ev events) next(t *testing.T, kind EventKind, id uint32) Event {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case e := <-ev:
			if e.Kind == kind && e.Node.ID == id {
				return e
			}
		case <-timeout:
			t.Fatalf("no %v event for node %d within 30s", kind, id)
		}
	}
}

// TestRegistryLearnsPeers: two registries on a real etcd see each other's
// entries, a channel change, a restart (new boot id) and a departure.
func TestRegistryLearnsPeers(t *testing.T) {
	e := testutil.StartEtcd(t, nil, "127.0.0.1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := func(id uint32, boot string, chans []uint32) (*Registry, events) {
		ev := make(events, 64)
		r, err := New(Options{Endpoints: []string{e.Endpoint}, Prefix: "/test", TTL: 2 * time.Second,
			Self:    Node{ID: id, Boot: boot, Addrs: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:7078")}, Channels: chans},
			OnEvent: func(e Event) { ev <- e }})
		if err != nil {
			t.Fatal(err)
		}
		r.Start(ctx)
		return r, ev
	}
	a, evA := start(1, "a1", []uint32{10})
	defer a.Close()
	b, evB := start(2, "b1", nil)
	if got := evA.next(t, Added, 2); got.Node.Boot != "b1" {
		t.Errorf("a learned %+v", got.Node)
	}
	if got := evB.next(t, Added, 1); !slices.Equal(got.Node.Channels, []uint32{10}) {
		t.Errorf("b learned %+v", got.Node)
	}
	a.SetChannels([]uint32{30, 10, 20, 10})
	if got := evB.next(t, Updated, 1); !slices.Equal(got.Node.Channels, []uint32{10, 20, 30}) {
		t.Errorf("b got channels %v", got.Node.Channels)
	}
	b.Close()
	evA.next(t, Removed, 2)
	b, evB = start(2, "b2", nil)
	defer b.Close()
	if got := evA.next(t, Added, 2); got.Node.Boot != "b2" {
		t.Errorf("restarted: boot %q", got.Node.Boot)
	}
	// The restarted registry lists a before etcd goes (else its first
	// sight of a comes after, as Added, not Updated).
	evB.next(t, Added, 1)
	h := a.Health()
	if !h.Connected || h.Revision == 0 || h.Nodes != 1 || h.Puts < 2 {
		t.Errorf("health %+v", h)
	}
	// etcd stopped: the registry says so, keeps its directory, and
	// catches up when etcd returns.
	e.Stop()
	deadline := time.Now().Add(30 * time.Second)
	for a.Health().Connected && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if h := a.Health(); h.Connected || h.LastError == "" || h.Nodes != 1 {
		t.Errorf("etcd down: health %+v", h)
	}
	a.SetChannels([]uint32{40})
	e.Start()
wait:
	for timeout := time.After(30 * time.Second); ; {
		select {
		case got := <-evB:
			t.Logf("b: %v node %d channels %v (revision %d)", got.Kind, got.Node.ID, got.Node.Channels, got.Revision)
			if got.Node.ID == 1 && got.Kind == Removed {
				t.Errorf("a left b's directory while etcd was down")
			}
			if got.Node.ID == 1 && got.Kind == Updated && slices.Equal(got.Node.Channels, []uint32{40}) {
				break wait
			}
		case <-timeout:
			t.Fatalf("b never got a's channels [40] after etcd returned: health %+v", a.Health())
		}
	}
	for !a.Health().Connected && time.Now().Before(deadline.Add(30*time.Second)) {
		time.Sleep(50 * time.Millisecond)
	}
	if h := a.Health(); !h.Connected {
		t.Errorf("etcd back: health %+v", h)
	}
}

// TestRegistryMove: b's Move takes channel 5 out of a's entry and into
// its own in one revision; a put of a's afterwards (its sinks are still
// there, and it gained channel 7) does not bring 5 back; a Move from a
// node with no entry fails with ErrNoEntry and b's entry still gets its
// new channels (the ordered fallback).
func TestRegistryMove(t *testing.T) {
	e := testutil.StartEtcd(t, nil, "127.0.0.1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := func(id uint32, chans []uint32) (*Registry, events) {
		ev := make(events, 64)
		r, err := New(Options{Endpoints: []string{e.Endpoint}, Prefix: "/mv", TTL: 2 * time.Second, MinInterval: time.Millisecond,
			Self:    Node{ID: id, Boot: "b" + string(rune('0'+id)), Channels: chans},
			OnEvent: func(e Event) { ev <- e }})
		if err != nil {
			t.Fatal(err)
		}
		r.Start(ctx)
		t.Cleanup(func() { r.Close() })
		return r, ev
	}
	a, evA := start(1, []uint32{5, 6})
	b, evB := start(2, nil)
	evA.next(t, Added, 2)
	first := evB.next(t, Added, 1)
	a.Leaving([]uint32{5})
	if err := b.Move(ctx, 1, []uint32{5}, []uint32{5}); err != nil {
		t.Fatal(err)
	}
	moved := evB.next(t, Updated, 1)
	if !slices.Equal(moved.Node.Channels, []uint32{6}) || moved.Revision <= first.Revision {
		t.Errorf("a's entry after the move: %+v at revision %d", moved.Node, moved.Revision)
	}
	if got := evA.next(t, Updated, 2); !slices.Equal(got.Node.Channels, []uint32{5}) || got.Revision != moved.Revision {
		t.Errorf("b's entry after the move: %+v at revision %d, want [5] at %d", got.Node, got.Revision, moved.Revision)
	}
	a.SetChannels([]uint32{5, 6, 7})
	if got := evB.next(t, Updated, 1); !slices.Equal(got.Node.Channels, []uint32{6, 7}) {
		t.Errorf("a's put after the move: %v, want [6 7] (5 left)", got.Node.Channels)
	}
	if h := a.Health(); h.Conflicts == 0 {
		t.Errorf("a's health %+v: its put after the move was not refused once", h)
	}
	if err := b.Move(ctx, 99, []uint32{1}, []uint32{5, 8}); !errors.Is(err, ErrNoEntry) {
		t.Errorf("move from a node with no entry: %v", err)
	}
	if got := evA.next(t, Updated, 2); !slices.Equal(got.Node.Channels, []uint32{5, 8}) {
		t.Errorf("b's entry after the failed move: %v", got.Node.Channels)
	}
	if h := b.Health(); h.Moves != 1 {
		t.Errorf("b's health %+v: want 1 move", h)
	}
}
