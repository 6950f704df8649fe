package vhostuser_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
)

type packedEnv struct {
	g   *vhostusertest.Guest
	d   *vhostusertest.PackedDriver
	mem *vhostuser.Memory
	r   *vhostuser.PackedRing
	c   *vhostuser.Chain
}

// newPacked lays out a packed queue in a fresh guest, INDIRECT_DESC
// negotiated; opt may adjust the options.
func newPacked(t testing.TB, size uint16, opt func(*vhostuser.PackedRingOptions)) *packedEnv {
	t.Helper()
	g := vhostusertest.NewGuest(t, guestGPA, guestUser, guestSize)
	d := vhostusertest.NewPackedDriver(g, ringGPA, size, dataGPA, dataEnd)
	mem := g.Memory(t)
	opts := vhostuser.PackedRingOptions{Size: uint32(size), Addr: d.Addr(0, false), Base: d.Base(), IndirectDesc: true}
	if opt != nil {
		opt(&opts)
	}
	r, err := vhostuser.NewPackedRing(mem, opts)
	if err != nil {
		t.Fatal(err)
	}
	return &packedEnv{g: g, d: d, mem: mem, r: r, c: vhostuser.NewChain(int(size))}
}

func (e *packedEnv) expectUsed(t testing.TB, id uint16, n uint32) {
	t.Helper()
	e.r.Publish()
	gid, l, ok := e.d.Used()
	if !ok || gid != id || l != n {
		t.Fatalf("used descriptor = (%d, %d, %v), want (%d, %d)", gid, l, ok, id, n)
	}
}

// TestPackedRingWraps drives a packed ring through several laps with
// chains of one to three descriptors, readable and writable: every chain
// comes out whole, and the driver gets each id back with its length.
func TestPackedRingWraps(t *testing.T) {
	const size = 8
	e := newPacked(t, size, nil)
	hdr := bytes.Repeat([]byte{0xaa}, 12)
	for i := range 5 * size {
		e.d.ResetData(dataGPA)
		var bufs []vhostusertest.Buf
		want := []byte(nil)
		for j := range i%3 + 1 {
			p := append(hdr[:0:0], byte(i), byte(j))
			bufs = append(bufs, vhostusertest.Buf{Data: p})
			want = append(want, p...)
		}
		bufs = append(bufs, vhostusertest.Buf{WriteLen: 64})
		id, _ := e.d.AddChain(bufs...)
		ok, err := e.r.Pop(e.c)
		if !ok || err != nil {
			t.Fatalf("chain %d: Pop = %v, %v", i, ok, err)
		}
		if e.c.Head() != id || !bytes.Equal(concat(e.c.Readable()), want) || e.c.WritableLen() != 64 {
			t.Fatalf("chain %d: id %d (want %d), readable %x, writable %d", i, e.c.Head(), id, concat(e.c.Readable()), e.c.WritableLen())
		}
		e.c.Scatter([]byte{byte(i)}, 0)
		if err := e.r.Push(e.c, 1); err != nil {
			t.Fatal(err)
		}
		e.expectUsed(t, id, 1)
		if ok, _ := e.r.Pop(e.c); ok {
			t.Fatalf("chain %d: ring not empty after the chain", i)
		}
	}
	// The base carries the position and the wrap counter, and a ring
	// started from it goes on where this one stopped.
	base := e.r.VringBase()
	if base&0xffff != e.d.Base() || base>>16 != e.d.Base() {
		t.Fatalf("VringBase %#x, driver at %#x", base, e.d.Base())
	}
	r2, err := vhostuser.NewPackedRing(e.mem, vhostuser.PackedRingOptions{Size: size, Addr: e.d.Addr(0, false), Base: base})
	if err != nil {
		t.Fatal(err)
	}
	id, _ := e.d.AddChain(vhostusertest.Buf{Data: hdr})
	if ok, err := r2.Pop(e.c); !ok || err != nil || e.c.Head() != id {
		t.Fatalf("restarted ring: Pop = %v, %v, id %d want %d", ok, err, e.c.Head(), id)
	}
	r2.Push(e.c, 0)
	r2.Publish()
	if gid, _, ok := e.d.Used(); !ok || gid != id {
		t.Fatalf("restarted ring: used %d, %v", gid, ok)
	}
}

// TestPackedRingIndirect: an indirect table is one ring descriptor.
func TestPackedRingIndirect(t *testing.T) {
	e := newPacked(t, 4, nil)
	id := e.d.AddIndirect(dataGPA+0x8000, vhostusertest.Buf{Data: []byte("header......")}, vhostusertest.Buf{Data: []byte("frame")}, vhostusertest.Buf{WriteLen: 10})
	ok, err := e.r.Pop(e.c)
	if !ok || err != nil || e.c.Head() != id || string(concat(e.c.Readable())) != "header......frame" || e.c.WritableLen() != 10 {
		t.Fatalf("Pop = %v, %v, readable %q", ok, err, concat(e.c.Readable()))
	}
	e.r.Push(e.c, 10)
	e.expectUsed(t, id, 10)
}

// TestPackedRingHostile: every malformed chain gives SplitRing's error,
// goes back to the driver with length 0 taking all its descriptors, is
// counted, and the next good chain pops.
func TestPackedRingHostile(t *testing.T) {
	good := vhostusertest.PackedDesc{Addr: dataGPA, Len: 64}
	w := vhostusertest.PackedDesc{Addr: dataGPA, Len: 64, Flags: vhostuser.DescFWrite}
	next := func(d vhostusertest.PackedDesc) vhostusertest.PackedDesc { d.Flags |= vhostuser.DescFNext; return d }
	tests := []struct {
		name     string
		descs    []vhostusertest.PackedDesc
		indirect []byte // written at dataGPA+0x8000
		noInd    bool
		err      error
	}{
		{"zero length", []vhostusertest.PackedDesc{next(good), {Addr: dataGPA}}, nil, false, vhostuser.ErrZeroLength},
		{"outside guest memory", []vhostusertest.PackedDesc{{Addr: outsideGP, Len: 16}}, nil, false, vhostuser.ErrDescriptorAddress},
		{"crosses the end of memory", []vhostusertest.PackedDesc{{Addr: dataEnd - 8, Len: 16}}, nil, false, vhostuser.ErrDescriptorAddress},
		{"address wraps", []vhostusertest.PackedDesc{{Addr: ^uint64(0) - 4, Len: 16}}, nil, false, vhostuser.ErrDescriptorAddress},
		{"absurd length", []vhostusertest.PackedDesc{{Addr: dataGPA, Len: 0xffffffff}}, nil, false, vhostuser.ErrDescriptorTooLong},
		{"readable after writable", []vhostusertest.PackedDesc{next(w), good}, nil, false, vhostuser.ErrDescriptorOrder},
		{"chain never ends", []vhostusertest.PackedDesc{next(good), next(good), next(good), next(good)}, nil, false, vhostuser.ErrDescriptorLoop},
		{"indirect not negotiated", []vhostusertest.PackedDesc{{Addr: dataGPA + 0x8000, Len: 16, Flags: vhostuser.DescFIndirect}}, make([]byte, 16), true, vhostuser.ErrIndirectNotNegotiated},
		{"indirect with next", []vhostusertest.PackedDesc{{Addr: dataGPA + 0x8000, Len: 16, Flags: vhostuser.DescFIndirect | vhostuser.DescFNext}, good}, make([]byte, 16), false, vhostuser.ErrBadIndirect},
		{"indirect of odd length", []vhostusertest.PackedDesc{{Addr: dataGPA + 0x8000, Len: 17, Flags: vhostuser.DescFIndirect}}, nil, false, vhostuser.ErrBadIndirect},
		{"indirect outside memory", []vhostusertest.PackedDesc{{Addr: outsideGP, Len: 16, Flags: vhostuser.DescFIndirect}}, nil, false, vhostuser.ErrBadIndirect},
		{"nested indirect", []vhostusertest.PackedDesc{{Addr: dataGPA + 0x8000, Len: 16, Flags: vhostuser.DescFIndirect}}, packedDescBytes(dataGPA+0x8000, 16, vhostuser.DescFIndirect), false, vhostuser.ErrNestedIndirect},
		{"zero length in indirect", []vhostusertest.PackedDesc{{Addr: dataGPA + 0x8000, Len: 16, Flags: vhostuser.DescFIndirect}}, packedDescBytes(dataGPA, 0, 0), false, vhostuser.ErrZeroLength},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newPacked(t, 4, func(o *vhostuser.PackedRingOptions) { o.IndirectDesc = !tt.noInd })
			// Start one lap in, so that the chain wraps around the ring.
			for range 3 {
				e.d.AddRaw(good)
				if ok, err := e.r.Pop(e.c); !ok || err != nil {
					t.Fatal(ok, err)
				}
				e.r.Push(e.c, 0)
				e.r.Publish()
				e.d.Used()
			}
			copy(e.g.Bytes(dataGPA+0x8000, 64), tt.indirect)
			for i := range tt.descs {
				tt.descs[i].ID = 3
			}
			n := e.d.AddRaw(tt.descs...)
			ok, err := e.r.Pop(e.c)
			if ok || !errors.Is(err, tt.err) {
				t.Fatalf("Pop = %v, %v; want %v", ok, err, tt.err)
			}
			if e.r.Errors() != 1 {
				t.Errorf("Errors = %d", e.r.Errors())
			}
			e.r.Publish()
			id, l, got := e.d.Used()
			if !got || id != 3 || l != 0 {
				t.Fatalf("used = %d, %d, %v; want id 3 length 0", id, l, got)
			}
			e.d.Skip(uint16(n) - 1)
			e.d.AddRaw(vhostusertest.PackedDesc{Addr: dataGPA, Len: 64, ID: 1})
			if ok, err := e.r.Pop(e.c); !ok || err != nil || e.c.Head() != 1 {
				t.Fatalf("next chain: Pop = %v, %v, id %d", ok, err, e.c.Head())
			}
		})
	}
	t.Run("next into a descriptor not available", func(t *testing.T) {
		e := newPacked(t, 4, nil)
		e.d.AddRaw(next(good)) // its successor stays unavailable
		if ok, err := e.r.Pop(e.c); ok || !errors.Is(err, vhostuser.ErrNextOutOfRange) {
			t.Fatalf("Pop = %v, %v", ok, err)
		}
		e.expectUsed(t, 0, 0)
	})
}

func packedDescBytes(addr uint64, l uint32, flags uint16) []byte {
	b := make([]byte, 16)
	vhostusertest.PutDesc(b, addr, l, 0, 0)
	b[14], b[15] = byte(flags), byte(flags>>8)
	return b
}

// TestPackedRingPublishBatches: pushed entries stay invisible until
// Publish, which shows them all.
func TestPackedRingPublishBatches(t *testing.T) {
	e := newPacked(t, 8, nil)
	a, _ := e.d.AddChain(vhostusertest.Buf{Data: []byte("a")}, vhostusertest.Buf{Data: []byte("b")})
	b, _ := e.d.AddChain(vhostusertest.Buf{Data: []byte("c")})
	c2 := vhostuser.NewChain(8)
	if ok, _ := e.r.Pop(e.c); !ok {
		t.Fatal("no first chain")
	}
	if ok, _ := e.r.Pop(c2); !ok {
		t.Fatal("no second chain")
	}
	e.r.Push(c2, 0) // out of order: b first
	e.r.Push(e.c, 0)
	if _, _, ok := e.d.Used(); ok {
		t.Fatal("used entry visible before Publish")
	}
	e.r.Publish()
	for _, want := range []uint16{b, a} {
		if id, _, ok := e.d.Used(); !ok || id != want {
			t.Fatalf("used %d, %v; want %d", id, ok, want)
		}
	}
}

// TestPackedRingUnpop: chains put back come out again, in order.
func TestPackedRingUnpop(t *testing.T) {
	e := newPacked(t, 4, nil)
	a, _ := e.d.AddChain(vhostusertest.Buf{WriteLen: 64})
	b, _ := e.d.AddChain(vhostusertest.Buf{WriteLen: 64}, vhostusertest.Buf{WriteLen: 64})
	c2 := vhostuser.NewChain(4)
	e.r.Pop(e.c)
	e.r.Pop(c2)
	if !vhostuser.Unpop(e.r, c2) || !vhostuser.Unpop(e.r, e.c) {
		t.Fatal("unpop refused")
	}
	if got := e.r.Pending(); got != 2 {
		t.Fatalf("Pending = %d, want 2", got)
	}
	for _, want := range []uint16{a, b} {
		if ok, err := e.r.Pop(e.c); !ok || err != nil || e.c.Head() != want {
			t.Fatalf("Pop = %v, %v, id %d; want %d", ok, err, e.c.Head(), want)
		}
	}
}

// TestPackedRingNotifications: the device area says DISABLE while the
// device polls and ENABLE (or, with EVENT_IDX, the next descriptor) when
// it sleeps; the driver area decides NeedsNotify.
func TestPackedRingNotifications(t *testing.T) {
	for _, eventIdx := range []bool{false, true} {
		e := newPacked(t, 4, func(o *vhostuser.PackedRingOptions) { o.EventIdx = eventIdx })
		e.r.DisableNotifications()
		if f, _ := e.d.DeviceEvent(); f != vhostuser.RingEventFDisable {
			t.Fatalf("event idx %v: device flags %d after Disable", eventIdx, f)
		}
		if e.r.EnableNotifications() {
			t.Fatal("EnableNotifications saw buffers on an empty ring")
		}
		f, ow := e.d.DeviceEvent()
		if !eventIdx && f != vhostuser.RingEventFEnable || eventIdx && (f != vhostuser.RingEventFDesc || uint32(ow) != e.d.Base()) {
			t.Fatalf("event idx %v: device area %d %#x after Enable", eventIdx, f, ow)
		}
		e.d.AddChain(vhostusertest.Buf{WriteLen: 8})
		if !e.r.EnableNotifications() {
			t.Fatal("EnableNotifications missed a buffer")
		}
		pushOne := func() {
			if ok, _ := e.r.Pop(e.c); !ok {
				t.Fatal("no chain")
			}
			e.r.Push(e.c, 0)
			e.r.Publish()
		}
		pushOne()
		e.d.Used()
		if !e.r.NeedsNotify() {
			t.Fatal("driver area ENABLE: no notification")
		}
		if e.r.NeedsNotify() {
			t.Fatal("notified twice for one publish")
		}
		e.d.SetDriverEvent(vhostuser.RingEventFDisable, 0)
		e.d.AddChain(vhostusertest.Buf{WriteLen: 8})
		pushOne()
		e.d.Used()
		if e.r.NeedsNotify() {
			t.Fatal("driver area DISABLE: notified")
		}
		if !eventIdx {
			continue
		}
		// EVENT_IDX: notify only when the used side passes off_wrap. Ask
		// for the entry after next: the next publish does not notify,
		// the one after does, across the wrap.
		at := e.d.UsedPos()
		e.d.SetDriverEvent(vhostuser.RingEventFDesc, wrapPos(at, 1, 4))
		for i, want := range []bool{false, true, false} {
			e.d.AddChain(vhostusertest.Buf{WriteLen: 8})
			pushOne()
			e.d.Used()
			if got := e.r.NeedsNotify(); got != want {
				t.Fatalf("EVENT_IDX publish %d: NeedsNotify = %v, want %v", i, got, want)
			}
		}
	}
}

// wrapPos moves a packed position (bit 15 the wrap counter) n on in a
// ring of size.
func wrapPos(pos, n, size uint16) uint16 {
	idx, w := pos&0x7fff+n, pos&0x8000
	if idx >= size {
		idx -= size
		w ^= 0x8000
	}
	return idx | w
}

// TestPackedRingDoesNotAllocate: pop, push, publish and notify, with
// dirty logging on, allocate nothing.
func TestPackedRingDoesNotAllocate(t *testing.T) {
	pages := uint64(guestGPA+guestSize) / vhostuser.LogPageSize
	log, _ := newLog(t, (pages+7)/8, 0)
	e := newPacked(t, 256, func(o *vhostuser.PackedRingOptions) { o.EventIdx, o.Log, o.Addr.Flags = true, log, vhostuser.VringFLog })
	descs := []vhostusertest.PackedDesc{{Addr: dataGPA, Len: 12, Flags: vhostuser.DescFNext}, {Addr: dataGPA + 64, Len: 1500, Flags: vhostuser.DescFWrite}}
	if n := testing.AllocsPerRun(1000, func() {
		e.d.AddRaw(descs...)
		ok, err := e.r.Pop(e.c)
		if !ok || err != nil {
			t.Fatal(ok, err)
		}
		e.r.Push(e.c, 100)
		e.r.Publish()
		e.r.NeedsNotify()
		e.d.Skip(2)
	}); n != 0 {
		t.Fatalf("%v allocations per chain", n)
	}
}
