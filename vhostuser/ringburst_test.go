package vhostuser_test

import (
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
)

// Bursts longer than what the rings batch internally (64 avail entries
// read at once, 64 used entries held back until Publish): every chain
// comes out once, in order, and every used entry reaches the driver, with
// its id and length, only at Publish.

const burstChains = 200

func TestSplitRingBurstsBeyondBatches(t *testing.T) {
	e := newRing(t, 256, nil)
	heads := make([]uint16, burstChains)
	for i := range heads {
		heads[i], _ = e.d.AddChain(vhostusertest.Buf{WriteLen: 256})
	}
	chains := make([]*vhostuser.Chain, burstChains)
	for i := range chains {
		chains[i] = vhostuser.NewChain(4)
		if ok, err := e.r.Pop(chains[i]); !ok || err != nil {
			t.Fatalf("Pop %d = %v, %v", i, ok, err)
		}
		if chains[i].Head() != heads[i] {
			t.Fatalf("chain %d: head %d, want %d", i, chains[i].Head(), heads[i])
		}
	}
	if ok, err := e.r.Pop(e.c); ok || err != nil {
		t.Fatalf("Pop past the offered chains = %v, %v", ok, err)
	}
	// Pushed last first: ids need not come back in order.
	for i := burstChains - 1; i >= 0; i-- {
		if err := e.r.Push(chains[i], uint32(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.d.UsedIdx(); got != 0 {
		t.Fatalf("used->idx %d before Publish", got)
	}
	e.r.Publish()
	for i := burstChains - 1; i >= 0; i-- {
		id, l, ok := e.d.Used()
		if !ok || id != uint32(heads[i]) || l != uint32(i+1) {
			t.Fatalf("used entry for chain %d = (%d, %d, %v), want (%d, %d)", i, id, l, ok, heads[i], i+1)
		}
	}
	if _, _, ok := e.d.Used(); ok {
		t.Fatal("more used entries than pushed")
	}
}

// TestSplitRingWrapsWithBatches drives a small ring many times round
// (the avail and used indices wrap at 16 bits), with bursts that do not
// divide the ring size and a rewind of the next available index.
func TestSplitRingWrapsWithBatches(t *testing.T) {
	e := newRing(t, 8, nil)
	for round := range 20000 {
		n := 1 + round%7
		heads := make([]uint16, n)
		for i := range heads {
			heads[i], _ = e.d.AddChain(vhostusertest.Buf{WriteLen: 64})
		}
		for i := range heads {
			c := e.pop(t)
			if c.Head() != heads[i] {
				t.Fatalf("round %d chain %d: head %d, want %d", round, i, c.Head(), heads[i])
			}
			if err := e.r.Push(c, uint32(i)); err != nil {
				t.Fatal(err)
			}
		}
		e.r.Publish()
		for i := range heads {
			if id, l, ok := e.d.Used(); !ok || id != uint32(heads[i]) || l != uint32(i) {
				t.Fatalf("round %d used %d = (%d, %d, %v), want (%d, %d)", round, i, id, l, ok, heads[i], i)
			}
		}
		e.d.ResetData(dataGPA)
		if round == 1000 {
			// SET_VRING_BASE back by nothing: the cached entries go.
			e.r.SetLastAvailIdx(e.r.LastAvailIdx())
		}
	}
}

func TestPackedRingBurstsBeyondBatches(t *testing.T) {
	e := newPacked(t, 256, nil)
	ids := make([]uint16, burstChains)
	for i := range ids {
		ids[i], _ = e.d.AddChain(vhostusertest.Buf{WriteLen: 256})
	}
	chains := make([]*vhostuser.Chain, burstChains)
	for i := range chains {
		chains[i] = vhostuser.NewChain(4)
		if ok, err := e.r.Pop(chains[i]); !ok || err != nil {
			t.Fatalf("Pop %d = %v, %v", i, ok, err)
		}
		if chains[i].Head() != ids[i] {
			t.Fatalf("chain %d: id %d, want %d", i, chains[i].Head(), ids[i])
		}
	}
	for i := range chains {
		if err := e.r.Push(chains[i], uint32(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, ok := e.d.Used(); ok {
		t.Fatal("a used descriptor visible before Publish")
	}
	e.r.Publish()
	for i := range chains {
		id, l, ok := e.d.Used()
		if !ok || id != ids[i] || l != uint32(i+1) {
			t.Fatalf("used descriptor %d = (%d, %d, %v), want (%d, %d)", i, id, l, ok, ids[i], i+1)
		}
	}
	if _, _, ok := e.d.Used(); ok {
		t.Fatal("more used descriptors than pushed")
	}
}
