package vhostusertest

import (
	"encoding/binary"

	"github.com/veloce-io/veloce/vhostuser"
)

// PackedDriver is the driver side of a packed virtqueue (virtio 1.2, 2.8)
// laid out in a Guest: it writes descriptors as a guest driver would (the
// head's flags last) and reads used descriptors back. Flag stores and
// loads are atomic, so it can run on another goroutine than the device.
type PackedDriver struct {
	G         *Guest
	Size      uint16
	DescGPA   uint64 // descriptor ring, 16-byte aligned
	DriverGPA uint64 // driver event suppression area
	DeviceGPA uint64 // device event suppression area

	nextAvail uint16
	availWrap bool
	nextUsed  uint16
	usedWrap  bool
	nextID    uint16
	counts    []uint16 // descriptors taken by each buffer id in flight
	dataGPA   uint64
	dataEnd   uint64
}

// NewPackedDriver lays out a packed queue of size descriptors at base and
// uses guest memory from dataGPA to dataEnd for buffers. Both wrap
// counters start at 1, as the spec says.
func NewPackedDriver(g *Guest, base uint64, size uint16, dataGPA, dataEnd uint64) *PackedDriver {
	d := &PackedDriver{G: g, Size: size, DescGPA: base, availWrap: true, usedWrap: true,
		counts: make([]uint16, size), dataGPA: dataGPA, dataEnd: dataEnd}
	d.DriverGPA = base + vhostuser.DescSize*uint64(size)
	d.DeviceGPA = d.DriverGPA + 4
	clear(g.Bytes(d.DescGPA, d.DeviceGPA+4-d.DescGPA))
	return d
}

// Addr returns the SET_VRING_ADDR description of the queue.
func (d *PackedDriver) Addr(index uint32, log bool) vhostuser.VringAddr {
	a := vhostuser.VringAddr{Index: index, Desc: d.G.UserAddr(d.DescGPA), Avail: d.G.UserAddr(d.DriverGPA), Used: d.G.UserAddr(d.DeviceGPA)}
	if log {
		a.Flags = vhostuser.VringFLog
	}
	return a
}

// Base returns the SET_VRING_BASE value for the driver's next descriptor.
func (d *PackedDriver) Base() uint32 {
	v := uint32(d.nextAvail)
	if d.availWrap {
		v |= vhostuser.PackedBaseWrap
	}
	return v
}

// PackedDesc is one descriptor for AddRaw: Flags are the driver's (NEXT,
// WRITE, INDIRECT); AddRaw adds the AVAIL and USED bits.
type PackedDesc struct {
	Addr  uint64
	Len   uint32
	ID    uint16
	Flags uint16
}

// AddRaw writes descs at the next ring positions as one available batch,
// whatever they say (for hostile input), the first one's flags last. It
// returns how many ring positions it used.
func (d *PackedDriver) AddRaw(descs ...PackedDesc) int {
	if len(descs) == 0 {
		return 0
	}
	headOff := uint64(0)
	var headWord uint32
	for i, ds := range descs {
		off := d.G.Region.GuestAddr
		off = d.DescGPA + vhostuser.DescSize*uint64(d.nextAvail) - off
		b := d.G.Mem[off : off+vhostuser.DescSize]
		binary.LittleEndian.PutUint64(b[0:8], ds.Addr)
		binary.LittleEndian.PutUint32(b[8:12], ds.Len)
		f := ds.Flags &^ (vhostuser.PackedDescFAvail | vhostuser.PackedDescFUsed)
		if d.availWrap {
			f |= vhostuser.PackedDescFAvail
		} else {
			f |= vhostuser.PackedDescFUsed
		}
		w := uint32(ds.ID) | uint32(f)<<16
		if i == 0 {
			headOff, headWord = off+12, w
		} else {
			storeWord(d.G.Mem, off+12, w)
		}
		if d.nextAvail++; d.nextAvail == d.Size {
			d.nextAvail, d.availWrap = 0, !d.availWrap
		}
	}
	storeWord(d.G.Mem, headOff, headWord)
	return len(descs)
}

// AddRawChain is AddRaw for one chain of buffer id: every descriptor
// gets id, and Used moves past all of them when the device returns it
// (an id beyond the queue size is returned taking one position).
func (d *PackedDriver) AddRawChain(id uint16, descs ...PackedDesc) int {
	for i := range descs {
		descs[i].ID = id
	}
	if id < d.Size {
		d.counts[id] = uint16(len(descs))
	}
	return d.AddRaw(descs...)
}

// Poke writes ds at the next ring position with the AVAIL and USED bits
// given, whatever the wrap counter says, and does not move on: the next
// AddRaw overwrites it. With bits that do not say "available" the device
// must leave it alone.
func (d *PackedDriver) Poke(ds PackedDesc, avail, used bool) {
	off := d.DescGPA + vhostuser.DescSize*uint64(d.nextAvail) - d.G.Region.GuestAddr
	b := d.G.Mem[off : off+vhostuser.DescSize]
	binary.LittleEndian.PutUint64(b[0:8], ds.Addr)
	binary.LittleEndian.PutUint32(b[8:12], ds.Len)
	f := ds.Flags &^ (vhostuser.PackedDescFAvail | vhostuser.PackedDescFUsed)
	if avail {
		f |= vhostuser.PackedDescFAvail
	}
	if used {
		f |= vhostuser.PackedDescFUsed
	}
	storeWord(d.G.Mem, off+12, uint32(ds.ID)|uint32(f)<<16)
}

// Wrap returns the driver's avail wrap counter.
func (d *PackedDriver) Wrap() bool { return d.availWrap }

// Alloc returns n bytes of the driver's buffer space (8-byte aligned).
func (d *PackedDriver) Alloc(n uint64) uint64 { return d.alloc(n) }

// AddChain allocates buffer space for bufs, writes them as one chain with
// the next buffer id and makes it available. It returns the id and the
// guest address of each buffer.
func (d *PackedDriver) AddChain(bufs ...Buf) (id uint16, addrs []uint64) {
	id = d.nextID
	d.nextID = (d.nextID + 1) % d.Size
	descs := make([]PackedDesc, len(bufs))
	for i, b := range bufs {
		n := uint64(len(b.Data))
		flags := uint16(0)
		if b.Data == nil {
			n = uint64(b.WriteLen)
			flags = vhostuser.DescFWrite
		}
		gpa := d.alloc(n)
		copy(d.G.Bytes(gpa, n), b.Data)
		if i < len(bufs)-1 {
			flags |= vhostuser.DescFNext
		}
		descs[i] = PackedDesc{Addr: gpa, Len: uint32(n), ID: id, Flags: flags}
		addrs = append(addrs, gpa)
	}
	d.counts[id] = uint16(len(bufs))
	d.AddRaw(descs...)
	return id, addrs
}

// AddIndirect writes an indirect table for bufs at tableGPA and makes a
// one-descriptor chain pointing at it available.
func (d *PackedDriver) AddIndirect(tableGPA uint64, bufs ...Buf) (id uint16) {
	id = d.nextID
	d.nextID = (d.nextID + 1) % d.Size
	t := d.G.Bytes(tableGPA, vhostuser.DescSize*uint64(len(bufs)))
	for i, b := range bufs {
		n := uint64(len(b.Data))
		flags := uint16(0)
		if b.Data == nil {
			n = uint64(b.WriteLen)
			flags = vhostuser.DescFWrite
		}
		gpa := d.alloc(n)
		copy(d.G.Bytes(gpa, n), b.Data)
		e := t[i*vhostuser.DescSize:]
		binary.LittleEndian.PutUint64(e[0:8], gpa)
		binary.LittleEndian.PutUint32(e[8:12], uint32(n))
		binary.LittleEndian.PutUint16(e[12:14], id)
		binary.LittleEndian.PutUint16(e[14:16], flags)
	}
	d.counts[id] = 1
	d.AddRaw(PackedDesc{Addr: tableGPA, Len: uint32(len(t)), ID: id, Flags: vhostuser.DescFIndirect})
	return id
}

// Used returns the next used descriptor if the device wrote one, and moves
// past the positions its buffer took (as recorded by AddChain; 1 for a
// buffer AddRaw wrote).
func (d *PackedDriver) Used() (id uint16, length uint32, ok bool) {
	off := d.DescGPA + vhostuser.DescSize*uint64(d.nextUsed) - d.G.Region.GuestAddr
	w := loadWord(d.G.Mem, off+12)
	f := uint16(w >> 16)
	if (f&vhostuser.PackedDescFAvail != 0) != d.usedWrap || (f&vhostuser.PackedDescFUsed != 0) != d.usedWrap {
		return 0, 0, false
	}
	id = uint16(w)
	length = binary.LittleEndian.Uint32(d.G.Mem[off+8:])
	n := uint16(1)
	if id < d.Size && d.counts[id] > 0 {
		n = d.counts[id]
	}
	d.Skip(n)
	return id, length, true
}

// Skip moves the used side n positions on (for buffers written by AddRaw).
func (d *PackedDriver) Skip(n uint16) {
	next := uint32(d.nextUsed) + uint32(n)
	if next >= uint32(d.Size) {
		next -= uint32(d.Size)
		d.usedWrap = !d.usedWrap
	}
	d.nextUsed = uint16(next)
}

// SetDriverEvent writes the driver event suppression area: flags
// (vhostuser.RingEventF*) and, for RingEventFDesc, the position at which
// to notify (bits 0-14) with its wrap counter (bit 15).
func (d *PackedDriver) SetDriverEvent(flags, offWrap uint16) {
	storeWord(d.G.Mem, d.DriverGPA-d.G.Region.GuestAddr, uint32(offWrap)|uint32(flags)<<16)
}

// DeviceEvent reads the device event suppression area.
func (d *PackedDriver) DeviceEvent() (flags, offWrap uint16) {
	w := loadWord(d.G.Mem, d.DeviceGPA-d.G.Region.GuestAddr)
	return uint16(w >> 16), uint16(w)
}

// UsedPos returns the driver's next used position and wrap counter, as
// RingEventFDesc takes it.
func (d *PackedDriver) UsedPos() uint16 {
	v := d.nextUsed
	if d.usedWrap {
		v |= vhostuser.PackedBaseWrap
	}
	return v
}

// ResetData makes AddChain reuse buffer space from dataGPA.
func (d *PackedDriver) ResetData(dataGPA uint64) { d.dataGPA = dataGPA }

func (d *PackedDriver) alloc(n uint64) uint64 {
	gpa := (d.dataGPA + 7) &^ 7
	if gpa+n > d.dataEnd {
		panic("vhostusertest: PackedDriver out of buffer space")
	}
	d.dataGPA = gpa + n
	return gpa
}
