package vhostusertest

import (
	"encoding/binary"

	"github.com/veloce-io/veloce/vhostuser"
)

// Driver is the driver side of a split virtqueue (virtio 1.1, 2.6) laid out
// in a Guest: it writes descriptors and available entries as a guest driver
// would and reads the used ring. Index stores and loads are atomic, so a
// Driver can run on another goroutine than the device under test.
type Driver struct {
	G        *Guest // the guest whose memory holds the queue
	Size     uint16 // queue size
	DescGPA  uint64 // descriptor table, 16-byte aligned
	AvailGPA uint64 // available ring, with room for used_event
	UsedGPA  uint64 // used ring, 4-byte aligned, with room for avail_event

	availIdx uint16
	lastUsed uint16
	nextDesc uint16
	dataGPA  uint64 // bump allocator for buffers
	dataEnd  uint64
}

// NewDriver lays out a queue of size entries at guest physical address
// base (16-byte aligned) and uses the guest memory from dataGPA to dataEnd
// for buffers added with AddChain.
func NewDriver(g *Guest, base uint64, size uint16, dataGPA, dataEnd uint64) *Driver {
	d := &Driver{G: g, Size: size, DescGPA: base, dataGPA: dataGPA, dataEnd: dataEnd}
	d.AvailGPA = base + vhostuser.DescSize*uint64(size)
	d.UsedGPA = (d.AvailGPA + 6 + 2*uint64(size) + 3) &^ 3
	clear(g.Bytes(d.DescGPA, d.UsedGPA+6+8*uint64(size)-d.DescGPA))
	return d
}

// Addr returns the SET_VRING_ADDR description of the queue (frontend
// virtual addresses), with the used ring logged at its guest address.
func (d *Driver) Addr(index uint32, logUsed bool) vhostuser.VringAddr {
	a := vhostuser.VringAddr{
		Index: index,
		Desc:  d.G.UserAddr(d.DescGPA),
		Avail: d.G.UserAddr(d.AvailGPA),
		Used:  d.G.UserAddr(d.UsedGPA),
		Log:   d.UsedGPA,
	}
	if logUsed {
		a.Flags = vhostuser.VringFLog
	}
	return a
}

// SetDesc writes descriptor i of the queue's table.
func (d *Driver) SetDesc(i uint16, addr uint64, length uint32, flags, next uint16) {
	PutDesc(d.G.Bytes(d.DescGPA+vhostuser.DescSize*uint64(i), vhostuser.DescSize), addr, length, flags, next)
}

// PutDesc encodes one descriptor into b (16 bytes), for building indirect
// tables.
func PutDesc(b []byte, addr uint64, length uint32, flags, next uint16) {
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], length)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
}

// Offer puts head in the available ring and publishes it (release store
// of avail->idx).
func (d *Driver) Offer(head uint16) {
	slot := d.AvailGPA + 4 + 2*uint64(d.availIdx%d.Size)
	binary.LittleEndian.PutUint16(d.G.Bytes(slot, 2), head)
	d.availIdx++
	d.SetAvailIdx(d.availIdx)
}

// SetAvailIdx stores avail->idx directly (for hostile tests).
func (d *Driver) SetAvailIdx(idx uint16) {
	d.availIdx = idx
	store16(d.G.Mem, d.off(d.AvailGPA+2), idx)
}

// AvailIdx returns the driver's avail->idx.
func (d *Driver) AvailIdx() uint16 { return d.availIdx }

// SetAvailFlags stores avail->flags (AvailFNoInterrupt).
func (d *Driver) SetAvailFlags(f uint16) { store16(d.G.Mem, d.off(d.AvailGPA), f) }

// SetUsedEvent stores used_event (EVENT_IDX).
func (d *Driver) SetUsedEvent(v uint16) {
	store16(d.G.Mem, d.off(d.AvailGPA+4+2*uint64(d.Size)), v)
}

// AvailEvent reads avail_event (EVENT_IDX), written by the device.
func (d *Driver) AvailEvent() uint16 {
	return load16(d.G.Mem, d.off(d.UsedGPA+4+8*uint64(d.Size)))
}

// UsedFlags reads used->flags.
func (d *Driver) UsedFlags() uint16 { return load16(d.G.Mem, d.off(d.UsedGPA)) }

// UsedIdx reads used->idx (acquire).
func (d *Driver) UsedIdx() uint16 { return load16(d.G.Mem, d.off(d.UsedGPA+2)) }

// Used returns the next used element if the device published one.
func (d *Driver) Used() (id, length uint32, ok bool) {
	if d.UsedIdx() == d.lastUsed {
		return 0, 0, false
	}
	e := d.G.Bytes(d.UsedGPA+4+8*uint64(d.lastUsed%d.Size), 8)
	d.lastUsed++
	return binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:]), true
}

// Buf describes one buffer of a chain for AddChain: Data is copied into a
// device-readable buffer; if Data is nil, a device-writable buffer of
// WriteLen bytes is allocated instead.
type Buf struct {
	Data     []byte // contents of a device-readable buffer
	WriteLen uint32 // length of a device-writable buffer, when Data is nil
}

// AddChain allocates descriptors (round robin from the table) and buffer
// space for bufs, chains them and offers the head. It returns the head and
// the guest address of each buffer. It panics when out of buffer space.
func (d *Driver) AddChain(bufs ...Buf) (head uint16, addrs []uint64) {
	head = d.nextDesc
	for i, b := range bufs {
		idx := d.nextDesc
		d.nextDesc = (d.nextDesc + 1) % d.Size
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
		d.SetDesc(idx, gpa, uint32(n), flags, d.nextDesc)
		addrs = append(addrs, gpa)
	}
	d.Offer(head)
	return head, addrs
}

// ResetData makes AddChain reuse buffer space from the start (after the
// device has returned every buffer).
func (d *Driver) ResetData(dataGPA uint64) { d.dataGPA = dataGPA }

func (d *Driver) alloc(n uint64) uint64 {
	gpa := (d.dataGPA + 7) &^ 7
	if gpa+n > d.dataEnd {
		panic("vhostusertest: Driver out of buffer space")
	}
	d.dataGPA = gpa + n
	return gpa
}

// off converts a guest physical address to an offset in G.Mem.
func (d *Driver) off(gpa uint64) uint64 { return gpa - d.G.Region.GuestAddr }
