package slots

import (
	"sync"
	"testing"
)

type meta struct{ n uint16 }

func TestNewRefusesSizes(t *testing.T) {
	for _, o := range []Options{{Slots: 0}, {Slots: 1}, {Slots: 3}, {Slots: 4, SlotSize: -1},
		{Slots: 4, SlotSize: 16, Headroom: -1}, {Slots: 4, Headroom: 8}, {Slots: 4, SlotSize: 16, Headroom: 8, Mem: make([]byte, 4*24-1)}} {
		if _, err := New[meta](o); err != ErrSize {
			t.Errorf("%+v: %v, want ErrSize", o, err)
		}
	}
}

// TestCallerMemoryWithHeadroom: a pool over the caller's memory lays slot
// i at i*(Headroom+SlotSize)+Headroom, and no slot's bytes reach another
// slot's headroom.
func TestCallerMemoryWithHeadroom(t *testing.T) {
	mem := make([]byte, 4*24)
	p := MustNew[meta](Options{Slots: 4, SlotSize: 16, Headroom: 8, Mem: mem})
	for id := range uint32(4) {
		b := p.Bytes(id)
		if len(b) != 16 || cap(b) != 16 || &b[0] != &mem[int(id)*24+8] {
			t.Fatalf("slot %d: %d bytes (cap %d), want 16 at offset %d", id, len(b), cap(b), int(id)*24+8)
		}
	}
	if q := MustNew[meta](Options{Slots: 4, SlotSize: 16, Headroom: 8}); len(q.Bytes(3)) != 16 {
		t.Fatal("a pool's own memory with headroom")
	}
}

func TestGetPutAndExhaustion(t *testing.T) {
	p := MustNew[meta](Options{Slots: 4, SlotSize: 16})
	seen := map[uint32]bool{}
	for range 4 {
		id, ok := p.Get()
		if !ok || seen[id] || p.State(id) != Held || len(p.Bytes(id)) != 16 || cap(p.Bytes(id)) != 16 {
			t.Fatalf("get %d, %v", id, ok)
		}
		seen[id] = true
	}
	if _, ok := p.Get(); ok || p.Exhausted() != 1 || p.Free() != 0 {
		t.Fatalf("fifth get from four slots: exhausted %d, free %d", p.Exhausted(), p.Free())
	}
	for id := range seen {
		p.Put(id)
	}
	if p.Free() != 4 {
		t.Fatalf("%d free after putting all back", p.Free())
	}
}

func TestPutTwicePanics(t *testing.T) {
	p := MustNew[meta](Options{Slots: 2})
	id, _ := p.Get()
	p.Put(id)
	defer func() {
		if recover() == nil {
			t.Fatal("second Put did not panic")
		}
		if p.Free() != 2 {
			t.Fatalf("%d free: the second Put reached the free list", p.Free())
		}
	}()
	p.Put(id)
}

// TestReclaimRefusesWhatWasNotLent: the party a slot was lent to can give
// it back once, and nothing else.
func TestReclaimRefusesWhatWasNotLent(t *testing.T) {
	p := MustNew[meta](Options{Slots: 4})
	held, _ := p.Get()
	lent, _ := p.Get()
	p.Lend(lent)
	for _, tc := range []struct {
		name string
		id   uint32
		want bool
	}{
		{"out of range", 4, false},
		{"out of range, high", ^uint32(0), false},
		{"free", 3, false},
		{"held by the daemon", held, false},
		{"lent", lent, true},
		{"lent, freed again", lent, false},
	} {
		if got := p.Reclaim(tc.id); got != tc.want {
			t.Errorf("%s: Reclaim(%d) = %v", tc.name, tc.id, got)
		}
	}
	if p.Free() != 3 || p.State(held) != Held {
		t.Fatalf("free %d, held slot %v", p.Free(), p.State(held))
	}
}

// TestConcurrentGetPut: slots taken and put by several goroutines at once
// are never handed to two holders.
// ReclaimHeld takes a lent slot back held, as Get would give it, and
// refuses what Reclaim refuses.
func TestReclaimHeld(t *testing.T) {
	p := MustNew[meta](Options{Slots: 4})
	id, _ := p.Get()
	if p.ReclaimHeld(id) || p.State(id) != Held {
		t.Fatal("a held slot reclaimed")
	}
	p.Lend(id)
	if p.ReclaimHeld(4) || p.ReclaimHeld(^uint32(0)) {
		t.Fatal("an id out of range reclaimed")
	}
	if !p.ReclaimHeld(id) || p.State(id) != Held || p.Free() != 3 {
		t.Fatalf("lent slot: state %v, free %d", p.State(id), p.Free())
	}
	if p.ReclaimHeld(id) || p.Reclaim(id) {
		t.Fatal("a slot given back twice")
	}
	for i := range uint32(4) {
		if p.State(i) == Free && p.ReclaimHeld(i) {
			t.Fatalf("free slot %d reclaimed", i)
		}
	}
	p.Lend(id) // held again, so it may be lent again
	if !p.Reclaim(id) || p.Free() != 4 {
		t.Fatalf("free %d after the normal reclaim", p.Free())
	}
}

func TestConcurrentGetPut(t *testing.T) {
	p := MustNew[meta](Options{Slots: 64, SlotSize: 8})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20000 {
				id, ok := p.Get()
				if !ok {
					continue
				}
				b := p.Bytes(id)
				b[0] = byte(g)
				p.Meta(id).n = uint16(i)
				if b[0] != byte(g) || p.Meta(id).n != uint16(i) {
					t.Errorf("slot %d written by another holder", id)
					return
				}
				p.Put(id)
			}
		}()
	}
	wg.Wait()
	if p.Free() != 64 {
		t.Fatalf("%d of 64 free", p.Free())
	}
}

func TestNoAllocations(t *testing.T) {
	p := MustNew[meta](Options{Slots: 64, SlotSize: 64})
	if a := testing.AllocsPerRun(1000, func() {
		id, _ := p.Get()
		p.Meta(id).n = 1
		p.Bytes(id)[0] = 1
		p.Put(id)
		id, _ = p.Get()
		p.Lend(id)
		p.Reclaim(id)
	}); a != 0 {
		t.Fatalf("%v allocations", a)
	}
}

func BenchmarkGetPut(b *testing.B) {
	p := MustNew[meta](Options{Slots: 1024, SlotSize: 2048})
	for b.Loop() {
		id, _ := p.Get()
		p.Put(id)
	}
}
