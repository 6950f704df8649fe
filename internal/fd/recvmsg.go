package fd

import (
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// RecvMsg reads one message from c (a unix socket) with recvmsg(2): data
// into b, ancillary data into oob. The descriptors that came with it
// (SCM_RIGHTS, received close-on-exec) are appended to fds as owners,
// which the caller then holds. RecvMsg waits in the Go netpoller and honours c's read deadline.
//
// On error, the descriptors this call received are closed and fds is
// returned as it came; n still says how many bytes were read.
//
// Errors: io.EOF when the peer closed (nothing read, no descriptors; on a
// datagram socket an empty datagram reads the same), ErrTruncated (more ancillary data than oob holds), ErrBadControl,
// or the socket's.
func RecvMsg(c syscall.Conn, b, oob []byte, fds []*FD) (n int, _ []*FD, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, fds, fmt.Errorf("receive message: %w", err)
	}
	var oobn, flags int
	var rerr error
	err = rc.Read(func(s uintptr) bool {
		for {
			n, oobn, flags, _, rerr = unix.Recvmsg(int(s), b, oob, cmsgCloexec)
			if rerr != unix.EINTR {
				return rerr != unix.EAGAIN
			}
		}
	})
	if err == nil && rerr != nil {
		err = fmt.Errorf("receive message: %w", os.NewSyscallError("recvmsg", rerr))
	}
	if err == nil && n == 0 && oobn == 0 && len(b) > 0 {
		err = io.EOF // as net.UnixConn reads: the peer closed
	}
	if n < 0 {
		n = 0
	}
	keep := len(fds)
	if oobn > 0 {
		var perr error
		fds, perr = appendRights(fds, oob[:oobn])
		if perr != nil && err == nil {
			err = perr
		}
	}
	if flags&unix.MSG_CTRUNC != 0 && err == nil {
		err = fmt.Errorf("receive message: %d bytes of control buffer: %w", len(oob), ErrTruncated)
	}
	if err != nil {
		for _, f := range fds[keep:] {
			f.Close()
		}
		return n, fds[:keep], err
	}
	return n, fds, nil
}

// appendRights appends owners for every descriptor in the SCM_RIGHTS
// messages of oob; other control messages are skipped. On a parse error
// the descriptors already found are returned, for the caller to close.
func appendRights(fds []*FD, oob []byte) ([]*FD, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return fds, fmt.Errorf("receive message: %v: %w", err, ErrBadControl)
	}
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		raws, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			return fds, fmt.Errorf("receive message: %v: %w", err, ErrBadControl)
		}
		for _, raw := range raws {
			f, _ := New(raw) // raw >= 0: from the kernel
			fds = append(fds, f)
		}
	}
	return fds, nil
}
