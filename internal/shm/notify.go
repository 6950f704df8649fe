package shm

import (
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Notifier is an eventfd one side signals and the other waits on, read
// through the Go netpoller (a waiting goroutine holds no thread).
//
// Ownership: a Notifier owns its file descriptor; Close releases it and
// wakes a Wait in progress. Signal and Close are safe for concurrent use
// (Signal after Close does nothing); Wait has one caller at a time.
type Notifier struct {
	f     *os.File
	raw   syscall.RawConn // f's, for Signal's write that never waits
	write func(fd uintptr) bool
	fd    int // the raw descriptor, valid while f is open (for FD)
	one   [8]byte
	buf   [8]byte
}

// NewNotifier creates an eventfd.
//
// Errors: ErrNotSupported (not Linux), or eventfd(2)'s.
func NewNotifier() (*Notifier, error) {
	fd, err := newEventfd()
	if err != nil {
		return nil, fmt.Errorf("create notifier: %w", err)
	}
	return newNotifier(fd), nil
}

// NotifierFromFD wraps an eventfd received from the other side; it takes
// ownership of fd, also on error.
//
// Errors: ErrBadRegion (not an eventfd), ErrNotSupported (not Linux).
func NotifierFromFD(fd int) (*Notifier, error) {
	if err := checkEventfd(fd); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open notifier: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open notifier: %w", err)
	}
	return newNotifier(fd), nil
}

func newNotifier(fd int) *Notifier {
	n := &Notifier{f: os.NewFile(uintptr(fd), "eventfd"), fd: fd}
	n.one[0] = 1
	n.raw, _ = n.f.SyscallConn()
	n.write = n.writeOnce // a method value made once: Signal allocates nothing
	return n
}

// FD returns the eventfd, to pass to the other side. It is valid until
// Close.
func (n *Notifier) FD() int { return n.fd }

// Signal wakes the waiter: one write(2) that never waits. The other side
// holds the same eventfd and may have filled its counter (a hostile
// application can): the write then fails with EAGAIN, which is fine — a
// full counter already reads as signalled — whereas waiting for the fd
// to become writable would block whoever signals (another client's
// delivery, a VM's poller) for good.
func (n *Notifier) Signal() {
	if n.raw != nil {
		n.raw.Write(n.write)
	}
}

func (n *Notifier) writeOnce(fd uintptr) bool {
	unix.Write(int(fd), n.one[:])
	return true // done, whatever write said: never park in the poller
}

// Wait blocks until the notifier was signalled at least once since the
// last Wait returned. It returns an error once the Notifier is closed.
func (n *Notifier) Wait() error {
	_, err := n.f.Read(n.buf[:])
	return err
}

// Close releases the eventfd.
func (n *Notifier) Close() error { return n.f.Close() }

// ReadMsg reads one message from c (a SOCK_SEQPACKET connection) into b
// and returns the descriptors that came with it (SCM_RIGHTS), which the
// caller then owns. Descriptors that did not fit oob are closed by the
// kernel and reported as an error.
func ReadMsg(c *net.UnixConn, b, oob []byte) (n int, fds []int, err error) {
	n, oobn, flags, _, err := c.ReadMsgUnix(b, oob)
	if err != nil {
		return 0, nil, err
	}
	if oobn > 0 {
		msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr == nil {
			for _, m := range msgs {
				if f, err := unix.ParseUnixRights(&m); err == nil {
					fds = append(fds, f...)
				}
			}
		}
	}
	if flags&unix.MSG_CTRUNC != 0 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return n, nil, fmt.Errorf("read message: descriptors truncated: %w", ErrBadRegion)
	}
	return n, fds, nil
}

// CloseFDs closes descriptors the caller does not want.
func CloseFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
