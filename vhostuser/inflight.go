package vhostuser

import (
	"encoding/binary"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"
)

// Inflight I/O tracking (vhost-user.rst, "Inflight I/O tracking"): the
// backend keeps, in memory the frontend hands back after a backend crash,
// which descriptor chains it took off each ring and has not yet returned
// on the used ring. A restarted backend gets the memory with
// SET_INFLIGHT_FD and processes those chains again before new ones, so a
// crash loses no buffer: a TX frame is sent again, an RX buffer is filled
// again instead of leaking.
//
// Per split queue, the layout libvhost-user and DPDK use, 64-byte aligned:
//
//	features u64 | version u16 | desc_num u16 | last_batch_head u16 | used_idx u16
//	desc[desc_num] { inflight u8 | padding [5]u8 | next u16 | counter u64 }
const (
	inflightHeaderSize = 16
	inflightDescSize   = 16
	inflightAlign      = 64
	inflightVersion    = 1
)

// InflightQueueSize returns the bytes one split queue of queueSize
// descriptors takes in the inflight region.
func InflightQueueSize(queueSize uint16) uint64 {
	n := uint64(inflightHeaderSize) + inflightDescSize*uint64(queueSize)
	return (n + inflightAlign - 1) &^ (inflightAlign - 1)
}

// inflightSeals fix the size of the region the device creates for good.
const inflightSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// inflightRegion is a mapped inflight buffer.
type inflightRegion struct {
	mapping   []byte
	fd        *FD // owned: closed by close
	queues    int
	queueSize uint16
}

// newInflightRegion creates the buffer of GET_INFLIGHT_FD in a memfd, with
// every queue's header initialised.
func newInflightRegion(queues int, queueSize uint16) (*inflightRegion, error) {
	if queues <= 0 || queues > 2*128 || queueSize == 0 || queueSize&(queueSize-1) != 0 {
		return nil, fmt.Errorf("inflight region: %d queues of %d descriptors: %w", queues, queueSize, ErrBadRing)
	}
	size := uint64(queues) * InflightQueueSize(queueSize)
	raw, err := unix.MemfdCreate("veloce-inflight", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("create inflight region: %w", err)
	}
	fd, err := OwnFD(raw)
	if err != nil {
		return nil, fmt.Errorf("create inflight region: %w", err)
	}
	if err := unix.Ftruncate(raw, int64(size)); err != nil {
		fd.Close()
		return nil, fmt.Errorf("create inflight region: %w", err)
	}
	// Sealed at its size: the frontend gets this fd and could otherwise
	// truncate it under the device's mapping.
	if _, err := unix.FcntlInt(uintptr(raw), unix.F_ADD_SEALS, inflightSeals); err != nil {
		fd.Close()
		return nil, fmt.Errorf("create inflight region: seal: %w", err)
	}
	m, err := mapShared(raw, 0, int(size), 0)
	if err != nil {
		fd.Close()
		return nil, fmt.Errorf("create inflight region: %w", err)
	}
	r := &inflightRegion{mapping: m, fd: fd, queues: queues, queueSize: queueSize}
	for q := 0; q < queues; q++ {
		h := r.queue(q)
		binary.LittleEndian.PutUint16(h[8:], inflightVersion)
		binary.LittleEndian.PutUint16(h[10:], queueSize)
	}
	return r, nil
}

// mapInflightRegion maps the buffer of SET_INFLIGHT_FD; it takes
// ownership of fd.
func mapInflightRegion(fd *FD, in Inflight) (*inflightRegion, error) {
	need := uint64(in.NumQueues) * InflightQueueSize(in.QueueSize)
	if in.NumQueues == 0 || in.QueueSize == 0 || in.QueueSize&(in.QueueSize-1) != 0 || in.MmapSize < need || in.MmapSize > 1<<30 {
		fd.Close()
		return nil, fmt.Errorf("map inflight region: %d queues of %d in %d bytes: %w", in.NumQueues, in.QueueSize, in.MmapSize, ErrBadRing)
	}
	if fd.Int() < 0 {
		return nil, fmt.Errorf("map inflight region: no file descriptor: %w", ErrBadFDs)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd.Int(), &st); err != nil {
		fd.Close()
		return nil, fmt.Errorf("map inflight region: fstat: %v: %w", err, ErrBadRing)
	}
	if in.MmapOffset > 1<<40 || !backs(&st, in.MmapOffset, in.MmapSize) {
		fd.Close()
		return nil, fmt.Errorf("map inflight region: offset %#x+%#x is beyond the end of the fd (%d bytes): %w", in.MmapOffset, in.MmapSize, st.Size, ErrBadRing)
	}
	m, err := mapShared(fd.Int(), int64(in.MmapOffset), int(in.MmapSize), 0)
	if err != nil {
		fd.Close()
		return nil, fmt.Errorf("map inflight region: %w", err)
	}
	return &inflightRegion{mapping: m, fd: fd, queues: int(in.NumQueues), queueSize: in.QueueSize}, nil
}

// queue returns queue q's part of the region.
func (r *inflightRegion) queue(q int) []byte {
	size := InflightQueueSize(r.queueSize)
	return r.mapping[uint64(q)*size : uint64(q+1)*size]
}

func (r *inflightRegion) close() {
	unmap(r.mapping)
	r.fd.Close()
}

// inflightState is a ring's view of its queue's region.
type inflightState struct {
	region  []byte
	counter uint64
	// resubmit holds, oldest first, the heads a crashed backend had taken
	// and not returned; Pop hands them out before new ones.
	resubmit []uint16
}

func (s *inflightState) desc(head uint16) []byte {
	off := inflightHeaderSize + inflightDescSize*int(head)
	return s.region[off : off+inflightDescSize]
}

// taken records a head popped off the available ring.
func (s *inflightState) taken(head uint16) {
	d := s.desc(head)
	s.counter++
	binary.LittleEndian.PutUint64(d[8:], s.counter)
	d[0] = 1
}

// untaken undoes taken for a head put back unused (SplitRing.unpop).
func (s *inflightState) untaken(head uint16) {
	s.desc(head)[0] = 0
	s.counter--
}

// returned records heads made visible on the used ring: used holds the
// ring's used entries, published the new used->idx.
func (s *inflightState) returned(used []byte, from, to, mask uint16) {
	for i := from; i != to; i++ {
		slot := 4 + 8*int(i&mask)
		id := binary.LittleEndian.Uint32(used[slot:])
		if int(id) < (len(s.region)-inflightHeaderSize)/inflightDescSize {
			s.desc(uint16(id))[0] = 0
		}
	}
	binary.LittleEndian.PutUint16(s.region[14:], to)
}

// recover reads the region a previous backend left: entries the used ring
// shows returned (the crash fell between publishing and recording) are
// cleared; the others are resubmitted in the order they were taken. It
// returns how many there are.
func (s *inflightState) recover(used []byte, usedIdx, size uint16) (int, error) {
	if binary.LittleEndian.Uint16(s.region[8:]) != inflightVersion || binary.LittleEndian.Uint16(s.region[10:]) != size {
		// Not ours or a different ring size: start afresh.
		clear(s.region)
		binary.LittleEndian.PutUint16(s.region[8:], inflightVersion)
		binary.LittleEndian.PutUint16(s.region[10:], size)
		binary.LittleEndian.PutUint16(s.region[14:], usedIdx)
		return 0, nil
	}
	if recorded := binary.LittleEndian.Uint16(s.region[14:]); recorded != usedIdx {
		if usedIdx-recorded > size {
			return 0, fmt.Errorf("inflight region: used index %d, recorded %d: %w", usedIdx, recorded, ErrRingBroken)
		}
		s.returned(used, recorded, usedIdx, size-1)
	}
	type entry struct {
		head    uint16
		counter uint64
	}
	var pending []entry
	for h := uint16(0); h < size; h++ {
		d := s.desc(h)
		if d[0] == 1 {
			c := binary.LittleEndian.Uint64(d[8:])
			pending = append(pending, entry{h, c})
			s.counter = max(s.counter, c)
		}
	}
	slices.SortFunc(pending, func(a, b entry) int {
		switch {
		case a.counter < b.counter:
			return -1
		case a.counter > b.counter:
			return 1
		}
		return 0
	})
	s.resubmit = s.resubmit[:0]
	for _, e := range pending {
		s.resubmit = append(s.resubmit, e.head)
	}
	return len(s.resubmit), nil
}
