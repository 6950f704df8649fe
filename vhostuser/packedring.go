package vhostuser

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
)

// Packed virtqueue constants (virtio 1.2, 2.8).
const (
	// PackedDescFAvail (VIRTQ_DESC_F_AVAIL) and PackedDescFUsed
	// (VIRTQ_DESC_F_USED) mark a packed descriptor available or used
	// against the wrap counters.
	PackedDescFAvail = 1 << 7
	PackedDescFUsed  = 1 << 15

	// Event suppression flags (struct pvirtq_event_suppress, 2.8.14).
	RingEventFEnable  = 0 // notify
	RingEventFDisable = 1 // do not notify
	RingEventFDesc    = 2 // notify at the descriptor off_wrap names (EVENT_IDX)

	// PackedBaseWrap is bit 15 of a packed ring's GET/SET_VRING_BASE
	// halves: the wrap counter beside a 15-bit index.
	PackedBaseWrap = 1 << 15
)

// PackedRingOptions configures a PackedRing.
type PackedRingOptions struct {
	// Size is the queue size from SET_VRING_NUM: 1 to MaxQueueSize (a
	// packed queue need not be a power of two).
	Size uint32
	// Addr holds SET_VRING_ADDR: Desc is the descriptor ring, Avail the
	// driver event suppression area, Used the device event suppression
	// area (frontend virtual addresses). With VringFLog the ring's own
	// writes are logged at their guest addresses.
	Addr VringAddr
	// Base is the SET_VRING_BASE value: bits 0-14 the next descriptor to
	// process, bit 15 the driver's wrap counter there. The upper half
	// (QEMU's used index) is ignored: the device starts with nothing in
	// flight, its used side where its available side is, as DPDK does.
	// A ring resuming from an Inflight region with state ignores Base.
	Base uint32
	// Inflight, when set, is the queue's part of the inflight region
	// (GET/SET_INFLIGHT_FD), InflightQueueSizePacked(Size) bytes laid out
	// as the vhost-user spec's QueueRegionPacked: the ring records there
	// the chains it takes until the driver can see them returned. A
	// region with state (a previous backend's) is read once and checked:
	// the ring resumes at the used position it records, with its
	// available side past the chains still in flight, which Pop hands out
	// again first, oldest first (the frontend cannot know a packed ring's
	// positions after a backend crash). The frontend may change the
	// region at any time: that changes only what a later ring recovers.
	Inflight []byte
	// EventIdx says VIRTIO_F_RING_EVENT_IDX was negotiated.
	EventIdx bool
	// IndirectDesc says VIRTIO_F_RING_INDIRECT_DESC was negotiated.
	IndirectDesc bool
	// MaxDescriptorLen caps one descriptor; 0 means DefaultMaxDescriptorLen.
	MaxDescriptorLen uint32
	// Log is the dirty log when VHOST_F_LOG_ALL is on, else nil.
	Log *DirtyLog
}

// PackedRing is the device side of a packed virtqueue (virtio 1.2, 2.8)
// in guest memory mapped by a Memory. It implements Queue with the same
// guarantees as SplitRing: a malformed chain yields the same error kinds
// and is returned to the driver with length 0. A chain's buffer id is the
// one in its last descriptor (as DPDK reads it); ids are echoed, not
// checked (but a region to recover from names ids within the queue).
//
// It is driven by one goroutine (see Queue); rebuild it after the memory
// table changes. Pop, Push, Publish and the notification calls do not
// allocate.
type PackedRing struct {
	mem    *Memory
	size   uint16
	maxLen uint32
	desc   []byte // descriptor ring: size * 16 bytes
	drv    []byte // driver event suppression: off_wrap, flags
	dev    []byte // device event suppression: off_wrap, flags
	// guest addresses of desc and dev, for the dirty log
	descGPA, devGPA uint64

	eventIdx bool
	indirect bool

	lastAvail uint16 // next descriptor to look at
	availWrap bool   // the driver's wrap counter at lastAvail
	usedIdx   uint16 // next descriptor to fill with a used entry
	usedWrap  bool
	pubIdx    uint16 // first used entry not yet visible (usedIdx when none)
	pubWrap   bool
	// The flags word (id | flags<<16) of the used entry at pubIdx, stored
	// by Publish: the driver reads used entries in order, so the later
	// ones may be complete already.
	heldWord  uint32
	held      bool
	devWord   uint32 // what the device last stored in its area
	signalled uint16 // pubIdx when the driver was last asked (NeedsNotify)
	sigWrap   bool
	sigValid  bool
	fenceWord uint32
	inflight  *packedInflight // nil without inflight tracking
	logState  atomic.Pointer[ringLog]
	errors    atomic.Uint64
	pf        prefetcher
	// shadow holds the used entries pushed after the held one, written
	// into the ring by Publish (or when it fills) just before the held
	// entry's flags: the driver polls the held entry's line, and writing
	// the entries that share it one per frame would take that line from
	// the driver at every frame.
	shadow  [shadowLen]packedUsed
	shadowN int
}

// packedUsed is a used descriptor waiting in PackedRing.shadow: its
// offset in the ring and its len, id and flags fields (bytes 8-15).
type packedUsed struct {
	off  int
	word uint64
}

var _ Queue = (*PackedRing)(nil)

func (*PackedRing) queue() {}

// NewPackedRing resolves the rings of opts in mem and returns the device
// side of the queue.
//
// Errors: ErrBadRing (wrapped) for a bad size, misaligned addresses,
// areas not mapped in mem, or an Inflight region too small;
// ErrBadInflight (wrapped) for an Inflight region whose state cannot be
// this device's (see parsePackedInflight).
func NewPackedRing(mem *Memory, opts PackedRingOptions) (*PackedRing, error) {
	bad := func(format string, args ...any) (*PackedRing, error) {
		return nil, fmt.Errorf("set up packed ring %d: %s: %w", opts.Addr.Index, fmt.Sprintf(format, args...), ErrBadRing)
	}
	size := opts.Size
	if size == 0 || size > MaxQueueSize {
		return bad("queue size %d is not from 1 to %d", size, MaxQueueSize)
	}
	a := opts.Addr
	if a.Desc%16 != 0 || a.Avail%4 != 0 || a.Used%4 != 0 {
		return bad("misaligned areas: desc %#x driver %#x device %#x", a.Desc, a.Avail, a.Used)
	}
	r := &PackedRing{mem: mem, size: uint16(size), maxLen: opts.MaxDescriptorLen, eventIdx: opts.EventIdx, indirect: opts.IndirectDesc}
	if r.maxLen == 0 {
		r.maxLen = DefaultMaxDescriptorLen
	}
	var err error
	if r.desc, err = mem.TranslateUser(a.Desc, DescSize*uint64(size)); err != nil {
		return bad("descriptor ring at %#x: %v", a.Desc, err)
	}
	if r.drv, err = mem.TranslateUser(a.Avail, 4); err != nil {
		return bad("driver area at %#x: %v", a.Avail, err)
	}
	if r.dev, err = mem.TranslateUser(a.Used, 4); err != nil {
		return bad("device area at %#x: %v", a.Used, err)
	}
	if addrOf(r.desc, 0)%16 != 0 || addrOf(r.drv, 0)%4 != 0 || addrOf(r.dev, 0)%4 != 0 {
		return bad("areas misaligned in host memory")
	}
	r.descGPA, _ = mem.UserToGuest(a.Desc)
	r.devGPA, _ = mem.UserToGuest(a.Used)
	idx := uint16(opts.Base & 0x7fff)
	if idx >= r.size {
		return bad("vring base %#x: index past the queue size %d", opts.Base, size)
	}
	r.lastAvail, r.availWrap = idx, opts.Base&PackedBaseWrap != 0
	r.usedIdx, r.usedWrap = r.lastAvail, r.availWrap
	if opts.Inflight != nil {
		if uint64(len(opts.Inflight)) < InflightQueueSizePacked(r.size) {
			return bad("inflight region of %d bytes for %d descriptors", len(opts.Inflight), size)
		}
		s, err := parsePackedInflight(opts.Inflight, r.size, func(idx uint16, wrap bool) bool {
			_, f := r.flagsAt(idx)
			return !isAvail(f, wrap)
		})
		if err != nil {
			return nil, fmt.Errorf("set up packed ring %d: %w", a.Index, err)
		}
		if s.restored {
			r.usedIdx, r.usedWrap = s.usedIdx, s.usedWrap
			r.lastAvail, r.availWrap = r.advance(r.usedIdx, r.usedWrap, s.inFlight)
		}
		s.settle(r.usedIdx, r.usedWrap)
		r.inflight = s
	}
	r.pubIdx, r.pubWrap = r.usedIdx, r.usedWrap
	r.devWord = load32(r.dev, 0)
	r.SetLogging(opts.Log, a.Flags&VringFLog != 0, a.Log)
	return r, nil
}

// Size returns the queue size.
func (r *PackedRing) Size() uint16 { return r.size }

// Resubmitting returns how many chains left by a crashed backend are still
// to be handed out again.
func (r *PackedRing) Resubmitting() int {
	if r.inflight == nil {
		return 0
	}
	return len(r.inflight.resubmit)
}

// stopTracking ends inflight tracking for a driver that made more
// descriptors available than the ring holds: the region is marked as
// holding no state, and the ring goes on without it.
func (r *PackedRing) stopTracking() {
	r.inflight.forget()
	r.inflight = nil
	r.countError()
}

// VringBase implements Queue: the GET_VRING_BASE value, as QEMU reads it:
// bits 0-14 the next descriptor to process, bit 15 its wrap counter, bits
// 16-30 the next used descriptor, bit 31 its wrap counter.
func (r *PackedRing) VringBase() uint32 {
	v := uint32(r.lastAvail) | uint32(r.usedIdx)<<16
	if r.availWrap {
		v |= PackedBaseWrap
	}
	if r.usedWrap {
		v |= PackedBaseWrap << 16
	}
	return v
}

// SetLogging implements Queue. The ring's own writes (used descriptors,
// the device area) are logged at their guest addresses when logUsed.
func (r *PackedRing) SetLogging(log *DirtyLog, logUsed bool, usedLogGPA uint64) {
	r.setLogging(log, logUsed, usedLogGPA)
}

func (r *PackedRing) setLogging(log *DirtyLog, logUsed bool, usedLogGPA uint64) bool {
	cur := r.logState.Load()
	if log == nil {
		r.logState.Store(nil)
		return cur != nil
	}
	next := ringLog{log: log, logUsed: logUsed, usedGPA: usedLogGPA}
	if cur != nil && *cur == next {
		return false
	}
	r.logState.Store(&next)
	return true
}

// Errors implements Queue.
func (r *PackedRing) Errors() uint64 { return r.errors.Load() }

func (r *PackedRing) countError() { r.errors.Store(r.errors.Load() + 1) }

// isAvail reports whether descriptor flags f are available for wrap.
func isAvail(f uint16, wrap bool) bool {
	// AVAIL equal to wrap and USED not: one compare of both bits.
	want := uint16(PackedDescFUsed)
	if wrap {
		want = PackedDescFAvail
	}
	return f&(PackedDescFAvail|PackedDescFUsed) == want
}

// flagsAt reads the id and flags of descriptor i in one atomic load (an
// acquire: the rest of the descriptor is visible once the flags say so).
func (r *PackedRing) flagsAt(i uint16) (id, flags uint16) {
	w := load32(r.desc, int(i)*DescSize+12)
	return uint16(w), uint16(w >> 16)
}

// maxPendingScan bounds how many chains Pending counts: the poller asks
// for at most a burst (txBurst), and the descriptors it reads are the
// ones the next Pops read.
const maxPendingScan = 64

// Pending returns how many buffers (chains) the driver has made available
// that the device has not popped, counting at most maxPendingScan, and the
// chains to resubmit.
func (r *PackedRing) Pending() uint16 {
	idx, wrap := r.lastAvail, r.availWrap
	n := uint16(r.Resubmitting())
	for steps := 0; steps < int(r.size) && n < maxPendingScan; steps++ {
		_, f := r.flagsAt(idx)
		if !isAvail(f, wrap) {
			break
		}
		if f&DescFNext == 0 {
			n++
		}
		if idx++; idx == r.size {
			idx, wrap = 0, !wrap
		}
	}
	return n
}

// Pop implements Queue. It never returns ErrRingBroken: a packed ring
// cannot be driven past what the device consumed.
func (r *PackedRing) Pop(c *Chain) (bool, error) {
	if s := r.inflight; s != nil && len(s.resubmit) > 0 {
		return r.popResubmitted(c, s)
	}
	off := int(r.lastAvail) * DescSize
	d := (*[DescSize]byte)(r.desc[off : off+DescSize])
	w := load32(d[:], 12) // the id and flags, then the rest (an acquire)
	id, flags := uint16(w), uint16(w>>16)
	if !isAvail(flags, r.availWrap) {
		return false, nil
	}
	r.prefetchAt(r.lastAvail)
	c.reset()
	c.slot, c.wrap = r.lastAvail, r.availWrap
	var count uint16
	var err error
	if flags&(DescFNext|DescFIndirect) == 0 {
		// The common case, one direct descriptor: walk's work without
		// its loop.
		count = 1
		addr, length := binary.LittleEndian.Uint64(d[0:8]), binary.LittleEndian.Uint32(d[8:12])
		if s := r.inflight; s != nil {
			s.record(true, addr, length, id, flags)
		}
		err = c.addBuffer(r.mem.table.Load(), addr, length, r.maxLen, flags&DescFWrite != 0)
		if r.lastAvail++; r.lastAvail == r.size {
			r.lastAvail, r.availWrap = 0, !r.availWrap
		}
	} else {
		count, id, err = r.walk(c, id, flags)
		r.lastAvail, r.availWrap = r.advance(r.lastAvail, r.availWrap, count)
	}
	c.head, c.count = id, count
	if s := r.inflight; s != nil {
		// Every chain taken is recorded, a malformed one too: it is
		// returned with the next batch, and until then it is in flight.
		var ok bool
		if c.entry, ok = s.taken(); !ok {
			r.stopTracking()
		}
	}
	if err != nil {
		c.reset()
		r.countError()
		r.pushUsed(id, count, 0)
		r.pushedEntry(c.entry)
		return false, err
	}
	c.owner = r
	return true, nil
}

// prefetchAt starts loading what the Pops after the one at descriptor i
// touch: the descriptors 2*prefetchAhead on, and the buffer of the one
// prefetchAhead on (chains of one descriptor, the common case), when it
// is a direct descriptor inside guest memory. Nothing is checked or
// kept: that descriptor may not even be available yet, and Pop reads it
// again and checks it.
func (r *PackedRing) prefetchAt(i uint16) {
	j := uint32(i) + prefetchAhead
	for j >= uint32(r.size) {
		j -= uint32(r.size)
	}
	k := j + prefetchAhead
	for k >= uint32(r.size) {
		k -= uint32(r.size)
	}
	prefetchRead(addrOf(r.desc, int(k)*DescSize))
	d := (*[DescSize]byte)(r.desc[int(j)*DescSize:])
	flags := binary.LittleEndian.Uint16(d[14:16])
	if flags&DescFIndirect != 0 {
		return
	}
	r.pf.buffer(r.mem.table.Load(), binary.LittleEndian.Uint64(d[0:8]), flags&DescFWrite != 0)
}

// popResubmitted hands out the oldest chain a crashed backend left, from
// the copies of its descriptors read at recovery, with the checks of a
// chain read off the ring.
func (r *PackedRing) popResubmitted(c *Chain, s *packedInflight) (bool, error) {
	h := s.resubmit[0]
	s.resubmit = s.resubmit[1:]
	c.reset()
	t := r.mem.table.Load()
	n := s.num[h]
	var err error
	id := uint16(0)
	for k, x := uint16(0), h; k < n; k++ {
		d := &s.descs[x]
		id = d.id
		if err == nil {
			err = r.segment(t, c, d.addr, d.length, d.flags)
		}
		if k+1 < n {
			x = s.next[x]
		} else if err == nil && d.flags&DescFNext != 0 {
			err = ErrNextOutOfRange // as walk found it: NEXT into nothing
		}
	}
	c.head, c.count, c.entry = id, n, h
	if err != nil {
		c.reset()
		r.countError()
		r.pushUsed(id, n, 0)
		r.pushedEntry(h)
		return false, err
	}
	c.owner = r
	c.resubmitted = true
	return true, nil
}

// pushedEntry adds the chain at head entry h to the batch Publish
// returns, when the ring tracks inflight chains.
func (r *PackedRing) pushedEntry(h uint16) {
	if s := r.inflight; s != nil && !s.pushed(h) {
		r.stopTracking()
	}
}

// advance moves a ring position n descriptors on.
func (r *PackedRing) advance(idx uint16, wrap bool, n uint16) (uint16, bool) {
	next := uint32(idx) + uint32(n)
	if next >= uint32(r.size) {
		next -= uint32(r.size)
		wrap = !wrap
	}
	return uint16(next), wrap
}

// walk reads the chain at lastAvail (2.8.6, 2.8.17) into c; firstID and
// firstFlags are its first descriptor's, which Pop read. It returns how
// many ring descriptors the chain takes and its buffer id; a malformed
// chain is still followed to its end, so that it can be returned whole.
func (r *PackedRing) walk(c *Chain, firstID, firstFlags uint16) (count, id uint16, err error) {
	t := r.mem.table.Load() // one snapshot for the whole chain
	idx, wrap := r.lastAvail, r.availWrap
	did, flags := firstID, firstFlags
	for count < r.size {
		if count > 0 {
			did, flags = r.flagsAt(idx)
		}
		if count > 0 && !isAvail(flags, wrap) {
			// The driver makes a chain available head last: a NEXT into
			// a descriptor it has not made available is malformed.
			if err == nil {
				err = ErrNextOutOfRange
			}
			return count, id, err
		}
		id = did
		count++
		d := (*[DescSize]byte)(r.desc[int(idx)*DescSize:])
		addr, length := binary.LittleEndian.Uint64(d[0:8]), binary.LittleEndian.Uint32(d[8:12])
		if s := r.inflight; s != nil {
			s.record(count == 1, addr, length, did, flags)
		}
		if err == nil {
			err = r.segment(t, c, addr, length, flags)
		}
		if flags&DescFNext == 0 {
			return count, id, err
		}
		if idx++; idx == r.size {
			idx, wrap = 0, !wrap
		}
	}
	// Every descriptor of the ring chained: the chain never ends.
	if err == nil {
		err = ErrDescriptorLoop
	}
	return count, id, err
}

// segment adds one ring descriptor (or the indirect table it points at)
// to c.
func (r *PackedRing) segment(t *memTable, c *Chain, addr uint64, length uint32, flags uint16) error {
	if flags&DescFIndirect == 0 {
		return r.buffer(t, c, addr, length, flags&DescFWrite != 0)
	}
	switch {
	case !r.indirect:
		return ErrIndirectNotNegotiated
	case flags&DescFNext != 0, length == 0, length%DescSize != 0, length/DescSize > uint32(r.size):
		return ErrBadIndirect
	}
	tb, ok := t.translate(addr, uint64(length))
	if !ok {
		return ErrBadIndirect
	}
	// Entries are consecutive; only WRITE is a valid flag there (2.8.19).
	for off := 0; off < len(tb); off += DescSize {
		d := tb[off : off+DescSize]
		f := binary.LittleEndian.Uint16(d[14:16])
		if f&DescFIndirect != 0 {
			return ErrNestedIndirect
		}
		if err := r.buffer(t, c, binary.LittleEndian.Uint64(d[0:8]), binary.LittleEndian.Uint32(d[8:12]), f&DescFWrite != 0); err != nil {
			return err
		}
	}
	return nil
}

// buffer adds one buffer descriptor to c, with SplitRing's checks.
func (r *PackedRing) buffer(t *memTable, c *Chain, addr uint64, length uint32, write bool) error {
	return c.addBuffer(t, addr, length, r.maxLen, write)
}

// Push implements Queue.
//
// Errors: ErrBadPush when c was not popped from r (or was pushed already)
// or written exceeds c.WritableLen().
func (r *PackedRing) Push(c *Chain, written uint32) error {
	if c.owner != Queue(r) || written > c.writableLen {
		return ErrBadPush
	}
	ls := r.logState.Load()
	if ls != nil && !ls.markWritten(c, written) {
		r.countError()
	}
	r.pushUsedLog(c.head, c.count, written, ls)
	if r.inflight != nil {
		r.pushedEntry(c.entry)
	}
	c.owner = nil
	return nil
}

// unpop puts c, the chain Pop handed out last and not pushed since, back:
// the next Pop returns it again (see SplitRing.unpop).
func (r *PackedRing) unpop(c *Chain) bool {
	if c.owner != Queue(r) || c.resubmitted {
		return false
	}
	if s := r.inflight; s != nil && !s.untaken(c.entry) {
		return false
	}
	r.lastAvail, r.availWrap = c.slot, c.wrap
	c.owner = nil
	return true
}

// pushUsed writes a used entry for buffer id, which took count ring
// descriptors, at usedIdx (2.8.9). Publish makes it visible.
func (r *PackedRing) pushUsed(id, count uint16, length uint32) {
	r.pushUsedLog(id, count, length, r.logState.Load())
}

// pushUsedLog is pushUsed with the logging state loaded.
func (r *PackedRing) pushUsedLog(id, count uint16, length uint32, ls *ringLog) {
	off := int(r.usedIdx) * DescSize
	d := (*[DescSize]byte)(r.desc[off : off+DescSize])
	flags := uint16(0)
	if length > 0 {
		flags = DescFWrite
	}
	if r.usedWrap {
		flags |= PackedDescFAvail | PackedDescFUsed
	}
	w := uint32(id) | uint32(flags)<<16
	if !r.held {
		binary.LittleEndian.PutUint32(d[8:12], length)
		r.held, r.heldWord = true, w
		if ls != nil && ls.logUsed && ls.log.Mark(r.descGPA+uint64(off), DescSize) != nil {
			r.countError()
		}
	} else {
		// Held back: the driver reads this entry only after the held
		// one, whose store in Publish comes after flushUsed.
		if r.shadowN == len(r.shadow) {
			r.flushUsed()
		}
		r.shadow[r.shadowN] = packedUsed{off: off, word: uint64(length) | uint64(w)<<32}
		r.shadowN++
	}
	if count == 1 {
		if r.usedIdx++; r.usedIdx == r.size {
			r.usedIdx, r.usedWrap = 0, !r.usedWrap
		}
		return
	}
	r.usedIdx, r.usedWrap = r.advance(r.usedIdx, r.usedWrap, count)
}

// flushUsed writes the used entries held in the shadow into the ring
// (plain stores, in order) and marks them in the dirty log.
func (r *PackedRing) flushUsed() {
	n := r.shadowN
	if n == 0 {
		return
	}
	r.shadowN = 0
	for _, e := range r.shadow[:n] {
		binary.LittleEndian.PutUint64(r.desc[e.off+8:e.off+16], e.word)
	}
	if ls := r.logState.Load(); ls != nil && ls.logUsed {
		for _, e := range r.shadow[:n] {
			if ls.log.Mark(r.descGPA+uint64(e.off), DescSize) != nil {
				r.countError()
			}
		}
	}
}

// logRing marks ring bytes the device wrote when the ring is logged.
func (r *PackedRing) logRing(gpa, n uint64) {
	if ls := r.logState.Load(); ls != nil && ls.logUsed {
		if ls.log.Mark(gpa, n) != nil {
			r.countError()
		}
	}
}

// Publish implements Queue: the held first entry's flags are stored last
// (a release), so the driver sees the whole batch at once.
//
// With inflight tracking, the batch's chains are recorded returned around
// that store, so that a crash anywhere leaves each either visible to the
// driver and free in the region, or neither.
func (r *PackedRing) Publish() {
	if !r.held {
		return
	}
	s := r.inflight
	if s != nil {
		s.returning(r.usedIdx, r.usedWrap, r.pubIdx, r.pubWrap)
	}
	r.flushUsed()
	store32(r.desc, int(r.pubIdx)*DescSize+12, r.heldWord)
	r.held = false
	r.pubIdx, r.pubWrap = r.usedIdx, r.usedWrap
	if s != nil {
		s.stepped()
		s.returned(r.usedIdx, r.usedWrap)
	}
}

// NeedsNotify implements Queue (2.8.10, 2.8.21.3).
func (r *PackedRing) NeedsNotify() bool {
	if r.sigValid && r.signalled == r.pubIdx && r.sigWrap == r.pubWrap {
		return false // nothing published since the last call
	}
	fence(&r.fenceWord) // order the flags stores before reading the driver's wishes
	w := load32(r.drv, 0)
	offWrap, flags := uint16(w), uint16(w>>16)&3
	old, valid := r.signalled, r.sigValid
	r.signalled, r.sigWrap, r.sigValid = r.pubIdx, r.pubWrap, true
	switch {
	case flags == RingEventFDisable:
		return false
	case flags != RingEventFDesc || !r.eventIdx || !valid:
		return true
	}
	// vring_need_event over ring positions, unwrapping old and the
	// driver's event into new's lap.
	nw := r.pubIdx
	if nw <= old {
		old -= r.size
	}
	off := offWrap &^ PackedBaseWrap
	if (offWrap&PackedBaseWrap != 0) != r.pubWrap {
		off -= r.size
	}
	return needEvent(off, nw, old)
}

// setDevice stores the device area (off_wrap and flags in one word).
func (r *PackedRing) setDevice(w uint32) {
	if w == r.devWord {
		return
	}
	r.devWord = w
	store32(r.dev, 0, w)
	r.logRing(r.devGPA, 4)
}

// DisableNotifications implements Queue.
func (r *PackedRing) DisableNotifications() {
	r.setDevice(uint32(RingEventFDisable) << 16)
}

// EnableNotifications implements Queue: with EVENT_IDX the driver is asked
// to kick at the next descriptor the device will look at.
func (r *PackedRing) EnableNotifications() bool {
	if r.eventIdx {
		ow := uint32(r.lastAvail)
		if r.availWrap {
			ow |= PackedBaseWrap
		}
		r.setDevice(ow | uint32(RingEventFDesc)<<16)
	} else {
		r.setDevice(uint32(RingEventFEnable) << 16)
	}
	fence(&r.fenceWord) // publish the wish before looking at the ring again
	if r.Resubmitting() > 0 {
		return true
	}
	_, f := r.flagsAt(r.lastAvail)
	return isAvail(f, r.availWrap)
}
