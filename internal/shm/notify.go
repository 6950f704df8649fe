package shm

import (
	"errors"
	"fmt"
	"net"

	"github.com/veloce-io/veloce/internal/fd"
	"golang.org/x/sys/unix"
)

// Notifier is an eventfd one side signals and the other waits on, read
// through the Go netpoller (a waiting goroutine holds no thread). It is a
// thin face on internal/fd's EventFD.
//
// Ownership: a Notifier owns its file descriptor; Close releases it and
// wakes a Wait in progress. Signal and Close are safe for concurrent use
// (Signal after Close does nothing); Wait has one caller at a time.
type Notifier struct {
	ev *fd.EventFD
}

// NewNotifier creates an eventfd.
//
// Errors: ErrNotSupported (not Linux), or eventfd(2)'s.
func NewNotifier() (*Notifier, error) {
	ev, err := fd.NewEventFD()
	if err != nil {
		return nil, fmt.Errorf("create notifier: %w", mapErr(err))
	}
	return &Notifier{ev: ev}, nil
}

// NotifierFromFD wraps an eventfd received from the other side; it takes
// ownership of raw, also on error.
//
// Errors: ErrBadRegion (not an eventfd), ErrNotSupported (not Linux).
func NotifierFromFD(raw int) (*Notifier, error) {
	f, err := fd.New(raw)
	if err != nil {
		return nil, fmt.Errorf("open notifier: %w: %w", ErrBadRegion, err)
	}
	ev, err := fd.NewEventFDFrom(f)
	if err != nil {
		return nil, fmt.Errorf("open notifier: %w", mapErr(err))
	}
	return &Notifier{ev: ev}, nil
}

// mapErr adds this package's sentinels to internal/fd's errors.
func mapErr(err error) error {
	switch {
	case errors.Is(err, fd.ErrNotSupported):
		return fmt.Errorf("%w: %w", ErrNotSupported, err)
	case errors.Is(err, fd.ErrNotEventFD), errors.Is(err, fd.ErrTruncated), errors.Is(err, fd.ErrBadControl):
		return fmt.Errorf("%w: %w", ErrBadRegion, err)
	}
	return err
}

// FD returns the eventfd, to pass to the other side. It is valid until
// Close.
func (n *Notifier) FD() int { return n.ev.Int() }

// Signal wakes the waiter: one write(2) that never waits. The other side
// holds the same eventfd and may have filled its counter (a hostile
// application can): the write then fails with EAGAIN, which is fine — a
// full counter already reads as signalled — whereas waiting for the fd
// to become writable would block whoever signals (another client's
// delivery, a VM's poller) for good.
func (n *Notifier) Signal() { n.ev.Signal() }

// Wait blocks until the notifier was signalled at least once since the
// last Wait returned. It returns an error once the Notifier is closed.
func (n *Notifier) Wait() error { return n.ev.Wait() }

// Close releases the eventfd.
func (n *Notifier) Close() error { return n.ev.Close() }

// ReadMsg reads one message from c (a SOCK_SEQPACKET connection) into b
// and returns the descriptors that came with it (SCM_RIGHTS, received
// close-on-exec), which the caller then owns. Descriptors that did not
// fit oob are closed (by the kernel, and the others by ReadMsg) and
// reported as an error matching ErrBadRegion.
func ReadMsg(c *net.UnixConn, b, oob []byte) (n int, fds []int, err error) {
	n, owned, err := fd.RecvMsg(c, b, oob, nil)
	if err != nil {
		if errors.Is(err, fd.ErrTruncated) || errors.Is(err, fd.ErrBadControl) {
			return n, nil, fmt.Errorf("read message: descriptors truncated: %w", mapErr(err))
		}
		return 0, nil, err
	}
	for _, f := range owned {
		fds = append(fds, f.Disown())
	}
	return n, fds, nil
}

// CloseFDs closes descriptors the caller does not want.
func CloseFDs(fds []int) {
	for _, raw := range fds {
		unix.Close(raw)
	}
}
