package vhostuser_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
)

// FuzzReadMessage feeds arbitrary bytes and descriptor counts to the
// message validation ReadMessage uses, then to every payload accessor.
// Nothing may panic, and an accepted message must be self-consistent.
func FuzzReadMessage(f *testing.F) {
	v := uint32(vhostuser.Version)
	seeds := []struct {
		b    []byte
		nfds uint8
	}{
		{msgBytes(vhostuser.GetFeatures, v, nil), 0},
		{msgBytes(vhostuser.SetFeatures, v, u64(1<<32|1<<30)), 0},
		{msgBytes(vhostuser.SetOwner, v|vhostuser.FlagNeedReply, nil), 0},
		{msgBytes(vhostuser.SetMemTable, v, memTable(2)), 2},
		{msgBytes(vhostuser.AddMemReg, v, vhostuser.AppendMemRegion(nil, vhostuser.MemoryRegion{Size: 1 << 30})), 1},
		{msgBytes(vhostuser.SetVringAddr, v, vhostuser.AppendVringAddr(nil, vhostuser.VringAddr{Index: 1, Desc: 0x1000})), 0},
		{msgBytes(vhostuser.SetVringKick, v, u64(vhostuser.VringNoFD)), 0},
		{msgBytes(vhostuser.SetLogBase, v, vhostuser.AppendLog(nil, vhostuser.Log{Size: 4096})), 1},
		{msgBytes(vhostuser.GetConfig, v, vhostuser.AppendConfig(nil, vhostuser.Config{Data: make([]byte, 12)})), 0},
		{msgBytes(vhostuser.SetInflightFD, v, vhostuser.AppendInflight(nil, vhostuser.Inflight{NumQueues: 2})), 1},
		{msgBytes(vhostuser.SetDeviceStateFD, v, vhostuser.AppendDeviceStateTransfer(nil, vhostuser.DeviceStateTransfer{})), 1},
		{msgBytes(vhostuser.GetSharedObject, v, make([]byte, 16)), 0},
		{msgBytes(vhostuser.IOTLBMsg, v, make([]byte, 32)), 0},
	}
	for _, s := range seeds {
		f.Add(s.b, s.nfds)
	}
	f.Fuzz(func(t *testing.T, b []byte, nfds uint8) {
		m, err := vhostuser.ParseMessage(b, int(nfds%(vhostuser.MaxFDs+2)))
		if err != nil {
			var pe *vhostuser.ProtocolError
			if !errors.As(err, &pe) {
				t.Fatalf("error %T is not a *ProtocolError: %v", err, err)
			}
			_ = err.Error()
			return
		}
		if !m.Request.Known() || int(m.Size) != len(m.Payload) || len(b) != vhostuser.HeaderSize+len(m.Payload) {
			t.Fatalf("accepted inconsistent message %+v", m.Header)
		}
		_ = m.Request.String()
		_ = m.NeedsAck()
		decoded := 0
		try := func(err error) {
			if err == nil {
				decoded++
			} else if !errors.Is(err, vhostuser.ErrWrongPayload) {
				t.Fatalf("%v: accessor failed on an accepted message: %v", m.Request, err)
			}
		}
		_, err = m.U64()
		try(err)
		_, err = m.VringState()
		try(err)
		_, err = m.VringAddr()
		try(err)
		mt, err := m.MemoryTable()
		try(err)
		if err == nil && len(mt.Regions) != int(nfds%(vhostuser.MaxFDs+2)) {
			t.Fatalf("SET_MEM_TABLE accepted with %d regions and %d fds", len(mt.Regions), nfds)
		}
		_, err = m.MemRegion()
		try(err)
		_, err = m.Log()
		try(err)
		_, err = m.IOTLB()
		try(err)
		_, err = m.Config()
		try(err)
		_, err = m.Inflight()
		try(err)
		_, err = m.SharedObject()
		try(err)
		_, err = m.DeviceStateTransfer()
		try(err)
		if decoded > 1 {
			t.Fatalf("%v decoded as %d payload types", m.Request, decoded)
		}
	})
}

// FuzzDescriptorWalk lets the fuzzer write the descriptor table, an
// indirect table and the available ring of a queue in real guest memory,
// then pops and pushes everything. Nothing may panic or loop, every
// accepted chain must lie inside guest memory, and every refused chain
// must be counted.
func FuzzDescriptorWalk(f *testing.F) {
	const (
		size      = 16
		gGPA      = 0x40000
		gSize     = 256 << 10
		ringBase  = gGPA
		indirect  = gGPA + 0x2000 // fuzzer-written indirect table (256 bytes)
		dataBase  = gGPA + 0x10000
		dataRange = 0x10000
	)
	g := vhostusertest.NewGuest(f, gGPA, 0x7f00_0000_0000, gSize)
	d := vhostusertest.NewDriver(g, ringBase, size, dataBase, gGPA+gSize)
	mem := g.Memory(f)

	desc := func(addr uint64, l uint32, flags, next uint16) []byte {
		b := make([]byte, 16)
		vhostusertest.PutDesc(b, addr, l, flags, next)
		return b
	}
	cat := func(bs ...[]byte) []byte {
		var out []byte
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}
	// Seeds: a good two-descriptor chain, an indirect chain, a loop, a
	// nested indirect table.
	f.Add(cat(desc(dataBase, 12, vhostuser.DescFNext, 1), desc(dataBase+64, 1500, vhostuser.DescFWrite, 0)), []byte(nil), []byte{0}, uint8(0))
	f.Add(cat(desc(indirect, 32, vhostuser.DescFIndirect, 0)), cat(desc(dataBase, 12, vhostuser.DescFNext, 1), desc(dataBase+100, 200, vhostuser.DescFWrite, 0)), []byte{0, 0, 0}, uint8(1))
	f.Add(cat(desc(dataBase, 8, vhostuser.DescFNext, 1), desc(dataBase, 8, vhostuser.DescFNext, 0)), []byte(nil), []byte{0, 1}, uint8(0))
	f.Add(cat(desc(indirect, 16, vhostuser.DescFIndirect, 0)), cat(desc(indirect, 16, vhostuser.DescFIndirect, 0)), []byte{0}, uint8(3))

	scratch := make([]byte, 0, 1<<16) // one writable segment's bytes
	f.Fuzz(func(t *testing.T, table, itable, heads []byte, mode uint8) {
		if len(heads) > 3*size {
			heads = heads[:3*size]
		}
		// Fuzzer bytes become the descriptor table and the indirect table.
		dt := g.Bytes(ringBase, 16*size)
		clear(dt)
		copy(dt, table)
		it := g.Bytes(indirect, 256)
		clear(it)
		copy(it, itable)
		if mode&1 != 0 {
			// Pull addresses into the data area so more chains get deep.
			for _, tb := range [][]byte{dt, it} {
				for i := 0; i+16 <= len(tb); i += 16 {
					a := binary.LittleEndian.Uint64(tb[i:])
					if binary.LittleEndian.Uint16(tb[i+12:])&vhostuser.DescFIndirect == 0 {
						binary.LittleEndian.PutUint64(tb[i:], dataBase+a%dataRange)
					}
				}
			}
		}
		// Fresh rings: avail and used indexes at 0.
		clear(g.Bytes(d.AvailGPA, d.UsedGPA+4+8*size+2-d.AvailGPA))
		d.SetAvailIdx(0)
		r, err := vhostuser.NewSplitRing(mem, vhostuser.SplitRingOptions{
			Size: size, Addr: d.Addr(0, false), IndirectDesc: mode&2 == 0, EventIdx: mode&4 != 0,
			MaxDescriptorLen: 1 << 16,
		})
		if err != nil {
			t.Fatal(err)
		}
		offered := 0
		for _, h := range heads {
			if offered == size {
				break
			}
			d.Offer(uint16(h) % (size + 2)) // sometimes out of range
			offered++
		}
		c := vhostuser.NewChain(size)
		var bad uint64
		for pops := 0; pops <= offered; pops++ {
			ok, err := r.Pop(c)
			if err != nil {
				if errors.Is(err, vhostuser.ErrRingBroken) {
					t.Fatalf("ring broken with %d offered", offered)
				}
				bad++
				continue
			}
			if !ok {
				break
			}
			var rl, wl uint64
			for _, s := range c.Readable() {
				rl += uint64(len(s))
			}
			for _, s := range c.Writable() {
				wl += uint64(len(s))
				// Writable memory really is writable. The bytes go back:
				// a buffer may lie over the rings themselves, and the
				// test is not the guest.
				keep := append(scratch[:0], s...)
				clear(s)
				copy(s, keep)
			}
			if rl != uint64(c.ReadableLen()) || wl != uint64(c.WritableLen()) || rl+wl == 0 {
				t.Fatalf("chain lengths %d/%d, segments %d/%d", c.ReadableLen(), c.WritableLen(), rl, wl)
			}
			if err := r.Push(c, c.WritableLen()); err != nil {
				t.Fatal(err)
			}
		}
		if r.VringBase() != uint32(offered) {
			t.Fatalf("consumed %d of %d entries", r.VringBase(), offered)
		}
		if r.Errors() != bad {
			t.Fatalf("Errors = %d, saw %d", r.Errors(), bad)
		}
		r.Publish()
		r.NeedsNotify()
	})
}

// FuzzPackedRing lets the fuzzer write a packed descriptor ring (flags
// included: any mix of available, used and chained descriptors), an
// indirect table and the starting position and wrap counter, then pops
// and pushes whatever is available. Nothing may panic or loop, every
// accepted chain must lie inside guest memory, every refused chain must
// be counted, and the ring's position must stay inside the ring.
func FuzzPackedRing(f *testing.F) {
	const (
		size      = 16
		gGPA      = 0x40000
		gSize     = 256 << 10
		ringBase  = gGPA
		indirect  = gGPA + 0x2000
		dataBase  = gGPA + 0x10000
		dataRange = 0x10000
	)
	g := vhostusertest.NewGuest(f, gGPA, 0x7f00_0000_0000, gSize)
	d := vhostusertest.NewPackedDriver(g, ringBase, size, dataBase, gGPA+gSize)
	mem := g.Memory(f)
	avail := uint16(vhostuser.PackedDescFAvail) // available in the first lap
	desc := func(addr uint64, l uint32, id, flags uint16) []byte {
		b := make([]byte, 16)
		binary.LittleEndian.PutUint64(b, addr)
		binary.LittleEndian.PutUint32(b[8:], l)
		binary.LittleEndian.PutUint16(b[12:], id)
		binary.LittleEndian.PutUint16(b[14:], flags)
		return b
	}
	cat := func(bs ...[]byte) []byte {
		var out []byte
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}
	// Seeds: a good two-descriptor chain, an indirect chain, a chain that
	// never ends, a nested indirect table, a chain running into an
	// unavailable descriptor.
	f.Add(cat(desc(dataBase, 12, 0, avail|vhostuser.DescFNext), desc(dataBase+64, 1500, 0, avail|vhostuser.DescFWrite)), []byte(nil), uint16(0x8000), uint8(0))
	f.Add(cat(desc(indirect, 32, 5, avail|vhostuser.DescFIndirect)), cat(desc(dataBase, 12, 0, 0), desc(dataBase+100, 200, 0, vhostuser.DescFWrite)), uint16(0x8000), uint8(1))
	loop := []byte(nil)
	for range size {
		loop = append(loop, desc(dataBase, 8, 1, avail|vhostuser.DescFNext)...)
	}
	f.Add(loop, []byte(nil), uint16(0x8000), uint8(0))
	f.Add(cat(desc(indirect, 16, 2, avail|vhostuser.DescFIndirect)), cat(desc(indirect, 16, 0, vhostuser.DescFIndirect)), uint16(0x8000), uint8(3))
	f.Add(cat(desc(dataBase, 8, 3, avail|vhostuser.DescFNext)), []byte(nil), uint16(0x8000), uint8(4))
	f.Add(cat(desc(dataBase, 8, 3, vhostuser.PackedDescFUsed)), []byte(nil), uint16(0x0000), uint8(0))

	f.Fuzz(func(t *testing.T, table, itable []byte, base uint16, mode uint8) {
		dt := g.Bytes(ringBase, 16*size+8)
		clear(dt)
		copy(dt[:16*size], table)
		it := g.Bytes(indirect, 256)
		clear(it)
		copy(it, itable)
		if mode&1 != 0 {
			for _, tb := range [][]byte{dt[:16*size], it} {
				for i := 0; i+16 <= len(tb); i += 16 {
					a := binary.LittleEndian.Uint64(tb[i:])
					if binary.LittleEndian.Uint16(tb[i+14:])&vhostuser.DescFIndirect == 0 {
						binary.LittleEndian.PutUint64(tb[i:], dataBase+a%dataRange)
					}
				}
			}
		}
		b := uint32(base&0x8000) | uint32(base&0x7fff)%size
		r, err := vhostuser.NewPackedRing(mem, vhostuser.PackedRingOptions{
			Size: size, Addr: d.Addr(0, false), Base: b, IndirectDesc: mode&2 == 0, EventIdx: mode&4 != 0,
			MaxDescriptorLen: 1 << 16,
		})
		if err != nil {
			t.Fatal(err)
		}
		_ = r.Pending()
		c := vhostuser.NewChain(size)
		var bad uint64
		for pops := 0; pops < 3*size; pops++ {
			ok, err := r.Pop(c)
			if err != nil {
				if errors.Is(err, vhostuser.ErrRingBroken) {
					t.Fatal("a packed ring reported broken")
				}
				bad++
				continue
			}
			if !ok {
				break
			}
			var rl, wl uint64
			for _, s := range c.Readable() {
				rl += uint64(len(s))
			}
			for _, s := range c.Writable() {
				wl += uint64(len(s))
				clear(s)
			}
			if rl != uint64(c.ReadableLen()) || wl != uint64(c.WritableLen()) || rl+wl == 0 {
				t.Fatalf("chain lengths %d/%d, segments %d/%d", c.ReadableLen(), c.WritableLen(), rl, wl)
			}
			if err := r.Push(c, c.WritableLen()); err != nil {
				t.Fatal(err)
			}
			if pops%3 == 0 {
				r.Publish()
			}
		}
		if r.Errors() != bad {
			t.Fatalf("Errors = %d, saw %d", r.Errors(), bad)
		}
		if v := r.VringBase(); v&0x7fff >= size || (v>>16)&0x7fff >= size {
			t.Fatalf("VringBase %#x outside a ring of %d", v, size)
		} else if v&0xffff != v>>16 {
			// Every chain taken went back, good or not, with all its
			// descriptors: the used side is where the available side is.
			t.Fatalf("VringBase %#x: used side not at the available side", v)
		}
		r.Publish()
		r.NeedsNotify()
		r.EnableNotifications()
		r.DisableNotifications()
	})
}
