package vhostuser

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Memory is the backend's view of guest memory: the regions of the
// frontend's memory table, each mapped from its file descriptor.
//
// Ownership: Memory owns the file descriptor of every region it holds and
// closes it when the region is removed or the Memory is closed; the
// mapping itself is made at AddRegion time.
//
// Concurrency: the region table is an immutable snapshot behind an atomic
// pointer. Translate, TranslateUser and TranslateSegments take no lock and
// do not allocate; they may run on any number of goroutines, concurrently
// with AddRegion. RemoveRegion and Close unmap memory: the slices that
// earlier translations returned become invalid, and touching them faults.
// The caller (the device model) must therefore quiesce every ring that
// might hold such slices before calling them — the vhost-user frontend
// stops the rings (GET_VRING_BASE) or, for SET_MEM_TABLE on a running
// device, the device model stops its pollers, builds a new Memory with
// NewMemoryFromTable, re-resolves its rings against it and then closes the
// old one.
type Memory struct {
	mu     sync.Mutex // serialises AddRegion, RemoveRegion and Close
	closed bool       // guarded by mu
	table  atomic.Pointer[memTable]
}

// memTable is an immutable snapshot of the mapped regions.
type memTable struct {
	byGuest []*mappedRegion // sorted by GuestAddr
	byUser  []*mappedRegion // sorted by UserAddr
}

type mappedRegion struct {
	MemoryRegion
	fd      *FD    // owned: closed by release
	mapping []byte // what mapShared returned; passed back to unmap
	data    []byte // the region's bytes: mapping[skip : skip+Size]
}

// NewMemory returns an empty Memory.
func NewMemory() *Memory {
	m := &Memory{}
	m.table.Store(&memTable{})
	return m
}

// NewMemoryFromTable maps the regions of a SET_MEM_TABLE message, fds[i]
// holding regions[i] (FDSet.TakeAll gives them in that order). It takes
// ownership of every fd, also on error (they are closed then).
func NewMemoryFromTable(regions []MemoryRegion, fds []*FD) (*Memory, error) {
	if len(regions) != len(fds) {
		closeAll(fds)
		return nil, fmt.Errorf("map memory table: %d regions but %d file descriptors: %w", len(regions), len(fds), ErrBadRegion)
	}
	m := NewMemory()
	for i, r := range regions {
		if err := m.AddRegion(r, fds[i]); err != nil {
			closeAll(fds[i+1:])
			m.Close()
			return nil, err
		}
	}
	return m, nil
}

// AddRegion maps region r from fd (at r.MmapOffset) and adds it to the
// table. Memory takes ownership of fd, also on error.
//
// Errors: ErrBadRegion (empty or overflowing region, no fd, mmap
// failure), ErrRegionOverlap, ErrTooManyRegions, ErrClosed.
func (m *Memory) AddRegion(r MemoryRegion, fd *FD) (err error) {
	defer func() {
		if err != nil {
			fd.Close()
		}
	}()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("add memory region: %w", ErrClosed)
	}
	if fd.Int() < 0 {
		return fmt.Errorf("add memory region gpa %#x: no file descriptor: %w", r.GuestAddr, ErrBadRegion)
	}
	t := m.table.Load()
	if len(t.byGuest) >= MaxMemSlots {
		return fmt.Errorf("add memory region: %d regions: %w", len(t.byGuest), ErrTooManyRegions)
	}
	if err := checkRegion(r); err != nil {
		return err
	}
	for _, o := range t.byGuest {
		if overlaps(r.GuestAddr, r.Size, o.GuestAddr, o.Size) || overlaps(r.UserAddr, r.Size, o.UserAddr, o.Size) {
			return fmt.Errorf("add memory region gpa %#x+%#x uaddr %#x: overlaps gpa %#x+%#x uaddr %#x: %w",
				r.GuestAddr, r.Size, r.UserAddr, o.GuestAddr, o.Size, o.UserAddr, ErrRegionOverlap)
		}
	}
	mr, err := mapRegion(r, fd)
	if err != nil {
		return err
	}
	nt := &memTable{
		byGuest: append(slices.Clip(t.byGuest), mr),
		byUser:  append(slices.Clip(t.byUser), mr),
	}
	slices.SortFunc(nt.byGuest, func(a, b *mappedRegion) int { return cmpU64(a.GuestAddr, b.GuestAddr) })
	slices.SortFunc(nt.byUser, func(a, b *mappedRegion) int { return cmpU64(a.UserAddr, b.UserAddr) })
	m.table.Store(nt)
	return nil
}

// RemoveRegion unmaps the region with r's guest address, user address and
// size (the mmap offset is ignored, as REM_MEM_REG specifies) and closes
// its fd. See the type's documentation for the quiescence it requires.
//
// Errors: ErrRegionNotFound, ErrClosed.
func (m *Memory) RemoveRegion(r MemoryRegion) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("remove memory region: %w", ErrClosed)
	}
	t := m.table.Load()
	i := slices.IndexFunc(t.byGuest, func(o *mappedRegion) bool {
		return o.GuestAddr == r.GuestAddr && o.UserAddr == r.UserAddr && o.Size == r.Size
	})
	if i < 0 {
		return fmt.Errorf("remove memory region gpa %#x+%#x uaddr %#x: %w", r.GuestAddr, r.Size, r.UserAddr, ErrRegionNotFound)
	}
	victim := t.byGuest[i]
	nt := &memTable{
		byGuest: slices.DeleteFunc(slices.Clone(t.byGuest), func(o *mappedRegion) bool { return o == victim }),
		byUser:  slices.DeleteFunc(slices.Clone(t.byUser), func(o *mappedRegion) bool { return o == victim }),
	}
	m.table.Store(nt)
	return victim.release()
}

// Close unmaps every region and closes every fd. It is idempotent. See the
// type's documentation for the quiescence it requires.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	t := m.table.Swap(&memTable{})
	var first error
	for _, r := range t.byGuest {
		if err := r.release(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Regions returns a copy of the current region table, sorted by guest address.
func (m *Memory) Regions() []MemoryRegion {
	t := m.table.Load()
	out := make([]MemoryRegion, len(t.byGuest))
	for i, r := range t.byGuest {
		out[i] = r.MemoryRegion
	}
	return out
}

// NumRegions returns the number of mapped regions.
func (m *Memory) NumRegions() int { return len(m.table.Load().byGuest) }

// Translate returns the host bytes of guest physical range [gpa, gpa+length).
// The slice aliases the mapping (its capacity ends with the range) and is
// valid until the region is removed or the Memory closed. It does not
// allocate. A length of 0 is an error.
//
// Errors (returned unwrapped): ErrAddressNotMapped, or ErrCrossesRegion
// when the range continues into an adjacent region (TranslateSegments
// handles that case).
func (m *Memory) Translate(gpa, length uint64) ([]byte, error) {
	t := m.table.Load()
	r := t.findGuest(gpa)
	if r == nil || length == 0 {
		return nil, ErrAddressNotMapped
	}
	off := gpa - r.GuestAddr
	if length > r.Size-off {
		if end, ok := add(gpa, length); ok && t.coveredByGuest(r, end) {
			return nil, ErrCrossesRegion
		}
		return nil, ErrAddressNotMapped
	}
	return r.data[off : off+length : off+length], nil
}

// TranslateUser is Translate for frontend virtual addresses, as carried by
// SET_VRING_ADDR. Ring structures must lie inside one region.
//
// Errors: ErrAddressNotMapped.
func (m *Memory) TranslateUser(uaddr, length uint64) ([]byte, error) {
	t := m.table.Load()
	r := t.findUser(uaddr)
	if r == nil || length == 0 {
		return nil, ErrAddressNotMapped
	}
	off := uaddr - r.UserAddr
	if length > r.Size-off {
		return nil, ErrAddressNotMapped
	}
	return r.data[off : off+length : off+length], nil
}

// UserToGuest converts a frontend virtual address to a guest physical
// address (used to log writes to rings whose log address is not given).
func (m *Memory) UserToGuest(uaddr uint64) (uint64, bool) {
	r := m.table.Load().findUser(uaddr)
	if r == nil {
		return 0, false
	}
	return r.GuestAddr + (uaddr - r.UserAddr), true
}

// TranslateSegments appends to dst the host bytes of guest physical range
// [gpa, gpa+length), one slice per region the range crosses, and returns
// the extended slice. It allocates only if dst lacks capacity. On error dst
// is returned unchanged in length.
//
// Errors: ErrAddressNotMapped (some byte of the range is not mapped).
func (m *Memory) TranslateSegments(dst [][]byte, gpa, length uint64) ([][]byte, error) {
	n0 := len(dst)
	if length == 0 {
		return dst, ErrAddressNotMapped
	}
	if _, ok := add(gpa, length); !ok {
		return dst, ErrAddressNotMapped
	}
	t := m.table.Load()
	for length > 0 {
		r := t.findGuest(gpa)
		if r == nil {
			return dst[:n0], ErrAddressNotMapped
		}
		off := gpa - r.GuestAddr
		n := min(length, r.Size-off)
		dst = append(dst, r.data[off:off+n:off+n])
		gpa += n
		length -= n
	}
	return dst, nil
}

// coveredByGuest reports whether the guest range from the end of r up to
// end is covered by regions adjacent to r.
func (t *memTable) coveredByGuest(r *mappedRegion, end uint64) bool {
	next := r.GuestAddr + r.Size
	for next < end {
		n := t.findGuest(next)
		if n == nil {
			return false
		}
		next = n.GuestAddr + n.Size
	}
	return true
}

// findGuest returns the region of t containing guest address gpa, or nil.
// It is a binary search for the last region starting at or below gpa and
// does not allocate.
func (t *memTable) findGuest(gpa uint64) *mappedRegion {
	rs := t.byGuest
	lo, hi := 0, len(rs)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if rs[mid].GuestAddr <= gpa {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo == 0 || gpa-rs[lo-1].GuestAddr >= rs[lo-1].Size {
		return nil
	}
	return rs[lo-1]
}

// findUser is findGuest for frontend virtual addresses.
func (t *memTable) findUser(uaddr uint64) *mappedRegion {
	rs := t.byUser
	lo, hi := 0, len(rs)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if rs[mid].UserAddr <= uaddr {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo == 0 || uaddr-rs[lo-1].UserAddr >= rs[lo-1].Size {
		return nil
	}
	return rs[lo-1]
}

func checkRegion(r MemoryRegion) error {
	bad := func(why string) error {
		return fmt.Errorf("add memory region gpa %#x+%#x uaddr %#x off %#x: %s: %w", r.GuestAddr, r.Size, r.UserAddr, r.MmapOffset, why, ErrBadRegion)
	}
	switch {
	case r.Size == 0:
		return bad("empty")
	case r.Size > maxMapSize:
		return bad("too large to map")
	}
	if _, ok := add(r.GuestAddr, r.Size); !ok {
		return bad("guest range overflows")
	}
	if _, ok := add(r.UserAddr, r.Size); !ok {
		return bad("user range overflows")
	}
	if _, ok := add(r.MmapOffset, r.Size); !ok || r.MmapOffset > 1<<62 {
		return bad("mmap range overflows")
	}
	return nil
}

// maxMapSize bounds one mapping (1 TiB); it also keeps lengths within int.
const maxMapSize = 1 << 40

// mapRegion maps r from fd. The offset is aligned down to the file's block
// size (the huge page size on hugetlbfs, the page size elsewhere), as mmap
// requires, and the extra bytes are skipped.
func mapRegion(r MemoryRegion, f *FD) (*mappedRegion, error) {
	fd := f.Int() // f stays referenced by the result, or is closed by the caller
	align := uint64(unix.Getpagesize())
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("add memory region: fstat fd %d: %v: %w", fd, err, ErrBadRegion)
	}
	if bs := uint64(st.Blksize); bs > align && bs&(bs-1) == 0 && bs <= 1<<30 {
		align = bs
	}
	// Touching a mapping beyond the end of its file raises SIGBUS: refuse
	// regions the file does not back. (A frontend that shrinks the file
	// afterwards still can; the device absorbs that fault, see fault.go.)
	if !backs(&st, r.MmapOffset, r.Size) {
		return nil, fmt.Errorf("add memory region gpa %#x+%#x: offset %#x+%#x is beyond the end of fd %d (%d bytes): %w",
			r.GuestAddr, r.Size, r.MmapOffset, r.Size, fd, st.Size, ErrBadRegion)
	}
	skip := r.MmapOffset % align
	mapping, err := mapShared(fd, int64(r.MmapOffset-skip), int(r.Size+skip), unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("add memory region gpa %#x+%#x: mmap fd %d at %#x: %v: %w", r.GuestAddr, r.Size, fd, r.MmapOffset, err, ErrBadRegion)
	}
	return &mappedRegion{MemoryRegion: r, fd: f, mapping: mapping, data: mapping[skip : skip+r.Size : skip+r.Size]}, nil
}

// backs reports whether the file st describes holds bytes [off, off+size)
// (both known not to overflow). Only regular files (memfd, tmpfs,
// hugetlbfs, ordinary files) have an end past which a mapping faults;
// other mappable files (/dev/zero) have none.
func backs(st *unix.Stat_t, off, size uint64) bool {
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return true
	}
	return st.Size >= 0 && off+size <= uint64(st.Size)
}

func (r *mappedRegion) release() error {
	err := unmap(r.mapping)
	if cerr := r.fd.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("release memory region gpa %#x: %w", r.GuestAddr, err)
	}
	return nil
}

func overlaps(a, alen, b, blen uint64) bool {
	// Both ranges are known not to overflow.
	return a < b+blen && b < a+alen
}

func add(a, b uint64) (uint64, bool) {
	s := a + b
	return s, s >= a
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
