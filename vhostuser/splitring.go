package vhostuser

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
)

// Split virtqueue constants (virtio 1.1, 2.6).
const (
	// DescFNext (VIRTQ_DESC_F_NEXT) continues the chain at the next field.
	DescFNext = 1
	// DescFWrite (VIRTQ_DESC_F_WRITE) marks a device-writable buffer.
	DescFWrite = 2
	// DescFIndirect (VIRTQ_DESC_F_INDIRECT) points at a table of descriptors.
	DescFIndirect = 4

	// AvailFNoInterrupt (VIRTQ_AVAIL_F_NO_INTERRUPT): the driver needs no
	// used-buffer notification (without EVENT_IDX).
	AvailFNoInterrupt = 1
	// UsedFNoNotify (VIRTQ_USED_F_NO_NOTIFY): the device needs no
	// available-buffer notification (without EVENT_IDX).
	UsedFNoNotify = 1

	// MaxQueueSize is the largest split queue (virtio 1.1, 2.6: 32768).
	MaxQueueSize = 32768

	// DefaultMaxDescriptorLen is the longest descriptor a ring accepts
	// unless SplitRingOptions.MaxDescriptorLen says otherwise. Linux never
	// posts single buffers near it; it exists so that a len of 0xFFFFFFFF
	// is refused before it is translated.
	DefaultMaxDescriptorLen = 1 << 20

	// DescSize is the size of one descriptor (struct virtq_desc).
	DescSize = 16
)

// Queue is what a device model needs from a virtqueue, whatever its layout.
// SplitRing and PackedRing implement it. The
// interface is sealed: only this package provides implementations.
//
// A Queue is driven by one goroutine at a time (its poller): Pop, Push,
// Publish, NeedsNotify, EnableNotifications and DisableNotifications must
// not run concurrently with each other. SetLogging and Errors may be
// called from any goroutine.
type Queue interface {
	// Pop takes the next available buffer into c. It returns (false, nil)
	// when the ring is empty. A malformed chain yields (false, err) with
	// err one of the ring sentinels (ErrDescriptorLoop, ...); the chain's
	// head has then been returned to the used ring with length 0 (made
	// visible by the next Publish) and the caller just pops on.
	// ErrRingBroken is different: the ring cannot be used until reset.
	Pop(c *Chain) (bool, error)
	// Push returns a popped chain to the driver, written bytes having
	// been stored into its writable part. It marks those bytes and the
	// used-ring entry in the dirty log when logging is on. The entry
	// becomes visible to the driver at the next Publish.
	Push(c *Chain, written uint32) error
	// Publish makes every pushed entry visible to the driver.
	Publish()
	// NeedsNotify reports, after Publish, whether the driver asked to be
	// notified (signal the call eventfd) of the entries published since
	// the last call that returned true.
	NeedsNotify() bool
	// DisableNotifications asks the driver not to kick: call it when the
	// poller starts busy-polling.
	DisableNotifications()
	// EnableNotifications asks the driver to kick again and reports
	// whether buffers arrived meanwhile (then keep polling instead of
	// sleeping, or they may never be kicked).
	EnableNotifications() bool
	// VringBase returns the GET_VRING_BASE value: for a split ring the
	// next available index the device will process; for a packed ring
	// that descriptor and its wrap counter (bits 0-15) and the next used
	// descriptor and its wrap counter (bits 16-31).
	VringBase() uint32
	// SetLogging turns dirty logging on (log non-nil) or off. Writable
	// buffers are logged at their guest addresses; the ring's own writes
	// at usedLogGPA when logUsed (SET_VRING_ADDR flag VringFLog).
	SetLogging(log *DirtyLog, logUsed bool, usedLogGPA uint64)
	// Errors returns the number of malformed chains and ring errors seen.
	Errors() uint64

	queue()
}

var _ Queue = (*SplitRing)(nil)

// Chain is one buffer taken from a queue: the segments of its descriptor
// chain, device-readable ones (the driver's data) before device-writable
// ones. A descriptor whose buffer spans two adjacent memory regions gives
// two segments. A Chain is reused across Pops; its segments alias guest
// memory and are valid until the chain is pushed (and while the memory
// table is unchanged). Pop overwrites the Chain it is given: push a chain
// before reusing it, or its buffer is never returned to the driver. To
// hold several buffers in flight, use several Chains.
type Chain struct {
	readable    [][]byte
	writable    [][]byte
	writableGPA []uint64 // guest address of each writable segment, for the dirty log
	readableLen uint32
	writableLen uint32
	head        uint16
	slot, count uint16 // packed ring: first descriptor and descriptors taken
	wrap        bool   // packed ring: the driver's wrap counter at slot
	entry       uint16 // packed ring with inflight tracking: the head's region entry
	owner       Queue  // the queue that popped the chain; nil once pushed
	resubmitted bool   // popped from the inflight resubmission list
	// hintT and hintR cache the region the chain's last buffer was in,
	// valid for table hintT only: consecutive buffers are nearly always
	// in the same region, and the cache skips the search.
	hintT *memTable
	hintR *mappedRegion
}

// NewChain returns a Chain that holds up to maxSegments readable and
// maxSegments writable segments. A chain with more segments is refused
// with ErrChainTooLong, so pass at least the queue size unless the device
// knows better (virtio-net frames need at most MAX_SKB_FRAGS+2).
func NewChain(maxSegments int) *Chain {
	return &Chain{
		readable:    make([][]byte, 0, maxSegments),
		writable:    make([][]byte, 0, maxSegments),
		writableGPA: make([]uint64, 0, maxSegments),
	}
}

// Head returns the id of the chain's head descriptor.
func (c *Chain) Head() uint16 { return c.head }

// Readable returns the device-readable segments, in chain order.
func (c *Chain) Readable() [][]byte { return c.readable }

// Writable returns the device-writable segments, in chain order.
func (c *Chain) Writable() [][]byte { return c.writable }

// ReadableLen returns the total length of the readable segments.
func (c *Chain) ReadableLen() uint32 { return c.readableLen }

// WritableLen returns the total length of the writable segments.
func (c *Chain) WritableLen() uint32 { return c.writableLen }

// Gather copies the readable bytes, from the start, into dst and returns
// how many it copied.
func (c *Chain) Gather(dst []byte) int {
	n := 0
	for _, s := range c.readable {
		if n == len(dst) {
			break
		}
		n += copy(dst[n:], s)
	}
	return n
}

// Scatter copies src into the writable segments starting off bytes into
// the writable part and returns how many bytes it copied.
func (c *Chain) Scatter(src []byte, off int) int {
	n := 0
	for _, s := range c.writable {
		if len(src) == n {
			break
		}
		if off >= len(s) {
			off -= len(s)
			continue
		}
		n += copy(s[off:], src[n:])
		off = 0
	}
	return n
}

func (c *Chain) reset() {
	c.readable = c.readable[:0]
	c.writable = c.writable[:0]
	c.writableGPA = c.writableGPA[:0]
	c.readableLen, c.writableLen = 0, 0
	c.owner = nil
	c.resubmitted = false
}

// SplitRingOptions configures a SplitRing.
type SplitRingOptions struct {
	// Size is the queue size from SET_VRING_NUM: a power of two, 1 to
	// MaxQueueSize.
	Size uint32
	// Addr holds the ring addresses from SET_VRING_ADDR (frontend virtual
	// addresses, translated with Memory.TranslateUser) and the used-ring
	// log address and flag.
	Addr VringAddr
	// LastAvailIdx is the SET_VRING_BASE value: the first available
	// entry to process.
	LastAvailIdx uint16
	// EventIdx says VIRTIO_F_RING_EVENT_IDX was negotiated.
	EventIdx bool
	// IndirectDesc says VIRTIO_F_RING_INDIRECT_DESC was negotiated;
	// without it an INDIRECT descriptor is a malformed chain.
	IndirectDesc bool
	// MaxDescriptorLen caps the length of one descriptor; 0 means
	// DefaultMaxDescriptorLen.
	MaxDescriptorLen uint32
	// Log is the dirty log when VHOST_F_LOG_ALL is on, else nil. The used
	// ring is logged at Addr.Log when Addr.Flags has VringFLog.
	Log *DirtyLog
	// Inflight, when set, is the queue's part of the inflight region
	// (GET/SET_INFLIGHT_FD): the ring records there the chains it took and
	// has not returned, and on start resubmits those a crashed backend
	// left, setting the next available index past them (as DPDK does: the
	// frontend then sets the base to the used index).
	Inflight []byte
}

// SplitRing is the device side of a split virtqueue (virtio 1.1, 2.6)
// whose rings live in guest memory mapped by a Memory.
//
// It is driven by one goroutine (see Queue). It keeps slices into the
// Memory's mappings: rebuild it after the memory table changes. Pop, Push,
// Publish and the notification calls do not allocate.
type SplitRing struct {
	mem    *Memory
	size   uint16
	mask   uint16
	maxLen uint32
	desc   []byte // descriptor table: size * 16 bytes
	avail  []byte // flags, idx, ring[size], used_event
	used   []byte // flags, idx, ring[size] of {id u32, len u32}, avail_event

	eventIdx bool
	indirect bool

	lastAvail  uint16 // next available entry to consume
	availIdx   uint16 // avail->idx as last read
	usedIdx    uint16 // next used entry to fill (not yet published past pubUsed)
	pubUsed    uint16 // used->idx as last published
	usedFlags  uint16 // what the device last stored in used->flags
	signalled  uint16 // pubUsed when the driver was last found to need a notification
	sigValid   bool   // signalled is meaningful
	broken     bool
	fenceWord  uint32
	logState   atomic.Pointer[ringLog]
	errorCount atomic.Uint64  // written by the poller only
	inflight   *inflightState // nil without inflight tracking
	// heads caches avail->ring entries [headPos, headPos+headN), read in
	// one go (availBatch at most): the frontend writes the ring's lines
	// while the device reads them, and one pass per burst takes each
	// line once instead of once per entry. Only entries below an
	// avail->idx already read are cached: values the driver published.
	heads   [availBatch]uint16
	headPos uint16
	headN   uint16
	pf      prefetcher
	// shadow holds the used entries pushed since the last flush (the
	// ring's entries usedIdx-shadowN to usedIdx, each id | len<<32), so
	// that the used ring's lines, which the driver reads, are written
	// in one pass just before used->idx instead of one entry per frame
	// between the driver's reads.
	shadow  [shadowLen]uint64
	shadowN int
}

// shadowLen is how many used entries the ring holds back before it
// writes them (Publish writes them all).
const shadowLen = 64

// availBatch is how many avail->ring entries the ring reads at once: a
// burst of the poller's, and two cache lines of the ring.
const availBatch = 64

// prefetchAhead is how many chains ahead of the one it pops the ring
// prefetches the first buffer of.
const prefetchAhead = 8

// ringLog is an immutable logging configuration, swapped atomically.
type ringLog struct {
	log     *DirtyLog
	logUsed bool
	usedGPA uint64
}

// markWritten marks the guest memory the device wrote into c (its first
// written bytes, in its writable segments) in the dirty log; false when
// a mark failed (ErrLogOutOfRange: the frontend's log is too small).
func (ls *ringLog) markWritten(c *Chain, written uint32) bool {
	ok := true
	rem := uint64(written)
	for i := 0; rem > 0 && i < len(c.writable); i++ {
		n := min(rem, uint64(len(c.writable[i])))
		if ls.log.Mark(c.writableGPA[i], n) != nil {
			ok = false
		}
		rem -= n
	}
	return ok
}

func (*SplitRing) queue() {}

// NewSplitRing resolves the rings of opts in mem and returns the device
// side of the queue. The used index is read from guest memory (the value
// the device last published), as SET_VRING_BASE specifies.
//
// Errors: ErrBadRing (wrapped) for a bad size, misaligned addresses, or
// rings not mapped in mem.
func NewSplitRing(mem *Memory, opts SplitRingOptions) (*SplitRing, error) {
	bad := func(format string, args ...any) (*SplitRing, error) {
		return nil, fmt.Errorf("set up split ring %d: %s: %w", opts.Addr.Index, fmt.Sprintf(format, args...), ErrBadRing)
	}
	size := opts.Size
	if size == 0 || size > MaxQueueSize || size&(size-1) != 0 {
		return bad("queue size %d is not a power of two from 1 to %d", size, MaxQueueSize)
	}
	a := opts.Addr
	if a.Desc%16 != 0 || a.Avail%2 != 0 || a.Used%4 != 0 {
		return bad("misaligned rings: desc %#x avail %#x used %#x", a.Desc, a.Avail, a.Used)
	}
	event := uint64(0)
	if opts.EventIdx {
		event = 2
	}
	r := &SplitRing{
		mem:      mem,
		size:     uint16(size),
		mask:     uint16(size - 1),
		maxLen:   opts.MaxDescriptorLen,
		eventIdx: opts.EventIdx,
		indirect: opts.IndirectDesc,
	}
	if r.maxLen == 0 {
		r.maxLen = DefaultMaxDescriptorLen
	}
	var err error
	if r.desc, err = mem.TranslateUser(a.Desc, DescSize*uint64(size)); err != nil {
		return bad("descriptor table at %#x: %v", a.Desc, err)
	}
	if r.avail, err = mem.TranslateUser(a.Avail, 4+2*uint64(size)+event); err != nil {
		return bad("available ring at %#x: %v", a.Avail, err)
	}
	if r.used, err = mem.TranslateUser(a.Used, 4+8*uint64(size)+event); err != nil {
		return bad("used ring at %#x: %v", a.Used, err)
	}
	if addrOf(r.used, 0)%4 != 0 {
		return bad("used ring at %#x is not 4-byte aligned in host memory", a.Used)
	}
	w := load32(r.used, 0)
	r.usedIdx = uint16(w >> 16)
	r.pubUsed = r.usedIdx
	r.usedFlags = 0
	r.lastAvail = opts.LastAvailIdx
	r.availIdx = opts.LastAvailIdx
	r.SetLogging(opts.Log, a.Flags&VringFLog != 0, a.Log)
	if opts.Inflight != nil {
		if uint64(len(opts.Inflight)) < InflightQueueSize(r.size) {
			return bad("inflight region of %d bytes for %d descriptors", len(opts.Inflight), size)
		}
		r.inflight = &inflightState{region: opts.Inflight}
		n, err := r.inflight.recover(r.used, r.usedIdx, r.size)
		if err != nil {
			return bad("%v", err)
		}
		r.lastAvail += uint16(n)
		r.availIdx = r.lastAvail
	}
	return r, nil
}

// Resubmitting returns how many chains left by a crashed backend are still
// to be handed out again.
func (r *SplitRing) Resubmitting() int {
	if r.inflight == nil {
		return 0
	}
	return len(r.inflight.resubmit)
}

// Size returns the queue size.
func (r *SplitRing) Size() uint16 { return r.size }

// VringBase implements Queue.
func (r *SplitRing) VringBase() uint32 { return uint32(r.lastAvail) }

// LastAvailIdx returns the next available entry the device will process.
func (r *SplitRing) LastAvailIdx() uint16 { return r.lastAvail }

// SetLastAvailIdx sets the next available entry to process, as
// SET_VRING_BASE does, and clears a broken state.
func (r *SplitRing) SetLastAvailIdx(idx uint16) {
	r.lastAvail, r.availIdx, r.broken = idx, idx, false
	r.headN = 0
}

// SetLogging implements Queue. It may be called while the ring runs.
func (r *SplitRing) SetLogging(log *DirtyLog, logUsed bool, usedLogGPA uint64) {
	r.setLogging(log, logUsed, usedLogGPA)
}

// setLogging is SetLogging, reporting whether the configuration changed.
func (r *SplitRing) setLogging(log *DirtyLog, logUsed bool, usedLogGPA uint64) bool {
	cur := r.logState.Load()
	if log == nil {
		r.logState.Store(nil)
		return cur != nil
	}
	if cur != nil && *cur == (ringLog{log: log, logUsed: logUsed, usedGPA: usedLogGPA}) {
		return false
	}
	r.logState.Store(&ringLog{log: log, logUsed: logUsed, usedGPA: usedLogGPA})
	return true
}

// Errors implements Queue.
func (r *SplitRing) Errors() uint64 { return r.errorCount.Load() }

func (r *SplitRing) countError() {
	r.errorCount.Store(r.errorCount.Load() + 1) // single writer: no RMW needed
}

// Pending returns how many available entries the driver has posted that
// the device has not popped yet. It reads avail->idx.
func (r *SplitRing) Pending() uint16 {
	r.availIdx = load16(r.avail, 2)
	return r.availIdx - r.lastAvail + uint16(r.Resubmitting())
}

// Pop implements Queue.
func (r *SplitRing) Pop(c *Chain) (bool, error) {
	if r.broken {
		return false, ErrRingBroken
	}
	if r.inflight != nil && len(r.inflight.resubmit) > 0 {
		head := r.inflight.resubmit[0]
		r.inflight.resubmit = r.inflight.resubmit[1:]
		c.reset()
		c.head = head
		if err := r.walk(c, head); err != nil {
			c.reset()
			r.countError()
			r.pushUsed(head, 0)
			return false, err
		}
		c.owner = r
		c.resubmitted = true
		return true, nil
	}
	if r.lastAvail == r.availIdx {
		r.availIdx = load16(r.avail, 2) // acquire: ring entries and descriptors are visible
		if r.lastAvail == r.availIdx {
			return false, nil
		}
	}
	if r.availIdx-r.lastAvail > r.size {
		r.broken = true
		r.countError()
		return false, ErrRingBroken
	}
	k := r.lastAvail - r.headPos
	if k >= r.headN {
		r.readHeads()
		k = 0
	}
	head := r.heads[k%availBatch]
	if a := k + prefetchAhead; a < r.headN {
		r.prefetchChain(r.heads[a%availBatch])
	}
	r.lastAvail++
	c.reset()
	if head >= r.size {
		r.countError()
		return false, ErrHeadOutOfRange
	}
	c.head = head
	if err := r.walk(c, head); err != nil {
		c.reset()
		r.countError()
		r.pushUsed(head, 0)
		return false, err
	}
	if r.inflight != nil {
		r.inflight.taken(head)
	}
	c.owner = r
	return true, nil
}

// readHeads fills the heads cache from lastAvail: the entries up to
// availIdx (at most availBatch), and starts loading their descriptors
// and the first buffers of the first chains.
func (r *SplitRing) readHeads() {
	n := min(r.availIdx-r.lastAvail, availBatch)
	pos := r.lastAvail
	for i := range n {
		slot := 4 + 2*int((pos+i)&r.mask)
		r.heads[i] = binary.LittleEndian.Uint16(r.avail[slot:])
	}
	r.headPos, r.headN = pos, n
	for i := range n {
		if h := r.heads[i]; h < r.size {
			prefetchRead(addrOf(r.desc, int(h)*DescSize))
		}
	}
	for i := range min(n, prefetchAhead) {
		r.prefetchChain(r.heads[i])
	}
}

// prefetchChain starts loading the first buffer of the chain at head, a
// chain the ring pops soon, when its first descriptor is a direct one
// inside guest memory; otherwise it does nothing. Nothing is checked or
// kept: Pop reads the descriptor again and checks it.
func (r *SplitRing) prefetchChain(head uint16) {
	if head >= r.size {
		return
	}
	d := (*[DescSize]byte)(r.desc[int(head)*DescSize:])
	flags := binary.LittleEndian.Uint16(d[12:14])
	if flags&DescFIndirect != 0 {
		return
	}
	r.pf.buffer(r.mem.table.Load(), binary.LittleEndian.Uint64(d[0:8]), flags&DescFWrite != 0)
}

// walk follows the chain starting at head (virtio 1.1, 2.6.5) into c.
func (r *SplitRing) walk(c *Chain, head uint16) error {
	t := r.mem.table.Load() // one snapshot for the whole chain
	table := r.desc
	n := uint32(r.size) // entries in the current table
	idx := uint32(head)
	indirect := false
	for steps := uint32(0); ; steps++ {
		if steps >= n {
			// A chain in a table of n entries that visits more than n
			// descriptors revisits one.
			return ErrDescriptorLoop
		}
		// One bounds check: the fields below index a fixed-size array.
		d := (*[DescSize]byte)(table[idx*DescSize:])
		addr := binary.LittleEndian.Uint64(d[0:8])
		length := binary.LittleEndian.Uint32(d[8:12])
		flags := binary.LittleEndian.Uint16(d[12:14])
		next := binary.LittleEndian.Uint16(d[14:16])

		if flags&DescFIndirect != 0 {
			switch {
			case !r.indirect:
				return ErrIndirectNotNegotiated
			case indirect:
				return ErrNestedIndirect
			case flags&DescFNext != 0, length == 0, length%DescSize != 0, length/DescSize > uint32(r.size):
				// A driver MUST NOT set both INDIRECT and NEXT, and a
				// chain is at most queue size long (2.6.5.3.1).
				return ErrBadIndirect
			}
			tb, ok := t.translate(addr, uint64(length))
			if !ok {
				return ErrBadIndirect
			}
			// Walk the table from entry 0; steps restarts at 0 after the
			// loop's increment.
			table, n, idx, indirect, steps = tb, length/DescSize, 0, true, ^uint32(0)
			continue
		}
		if err := c.addBuffer(t, addr, length, r.maxLen, flags&DescFWrite != 0); err != nil {
			return err
		}
		if flags&DescFNext == 0 {
			return nil
		}
		idx = uint32(next)
		if idx >= n {
			return ErrNextOutOfRange
		}
	}
}

// addBuffer adds a buffer descriptor of either ring layout to c: not
// empty, at most maxLen, device-writable buffers after the readable ones
// (2.6.4.2), the chain's total within 2^32 bytes (2.6.5.2), every byte
// inside guest memory (segments of t's regions).
func (c *Chain) addBuffer(t *memTable, addr uint64, length, maxLen uint32, write bool) error {
	if length == 0 {
		return ErrZeroLength
	}
	if length > maxLen {
		return ErrDescriptorTooLong
	}
	if c.hintT != t {
		c.hintT, c.hintR = t, nil
	}
	if r := c.hintR; r != nil {
		if off := addr - r.GuestAddr; off < r.Size && uint64(length) <= r.Size-off {
			// The common case: the whole buffer in the region of the
			// last one, one segment (addr+length cannot wrap: it ends
			// inside r).
			end := off + uint64(length)
			return c.addSegment(r.data[off:end:end], addr, length, write)
		}
	}
	var err error
	if write {
		if c.writableLen+length < c.writableLen {
			return ErrDescriptorTooLong
		}
		if c.writable, c.writableGPA, err = t.appendSegments(c, c.writable, c.writableGPA, addr, uint64(length)); err != nil {
			return err
		}
		c.writableLen += length
	} else {
		if len(c.writable) > 0 {
			return ErrDescriptorOrder
		}
		if c.readableLen+length < c.readableLen {
			return ErrDescriptorTooLong
		}
		if c.readable, _, err = t.appendSegments(c, c.readable, nil, addr, uint64(length)); err != nil {
			return err
		}
		c.readableLen += length
	}
	if uint64(c.readableLen)+uint64(c.writableLen) > 1<<32-1 {
		return ErrDescriptorTooLong
	}
	return nil
}

// addSegment is addBuffer's tail for a buffer that is one segment, seg,
// at guest address addr: the same checks, in the same order.
func (c *Chain) addSegment(seg []byte, addr uint64, length uint32, write bool) error {
	if write {
		if c.writableLen+length < c.writableLen {
			return ErrDescriptorTooLong
		}
		if len(c.writable) == cap(c.writable) || len(c.writableGPA) == cap(c.writableGPA) {
			return ErrChainTooLong
		}
		c.writable = append(c.writable, seg)
		c.writableGPA = append(c.writableGPA, addr)
		c.writableLen += length
	} else {
		if len(c.writable) > 0 {
			return ErrDescriptorOrder
		}
		if c.readableLen+length < c.readableLen {
			return ErrDescriptorTooLong
		}
		if len(c.readable) == cap(c.readable) {
			return ErrChainTooLong
		}
		c.readable = append(c.readable, seg)
		c.readableLen += length
	}
	if uint64(c.readableLen)+uint64(c.writableLen) > 1<<32-1 {
		return ErrDescriptorTooLong
	}
	return nil
}

// translate is Memory.Translate on a snapshot, for one region only.
func (t *memTable) translate(gpa, length uint64) ([]byte, bool) {
	r := t.findGuest(gpa)
	if r == nil {
		return nil, false
	}
	off := gpa - r.GuestAddr
	if length > r.Size-off {
		return nil, false
	}
	return r.data[off : off+length : off+length], true
}

// appendSegments appends the host slices of [gpa, gpa+length) to segs (and
// their guest addresses to gpas when gpas is non-nil) without growing
// them beyond their capacity. The last region it used becomes c's hint.
func (t *memTable) appendSegments(c *Chain, segs [][]byte, gpas []uint64, gpa, length uint64) ([][]byte, []uint64, error) {
	if _, ok := add(gpa, length); !ok {
		return segs, gpas, ErrDescriptorAddress
	}
	for length > 0 {
		if len(segs) == cap(segs) || (gpas != nil && len(gpas) == cap(gpas)) {
			return segs, gpas, ErrChainTooLong
		}
		r := t.findGuest(gpa)
		if r == nil {
			return segs, gpas, ErrDescriptorAddress
		}
		c.hintR = r
		off := gpa - r.GuestAddr
		n := min(length, r.Size-off)
		segs = append(segs, r.data[off:off+n:off+n])
		if gpas != nil {
			gpas = append(gpas, gpa)
		}
		gpa += n
		length -= n
	}
	return segs, gpas, nil
}

// Push implements Queue.
//
// Errors: ErrBadPush when c was not popped from r (or was pushed already)
// or written exceeds c.WritableLen(). A failure to mark the dirty log
// (ErrLogOutOfRange: the frontend's log is too small) is counted in
// Errors and does not fail the push.
func (r *SplitRing) Push(c *Chain, written uint32) error {
	if c.owner != Queue(r) || written > c.writableLen {
		return ErrBadPush
	}
	if ls := r.logState.Load(); ls != nil && !ls.markWritten(c, written) {
		r.countError()
	}
	r.pushUsed(c.head, written)
	c.owner = nil
	return nil
}

// unpop puts c, the chain Pop handed out last and not pushed since, back
// on the available side: the next Pop returns it again. Nothing was
// written to the ring for it, so the driver cannot tell. Chains popped in
// a row are put back last first. It returns false, and does nothing, for
// a chain that cannot be put back (not r's, pushed already, or one the
// inflight region resubmitted): push that one instead.
func (r *SplitRing) unpop(c *Chain) bool {
	if c.owner != Queue(r) || c.resubmitted {
		return false
	}
	r.lastAvail--
	if r.inflight != nil {
		r.inflight.untaken(c.head)
	}
	c.owner = nil
	return true
}

// pushUsed fills the next used entry (in the shadow); Publish makes it
// visible.
func (r *SplitRing) pushUsed(id uint16, length uint32) {
	if r.shadowN == len(r.shadow) {
		r.flushUsed()
	}
	r.shadow[r.shadowN] = uint64(id) | uint64(length)<<32
	r.shadowN++
	r.usedIdx++
}

// flushUsed writes the shadowed used entries into the used ring (plain
// stores: the driver reads them only after the used->idx store that
// Publish makes next) and marks them in the dirty log.
func (r *SplitRing) flushUsed() {
	n := r.shadowN
	if n == 0 {
		return
	}
	r.shadowN = 0
	pos := r.usedIdx - uint16(n)
	for i, e := range r.shadow[:n] {
		slot := 4 + 8*int((pos+uint16(i))&r.mask)
		binary.LittleEndian.PutUint64(r.used[slot:slot+8], e)
	}
	if ls := r.logState.Load(); ls != nil && ls.logUsed {
		for i := range n {
			if ls.log.Mark(ls.usedGPA+uint64(4+8*int((pos+uint16(i))&r.mask)), 8) != nil {
				r.countError()
			}
		}
	}
}

// logUsed marks bytes [off, off+n) of the used ring in the dirty log when
// the ring is logged.
func (r *SplitRing) logUsed(off, n uint64) {
	if ls := r.logState.Load(); ls != nil && ls.logUsed {
		if ls.log.Mark(ls.usedGPA+off, n) != nil {
			r.countError()
		}
	}
}

// Publish implements Queue: one release store of used->idx (and flags,
// which share its aligned 32-bit word and which only the device writes).
func (r *SplitRing) Publish() {
	r.flushUsed()
	if r.usedIdx == r.pubUsed {
		return
	}
	store32(r.used, 0, uint32(r.usedFlags)|uint32(r.usedIdx)<<16)
	if r.inflight != nil {
		r.inflight.returned(r.used, r.pubUsed, r.usedIdx, r.mask)
	}
	r.pubUsed = r.usedIdx
	r.logUsed(2, 2)
}

// NeedsNotify implements Queue (virtio 1.1, 2.6.7 and 2.6.7.1).
func (r *SplitRing) NeedsNotify() bool {
	if r.sigValid && r.signalled == r.pubUsed {
		return false // nothing published since the last notification
	}
	fence(&r.fenceWord) // order the used->idx store before reading the driver's wishes
	if !r.eventIdx {
		if load16(r.avail, 0)&AvailFNoInterrupt != 0 {
			return false
		}
		r.signalled, r.sigValid = r.pubUsed, true
		return true
	}
	event := load16(r.avail, 4+2*int(r.size))
	old, valid := r.signalled, r.sigValid
	r.signalled, r.sigValid = r.pubUsed, true
	return !valid || needEvent(event, r.pubUsed, old)
}

// needEvent is vring_need_event: whether moving the index from old to new
// crossed event (virtio 1.1, 2.6.7.1).
func needEvent(event, new, old uint16) bool {
	return new-event-1 < new-old
}

// DisableNotifications implements Queue. With EVENT_IDX it does nothing:
// the driver keeps kicking only when avail_event says so, and
// avail_event is only moved by EnableNotifications.
func (r *SplitRing) DisableNotifications() {
	if r.eventIdx || r.usedFlags&UsedFNoNotify != 0 {
		return
	}
	r.usedFlags |= UsedFNoNotify
	store32(r.used, 0, uint32(r.usedFlags)|uint32(r.pubUsed)<<16)
	r.logUsed(0, 2)
}

// EnableNotifications implements Queue (virtio 1.1, 2.6.10).
func (r *SplitRing) EnableNotifications() bool {
	if r.eventIdx {
		off := 4 + 8*int(r.size)
		store16(r.used, off, r.lastAvail)
		r.logUsed(uint64(off), 2)
	} else if r.usedFlags&UsedFNoNotify != 0 {
		r.usedFlags &^= UsedFNoNotify
		store32(r.used, 0, uint32(r.usedFlags)|uint32(r.pubUsed)<<16)
		r.logUsed(0, 2)
	}
	fence(&r.fenceWord) // publish the wish before looking at avail->idx again
	r.availIdx = load16(r.avail, 2)
	return r.availIdx != r.lastAvail
}
