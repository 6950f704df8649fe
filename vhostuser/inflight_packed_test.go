package vhostuser_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
)

// Packed inflight tracking (vhost-user.rst, "Inflight I/O tracking",
// QueueRegionPacked): a backend that dies leaves in the region the chains
// it took and had not returned where the driver could see them; the next
// backend, which gets from the frontend no more than a stale base (a
// packed ring's positions are nowhere in guest memory), resumes at the
// used position the region records, processes those chains again, oldest
// first, and then the ones the driver made available since.

// stalePackedBase is the base QEMU sends after a backend crash on a
// packed ring: the one it last knew, here the ring's start.
const stalePackedBase = vhostuser.PackedBaseWrap

// packedDriverModel is the driver's side of a crash test: what it posted
// (one tag per chain, in the chain's first byte), what it got back, and
// the descriptors it has in flight (it posts only what the ring holds).
type packedDriverModel struct {
	t        *testing.T
	d        *vhostusertest.PackedDriver
	g        *vhostusertest.Guest
	next     byte
	byID     map[uint16]postedChain
	done     map[byte]int // completions per tag
	inFlight int          // ring descriptors posted and not returned
}

type postedChain struct {
	tag       byte
	descs     int
	writeGPA  uint64
	malformed bool
}

func newPackedDriverModel(t *testing.T, e *packedEnv) *packedDriverModel {
	return &packedDriverModel{t: t, d: e.d, g: e.g, next: 1, byID: map[uint16]postedChain{}, done: map[byte]int{}}
}

// post makes one chain available if the ring has room for it: a readable
// descriptor holding its tag, a second readable one for even tags, and a
// 16-byte writable one; for multiples of 3 only the writable one, the
// tag in its first byte. Tag 7's second descriptor has length 0 (the
// device returns that chain empty).
func (m *packedDriverModel) post() bool {
	tag := m.next
	var bufs []vhostusertest.Buf
	if tag%3 != 0 {
		bufs = append(bufs, vhostusertest.Buf{Data: []byte{tag}})
	}
	if tag%2 == 0 && tag%3 != 0 || tag == 7 {
		extra := []byte{tag, tag}
		if tag == 7 {
			extra = []byte{}
		}
		bufs = append(bufs, vhostusertest.Buf{Data: extra})
	}
	bufs = append(bufs, vhostusertest.Buf{WriteLen: 16})
	if m.inFlight+len(bufs) > int(m.d.Size) {
		return false
	}
	m.next++
	// The lowest id not in flight, as a driver's free list would give.
	id := uint16(0)
	for _, used := m.byID[id]; used; _, used = m.byID[id] {
		id++
	}
	descs := make([]vhostusertest.PackedDesc, len(bufs))
	var addrs []uint64
	for i, b := range bufs {
		n, flags := uint64(len(b.Data)), uint16(0)
		if b.Data == nil {
			n, flags = uint64(b.WriteLen), vhostuser.DescFWrite
		}
		gpa := m.d.Alloc(max(n, 1))
		copy(m.g.Bytes(gpa, n), b.Data)
		if b.Data == nil {
			copy(m.g.Bytes(gpa, 2), []byte{tag, 0})
		}
		if i < len(bufs)-1 {
			flags |= vhostuser.DescFNext
		}
		descs[i] = vhostusertest.PackedDesc{Addr: gpa, Len: uint32(n), Flags: flags}
		addrs = append(addrs, gpa)
	}
	m.d.AddRawChain(id, descs...)
	m.byID[id] = postedChain{tag: tag, descs: len(bufs), writeGPA: addrs[len(addrs)-1], malformed: tag == 7}
	m.inFlight += len(bufs)
	return true
}

// collect reads every used descriptor the device made visible.
func (m *packedDriverModel) collect() {
	for {
		id, n, ok := m.d.Used()
		if !ok {
			return
		}
		p, known := m.byID[id]
		if !known {
			m.t.Fatalf("used id %d (length %d) was not in flight", id, n)
		}
		delete(m.byID, id)
		m.inFlight -= p.descs
		m.done[p.tag]++
		switch {
		case p.malformed && n != 0:
			m.t.Fatalf("malformed chain (tag %d) returned with length %d", p.tag, n)
		case !p.malformed && (n != 2 || m.g.Bytes(p.writeGPA, 2)[0] != p.tag || m.g.Bytes(p.writeGPA, 2)[1] != ^p.tag):
			m.t.Fatalf("tag %d returned with length %d and %x written", p.tag, n, m.g.Bytes(p.writeGPA, 2))
		}
	}
}

// check says every chain posted came back exactly once.
func (m *packedDriverModel) check() {
	m.t.Helper()
	for tag := byte(1); tag < m.next; tag++ {
		if m.done[tag] != 1 {
			m.t.Errorf("tag %d completed %d times", tag, m.done[tag])
		}
	}
	if len(m.byID) != 0 || m.inFlight != 0 {
		m.t.Errorf("still in flight: %v (%d descriptors)", m.byID, m.inFlight)
	}
}

// packedComplete pushes a chain back with its tag and the tag's
// complement written.
func packedComplete(t *testing.T, r *vhostuser.PackedRing, c *vhostuser.Chain) {
	t.Helper()
	var tag byte
	switch {
	case len(c.Readable()) > 0:
		tag = c.Readable()[0][0]
	case len(c.Writable()) > 0:
		tag = c.Writable()[0][0]
	default:
		t.Fatalf("chain %d without its tag", c.Head())
	}
	c.Scatter([]byte{tag, ^tag}, 0)
	if err := r.Push(c, 2); err != nil {
		t.Fatal(err)
	}
}

type crashed struct{}

// runPackedWorkload drives a ring of 8 descriptors with tracking through
// three laps: two chains popped a round, one put back (unpopped) every
// fourth round, chains returned out of order and one kept in flight
// across rounds, batches published every other round. When crashAt > 0
// the backend dies after that many region stores (a panic the caller
// recovers). It returns how many steps it took.
func runPackedWorkload(t *testing.T, e *packedEnv, m *packedDriverModel, crashAt int) (steps int) {
	vhostuser.SetInflightStep(e.r, func() {
		if steps++; steps == crashAt {
			panic(crashed{})
		}
	})
	chains := make([]*vhostuser.Chain, 8)
	for i := range chains {
		chains[i] = vhostuser.NewChain(8)
	}
	var held []*vhostuser.Chain
	freeChain := func() *vhostuser.Chain {
		for _, c := range chains {
			if !slices.Contains(held, c) {
				return c
			}
		}
		t.Fatal("no free chain")
		return nil
	}
	for round := range 14 {
		for range 1 + round%3 {
			m.post()
		}
		popped := 0
		for range 2 {
			c := freeChain()
			ok, err := e.r.Pop(c)
			if err != nil {
				continue // the malformed chain, returned empty
			}
			if !ok {
				break
			}
			held = append(held, c)
			popped++
		}
		if round%4 == 1 && popped > 0 {
			if !vhostuser.Unpop(e.r, held[len(held)-1]) {
				t.Fatal("unpop refused")
			}
			held = held[:len(held)-1]
		}
		// Return all but the oldest, newest first.
		for len(held) > 1 {
			packedComplete(t, e.r, held[len(held)-1])
			held = held[:len(held)-1]
		}
		if round%2 == 1 {
			e.r.Publish()
			m.collect()
		}
	}
	e.r.Publish()
	m.collect()
	return steps
}

// recoverAndDrain starts a ring on the region as a new backend would,
// from the stale base, and returns everything; then the driver posts
// more, which the new ring takes where it should.
func recoverAndDrain(t *testing.T, e *packedEnv, region []byte, m *packedDriverModel) *vhostuser.PackedRing {
	t.Helper()
	r, err := vhostuser.NewPackedRing(e.mem, vhostuser.PackedRingOptions{Size: uint32(e.d.Size), Addr: e.d.Addr(0, false),
		Base: stalePackedBase, IndirectDesc: true, Inflight: region})
	if err != nil {
		t.Fatalf("recovery: %v", err)
	}
	c := vhostuser.NewChain(8)
	drain := func() {
		for {
			ok, err := r.Pop(c)
			if err != nil {
				continue
			}
			if !ok {
				break
			}
			packedComplete(t, r, c)
		}
		r.Publish()
		m.collect()
	}
	drain()
	for range 3 {
		for m.post() {
		}
		drain()
	}
	if r.Resubmitting() != 0 || r.Errors() > 2 {
		t.Errorf("after the drain: %d to resubmit, %d errors", r.Resubmitting(), r.Errors())
	}
	return r
}

// TestPackedInflightCrashAtEveryStep kills the backend after each store
// of the workload in turn, on rings of 8, 5 and 7 descriptors (descriptor copies, in-flight marks, free list
// and used position updates, the used batch made visible) and recovers on
// a new ring from the region with a stale base: no chain is lost, none is
// returned twice, and the new ring takes the driver's next chains.
func TestPackedInflightCrashAtEveryStep(t *testing.T) {
	// Packed queues need not be a power of two; with 5, a chain of three
	// and the one kept in flight fill the ring.
	for _, size := range []uint16{8, 5, 7} {
		t.Run(fmt.Sprintf("size %d", size), func(t *testing.T) { crashAtEveryStep(t, size) })
	}
}

func crashAtEveryStep(t *testing.T, size uint16) {
	var total int
	{
		region := make([]byte, vhostuser.InflightQueueSizePacked(size))
		e := newPacked(t, size, func(o *vhostuser.PackedRingOptions) { o.Inflight = region })
		m := newPackedDriverModel(t, e)
		total = runPackedWorkload(t, e, m, 0)
		if total < 60 {
			t.Fatalf("workload took %d steps", total)
		}
		// A clean stop: the next backend takes the chain left in flight.
		recoverAndDrain(t, e, region, m)
		m.check()
	}
	for crashAt := 1; crashAt <= total; crashAt++ {
		t.Run(fmt.Sprint(crashAt), func(t *testing.T) {
			region := make([]byte, vhostuser.InflightQueueSizePacked(size))
			e := newPacked(t, size, func(o *vhostuser.PackedRingOptions) { o.Inflight = region })
			m := newPackedDriverModel(t, e)
			func() {
				defer func() {
					if v := recover(); v != nil {
						if _, ok := v.(crashed); !ok {
							panic(v)
						}
					}
				}()
				runPackedWorkload(t, e, m, crashAt)
				t.Fatal("the backend did not crash")
			}()
			m.collect() // what the driver could see before the crash
			r := recoverAndDrain(t, e, region, m)
			m.check()
			// The region now describes r's state: a third backend
			// resumes where r is and resubmits nothing.
			r3, err := vhostuser.NewPackedRing(e.mem, vhostuser.PackedRingOptions{Size: uint32(size), Addr: e.d.Addr(0, false),
				Base: stalePackedBase, Inflight: region})
			if err != nil || r3.Resubmitting() != 0 || r3.VringBase() != r.VringBase() {
				t.Fatalf("third backend: %v, %d to resubmit, base %#x, want %#x", err, r3.Resubmitting(), r3.VringBase(), r.VringBase())
			}
		})
	}
}

// TestPackedInflightResubmitsInOrder: the chains left in flight come out
// of a new ring whole, in the order they were taken, before the chain
// the driver posted while no backend ran, and the driver gets each id
// back once.
func TestPackedInflightResubmitsInOrder(t *testing.T) {
	const size = 16
	region := make([]byte, vhostuser.InflightQueueSizePacked(size))
	e := newPacked(t, size, func(o *vhostuser.PackedRingOptions) { o.Inflight = region })
	var ids []uint16
	for i := range 5 {
		id, _ := e.d.AddChain(vhostusertest.Buf{Data: []byte{byte('a' + i)}}, vhostusertest.Buf{Data: []byte{byte('A' + i)}}, vhostusertest.Buf{WriteLen: 8})
		ids = append(ids, id)
	}
	chains := make([]*vhostuser.Chain, 5)
	for i := range chains {
		chains[i] = vhostuser.NewChain(size)
		if ok, err := e.r.Pop(chains[i]); !ok || err != nil {
			t.Fatal(ok, err)
		}
	}
	// The first backend returns the second and fourth and dies.
	e.r.Push(chains[3], 0)
	e.r.Push(chains[1], 0)
	e.r.Publish()
	for _, want := range []uint16{ids[3], ids[1]} {
		if id, _, ok := e.d.Used(); !ok || id != want {
			t.Fatalf("used %d %v, want %d", id, ok, want)
		}
	}
	late, _ := e.d.AddChain(vhostusertest.Buf{Data: []byte{'f'}})

	r2, err := vhostuser.NewPackedRing(e.mem, vhostuser.PackedRingOptions{Size: size, Addr: e.d.Addr(0, false), Base: stalePackedBase, IndirectDesc: true, Inflight: region})
	if err != nil {
		t.Fatal(err)
	}
	if n, p := r2.Resubmitting(), r2.Pending(); n != 3 || p != 4 {
		t.Fatalf("%d chains to resubmit, %d pending; want 3, 4", n, p)
	}
	c := vhostuser.NewChain(size)
	for _, want := range []struct {
		id   uint16
		data string
	}{{ids[0], "aA"}, {ids[2], "cC"}, {ids[4], "eE"}, {late, "f"}} {
		ok, err := r2.Pop(c)
		if !ok || err != nil || c.Head() != want.id || string(concat(c.Readable())) != want.data {
			t.Fatalf("Pop = %v %v id %d %q, want id %d %q", ok, err, c.Head(), concat(c.Readable()), want.id, want.data)
		}
		r2.Push(c, 0)
	}
	if ok, _ := r2.Pop(c); ok {
		t.Fatal("a chain popped twice")
	}
	r2.Publish()
	for _, want := range []uint16{ids[0], ids[2], ids[4], late} {
		if id, _, ok := e.d.Used(); !ok || id != want {
			t.Fatalf("used %d %v, want %d", id, ok, want)
		}
	}
	if _, _, ok := e.d.Used(); ok {
		t.Fatal("an extra used descriptor")
	}
	// VringBase says where the ring is, whatever base it was given.
	if got, want := r2.VringBase()&0xffff, e.d.Base(); got != want {
		t.Fatalf("VringBase %#x, want %#x", got, want)
	}
}

// packedRegionWith builds a region with state for a ring of size
// descriptors by running one: chains of two descriptors popped, none
// returned.
func packedRegionWith(t *testing.T, size uint16, chains int) []byte {
	t.Helper()
	region := make([]byte, vhostuser.InflightQueueSizePacked(size))
	e := newPacked(t, size, func(o *vhostuser.PackedRingOptions) { o.Inflight = region })
	for range chains {
		e.d.AddChain(vhostusertest.Buf{Data: []byte{1}}, vhostusertest.Buf{WriteLen: 8})
		if ok, err := e.r.Pop(vhostuser.NewChain(int(size))); !ok || err != nil {
			t.Fatal(ok, err)
		}
	}
	return region
}

// TestPackedInflightRefusesCorruptRegions: a region is the frontend's
// memory; one that cannot be a device's state is refused with
// ErrBadInflight, and never read out of bounds.
func TestPackedInflightRefusesCorruptRegions(t *testing.T) {
	const size = 8
	entry := func(i int) int { return 32 + 32*i }
	u16 := func(b []byte, off int, v uint16) { binary.LittleEndian.PutUint16(b[off:], v) }
	for _, tc := range []struct {
		name    string
		corrupt func(b []byte)
	}{
		{"version 2", func(b []byte) { u16(b, 8, 2) }},
		{"another queue size", func(b []byte) { u16(b, 10, 16) }},
		{"free head beyond the entries", func(b []byte) { u16(b, 12, 9); u16(b, 14, 9) }},
		{"used index beyond the queue", func(b []byte) { u16(b, 16, 8); u16(b, 18, 8) }},
		{"wrap counter 2", func(b []byte) { b[20], b[21] = 2, 2 }},
		{"inflight byte 2", func(b []byte) { b[entry(0)] = 2 }},
		{"chain of 0 descriptors", func(b []byte) { u16(b, entry(0)+6, 0) }},
		{"chain longer than the queue", func(b []byte) { u16(b, entry(0)+6, 9) }},
		{"chain runs beyond the entries", func(b []byte) { u16(b, entry(0)+2, 100) }},
		{"chain loops onto itself", func(b []byte) { u16(b, entry(0)+2, 0) }},
		{"chains overlap", func(b []byte) { u16(b, entry(2)+2, 1) }},
		{"chain runs into the free list", func(b []byte) { u16(b, entry(0)+2, 5); u16(b, entry(0)+4, 5) }},
		{"last entry disagrees", func(b []byte) { u16(b, entry(0)+4, 3) }},
		{"NEXT missing mid-chain", func(b []byte) { u16(b, entry(0)+18, 0) }},
		{"buffer id beyond the queue", func(b []byte) { u16(b, entry(1)+16, 8) }},
		{"free list loops", func(b []byte) { u16(b, entry(5)+2, 4) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			region := packedRegionWith(t, size, 2) // entries 0-1 and 2-3 in flight, 4-7 free
			tc.corrupt(region)
			_, err := vhostuser.ParsePackedInflight(region, size, false)
			if !errors.Is(err, vhostuser.ErrBadInflight) {
				t.Fatalf("parse: %v, want ErrBadInflight", err)
			}
			e := newPacked(t, size, nil)
			_, err = vhostuser.NewPackedRing(e.mem, vhostuser.PackedRingOptions{Size: size, Addr: e.d.Addr(0, false), Inflight: region})
			if !errors.Is(err, vhostuser.ErrBadInflight) {
				t.Fatalf("NewPackedRing: %v, want ErrBadInflight", err)
			}
			t.Log(err)
		})
	}
	// The uncorrupted region is accepted: the table tests what it says.
	st, err := vhostuser.ParsePackedInflight(packedRegionWith(t, size, 2), size, false)
	if err != nil || !st.Restored || st.InFlight != 4 || !slices.Equal(st.Resubmit, []uint16{0, 2}) || st.Free != 4 {
		t.Fatalf("%+v, %v", st, err)
	}
	if _, err := vhostuser.ParsePackedInflight(make([]byte, 100), size, false); !errors.Is(err, vhostuser.ErrBadInflight) {
		t.Fatalf("short region: %v", err)
	}
}

// TestPackedInflightDoesNotAllocate: with tracking, Pop, Push, Publish
// and unpop allocate nothing.
func TestPackedInflightDoesNotAllocate(t *testing.T) {
	const size = 64
	region := make([]byte, vhostuser.InflightQueueSizePacked(size))
	e := newPacked(t, size, func(o *vhostuser.PackedRingOptions) { o.Inflight = region })
	a, b := vhostuser.NewChain(size), vhostuser.NewChain(size)
	allocs := testing.AllocsPerRun(200, func() {
		e.d.ResetData(dataGPA)
		e.d.AddRawChain(uint16(0), vhostusertest.PackedDesc{Addr: dataGPA, Len: 64, Flags: vhostuser.DescFNext}, vhostusertest.PackedDesc{Addr: dataGPA + 64, Len: 64, Flags: vhostuser.DescFWrite})
		e.d.AddRawChain(uint16(1), vhostusertest.PackedDesc{Addr: dataGPA, Len: 64})
		if ok, err := e.r.Pop(a); !ok || err != nil {
			panic(err)
		}
		if ok, err := e.r.Pop(b); !ok || err != nil {
			panic(err)
		}
		if !vhostuser.Unpop(e.r, b) {
			panic("unpop")
		}
		e.r.Pop(b)
		e.r.Push(b, 0)
		e.r.Push(a, 10)
		e.r.Publish()
		e.d.Used()
		e.d.Used()
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per round", allocs)
	}
	if e.r.Errors() != 0 {
		t.Fatalf("%d errors", e.r.Errors())
	}
}

// FuzzPackedInflightRegion feeds the recovery arbitrary regions: it never
// panics or reads beyond the region, and a region it accepts, once
// settled, is accepted again with the same chains to resubmit, in the
// same order, and a free list holding every other entry.
func FuzzPackedInflightRegion(f *testing.F) {
	f.Add([]byte{}, uint16(8), false)
	f.Fuzz(func(t *testing.T, data []byte, size uint16, published bool) {
		size = size%64 + 1
		region := make([]byte, vhostuser.InflightQueueSizePacked(size))
		copy(region, data)
		st, err := vhostuser.ParsePackedInflight(region, size, published)
		if err != nil {
			if !errors.Is(err, vhostuser.ErrBadInflight) {
				t.Fatalf("error %v is not ErrBadInflight", err)
			}
			return
		}
		again, err := vhostuser.ParsePackedInflight(region, size, !published)
		if err != nil {
			t.Fatalf("settled region refused: %v", err)
		}
		if !again.Restored || again.UsedIdx != st.UsedIdx || again.UsedWrap != st.UsedWrap || again.InFlight != st.InFlight || !slices.Equal(again.Resubmit, st.Resubmit) {
			t.Fatalf("first %+v, then %+v", st, again)
		}
		if st.InFlight > size || again.Free+int(st.InFlight) != int(size) {
			t.Fatalf("%d entries free and %d in flight of %d", again.Free, st.InFlight, size)
		}
	})
}

// BenchmarkPackedInflight is the ring's part of a 32-chain burst of
// one-descriptor chains (AddRaw, Pop, Push, Publish, Used), without and
// with inflight tracking: what tracking costs per chain.
func BenchmarkPackedInflight(b *testing.B) {
	for _, tracked := range []bool{false, true} {
		b.Run(map[bool]string{false: "off", true: "on"}[tracked], func(b *testing.B) {
			const size, burst = 256, 32
			var region []byte
			if tracked {
				region = make([]byte, vhostuser.InflightQueueSizePacked(size))
			}
			e := newPacked(b, size, func(o *vhostuser.PackedRingOptions) { o.Inflight = region })
			chains := make([]*vhostuser.Chain, burst)
			for i := range chains {
				chains[i] = vhostuser.NewChain(4)
			}
			var descs [burst]vhostusertest.PackedDesc
			for i := range descs {
				descs[i] = vhostusertest.PackedDesc{Addr: dataGPA + 2048*uint64(i), Len: 1526, ID: uint16(i), Flags: vhostuser.DescFWrite}
			}
			for b.Loop() {
				e.d.AddRaw(descs[:]...)
				for _, c := range chains {
					if ok, err := e.r.Pop(c); !ok || err != nil {
						b.Fatal(ok, err)
					}
				}
				for _, c := range chains {
					e.r.Push(c, 64)
				}
				e.r.Publish()
				for range burst {
					e.d.Used()
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*burst), "ns/chain")
		})
	}
}
