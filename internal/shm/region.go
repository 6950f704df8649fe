package shm

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Region is one mapped region: a memfd holding a Layout.
//
// Ownership: a Region owns its file descriptor (until CloseFD) and its
// mapping (until Close). Slices it returns (slots, ring entries) are
// views of the mapping and become invalid at Close: touching them then
// faults, so the caller must make sure none is in use.
type Region struct {
	mem    []byte
	layout Layout
	off    offsets
	fd     int // -1 once closed
}

// Create makes a region of layout l in a new memfd named name (shown in
// /proc/PID/fd and maps), seals its size and maps it. The counters and
// wait flags start at zero: every ring empty, TX slots with the
// application, RX slots with the daemon.
//
// Errors: ErrBadRegion (a layout outside the limits), ErrNotSupported
// (not Linux), or the failed system call's.
func Create(name string, l Layout) (*Region, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	fd, err := sealedMemfd(name, l.Size())
	if err != nil {
		return nil, fmt.Errorf("create region: %w", err)
	}
	mem, err := mapShared(fd, l.Size())
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("create region: mmap: %w", err)
	}
	PutHeader(mem, l)
	return &Region{mem: mem, layout: l, off: l.offsets(), fd: fd}, nil
}

// Open maps the region in fd, a memfd made by Create in another process.
// It takes ownership of fd, also on error. The region must be sealed
// against shrinking and growing, and its size must be what its header
// says.
//
// Errors: ErrBadRegion, ErrNotSupported (not Linux), or the failed
// system call's.
func Open(fd int) (*Region, error) {
	fail := func(err error) (*Region, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("open region: %w", err)
	}
	if err := checkSealed(fd); err != nil {
		return fail(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fail(err)
	}
	if st.Size < ControlSize || st.Size > MaxSize {
		return fail(fmt.Errorf("%d bytes: %w", st.Size, ErrBadRegion))
	}
	mem, err := mapShared(fd, int(st.Size))
	if err != nil {
		return fail(fmt.Errorf("mmap: %w", err))
	}
	l, err := ParseHeader(mem)
	if err == nil && l.Size() != len(mem) {
		err = fmt.Errorf("layout of %d bytes in a region of %d: %w", l.Size(), len(mem), ErrBadRegion)
	}
	if err != nil {
		unmap(mem)
		return fail(err)
	}
	return &Region{mem: mem, layout: l, off: l.offsets(), fd: fd}, nil
}

// Layout returns the region's layout.
func (r *Region) Layout() Layout { return r.layout }

// FD returns the region's memfd (to pass to the other side), -1 after
// CloseFD.
func (r *Region) FD() int { return r.fd }

// CloseFD closes the memfd; the mapping stays.
func (r *Region) CloseFD() error {
	if r.fd < 0 {
		return nil
	}
	err := unix.Close(r.fd)
	r.fd = -1
	return err
}

// Close unmaps the region and closes its memfd. Nothing from the region
// may be touched afterwards.
func (r *Region) Close() error {
	err := r.CloseFD()
	if r.mem != nil {
		if uerr := unmap(r.mem); err == nil {
			err = uerr
		}
		r.mem = nil
	}
	return err
}

// TXSlot returns TX slot id (SlotSize bytes, capacity limited to the
// slot); id must be below TXSlots.
func (r *Region) TXSlot(id uint32) []byte {
	return r.slot(r.off.txSlots, id, r.layout.TXSlots)
}

// RXSlot returns RX slot id; id must be below RXSlots.
func (r *Region) RXSlot(id uint32) []byte {
	return r.slot(r.off.rxSlots, id, r.layout.RXSlots)
}

func (r *Region) slot(base uint64, id, n uint32) []byte {
	if id >= n {
		panic(fmt.Sprintf("shm: slot %d of %d", id, n))
	}
	o := int(base) + int(id)*int(r.layout.SlotSize)
	e := o + int(r.layout.SlotSize)
	return r.mem[o:e:e]
}

func (r *Region) ring(head, tail int, entries uint64, n, esize uint32) ring {
	e := int(entries) + int(n*esize)
	return ring{head: word(r.mem, head), tail: word(r.mem, tail), entries: r.mem[entries:e:e], mask: n - 1, esize: esize}
}

// The rings, by end. Each end has one user: the application produces TX
// and RX-free entries and consumes TX-done and RX entries; the daemon the
// reverse. A new end starts at position 0: take each end once.

// TXProducer is the application's end of the TX ring.
func (r *Region) TXProducer() Producer { return Producer{ring: r.txRing()} }

// TXConsumer is the daemon's end of the TX ring.
func (r *Region) TXConsumer() Consumer { return Consumer{ring: r.txRing()} }

// DoneProducer is the daemon's end of the TX-done ring.
func (r *Region) DoneProducer() Producer { return Producer{ring: r.doneRing()} }

// DoneConsumer is the application's end of the TX-done ring.
func (r *Region) DoneConsumer() Consumer { return Consumer{ring: r.doneRing()} }

// RXProducer is the daemon's end of the RX ring.
func (r *Region) RXProducer() Producer { return Producer{ring: r.rxRing()} }

// RXConsumer is the application's end of the RX ring.
func (r *Region) RXConsumer() Consumer { return Consumer{ring: r.rxRing()} }

// FreeProducer is the application's end of the RX-free ring.
func (r *Region) FreeProducer() Producer { return Producer{ring: r.freeRing()} }

// FreeConsumer is the daemon's end of the RX-free ring.
func (r *Region) FreeConsumer() Consumer { return Consumer{ring: r.freeRing()} }

func (r *Region) txRing() ring {
	return r.ring(offTXHead, offTXTail, r.off.txRing, r.layout.TXSlots, TXEntrySize)
}

func (r *Region) doneRing() ring {
	return r.ring(offDoneHead, offDoneTail, r.off.txDone, r.layout.TXSlots, IDEntrySize)
}

func (r *Region) rxRing() ring {
	return r.ring(offRXHead, offRXTail, r.off.rxRing, r.layout.RXSlots, RXEntrySize)
}

func (r *Region) freeRing() ring {
	return r.ring(offFreeHead, offFreeTail, r.off.rxFree, r.layout.RXSlots, IDEntrySize)
}

// DaemonWaiting is raised by the daemon before it sleeps on the TX ring.
func (r *Region) DaemonWaiting() Flag { return Flag{word(r.mem, offDaemonWait)} }

// AppWaitingRX is raised by the application before it sleeps on the RX
// ring.
func (r *Region) AppWaitingRX() Flag { return Flag{word(r.mem, offAppWaitRX)} }

// AppWaitingTX is raised by the application while it waits for a TX slot
// to come back on the TX-done ring.
func (r *Region) AppWaitingTX() Flag { return Flag{word(r.mem, offAppWaitTX)} }

// Bytes returns the whole mapping (tests, tools).
func (r *Region) Bytes() []byte { return r.mem }
