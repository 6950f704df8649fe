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
	packed    bool // laid out for packed queues (QueueRegionPacked)
}

// inflightQueueSize is InflightQueueSize or InflightQueueSizePacked.
func inflightQueueSize(queueSize uint16, packed bool) uint64 {
	if packed {
		return InflightQueueSizePacked(queueSize)
	}
	return InflightQueueSize(queueSize)
}

// inflightGeometryOK says whether queues of queueSize can have a region:
// a split queue's size is a power of two, a packed queue's any size up
// to MaxQueueSize.
func inflightGeometryOK(queues int, queueSize uint16, packed bool) bool {
	if queues <= 0 || queues > 2*128 || queueSize == 0 || uint32(queueSize) > MaxQueueSize {
		return false
	}
	return packed || queueSize&(queueSize-1) == 0
}

// newInflightRegion creates the buffer of GET_INFLIGHT_FD in a memfd. A
// split queue's header is initialised; a packed queue's part is left
// zero (version 0: no state), and the ring that first runs on it writes
// its initial state there.
func newInflightRegion(queues int, queueSize uint16, packed bool) (*inflightRegion, error) {
	if !inflightGeometryOK(queues, queueSize, packed) {
		return nil, fmt.Errorf("inflight region: %d queues of %d descriptors: %w", queues, queueSize, ErrBadRing)
	}
	size := uint64(queues) * inflightQueueSize(queueSize, packed)
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
	r := &inflightRegion{mapping: m, fd: fd, queues: queues, queueSize: queueSize, packed: packed}
	for q := 0; q < queues && !packed; q++ {
		h := r.queue(q)
		binary.LittleEndian.PutUint16(h[8:], inflightVersion)
		binary.LittleEndian.PutUint16(h[10:], queueSize)
	}
	return r, nil
}

// mapInflightRegion maps the buffer of SET_INFLIGHT_FD, laid out for
// packed queues or split ones; it takes ownership of fd. A packed
// region's queue headers are checked (ErrBadInflight); the rings check
// the whole of their parts again when they start on them.
func mapInflightRegion(fd *FD, in Inflight, packed bool) (*inflightRegion, error) {
	need := uint64(in.NumQueues) * inflightQueueSize(in.QueueSize, packed)
	if !inflightGeometryOK(int(in.NumQueues), in.QueueSize, packed) || in.MmapSize < need || in.MmapSize > 1<<30 {
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
	r := &inflightRegion{mapping: m, fd: fd, queues: int(in.NumQueues), queueSize: in.QueueSize, packed: packed}
	if packed {
		for q := 0; q < r.queues; q++ {
			if err := checkPackedInflightHeader(r.queue(q), r.queueSize); err != nil {
				r.close()
				return nil, fmt.Errorf("map inflight region: queue %d: %w", q, err)
			}
		}
	}
	return r, nil
}

// queue returns queue q's part of the region.
func (r *inflightRegion) queue(q int) []byte {
	size := inflightQueueSize(r.queueSize, r.packed)
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

// Packed queues (QueueRegionPacked in the spec), 64-byte aligned:
//
//	features u64 | version u16 | desc_num u16 | free_head u16 | old_free_head u16
//	used_idx u16 | old_used_idx u16 | used_wrap u8 | old_used_wrap u8 | padding [10]u8
//	desc[desc_num] { inflight u8 | padding u8 | next u16 | last u16 | num u16 |
//	                 counter u64 | id u16 | flags u16 | len u32 | addr u64 }
//
// The entries are not indexed by ring position (a packed ring reuses the
// positions of buffers still in flight): a chain takes one entry per ring
// descriptor off a free list and keeps a copy of the descriptors, which a
// new backend reads to process the chain again. Its head entry holds the
// in-flight mark, the order counter, the count and the last entry.
//
// The device writes in an order that leaves the region recoverable after
// a crash at any store:
//
//   - Pop copies each descriptor into the next free entry, marks the head
//     entry in flight, and then moves free_head and old_free_head on in
//     one 32-bit store (until then a new backend finds the head on the
//     free list and clears it: the chain is still available on the ring);
//   - Publish puts the batch's chains back on the free list, stores the
//     new free_head and used_idx/used_wrap (old_* unchanged), makes the
//     batch visible on the ring, clears the heads' marks and then stores
//     old_* = new in two stores (free heads first, used position last);
//   - a new backend that finds used and old_used different looks at the
//     ring at old_used_idx: if the driver could see the batch there, it
//     takes the new state, else the old one (the batch's chains are then
//     still in flight: the driver never saw them returned).
//
// Every field is read once, at recovery, into the ring's own state and
// checked; while the ring runs the device only writes the region, so a
// frontend changing it under the device changes nothing but what a later
// backend would recover.
const (
	packedInflightHeaderSize = 32
	packedInflightDescSize   = 32

	pinfVersion = 8  // version | desc_num<<16: one 32-bit word
	pinfFree    = 12 // free_head | old_free_head<<16: one 32-bit word
	pinfUsed    = 16 // used_idx | old_used_idx<<16 | used_wrap<<32 | old_used_wrap<<40: one 64-bit word
)

// InflightQueueSizePacked returns the bytes one packed queue of
// queueSize descriptors takes in the inflight region.
func InflightQueueSizePacked(queueSize uint16) uint64 {
	n := uint64(packedInflightHeaderSize) + packedInflightDescSize*uint64(queueSize)
	return (n + inflightAlign - 1) &^ (inflightAlign - 1)
}

// packedDesc is a copy of one descriptor a chain took.
type packedDesc struct {
	addr      uint64
	length    uint32
	id, flags uint16
}

// packedInflight is a packed ring's inflight tracking.
type packedInflight struct {
	region []byte
	size   uint16
	next   []uint16     // entry links: the free list, and each chain's entries
	last   []uint16     // a chain head's last entry
	num    []uint16     // a chain head's descriptor count
	descs  []packedDesc // descriptors of the chains to resubmit, read at recovery
	// freeHead is the first free entry (size when none is free).
	freeHead uint16
	counter  uint64

	// The chain Pop is recording: head and last entry, descriptors taken;
	// recOK is false when the free list ran out.
	recHead, recLast, recN uint16
	recOK                  bool

	batch    []uint16 // head entries of the chains pushed since the last Publish
	resubmit []uint16 // head entries to hand out again, oldest first

	// Recovery: the region held state; the ring resumes at usedIdx and
	// usedWrap with inFlight descriptors taken by the chains to resubmit.
	restored bool
	usedIdx  uint16
	usedWrap bool
	inFlight uint16
	// What settle writes back: heads on the free list still marked in
	// flight, and entries neither free nor in a chain.
	unmark, leaked []uint16

	// step, when set, is called after each store a crash could fall
	// after (the tests crash there).
	step func()
}

func (s *packedInflight) stepped() {
	if s.step != nil {
		s.step()
	}
}

// entry returns entry i of the region.
func (s *packedInflight) entry(i uint16) []byte {
	off := packedInflightHeaderSize + packedInflightDescSize*int(i)
	return s.region[off : off+packedInflightDescSize : off+packedInflightDescSize]
}

// The header's words are stored whole (never torn) and in program order;
// no one reads the region while the ring runs, so no barrier is needed:
// a crash leaves the stores made before it, and none after.

func (s *packedInflight) storeFree(cur, old uint16) {
	put32(s.region, pinfFree, uint32(cur)|uint32(old)<<16)
	s.stepped()
}

func (s *packedInflight) storeUsed(cur uint16, curWrap bool, old uint16, oldWrap bool) {
	v := uint64(cur) | uint64(old)<<16
	if curWrap {
		v |= 1 << 32
	}
	if oldWrap {
		v |= 1 << 40
	}
	put64(s.region, pinfUsed, v)
	s.stepped()
}

// checkPackedInflightHeader checks what SET_INFLIGHT_FD can check of a
// packed queue's part without its ring: the version, the size and the
// header's indices.
func checkPackedInflightHeader(q []byte, size uint16) error {
	h := q[:packedInflightHeaderSize:packedInflightHeaderSize]
	version, descNum := binary.LittleEndian.Uint16(h[8:]), binary.LittleEndian.Uint16(h[10:])
	switch {
	case version == 0:
		return nil
	case version != inflightVersion:
		return fmt.Errorf("version %d: %w", version, ErrBadInflight)
	case descNum != size:
		return fmt.Errorf("%d entries for a queue of %d: %w", descNum, size, ErrBadInflight)
	}
	free, oldFree := binary.LittleEndian.Uint16(h[12:]), binary.LittleEndian.Uint16(h[14:])
	used, oldUsed := binary.LittleEndian.Uint16(h[16:]), binary.LittleEndian.Uint16(h[18:])
	switch {
	case free > size || oldFree > size:
		return fmt.Errorf("free list head %d (old %d) beyond %d entries: %w", free, oldFree, size, ErrBadInflight)
	case used >= size || oldUsed >= size:
		return fmt.Errorf("used index %d (old %d) beyond the queue size %d: %w", used, oldUsed, size, ErrBadInflight)
	case h[20] > 1 || h[21] > 1:
		return fmt.Errorf("wrap counters %d and %d: %w", h[20], h[21], ErrBadInflight)
	}
	return nil
}

// parsePackedInflight reads a packed queue's part of the region once and
// works out what a new backend resumes from: published reports whether
// the ring's descriptor at idx is no longer available for wrap (a crashed
// backend made a used batch visible there). It writes nothing; settle
// writes the result back.
//
// Errors: ErrBadInflight (wrapped) for a region that cannot be a state
// this or a spec-following device left: unknown version, another size,
// indices or wrap counters out of range, a free list that loops, chains
// that overlap, loop, run into the free list, break off before their
// last descriptor, or end on a buffer id beyond the queue.
func parsePackedInflight(region []byte, size uint16, published func(idx uint16, wrap bool) bool) (*packedInflight, error) {
	if size == 0 || uint32(size) > MaxQueueSize || uint64(len(region)) < InflightQueueSizePacked(size) {
		return nil, fmt.Errorf("inflight region of %d bytes for %d descriptors: %w", len(region), size, ErrBadInflight)
	}
	s := &packedInflight{
		region: region[:InflightQueueSizePacked(size)],
		size:   size,
		next:   make([]uint16, size),
		last:   make([]uint16, size),
		num:    make([]uint16, size),
		batch:  make([]uint16, 0, size),
	}
	// One copy of the header: the checks and the decisions below use it.
	var h [packedInflightHeaderSize]byte
	copy(h[:], s.region)
	if err := checkPackedInflightHeader(h[:], size); err != nil {
		return nil, fmt.Errorf("inflight region: %w", err)
	}
	if binary.LittleEndian.Uint16(h[8:]) == 0 {
		return s, nil // no state: the ring starts where the frontend says
	}
	bad := func(format string, args ...any) (*packedInflight, error) {
		return nil, fmt.Errorf("inflight region: %s: %w", fmt.Sprintf(format, args...), ErrBadInflight)
	}
	free, oldFree := binary.LittleEndian.Uint16(h[12:]), binary.LittleEndian.Uint16(h[14:])
	used, oldUsed := binary.LittleEndian.Uint16(h[16:]), binary.LittleEndian.Uint16(h[18:])
	wrap, oldWrap := h[20] == 1, h[21] == 1

	// One copy of every entry.
	s.descs = make([]packedDesc, size)
	marked := make([]bool, size)
	counter := make([]uint64, size)
	for i := uint16(0); i < size; i++ {
		e := s.entry(i)
		var b [packedInflightDescSize]byte
		copy(b[:], e)
		if b[0] > 1 {
			return bad("entry %d: inflight %d", i, b[0])
		}
		marked[i] = b[0] == 1
		s.next[i] = binary.LittleEndian.Uint16(b[2:])
		s.last[i] = binary.LittleEndian.Uint16(b[4:])
		s.num[i] = binary.LittleEndian.Uint16(b[6:])
		counter[i] = binary.LittleEndian.Uint64(b[8:])
		s.descs[i] = packedDesc{
			id:     binary.LittleEndian.Uint16(b[16:]),
			flags:  binary.LittleEndian.Uint16(b[18:]),
			length: binary.LittleEndian.Uint32(b[20:]),
			addr:   binary.LittleEndian.Uint64(b[24:]),
		}
	}

	// The last batch: committed if the driver could see it, else rolled
	// back.
	if (used != oldUsed || wrap != oldWrap) && published != nil && published(oldUsed, oldWrap) {
		oldFree, oldUsed, oldWrap = free, used, wrap
	}
	s.freeHead, s.usedIdx, s.usedWrap = oldFree, oldUsed, oldWrap

	// The free list: its heads are not in flight (a Pop that did not
	// finish, or a batch made visible before the marks were cleared).
	const (
		unclaimed = iota
		onFreeList
		inChain
	)
	state := make([]uint8, size)
	for x := s.freeHead; x != size; x = s.next[x] {
		if x > size {
			return bad("free list runs to entry %d", x)
		}
		if state[x] != unclaimed {
			return bad("free list loops at entry %d", x)
		}
		state[x] = onFreeList
		if marked[x] {
			marked[x] = false
			s.unmark = append(s.unmark, x)
		}
	}

	// The chains in flight: every marked entry off the free list is one's
	// head.
	for h := uint16(0); h < size; h++ {
		if !marked[h] {
			continue
		}
		n := s.num[h]
		if n == 0 || n > size {
			return bad("chain at entry %d of %d descriptors", h, n)
		}
		x := h
		for k := uint16(0); ; k++ {
			if x >= size {
				return bad("chain at entry %d runs to entry %d", h, x)
			}
			if state[x] != unclaimed {
				return bad("chain at entry %d runs into entry %d, which is free or another chain's", h, x)
			}
			state[x] = inChain
			if k+1 == n {
				break
			}
			if s.descs[x].flags&DescFNext == 0 {
				return bad("chain at entry %d ends at its descriptor %d of %d", h, k+1, n)
			}
			x = s.next[x]
		}
		if x != s.last[h] {
			return bad("chain at entry %d ends at entry %d, its head says %d", h, x, s.last[h])
		}
		if id := s.descs[x].id; id >= size {
			return bad("chain at entry %d: buffer id %d beyond the queue size %d", h, id, size)
		}
		s.inFlight += n
		s.resubmit = append(s.resubmit, h)
		s.counter = max(s.counter, counter[h])
	}
	slices.SortStableFunc(s.resubmit, func(a, b uint16) int {
		switch {
		case counter[a] < counter[b]:
			return -1
		case counter[a] > counter[b]:
			return 1
		}
		return 0
	})
	for x := uint16(0); x < size; x++ {
		if state[x] == unclaimed {
			s.leaked = append(s.leaked, x)
		}
	}
	s.restored = true
	return s, nil
}

// settle writes the state parsePackedInflight worked out back to the
// region, in an order that a crash at any store leaves recoverable to
// the same state. Without state, the ring starts at used and wrap with
// every entry free.
func (s *packedInflight) settle(used uint16, wrap bool) {
	if !s.restored {
		s.usedIdx, s.usedWrap = used, wrap
		put32(s.region, pinfVersion, uint32(s.size)<<16) // version 0 until done
		s.stepped()
		for i := uint16(0); i < s.size; i++ {
			s.next[i] = i + 1
			e := s.entry(i)
			clear(e)
			binary.LittleEndian.PutUint16(e[2:], i+1)
		}
		s.stepped()
		s.freeHead = 0
		s.storeFree(0, 0)
		s.storeUsed(used, wrap, used, wrap)
		put32(s.region, pinfVersion, inflightVersion|uint32(s.size)<<16)
		s.stepped()
		return
	}
	for _, x := range s.unmark {
		s.entry(x)[0] = 0
		s.stepped()
	}
	s.storeFree(s.freeHead, s.freeHead)
	s.storeUsed(s.usedIdx, s.usedWrap, s.usedIdx, s.usedWrap)
	// Entries lost to the free list go back on it, one at a time.
	for _, x := range s.leaked {
		s.next[x] = s.freeHead
		binary.LittleEndian.PutUint16(s.entry(x)[2:], s.freeHead)
		s.stepped()
		s.freeHead = x
		s.storeFree(x, x)
	}
	s.unmark, s.leaked = nil, nil
}

// record copies the ring descriptor a chain took, its first when first,
// into the next free entry.
func (s *packedInflight) record(first bool, addr uint64, length uint32, id, flags uint16) {
	if first {
		s.recHead, s.recN, s.recOK = s.freeHead, 0, true
	}
	e := s.freeHead
	if !s.recOK || e >= s.size {
		s.recOK = false // more descriptors in flight than the ring holds
		return
	}
	off := packedInflightHeaderSize + packedInflightDescSize*int(e)
	put64(s.region, off+16, uint64(id)|uint64(flags)<<16|uint64(length)<<32)
	put64(s.region, off+24, addr)
	s.stepped()
	s.recLast, s.recN = e, s.recN+1
	s.freeHead = s.next[e]
}

// taken marks the chain recorded in flight and returns its head entry;
// false means the free list ran out (a driver that made more descriptors
// available than the ring holds).
func (s *packedInflight) taken() (uint16, bool) {
	if !s.recOK {
		return 0, false
	}
	h := s.recHead
	s.last[h], s.num[h] = s.recLast, s.recN
	s.counter++
	off := packedInflightHeaderSize + packedInflightDescSize*int(h)
	put64(s.region, off+8, s.counter)
	// inflight 1 | next | last | num in one store, after the counter.
	put64(s.region, off, 1|uint64(s.next[h])<<16|uint64(s.recLast)<<32|uint64(s.recN)<<48)
	s.stepped()
	s.storeFree(s.freeHead, s.freeHead)
	return h, true
}

// untaken undoes taken for the chain at head entry h, popped last; it
// returns false when entries were taken or returned since.
func (s *packedInflight) untaken(h uint16) bool {
	if s.next[s.last[h]] != s.freeHead {
		return false
	}
	s.entry(h)[0] = 0
	s.stepped()
	s.freeHead = h
	s.counter--
	s.storeFree(h, h)
	return true
}

// pushed adds the chain at head entry h to the batch Publish returns; false
// when the batch is full (it cannot be: a chain holds an entry until it is
// returned).
func (s *packedInflight) pushed(h uint16) bool {
	if len(s.batch) == cap(s.batch) {
		return false
	}
	s.batch = append(s.batch, h)
	return true
}

// returning is Publish's first half, before the batch is made visible:
// the batch's chains go back on the free list, and the new free head and
// used position (used, wrap) are stored beside the old ones (oldUsed,
// oldWrap, where the driver will see the batch start).
func (s *packedInflight) returning(used uint16, wrap bool, oldUsed uint16, oldWrap bool) {
	oldFree := s.freeHead
	for _, h := range s.batch {
		l := s.last[h]
		s.next[l] = s.freeHead
		binary.LittleEndian.PutUint16(s.entry(l)[2:], s.freeHead)
		s.freeHead = h
	}
	s.stepped()
	s.storeFree(s.freeHead, oldFree)
	s.storeUsed(used, wrap, oldUsed, oldWrap)
}

// returned is Publish's second half, once the batch is visible: the marks
// are cleared and the new state becomes the old one.
func (s *packedInflight) returned(used uint16, wrap bool) {
	for _, h := range s.batch {
		s.entry(h)[0] = 0
	}
	s.stepped()
	s.batch = s.batch[:0]
	s.storeFree(s.freeHead, s.freeHead)
	s.storeUsed(used, wrap, used, wrap)
}

// forget marks the region as holding no state (version 0), for a ring
// that stops tracking.
func (s *packedInflight) forget() {
	put32(s.region, pinfVersion, uint32(s.size)<<16)
}
