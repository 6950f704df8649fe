package fd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
)

// EventFD is an eventfd: a 64-bit counter one side signals and the other
// waits on. vhost-user's kick, call and err descriptors are eventfds, and
// so are internal/shm's notifiers.
//
// Ownership: an EventFD owns its descriptor (and, once Wait was called, a
// duplicate registered with the Go netpoller); Close releases both and
// wakes a Wait in progress. Signal, Drain and Close are safe for
// concurrent use (after Close, Signal and Drain do nothing); Wait has one
// caller at a time.
type EventFD struct {
	fd *FD

	mu sync.Mutex
	// file is a duplicate for Wait, through the netpoller; nil until the
	// first Wait.
	file   *os.File // +checklocks:mu
	closed bool     // +checklocks:mu
	buf    [8]byte  // Wait's read buffer
}

// one is an eventfd increment of 1 (counters are host-endian).
var one = func() (b [8]byte) {
	binary.NativeEndian.PutUint64(b[:], 1)
	return b
}()

// NewEventFD creates an eventfd, close-on-exec and non-blocking.
//
// Errors: ErrNotSupported (not Linux), or eventfd(2)'s.
func NewEventFD() (*EventFD, error) {
	raw, err := newEventFD()
	if err != nil {
		return nil, fmt.Errorf("create eventfd: %w", err)
	}
	f, err := New(raw)
	if err != nil {
		return nil, fmt.Errorf("create eventfd: %w", err)
	}
	return &EventFD{fd: f}, nil
}

// NewEventFDFrom adopts f, which must be an eventfd (one received from a
// peer), and makes it non-blocking. It takes ownership of f, also on
// error (f is closed then).
//
// Errors: a *NotEventFDError (matching ErrNotEventFD), ErrClosed, or
// fcntl(2)'s.
func NewEventFDFrom(f *FD) (*EventFD, error) {
	raw := f.Int()
	if raw < 0 {
		return nil, fmt.Errorf("adopt eventfd: %w", ErrClosed)
	}
	if err := CheckEventFD(raw); err != nil {
		f.Close()
		return nil, fmt.Errorf("adopt eventfd: %w", err)
	}
	if err := setNonblock(raw); err != nil {
		f.Close()
		return nil, fmt.Errorf("adopt eventfd %d: %w", raw, err)
	}
	return &EventFD{fd: f}, nil
}

// FD returns the owner of the eventfd, which stays owned by e (to pass the
// number to a peer, or poll it).
func (e *EventFD) FD() *FD {
	if e == nil {
		return nil
	}
	return e.fd
}

// Int returns the descriptor number, -1 once closed or for a nil EventFD.
func (e *EventFD) Int() int { return e.FD().Int() }

// Signal adds 1 to the counter: one write(2) that never waits. A counter
// the other side filled (a hostile peer can) fails the write with EAGAIN,
// which is fine: a full counter already reads as signalled. Signal on a
// nil or closed EventFD does nothing. It does not allocate.
func (e *EventFD) Signal() {
	if e == nil {
		return
	}
	raw, ok := e.fd.acquire()
	if !ok {
		return
	}
	write(raw, one[:])
	e.fd.release()
}

// Drain resets the counter without waiting and reports whether it was
// non-zero. It does not allocate.
func (e *EventFD) Drain() bool {
	if e == nil {
		return false
	}
	raw, ok := e.fd.acquire()
	if !ok {
		return false
	}
	var b [8]byte
	n := read(raw, b[:])
	e.fd.release()
	return n == len(b)
}

// Wait blocks the calling goroutine (not its thread: it parks in the Go
// netpoller) until the counter is non-zero, and resets it.
//
// Errors: ErrClosed once Close was called, also for a Wait in progress.
func (e *EventFD) Wait() error {
	f, err := e.waitFile()
	if err != nil {
		return err
	}
	if _, err := f.Read(e.buf[:]); err != nil {
		if errors.Is(err, os.ErrClosed) {
			return fmt.Errorf("wait eventfd: %w", ErrClosed)
		}
		return fmt.Errorf("wait eventfd: %w", err)
	}
	return nil
}

func (e *EventFD) waitFile() (*os.File, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, fmt.Errorf("wait eventfd: %w", ErrClosed)
	}
	if e.file == nil {
		d, err := e.fd.Dup()
		if err != nil {
			return nil, fmt.Errorf("wait eventfd: %w", err)
		}
		// The duplicate shares the non-blocking file description, so
		// os.NewFile registers it with the netpoller.
		e.file = os.NewFile(uintptr(d.Disown()), "eventfd")
	}
	return e.file, nil
}

// Close releases the eventfd and wakes a Wait in progress. It is
// idempotent.
func (e *EventFD) Close() error {
	if e == nil {
		return nil
	}
	e.mu.Lock()
	e.closed = true
	f := e.file
	e.file = nil
	e.mu.Unlock()
	if f != nil {
		f.Close()
	}
	return e.fd.Close()
}

// NotEventFDError reports a descriptor that should have been an eventfd.
// It matches ErrNotEventFD.
type NotEventFDError struct {
	FD   int    // the descriptor number
	Kind string // what it is instead: "socket:[1234]", "pipe:[5678]", a path
}

func (e *NotEventFDError) Error() string {
	return fmt.Sprintf("fd %d is %s, not an eventfd", e.FD, e.Kind)
}

// Is reports whether target is ErrNotEventFD.
func (e *NotEventFDError) Is(target error) bool { return target == ErrNotEventFD }

// IsEventFD reports whether raw is an eventfd. err is non-nil when that
// cannot be told (a closed descriptor, no eventfds on this system).
func IsEventFD(raw int) (bool, error) {
	kind, err := kindOf(raw)
	if err != nil {
		return false, err
	}
	return kind == eventFDKind, nil
}

// CheckEventFD returns nil if raw is an eventfd, a *NotEventFDError if it
// is something else, and the reason otherwise.
func CheckEventFD(raw int) error {
	kind, err := kindOf(raw)
	if err != nil {
		return fmt.Errorf("check fd %d: %w", raw, err)
	}
	if kind != eventFDKind {
		return &NotEventFDError{FD: raw, Kind: kind}
	}
	return nil
}
