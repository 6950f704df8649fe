package xdp

import (
	"errors"
	"fmt"
)

// ErrUnavailable means AF_XDP cannot run on the interface asked for: it
// does not exist, the kernel lacks AF_XDP or the program type, the process
// lacks the capabilities (CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF), the
// driver refuses the attach mode or zero-copy, or another program holds
// the interface. New's error wraps it in an *UnavailableError that names
// the reason; the runtime falls back to kernel UDP with a visible warning.
var ErrUnavailable = errors.New("xdp: AF_XDP datapath unavailable")

// UnavailableError is New's error when XDP cannot attach: the interface,
// the step that failed and the system's error. errors.Is(err,
// ErrUnavailable) holds for it.
type UnavailableError struct {
	// Interface is the interface (and queue) asked for.
	Interface string
	// Reason is the step that failed ("find interface", "attach XDP
	// program", "bind xsk", ...).
	Reason string
	// Err is the underlying error (often an errno).
	Err error
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("xdp: unavailable on %s: %s: %v", e.Interface, e.Reason, e.Err)
}

// Is makes errors.Is(err, ErrUnavailable) true.
func (e *UnavailableError) Is(target error) bool { return target == ErrUnavailable }

// Unwrap returns the underlying error.
func (e *UnavailableError) Unwrap() error { return e.Err }

// Error is the type of the errors the batch methods return. Its values are
// constants, so returning one does not allocate; compare with == or
// errors.Is.
type Error uint8

// Errors returned by the batch methods.
const (
	// ErrClosed means the plugin is closed (or closing).
	ErrClosed Error = iota + 1
	// ErrUnresolved means a destination has no neighbour entry: the kernel
	// did not resolve it within Options.ResolveTimeout, or it is not on
	// the interface's prefix.
	ErrUnresolved
	// ErrTooLong means a datagram does not fit the interface's MTU (or a
	// UMEM frame).
	ErrTooLong
	// ErrAddress means a destination is not an IPv4 address.
	ErrAddress
	// ErrPolled means Poll or RecvBatch already runs: the receive side has
	// one user at a time.
	ErrPolled
)

var errorStrings = [...]string{
	ErrClosed:     "xdp: plugin closed",
	ErrUnresolved: "xdp: destination not resolved (no neighbour entry)",
	ErrTooLong:    "xdp: datagram too long for the interface",
	ErrAddress:    "xdp: destination is not an IPv4 address",
	ErrPolled:     "xdp: receive side in use by Poll or RecvBatch",
}

// Error implements the error interface.
func (e Error) Error() string {
	if int(e) < len(errorStrings) && errorStrings[e] != "" {
		return errorStrings[e]
	}
	return "xdp: unknown error"
}
