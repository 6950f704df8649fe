package vhostuser_test

import (
	"bytes"
	"errors"
	"sync"
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
)

const (
	guestGPA  = 0x100000
	guestUser = 0x7f00_0000_0000
	guestSize = 4 << 20
	ringGPA   = guestGPA         // rings at the start of guest RAM
	dataGPA   = guestGPA + 1<<20 // buffers after them
	dataEnd   = guestGPA + guestSize
	outsideGP = guestGPA + guestSize // first byte past guest RAM
)

type ringEnv struct {
	g   *vhostusertest.Guest
	d   *vhostusertest.Driver
	mem *vhostuser.Memory
	r   *vhostuser.SplitRing
	c   *vhostuser.Chain
}

// newRing lays out a queue of the given size in a fresh guest and returns
// the device side with INDIRECT_DESC negotiated; opt may adjust options.
func newRing(t testing.TB, size uint16, opt func(*vhostuser.SplitRingOptions)) *ringEnv {
	t.Helper()
	g := vhostusertest.NewGuest(t, guestGPA, guestUser, guestSize)
	d := vhostusertest.NewDriver(g, ringGPA, size, dataGPA, dataEnd)
	mem := g.Memory(t)
	opts := vhostuser.SplitRingOptions{Size: uint32(size), Addr: d.Addr(0, false), IndirectDesc: true}
	if opt != nil {
		opt(&opts)
	}
	r, err := vhostuser.NewSplitRing(mem, opts)
	if err != nil {
		t.Fatal(err)
	}
	return &ringEnv{g: g, d: d, mem: mem, r: r, c: vhostuser.NewChain(int(size))}
}

// pop pops one chain and fails the test on error or empty ring.
func (e *ringEnv) pop(t testing.TB) *vhostuser.Chain {
	t.Helper()
	ok, err := e.r.Pop(e.c)
	if err != nil || !ok {
		t.Fatalf("Pop = %v, %v; want a chain", ok, err)
	}
	return e.c
}

// expectReturned checks that the next used entry is head with length n.
func (e *ringEnv) expectReturned(t testing.TB, head uint16, n uint32) {
	t.Helper()
	e.r.Publish()
	id, l, ok := e.d.Used()
	if !ok || id != uint32(head) || l != n {
		t.Fatalf("used entry = (%d, %d, %v), want (%d, %d)", id, l, ok, head, n)
	}
}

func concat(segs [][]byte) []byte { return bytes.Join(segs, nil) }

// Test_2_6_4_MessageFraming: the device must not assume a descriptor
// layout, and device-writable descriptors come after device-readable ones.
func Test_2_6_4_MessageFraming(t *testing.T) {
	hdr := bytes.Repeat([]byte{0xaa}, 12)
	frame := bytes.Repeat([]byte{0x55}, 1514)
	tests := []struct {
		name         string
		bufs         []vhostusertest.Buf
		wantReadable []byte
		wantWritable uint32
		err          error
	}{
		{"header and frame in one descriptor", []vhostusertest.Buf{{Data: append(hdr, frame...)}}, append(hdr, frame...), 0, nil},
		{"header and frame in two descriptors", []vhostusertest.Buf{{Data: hdr}, {Data: frame}}, append(hdr, frame...), 0, nil},
		{"frame in many small descriptors", []vhostusertest.Buf{{Data: frame[:1]}, {Data: frame[1:100]}, {Data: frame[100:]}}, frame, 0, nil},
		{"receive buffer: writable only", []vhostusertest.Buf{{WriteLen: 12}, {WriteLen: 1514}}, nil, 1526, nil},
		{"request and status: readable then writable", []vhostusertest.Buf{{Data: hdr}, {WriteLen: 1}}, hdr, 1, nil},
		{"readable after writable is refused", []vhostusertest.Buf{{WriteLen: 12}, {Data: hdr}}, nil, 0, vhostuser.ErrDescriptorOrder},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newRing(t, 16, nil)
			head, _ := e.d.AddChain(tt.bufs...)
			ok, err := e.r.Pop(e.c)
			if tt.err != nil {
				if ok || !errors.Is(err, tt.err) {
					t.Fatalf("Pop = %v, %v; want %v", ok, err, tt.err)
				}
				e.expectReturned(t, head, 0)
				return
			}
			if !ok || err != nil {
				t.Fatalf("Pop = %v, %v", ok, err)
			}
			if e.c.Head() != head {
				t.Errorf("Head = %d, want %d", e.c.Head(), head)
			}
			if got := concat(e.c.Readable()); !bytes.Equal(got, tt.wantReadable) || e.c.ReadableLen() != uint32(len(tt.wantReadable)) {
				t.Errorf("readable = %d bytes (ReadableLen %d), want %d", len(got), e.c.ReadableLen(), len(tt.wantReadable))
			}
			if e.c.WritableLen() != tt.wantWritable {
				t.Errorf("WritableLen = %d, want %d", e.c.WritableLen(), tt.wantWritable)
			}
			gathered := make([]byte, 4096)
			if n := e.c.Gather(gathered); !bytes.Equal(gathered[:n], tt.wantReadable) {
				t.Errorf("Gather = %d bytes", n)
			}
		})
	}
}

// Test_2_6_5_DescriptorTable covers hostile descriptor tables: each bad
// chain is refused, counted, and handed back with length 0, and the ring
// keeps working.
func Test_2_6_5_DescriptorTable(t *testing.T) {
	const size = 16
	type desc struct {
		addr  uint64
		len   uint32
		flags uint16
		next  uint16
	}
	buf := uint64(dataGPA)
	tests := []struct {
		name  string
		head  uint16
		descs map[uint16]desc
		err   error
	}{
		{"next index out of range", 0, map[uint16]desc{0: {buf, 64, vhostuser.DescFNext, size}}, vhostuser.ErrNextOutOfRange},
		{"next index 0xffff", 0, map[uint16]desc{0: {buf, 64, vhostuser.DescFNext, 0xffff}}, vhostuser.ErrNextOutOfRange},
		{"descriptor chained to itself", 3, map[uint16]desc{3: {buf, 64, vhostuser.DescFNext, 3}}, vhostuser.ErrDescriptorLoop},
		{"two-descriptor loop", 1, map[uint16]desc{1: {buf, 64, vhostuser.DescFNext, 2}, 2: {buf, 64, vhostuser.DescFNext, 1}}, vhostuser.ErrDescriptorLoop},
		{"loop back to the middle of a chain", 0, map[uint16]desc{0: {buf, 8, vhostuser.DescFNext, 1}, 1: {buf, 8, vhostuser.DescFNext, 2}, 2: {buf, 8, vhostuser.DescFNext, 1}}, vhostuser.ErrDescriptorLoop},
		{"zero length", 0, map[uint16]desc{0: {buf, 0, 0, 0}}, vhostuser.ErrZeroLength},
		{"zero length in the middle", 0, map[uint16]desc{0: {buf, 8, vhostuser.DescFNext, 1}, 1: {buf, 0, 0, 0}}, vhostuser.ErrZeroLength},
		{"length 0xffffffff", 0, map[uint16]desc{0: {buf, 0xffffffff, 0, 0}}, vhostuser.ErrDescriptorTooLong},
		{"length just over the maximum", 0, map[uint16]desc{0: {buf, vhostuser.DefaultMaxDescriptorLen + 1, 0, 0}}, vhostuser.ErrDescriptorTooLong},
		{"address below guest memory", 0, map[uint16]desc{0: {0x1000, 64, 0, 0}}, vhostuser.ErrDescriptorAddress},
		{"address past guest memory", 0, map[uint16]desc{0: {outsideGP, 64, 0, 0}}, vhostuser.ErrDescriptorAddress},
		{"buffer running past guest memory", 0, map[uint16]desc{0: {outsideGP - 10, 64, vhostuser.DescFWrite, 0}}, vhostuser.ErrDescriptorAddress},
		{"address overflowing 64 bits", 0, map[uint16]desc{0: {^uint64(0) - 8, 64, 0, 0}}, vhostuser.ErrDescriptorAddress},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newRing(t, size, nil)
			for i, d := range tt.descs {
				e.d.SetDesc(i, d.addr, d.len, d.flags, d.next)
			}
			e.d.Offer(tt.head)
			ok, err := e.r.Pop(e.c)
			if ok || !errors.Is(err, tt.err) {
				t.Fatalf("Pop = %v, %v; want %v", ok, err, tt.err)
			}
			if e.r.Errors() != 1 {
				t.Errorf("Errors = %d, want 1", e.r.Errors())
			}
			e.expectReturned(t, tt.head, 0)
			// The ring still works.
			e.d.SetDesc(5, buf, 100, 0, 0)
			e.d.Offer(5)
			if c := e.pop(t); c.Head() != 5 || c.ReadableLen() != 100 {
				t.Errorf("next chain: head %d len %d", c.Head(), c.ReadableLen())
			}
		})
	}
}

// A chain of exactly queue size descriptors is the longest legal chain.
func Test_2_6_5_ChainOfQueueSize(t *testing.T) {
	const size = 8
	e := newRing(t, size, nil)
	bufs := make([]vhostusertest.Buf, size)
	for i := range bufs {
		bufs[i] = vhostusertest.Buf{Data: []byte{byte(i)}}
	}
	e.d.AddChain(bufs...)
	if c := e.pop(t); c.ReadableLen() != size {
		t.Errorf("ReadableLen = %d", c.ReadableLen())
	}
	// A Chain too small for the chain refuses it.
	e.d.AddChain(bufs...)
	small := vhostuser.NewChain(4)
	if ok, err := e.r.Pop(small); ok || !errors.Is(err, vhostuser.ErrChainTooLong) {
		t.Errorf("Pop into small chain = %v, %v", ok, err)
	}
}

// Test_2_6_5_3_IndirectDescriptors covers indirect tables, good and bad.
func Test_2_6_5_3_IndirectDescriptors(t *testing.T) {
	const size = 16
	tableGPA := uint64(dataGPA)
	buf := uint64(dataGPA + 0x10000)
	type entry struct {
		addr  uint64
		len   uint32
		flags uint16
		next  uint16
	}
	tests := []struct {
		name       string
		noIndirect bool   // VIRTIO_F_RING_INDIRECT_DESC not negotiated
		headFlags  uint16 // extra flags on the descriptor pointing at the table
		tableLen   uint32 // 0: 16 * len(table)
		tableAddr  uint64 // 0: tableGPA
		table      []entry
		wantR      uint32
		wantW      uint32
		err        error
	}{
		{name: "readable and writable entries", table: []entry{{buf, 12, vhostuser.DescFNext, 1}, {buf + 100, 1000, vhostuser.DescFNext | vhostuser.DescFWrite, 2}, {buf + 2000, 500, vhostuser.DescFWrite, 0}}, wantR: 12, wantW: 1500},
		{name: "WRITE on the table descriptor is ignored", headFlags: vhostuser.DescFWrite, table: []entry{{buf, 64, 0, 0}}, wantR: 64},
		{name: "entries chained out of order", table: []entry{{buf, 1, vhostuser.DescFNext, 2}, {buf, 4, 0, 0}, {buf, 2, vhostuser.DescFNext, 1}}, wantR: 7},
		{name: "not negotiated", noIndirect: true, table: []entry{{buf, 64, 0, 0}}, err: vhostuser.ErrIndirectNotNegotiated},
		{name: "INDIRECT with NEXT", headFlags: vhostuser.DescFNext, table: []entry{{buf, 64, 0, 0}}, err: vhostuser.ErrBadIndirect},
		{name: "indirect within indirect", table: []entry{{tableGPA, 16, vhostuser.DescFIndirect, 0}}, err: vhostuser.ErrNestedIndirect},
		{name: "table length not a multiple of 16", tableLen: 24, table: []entry{{buf, 64, 0, 0}}, err: vhostuser.ErrBadIndirect},
		{name: "table length 0", tableLen: 0xffffffff, table: []entry{{buf, 64, 0, 0}}, err: vhostuser.ErrBadIndirect},
		{name: "table longer than the queue", tableLen: 16 * (size + 1), table: []entry{{buf, 64, 0, 0}}, err: vhostuser.ErrBadIndirect},
		{name: "table outside guest memory", tableAddr: outsideGP, table: []entry{{buf, 64, 0, 0}}, err: vhostuser.ErrBadIndirect},
		{name: "loop inside the table", table: []entry{{buf, 8, vhostuser.DescFNext, 1}, {buf, 8, vhostuser.DescFNext, 0}}, err: vhostuser.ErrDescriptorLoop},
		{name: "next beyond the table", table: []entry{{buf, 8, vhostuser.DescFNext, 1}, {buf, 8, vhostuser.DescFNext, 2}}, err: vhostuser.ErrNextOutOfRange},
		{name: "zero-length entry", table: []entry{{buf, 0, 0, 0}}, err: vhostuser.ErrZeroLength},
		{name: "entry outside guest memory", table: []entry{{outsideGP, 8, 0, 0}}, err: vhostuser.ErrDescriptorAddress},
		{name: "readable entry after writable", table: []entry{{buf, 8, vhostuser.DescFNext | vhostuser.DescFWrite, 1}, {buf, 8, 0, 0}}, err: vhostuser.ErrDescriptorOrder},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newRing(t, size, func(o *vhostuser.SplitRingOptions) { o.IndirectDesc = !tt.noIndirect })
			tb := e.g.Bytes(tableGPA, 16*uint64(len(tt.table)))
			for i, en := range tt.table {
				vhostusertest.PutDesc(tb[16*i:], en.addr, en.len, en.flags, en.next)
			}
			tl := tt.tableLen
			switch tl {
			case 0:
				tl = uint32(16 * len(tt.table))
			case 0xffffffff:
				tl = 0
			}
			ta := tt.tableAddr
			if ta == 0 {
				ta = tableGPA
			}
			e.d.SetDesc(7, ta, tl, vhostuser.DescFIndirect|tt.headFlags, 0)
			e.d.Offer(7)
			ok, err := e.r.Pop(e.c)
			if tt.err != nil {
				if ok || !errors.Is(err, tt.err) {
					t.Fatalf("Pop = %v, %v; want %v", ok, err, tt.err)
				}
				e.expectReturned(t, 7, 0)
				return
			}
			if !ok || err != nil {
				t.Fatalf("Pop = %v, %v", ok, err)
			}
			if e.c.Head() != 7 || e.c.ReadableLen() != tt.wantR || e.c.WritableLen() != tt.wantW {
				t.Errorf("head %d readable %d writable %d; want 7, %d, %d", e.c.Head(), e.c.ReadableLen(), e.c.WritableLen(), tt.wantR, tt.wantW)
			}
		})
	}
}

// "The device MUST handle the case of zero or more normal chained
// descriptors followed by a single descriptor with INDIRECT."
func Test_2_6_5_3_DirectThenIndirect(t *testing.T) {
	e := newRing(t, 16, nil)
	table := uint64(dataGPA)
	vhostusertest.PutDesc(e.g.Bytes(table, 16), dataGPA+0x1000, 100, vhostuser.DescFWrite, 0)
	e.d.SetDesc(0, dataGPA+0x2000, 12, vhostuser.DescFNext, 1)
	e.d.SetDesc(1, table, 16, vhostuser.DescFIndirect, 0)
	e.d.Offer(0)
	c := e.pop(t)
	if c.ReadableLen() != 12 || c.WritableLen() != 100 {
		t.Errorf("readable %d writable %d", c.ReadableLen(), c.WritableLen())
	}
}

// Test_2_6_6_AvailableRing: the available index and entries come from the
// driver and are checked.
func Test_2_6_6_AvailableRing(t *testing.T) {
	t.Run("empty ring", func(t *testing.T) {
		e := newRing(t, 16, nil)
		if ok, err := e.r.Pop(e.c); ok || err != nil {
			t.Fatalf("Pop on empty ring = %v, %v", ok, err)
		}
	})
	t.Run("head out of range is consumed, not returned", func(t *testing.T) {
		e := newRing(t, 16, nil)
		e.d.Offer(16)
		if ok, err := e.r.Pop(e.c); ok || !errors.Is(err, vhostuser.ErrHeadOutOfRange) {
			t.Fatalf("Pop = %v, %v", ok, err)
		}
		e.r.Publish()
		if e.d.UsedIdx() != 0 {
			t.Errorf("used idx = %d, want 0", e.d.UsedIdx())
		}
		if e.r.VringBase() != 1 {
			t.Errorf("VringBase = %d, want 1", e.r.VringBase())
		}
	})
	t.Run("index moved by more than the queue size breaks the ring", func(t *testing.T) {
		e := newRing(t, 16, nil)
		e.d.SetAvailIdx(17)
		for range 2 {
			if ok, err := e.r.Pop(e.c); ok || !errors.Is(err, vhostuser.ErrRingBroken) {
				t.Fatalf("Pop = %v, %v; want ErrRingBroken", ok, err)
			}
		}
		e.r.SetLastAvailIdx(17)
		if ok, err := e.r.Pop(e.c); ok || err != nil {
			t.Fatalf("after SetLastAvailIdx: Pop = %v, %v", ok, err)
		}
	})
	t.Run("index wraps at 65536", func(t *testing.T) {
		e := newRing(t, 4, func(o *vhostuser.SplitRingOptions) { o.LastAvailIdx = 0xfffe })
		e.d.SetAvailIdx(0xfffe)
		for i := range 4 {
			head, _ := e.d.AddChain(vhostusertest.Buf{Data: []byte{byte(i)}})
			c := e.pop(t)
			if c.Head() != head || c.Readable()[0][0] != byte(i) {
				t.Fatalf("chain %d: head %d", i, c.Head())
			}
			if err := e.r.Push(c, 0); err != nil {
				t.Fatal(err)
			}
		}
		if e.r.VringBase() != 2 {
			t.Errorf("VringBase = %d, want 2 (wrapped)", e.r.VringBase())
		}
	})
}

// Test_2_6_8_UsedRing: entries are written, then published with one store.
func Test_2_6_8_UsedRing(t *testing.T) {
	e := newRing(t, 8, nil)
	var heads []uint16
	for range 3 {
		h, _ := e.d.AddChain(vhostusertest.Buf{WriteLen: 100})
		heads = append(heads, h)
	}
	chains := []*vhostuser.Chain{vhostuser.NewChain(8), vhostuser.NewChain(8), vhostuser.NewChain(8)}
	for _, c := range chains {
		if ok, err := e.r.Pop(c); !ok || err != nil {
			t.Fatal(ok, err)
		}
	}
	// Complete out of order, batched.
	for i, n := range []int{2, 0, 1} {
		if got := chains[n].Scatter([]byte("hello"), 0); got != 5 {
			t.Fatalf("Scatter = %d", got)
		}
		if err := e.r.Push(chains[n], uint32(10*i+5)); err != nil {
			t.Fatal(err)
		}
	}
	if e.d.UsedIdx() != 0 {
		t.Fatalf("used idx %d before Publish", e.d.UsedIdx())
	}
	e.r.Publish()
	if e.d.UsedIdx() != 3 {
		t.Fatalf("used idx %d after Publish, want 3", e.d.UsedIdx())
	}
	for i, n := range []int{2, 0, 1} {
		id, l, ok := e.d.Used()
		if !ok || id != uint32(heads[n]) || l != uint32(10*i+5) {
			t.Errorf("used[%d] = %d, %d, %v", i, id, l, ok)
		}
	}
	// Push errors.
	if err := e.r.Push(chains[0], 0); !errors.Is(err, vhostuser.ErrBadPush) {
		t.Errorf("second Push: %v", err)
	}
	e.d.AddChain(vhostusertest.Buf{WriteLen: 10})
	c := e.pop(t)
	if err := e.r.Push(c, 11); !errors.Is(err, vhostuser.ErrBadPush) {
		t.Errorf("Push more than writable: %v", err)
	}
	other := newRing(t, 8, nil)
	if err := other.r.Push(c, 0); !errors.Is(err, vhostuser.ErrBadPush) {
		t.Errorf("Push to another ring: %v", err)
	}
}

// Test_2_6_7_UsedBufferNotificationSuppression covers NO_INTERRUPT and
// used_event.
func Test_2_6_7_UsedBufferNotificationSuppression(t *testing.T) {
	complete := func(t *testing.T, e *ringEnv, n int) {
		t.Helper()
		for range n {
			e.d.AddChain(vhostusertest.Buf{Data: []byte{1}})
			if err := e.r.Push(e.pop(t), 0); err != nil {
				t.Fatal(err)
			}
		}
		e.r.Publish()
	}
	t.Run("flags 0: notify", func(t *testing.T) {
		e := newRing(t, 16, nil)
		complete(t, e, 1)
		if !e.r.NeedsNotify() {
			t.Error("NeedsNotify = false")
		}
		if e.r.NeedsNotify() {
			t.Error("NeedsNotify = true with nothing new published")
		}
	})
	t.Run("NO_INTERRUPT: no notification", func(t *testing.T) {
		e := newRing(t, 16, nil)
		e.d.SetAvailFlags(vhostuser.AvailFNoInterrupt)
		complete(t, e, 1)
		if e.r.NeedsNotify() {
			t.Error("NeedsNotify = true")
		}
		e.d.SetAvailFlags(0)
		if !e.r.NeedsNotify() {
			t.Error("NeedsNotify = false after the driver cleared NO_INTERRUPT")
		}
	})
	eventIdx := func(o *vhostuser.SplitRingOptions) { o.EventIdx = true }
	t.Run("EVENT_IDX ignores NO_INTERRUPT", func(t *testing.T) {
		e := newRing(t, 16, eventIdx)
		e.d.SetAvailFlags(vhostuser.AvailFNoInterrupt)
		e.d.SetUsedEvent(0)
		complete(t, e, 1)
		if !e.r.NeedsNotify() {
			t.Error("NeedsNotify = false")
		}
	})
	t.Run("EVENT_IDX: notify when idx passes used_event", func(t *testing.T) {
		e := newRing(t, 16, eventIdx)
		complete(t, e, 1) // first notification is always sent
		e.r.NeedsNotify()
		e.d.SetUsedEvent(3) // notify when entry 3 is written, i.e. idx reaches 4
		complete(t, e, 1)   // idx 2
		if e.r.NeedsNotify() {
			t.Error("idx 2: NeedsNotify = true")
		}
		complete(t, e, 1) // idx 3
		if e.r.NeedsNotify() {
			t.Error("idx 3: NeedsNotify = true")
		}
		complete(t, e, 2) // idx 5, crossing 4 in one batch
		if !e.r.NeedsNotify() {
			t.Error("idx 5: NeedsNotify = false")
		}
		complete(t, e, 1) // idx 6, used_event still 3
		if e.r.NeedsNotify() {
			t.Error("idx 6: NeedsNotify = true")
		}
	})
}

// Test_2_6_10_AvailableBufferNotificationSuppression covers NO_NOTIFY and
// avail_event.
func Test_2_6_10_AvailableBufferNotificationSuppression(t *testing.T) {
	t.Run("NO_NOTIFY flag", func(t *testing.T) {
		e := newRing(t, 16, nil)
		e.r.DisableNotifications()
		if e.d.UsedFlags() != vhostuser.UsedFNoNotify {
			t.Errorf("used flags = %#x after Disable", e.d.UsedFlags())
		}
		// Publishing keeps the flag.
		e.d.AddChain(vhostusertest.Buf{Data: []byte{1}})
		e.r.Push(e.pop(t), 0)
		e.r.Publish()
		if e.d.UsedFlags() != vhostuser.UsedFNoNotify || e.d.UsedIdx() != 1 {
			t.Errorf("after Publish: flags %#x idx %d", e.d.UsedFlags(), e.d.UsedIdx())
		}
		if e.r.EnableNotifications() {
			t.Error("EnableNotifications reports work on an empty ring")
		}
		if e.d.UsedFlags() != 0 || e.d.UsedIdx() != 1 {
			t.Errorf("after Enable: flags %#x idx %d", e.d.UsedFlags(), e.d.UsedIdx())
		}
		e.d.AddChain(vhostusertest.Buf{Data: []byte{1}})
		if !e.r.EnableNotifications() {
			t.Error("EnableNotifications misses a pending buffer")
		}
	})
	t.Run("avail_event", func(t *testing.T) {
		e := newRing(t, 16, func(o *vhostuser.SplitRingOptions) { o.EventIdx = true })
		e.r.DisableNotifications()
		if e.d.UsedFlags() != 0 {
			t.Errorf("EVENT_IDX ring set used flags %#x", e.d.UsedFlags())
		}
		for range 3 {
			e.d.AddChain(vhostusertest.Buf{Data: []byte{1}})
			e.pop(t)
		}
		if e.r.EnableNotifications() {
			t.Error("EnableNotifications reports work on an empty ring")
		}
		if e.d.AvailEvent() != 3 {
			t.Errorf("avail_event = %d, want 3", e.d.AvailEvent())
		}
	})
}

// TestVringBase follows vhost-user.rst SET_VRING_BASE / GET_VRING_BASE: the
// device resumes at the given available index and reads the used index
// from guest memory.
func TestVringBase(t *testing.T) {
	e := newRing(t, 16, nil)
	for range 5 {
		e.d.AddChain(vhostusertest.Buf{Data: []byte{1}})
		e.r.Push(e.pop(t), 0)
	}
	e.r.Publish()
	base := e.r.VringBase()
	if base != 5 {
		t.Fatalf("VringBase = %d", base)
	}
	// "Restart" the ring, e.g. after migration or reconnection.
	r2, err := vhostuser.NewSplitRing(e.mem, vhostuser.SplitRingOptions{Size: 16, Addr: e.d.Addr(0, false), LastAvailIdx: uint16(base)})
	if err != nil {
		t.Fatal(err)
	}
	head, _ := e.d.AddChain(vhostusertest.Buf{Data: []byte{9}})
	c := vhostuser.NewChain(16)
	if ok, err := r2.Pop(c); !ok || err != nil || c.Head() != head {
		t.Fatalf("Pop after restart = %v, %v, head %d", ok, err, c.Head())
	}
	r2.Push(c, 0)
	r2.Publish()
	if e.d.UsedIdx() != 6 {
		t.Errorf("used idx = %d, want 6 (continued from guest memory)", e.d.UsedIdx())
	}
}

func TestNewSplitRingValidation(t *testing.T) {
	g := vhostusertest.NewGuest(t, guestGPA, guestUser, guestSize)
	d := vhostusertest.NewDriver(g, ringGPA, 16, dataGPA, dataEnd)
	mem := g.Memory(t)
	good := d.Addr(0, false)
	tests := []struct {
		name string
		size uint32
		mod  func(*vhostuser.VringAddr)
	}{
		{"size 0", 0, nil},
		{"size 3 is not a power of two", 3, nil},
		{"size 1000 is not a power of two", 1000, nil},
		{"size 65536 is too large", 65536, nil},
		{"descriptor table misaligned", 16, func(a *vhostuser.VringAddr) { a.Desc += 8 }},
		{"available ring misaligned", 16, func(a *vhostuser.VringAddr) { a.Avail++ }},
		{"used ring misaligned", 16, func(a *vhostuser.VringAddr) { a.Used += 2 }},
		{"descriptor table not mapped", 16, func(a *vhostuser.VringAddr) { a.Desc = 0x1000 }},
		{"used ring runs past memory", 16, func(a *vhostuser.VringAddr) { a.Used = guestUser + guestSize - 64 }},
		{"guest physical instead of user address", 16, func(a *vhostuser.VringAddr) { a.Avail = d.AvailGPA }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := good
			if tt.mod != nil {
				tt.mod(&a)
			}
			if _, err := vhostuser.NewSplitRing(mem, vhostuser.SplitRingOptions{Size: tt.size, Addr: a}); !errors.Is(err, vhostuser.ErrBadRing) {
				t.Errorf("err = %v, want ErrBadRing", err)
			}
		})
	}
	for _, size := range []uint32{1, 2, 256, vhostuser.MaxQueueSize} {
		if _, err := vhostuser.NewSplitRing(mem, vhostuser.SplitRingOptions{Size: size, Addr: good}); err != nil {
			t.Errorf("size %d: %v", size, err)
		}
	}
}

// TestRingDirtyLogging follows vhost-user.rst "Migration": writes to
// writable buffers are logged at their guest addresses, writes to the used
// ring at the ring's log address when VHOST_VRING_F_LOG is set.
func TestRingDirtyLogging(t *testing.T) {
	pages := uint64(guestGPA+guestSize) / vhostuser.LogPageSize
	for _, logUsed := range []bool{false, true} {
		e := newRing(t, 16, nil)
		l, _ := newLog(t, (pages+7)/8, 0)
		addr := e.d.Addr(0, logUsed)
		e.r.SetLogging(l, logUsed, addr.Log)

		// A receive buffer spanning three pages, of which 5000 bytes get written.
		bufGPA := uint64(dataGPA + 0x8000 - 100)
		e.d.SetDesc(0, bufGPA, 3*4096, vhostuser.DescFWrite, 0)
		e.d.Offer(0)
		c := e.pop(t)
		if err := e.r.Push(c, 5000); err != nil {
			t.Fatal(err)
		}
		e.r.Publish()
		for _, tc := range []struct {
			gpa  uint64
			want bool
		}{
			{bufGPA, true},
			{bufGPA + 4999, true},
			{bufGPA + 5000 + 4096, false}, // beyond what was written
			{e.d.UsedGPA, logUsed},        // used->idx
			{e.d.UsedGPA + 4, logUsed},    // used->ring[0]
			{dataGPA + 0x30000, false},    // untouched memory
		} {
			if got := l.IsMarked(tc.gpa); got != tc.want {
				t.Errorf("logUsed=%v: IsMarked(%#x) = %v, want %v", logUsed, tc.gpa, got, tc.want)
			}
		}
		// Logging off.
		e.r.SetLogging(nil, false, 0)
		e.d.SetDesc(1, dataGPA+0x20000, 100, vhostuser.DescFWrite, 0)
		e.d.Offer(1)
		if err := e.r.Push(e.pop(t), 100); err != nil {
			t.Fatal(err)
		}
		if l.IsMarked(dataGPA + 0x20000) {
			t.Error("marked with logging off")
		}
	}
}

func TestPopPushDoesNotAllocate(t *testing.T) {
	e := newRing(t, 256, func(o *vhostuser.SplitRingOptions) { o.EventIdx = true })
	pages := uint64(guestGPA+guestSize) / vhostuser.LogPageSize
	l, _ := newLog(t, (pages+7)/8, 0)
	e.r.SetLogging(l, true, e.d.Addr(0, true).Log)
	e.d.SetDesc(0, dataGPA, 12, vhostuser.DescFNext, 1)
	e.d.SetDesc(1, dataGPA+64, 1514, vhostuser.DescFWrite, 0)
	e.d.SetDesc(2, outsideGP, 10, 0, 0) // a bad chain from head 2
	allocs := testing.AllocsPerRun(1000, func() {
		e.d.Offer(0)
		e.d.Offer(2)
		ok, err := e.r.Pop(e.c)
		if !ok || err != nil {
			t.Fatal(ok, err)
		}
		if err := e.r.Push(e.c, 100); err != nil {
			t.Fatal(err)
		}
		if ok, err := e.r.Pop(e.c); ok || err == nil {
			t.Fatal("bad chain accepted")
		}
		e.r.Publish()
		e.r.NeedsNotify()
		e.r.EnableNotifications()
		e.r.DisableNotifications()
		for {
			if _, _, ok := e.d.Used(); !ok {
				break
			}
		}
	})
	if allocs != 0 {
		t.Errorf("Pop/Push/Publish allocate %v times per round", allocs)
	}
}

// TestDriverAndDeviceConcurrently runs a driver goroutine against the
// device, as a guest would, and checks every buffer comes back intact.
func TestDriverAndDeviceConcurrently(t *testing.T) {
	const size, rounds = 64, 20000
	e := newRing(t, size, func(o *vhostuser.SplitRingOptions) { o.EventIdx = true })
	// Fixed descriptors: descriptor i is a 64-byte writable buffer i.
	for i := range uint16(size) {
		e.d.SetDesc(i, dataGPA+64*uint64(i), 64, vhostuser.DescFWrite, 0)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	errc := make(chan error, 1)
	go func() { // driver
		defer wg.Done()
		free := make([]uint16, 0, size)
		for i := range uint16(size) {
			free = append(free, i)
		}
		next := uint32(0)
		for done := 0; done < rounds; {
			for len(free) > 0 && int(next) < rounds {
				h := free[len(free)-1]
				free = free[:len(free)-1]
				e.d.Offer(h)
				next++
			}
			id, l, ok := e.d.Used()
			if !ok {
				continue
			}
			b := e.g.Bytes(dataGPA+64*uint64(id), 64)
			if l != 8 || b[0] != byte(id) || b[1] != 0xcd {
				errc <- errors.New("corrupt used buffer")
				return
			}
			free = append(free, uint16(id))
			done++
		}
	}()
	c := vhostuser.NewChain(size)
	for handled := 0; handled < rounds; {
		ok, err := e.r.Pop(c)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			e.r.Publish()
			continue
		}
		c.Scatter([]byte{byte(c.Head()), 0xcd, 0, 0, 0, 0, 0, 0}, 0)
		if err := e.r.Push(c, 8); err != nil {
			t.Fatal(err)
		}
		handled++
		if handled%8 == 0 {
			e.r.Publish()
		}
	}
	e.r.Publish()
	wg.Wait()
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}
	if e.r.Errors() != 0 {
		t.Errorf("Errors = %d", e.r.Errors())
	}
}

func benchmarkPopPush(b *testing.B, opt func(*vhostuser.SplitRingOptions), chain func(e *ringEnv)) {
	e := newRing(b, 256, opt)
	chain(e)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		e.d.Offer(0)
		if ok, err := e.r.Pop(e.c); !ok || err != nil {
			b.Fatal(ok, err)
		}
		if err := e.r.Push(e.c, 0); err != nil {
			b.Fatal(err)
		}
		e.r.Publish()
		e.r.NeedsNotify()
	}
}

// BenchmarkPopPush: a TX-style chain (12-byte header + 1514-byte frame).
func BenchmarkPopPush(b *testing.B) {
	benchmarkPopPush(b, nil, func(e *ringEnv) {
		e.d.SetDesc(0, dataGPA, 12, vhostuser.DescFNext, 1)
		e.d.SetDesc(1, dataGPA+64, 1514, 0, 0)
	})
}

// BenchmarkPopPushIndirect: the same chain through an indirect table.
func BenchmarkPopPushIndirect(b *testing.B) {
	benchmarkPopPush(b, nil, func(e *ringEnv) {
		tb := e.g.Bytes(dataGPA+0x10000, 32)
		vhostusertest.PutDesc(tb, dataGPA, 12, vhostuser.DescFNext, 1)
		vhostusertest.PutDesc(tb[16:], dataGPA+64, 1514, 0, 0)
		e.d.SetDesc(0, dataGPA+0x10000, 32, vhostuser.DescFIndirect, 0)
	})
}

// BenchmarkPopPushLogged: an RX-style writable buffer with dirty logging on.
func BenchmarkPopPushLogged(b *testing.B) {
	benchmarkPopPush(b, nil, func(e *ringEnv) {
		pages := uint64(guestGPA+guestSize) / vhostuser.LogPageSize
		l, _ := newLog(b, (pages+7)/8, 0)
		e.r.SetLogging(l, true, e.d.UsedGPA)
		e.d.SetDesc(0, dataGPA, 1526, vhostuser.DescFWrite, 0)
	})
}
