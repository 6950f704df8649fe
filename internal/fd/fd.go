package fd

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Sentinel errors.
var (
	// ErrClosed reports use of an FD or EventFD after Close.
	ErrClosed = errors.New("fd: closed")
	// ErrBadFD reports a descriptor number that cannot be owned (negative).
	ErrBadFD = errors.New("fd: bad file descriptor")
	// ErrNotEventFD reports a descriptor that is not an eventfd where one
	// is required; the error is a *NotEventFDError.
	ErrNotEventFD = errors.New("fd: not an eventfd")
	// ErrTruncated reports ancillary data that did not fit the control
	// buffer (MSG_CTRUNC): the kernel closed the descriptors that did not
	// fit, and RecvMsg closed the others.
	ErrTruncated = errors.New("fd: control message truncated")
	// ErrBadControl reports ancillary data that cannot be parsed.
	ErrBadControl = errors.New("fd: bad control message")
	// ErrNotSupported reports an operation this operating system lacks
	// (eventfds are Linux's).
	ErrNotSupported = errors.New("fd: not supported on this system")
)

// closedBit marks FD.state closed; the low bits count the operations
// holding the descriptor for one system call.
const closedBit = 1 << 63

// FD owns one file descriptor. The zero value is not usable; a nil *FD
// means "none" (Int returns -1, Close does nothing).
type FD struct {
	raw     int             // immutable
	state   atomic.Uint64   // closedBit | references in flight
	cleanup runtime.Cleanup // closes a leaked descriptor
}

// New takes ownership of raw.
//
// Errors: ErrBadFD (raw < 0).
func New(raw int) (*FD, error) {
	if raw < 0 {
		return nil, fmt.Errorf("own fd %d: %w", raw, ErrBadFD)
	}
	f := &FD{raw: raw}
	l := leak{raw: raw}
	if leakHook.Load() != nil {
		l.stack = callers()
	}
	f.cleanup = runtime.AddCleanup(f, leaked, l)
	return f, nil
}

// Int returns the descriptor number, or -1 once the FD is closed or
// disowned (and for a nil FD). The number is valid only while f is open
// and reachable: keep f alive (runtime.KeepAlive) while the number is in
// use.
func (f *FD) Int() int {
	if f == nil || f.state.Load()&closedBit != 0 {
		return -1
	}
	return f.raw
}

// String formats the descriptor for messages ("fd 7", "fd closed").
func (f *FD) String() string {
	if n := f.Int(); n >= 0 {
		return fmt.Sprintf("fd %d", n)
	}
	return "fd closed"
}

// Close closes the descriptor. It is idempotent and safe for concurrent
// use; a nil FD is a no-op. When an EventFD operation holds the descriptor,
// the close happens as it finishes, and that close's error is lost.
func (f *FD) Close() error {
	if f == nil {
		return nil
	}
	old := f.state.Or(closedBit)
	if old&closedBit != 0 {
		return nil
	}
	f.cleanup.Stop()
	if old == 0 {
		if err := unix.Close(f.raw); err != nil {
			return fmt.Errorf("close fd %d: %w", f.raw, err)
		}
	}
	return nil
}

// Disown ends f's ownership and returns the descriptor, which the caller
// now owns (-1 if f was closed, disowned or nil). It must not race with
// Close.
func (f *FD) Disown() int {
	if f == nil {
		return -1
	}
	for {
		s := f.state.Load()
		if s&closedBit != 0 {
			return -1
		}
		if s == 0 && f.state.CompareAndSwap(0, closedBit) {
			f.cleanup.Stop()
			return f.raw
		}
		runtime.Gosched() // a Signal or Drain is in its one system call
	}
}

// Dup returns a new owner of a duplicate (close-on-exec) of f.
//
// Errors: ErrClosed, or fcntl(2)'s.
func (f *FD) Dup() (*FD, error) {
	raw, ok := f.acquire()
	if !ok {
		return nil, fmt.Errorf("dup fd: %w", ErrClosed)
	}
	d, err := unix.FcntlInt(uintptr(raw), unix.F_DUPFD_CLOEXEC, 0)
	f.release()
	if err != nil {
		return nil, fmt.Errorf("dup fd %d: %w", raw, err)
	}
	return New(d)
}

// acquire holds the descriptor open for one operation; release ends it.
func (f *FD) acquire() (int, bool) {
	if f == nil {
		return -1, false
	}
	for {
		s := f.state.Load()
		if s&closedBit != 0 {
			return -1, false
		}
		if f.state.CompareAndSwap(s, s+1) {
			return f.raw, true
		}
	}
}

func (f *FD) release() {
	if f.state.Add(^uint64(0)) == closedBit {
		unix.Close(f.raw) // Close ran while the operation held it
	}
}

// Leak describes a descriptor whose FD became unreachable while open.
type Leak struct {
	FD    int    // the descriptor number (now closed)
	Stack string // where New was called, when TraceLeaks was on then
}

func (l Leak) String() string {
	if l.Stack == "" {
		return fmt.Sprintf("fd %d leaked (created before TraceLeaks)", l.FD)
	}
	return fmt.Sprintf("fd %d leaked, created at:\n%s", l.FD, l.Stack)
}

type leak struct {
	raw   int
	stack []uintptr
}

var leakHook atomic.Pointer[func(Leak)]

// TraceLeaks makes every FD created from now on remember its creator's
// stack, and calls report for every FD the garbage collector finds
// unreachable but open (after closing it). report runs on the runtime's
// cleanup goroutine: it must be quick. The returned function stops the
// tracing. Meant for tests: a TestMain turns it on, runs the tests,
// forces a few collections (runtime.GC) and fails the run on any report
// (TestLeakIsReportedAndClosed shows the mechanics).
func TraceLeaks(report func(Leak)) (stop func()) {
	leakHook.Store(&report)
	return func() { leakHook.CompareAndSwap(&report, nil) }
}

func leaked(l leak) {
	unix.Close(l.raw)
	if h := leakHook.Load(); h != nil {
		(*h)(Leak{FD: l.raw, Stack: formatStack(l.stack)})
	}
}

func callers() []uintptr {
	pcs := make([]uintptr, 16)
	return pcs[:runtime.Callers(3, pcs)]
}

func formatStack(pcs []uintptr) string {
	if len(pcs) == 0 {
		return ""
	}
	var b strings.Builder
	frames := runtime.CallersFrames(pcs)
	for {
		fr, more := frames.Next()
		fmt.Fprintf(&b, "\t%s\n\t\t%s:%d\n", fr.Function, fr.File, fr.Line)
		if !more {
			break
		}
	}
	return b.String()
}
