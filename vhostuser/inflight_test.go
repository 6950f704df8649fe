package vhostuser_test

import (
	"encoding/binary"
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
)

// A backend that dies between taking chains and returning them leaves
// them in the inflight region; the next backend, given the region and the
// used index as base (what a frontend sends after a crash), processes
// those chains again, in the order they were taken, before new ones — and
// not the chains that were returned.
func TestInflightChainsAreResubmittedAfterACrash(t *testing.T) {
	const size = 16
	region := make([]byte, vhostuser.InflightQueueSize(size))
	e := newRing(t, size, func(o *vhostuser.SplitRingOptions) { o.Inflight = region })
	var heads []uint16
	for i := 0; i < 5; i++ {
		h, _ := e.d.AddChain(vhostusertestBuf([]byte{byte('a' + i)}))
		heads = append(heads, h)
	}
	// The first backend takes all five, returns the first two, and dies.
	for i := 0; i < 5; i++ {
		e.pop(t)
		if i < 2 {
			e.r.Push(e.c, 0)
		}
	}
	e.r.Publish()
	if got := e.d.UsedIdx(); got != 2 {
		t.Fatalf("used index %d", got)
	}
	// A sixth buffer arrives while no backend runs.
	h6, _ := e.d.AddChain(vhostusertestBuf([]byte{'f'}))

	r2, err := vhostuser.NewSplitRing(e.mem, vhostuser.SplitRingOptions{Size: size, Addr: e.d.Addr(0, false), IndirectDesc: true,
		LastAvailIdx: e.d.UsedIdx(), Inflight: region})
	if err != nil {
		t.Fatal(err)
	}
	if n := r2.Resubmitting(); n != 3 {
		t.Fatalf("%d chains to resubmit, want 3", n)
	}
	if p := r2.Pending(); p != 4 {
		t.Fatalf("Pending = %d, want 3 resubmitted + 1 new", p)
	}
	c := vhostuser.NewChain(size)
	for _, want := range []struct {
		head uint16
		data byte
	}{{heads[2], 'c'}, {heads[3], 'd'}, {heads[4], 'e'}, {h6, 'f'}} {
		ok, err := r2.Pop(c)
		if err != nil || !ok || c.Head() != want.head || c.Readable()[0][0] != want.data {
			t.Fatalf("Pop = %v %v head %d, want head %d (%q)", ok, err, c.Head(), want.head, want.data)
		}
		r2.Push(c, 0)
	}
	if ok, _ := r2.Pop(c); ok {
		t.Fatal("a chain popped twice")
	}
	r2.Publish()
	// All returned: a third backend has nothing to resubmit.
	r3, err := vhostuser.NewSplitRing(e.mem, vhostuser.SplitRingOptions{Size: size, Addr: e.d.Addr(0, false), LastAvailIdx: e.d.UsedIdx(), Inflight: region})
	if err != nil || r3.Resubmitting() != 0 {
		t.Fatalf("after a clean run: %v, %d to resubmit", err, r3.Resubmitting())
	}
}

// A crash after used->idx was published but before the region recorded
// it: the recovery sees the used ring ahead and does not resubmit those.
func TestInflightRecoveryTrustsTheUsedRing(t *testing.T) {
	const size = 8
	region := make([]byte, vhostuser.InflightQueueSize(size))
	e := newRing(t, size, func(o *vhostuser.SplitRingOptions) { o.Inflight = region })
	e.d.AddChain(vhostusertestBuf([]byte{1}))
	e.d.AddChain(vhostusertestBuf([]byte{2}))
	e.pop(t)
	e.r.Push(e.c, 0)
	e.pop(t)
	e.r.Push(e.c, 0)
	e.r.Publish()
	// Pretend the region missed the publication: its used index is behind
	// and both descriptors still marked.
	binary.LittleEndian.PutUint16(region[14:], 0)
	region[16] = 1
	region[32] = 1
	r2, err := vhostuser.NewSplitRing(e.mem, vhostuser.SplitRingOptions{Size: size, Addr: e.d.Addr(0, false), LastAvailIdx: 2, Inflight: region})
	if err != nil || r2.Resubmitting() != 0 {
		t.Fatalf("%v, %d to resubmit; want none", err, r2.Resubmitting())
	}
}

func vhostusertestBuf(data []byte) vhostusertest.Buf { return vhostusertest.Buf{Data: data} }
