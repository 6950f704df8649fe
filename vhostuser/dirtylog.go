package vhostuser

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// DirtyLog is the migration dirty log the frontend hands over with
// SET_LOG_BASE (protocol feature LOG_SHMFD): a bitmap in shared memory with
// one bit per LogPageSize bytes of guest physical memory, bit (gpa/0x1000)%8
// of byte (gpa/0x1000)/8. The frontend reads and clears it concurrently, so
// bits are set with atomic OR on aligned 64-bit words (which is how QEMU
// itself reads the log: 64-bit atomic exchanges).
//
// Ownership: DirtyLog owns the log fd and the mapping; Close releases both.
//
// Concurrency: Mark may run on any number of goroutines at once and takes
// no lock. Close unmaps the log: callers must make sure no Mark is running
// or will run (swap the *DirtyLog out of every ring with SetDirtyLog and
// quiesce the pollers first).
type DirtyLog struct {
	// words is the bitmap rounded up to whole 64-bit words, a little-endian
	// bit array: page p is bit p%64 of word p/64. It starts 8-byte aligned
	// in host memory (page-aligned mapping, 8-aligned offset) and lies in
	// the page-rounded mapping; bits past size*8 are never set.
	words   []byte
	mapping []byte // what mapShared returned
	size    uint64 // bitmap size in bytes, as the frontend sent it
	pages   uint64 // number of pages covered: size*8

	mu sync.Mutex // guards fd and mapping's release
	fd *FD        // guarded by mu; nil once closed
}

// NewDirtyLog maps the log of a SET_LOG_BASE message: size bytes at offset
// in fd. It takes ownership of fd, also on error. The offset must be a
// multiple of 8 (QEMU and rust-vmm send 0).
//
// Errors: ErrBadLog.
func NewDirtyLog(fd *FD, l Log) (*DirtyLog, error) {
	bad := func(why string, args ...any) (*DirtyLog, error) {
		fd.Close()
		return nil, fmt.Errorf("map dirty log (size %#x offset %#x): %s: %w", l.Size, l.Offset, fmt.Sprintf(why, args...), ErrBadLog)
	}
	if l.Size == 0 || l.Size > maxLogSize {
		return bad("size out of range")
	}
	if l.Offset%8 != 0 || l.Offset > 1<<62 {
		return bad("offset not 8-byte aligned")
	}
	if fd.Int() < 0 {
		return bad("no file descriptor")
	}
	// A log the file does not hold would fault at the first Mark.
	var st unix.Stat_t
	if err := unix.Fstat(fd.Int(), &st); err != nil {
		return bad("fstat: %v", err)
	}
	if !backs(&st, l.Offset, l.Size) {
		return bad("beyond the end of the fd (%d bytes)", st.Size)
	}
	page := uint64(unix.Getpagesize())
	skip := l.Offset % page
	length := (skip + l.Size + page - 1) &^ (page - 1)
	// MAP_POPULATE: the pages are in before the first Mark, so a poller
	// never takes the page faults of a fresh log one by one while QEMU
	// waits for the migration's first dirty sync.
	mapping, err := mapShared(fd.Int(), int64(l.Offset-skip), int(length), unix.MAP_POPULATE)
	if err != nil {
		return bad("mmap: %v", err)
	}
	wordBytes := (l.Size + 7) &^ 7
	return &DirtyLog{
		words:   mapping[skip : skip+wordBytes : skip+wordBytes],
		mapping: mapping,
		size:    l.Size,
		pages:   l.Size * 8,
		fd:      fd,
	}, nil
}

// maxLogSize bounds the log (64 GiB of bitmap covers 2 PiB of guest memory).
const maxLogSize = 1 << 36

// Size returns the size of the bitmap in bytes.
func (l *DirtyLog) Size() uint64 { return l.size }

// Mark sets the dirty bit of every page that [gpa, gpa+length) touches. A
// length of 0 marks nothing. It does not allocate and takes no lock.
//
// Errors (unwrapped): ErrLogOutOfRange when some page lies beyond the log;
// no bit is set then.
func (l *DirtyLog) Mark(gpa, length uint64) error {
	if length == 0 {
		return nil
	}
	end, ok := add(gpa, length-1)
	if !ok {
		return ErrLogOutOfRange
	}
	first, last := gpa/LogPageSize, end/LogPageSize
	if last >= l.pages {
		return ErrLogOutOfRange
	}
	for w := first / 64; w <= last/64; w++ {
		lo, hi := max(first, w*64), min(last, w*64+63)
		mask := (^uint64(0) >> (63 - (hi - lo))) << (lo - w*64)
		or64(l.words, int(w*8), mask)
	}
	return nil
}

// Close unmaps the log and closes its fd. It is idempotent.
func (l *DirtyLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fd == nil {
		return nil
	}
	err := unmap(l.mapping)
	if cerr := l.fd.Close(); err == nil {
		err = cerr
	}
	l.fd = nil
	if err != nil {
		return fmt.Errorf("close dirty log: %w", err)
	}
	return nil
}

// IsMarked reports whether the page holding gpa is marked dirty. It is
// meant for tests and diagnostics; the frontend owns clearing the bits.
func (l *DirtyLog) IsMarked(gpa uint64) bool {
	p := gpa / LogPageSize
	if p >= l.pages {
		return false
	}
	return l.words[p/8]&(1<<(p%8)) != 0
}
