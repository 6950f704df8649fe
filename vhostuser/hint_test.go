package vhostuser_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
)

// TestChainRegionHint: a Chain remembers the region of its last buffer
// to skip the search, for the memory table it found it in only. Buffers
// alternate between two regions (each translated right), and once the
// second region is removed a buffer there is refused even though the
// chain's hint still names it.
func TestChainRegionHint(t *testing.T) {
	e := newRing(t, 8, nil)
	const farGPA, farSize = 0x4000_0000, 1 << 20
	far := vhostusertest.NewGuest(t, farGPA, 0x7e00_0000_0000, farSize)
	if err := e.mem.AddRegion(far.Region, far.OwnedFD(t)); err != nil {
		t.Fatal(err)
	}
	copy(e.g.Bytes(dataGPA, 4), "near")
	copy(far.Bytes(farGPA+64, 3), "far")
	for i := range 4 {
		addr, want := uint64(dataGPA), "near"
		if i%2 == 1 {
			addr, want = farGPA+64, "far"
		}
		e.d.SetDesc(0, addr, uint32(len(want)), 0, 0)
		e.d.Offer(0)
		c := e.pop(t)
		got := make([]byte, 8)
		if n := c.Gather(got); !bytes.Equal(got[:n], []byte(want)) {
			t.Fatalf("pop %d: %q, want %q", i, got[:n], want)
		}
		if err := e.r.Push(c, 0); err != nil {
			t.Fatal(err)
		}
	}
	// The hint is the far region now; a buffer running past its end is
	// not one segment of it.
	e.d.SetDesc(0, farGPA+farSize-8, 16, 0, 0)
	e.d.Offer(0)
	if ok, err := e.r.Pop(e.c); ok || !errors.Is(err, vhostuser.ErrDescriptorAddress) {
		t.Fatalf("buffer past the far region's end: Pop = %v, %v", ok, err)
	}
	e.d.SetDesc(0, farGPA+64, 3, 0, 0)
	e.d.Offer(0)
	e.r.Push(e.pop(t), 0)
	if err := e.mem.RemoveRegion(far.Region); err != nil {
		t.Fatal(err)
	}
	e.d.Offer(0)
	if ok, err := e.r.Pop(e.c); ok || !errors.Is(err, vhostuser.ErrDescriptorAddress) {
		t.Fatalf("buffer in a removed region: Pop = %v, %v", ok, err)
	}
}
