package vhostusertest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/veloce-io/veloce/vhostuser"
	"golang.org/x/sys/unix"
)

// This file and the other hostile*.go files are the attack kit of the
// hostile-frontend suite (integration/hostile): a vhost-user connection
// with no protocol discipline, file descriptors of every wrong kind, and
// a well-behaved frontend (NetPeer) that also knows how to misbehave.

// RawConn is a frontend's end of a vhost-user connection that sends
// whatever it is told: any header, any payload, any descriptors.
type RawConn struct {
	Conn *net.UnixConn
}

// DialRaw connects to a backend listening on path. The connection is
// closed when the test ends (closing it twice is harmless).
func DialRaw(tb testing.TB, path string) (*RawConn, error) {
	tb.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	tb.Cleanup(func() { c.Close() })
	return &RawConn{Conn: c}, nil
}

// Close closes the connection.
func (c *RawConn) Close() error { return c.Conn.Close() }

// Header encodes a message header with every field as given: no
// validation, so that it can lie.
func Header(req, flags, size uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, req)
	b = binary.LittleEndian.AppendUint32(b, flags)
	return binary.LittleEndian.AppendUint32(b, size)
}

// WriteRaw sends b in one sendmsg with fds as SCM_RIGHTS. The fds stay
// owned by the caller.
func (c *RawConn) WriteRaw(b []byte, fds ...int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	c.Conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, _, err := c.Conn.WriteMsgUnix(b, oob, nil)
	return err
}

// Send sends a well-framed request: flags are Version|extra, size is the
// payload's.
func (c *RawConn) Send(req vhostuser.Request, extra uint32, payload []byte, fds ...int) error {
	return c.WriteRaw(append(Header(uint32(req), vhostuser.Version|extra, uint32(len(payload))), payload...), fds...)
}

// ErrHangup is returned by ReadReply when the backend closed the
// connection (EOF or reset): it refused something.
var ErrHangup = errors.New("backend hung up")

// ErrNoReply is returned by ReadReply when nothing came within the
// timeout.
var ErrNoReply = errors.New("no reply within the timeout")

// ReadReply reads one reply within timeout. Descriptors that come with it
// are returned; the caller owns them.
func (c *RawConn) ReadReply(timeout time.Duration) (Reply, error) {
	c.Conn.SetReadDeadline(time.Now().Add(timeout))
	defer c.Conn.SetReadDeadline(time.Time{})
	hdr := make([]byte, vhostuser.HeaderSize)
	oob := make([]byte, unix.CmsgSpace(vhostuser.MaxFDs*4))
	var r Reply
	got := 0
	for got < len(hdr) {
		n, oobn, _, _, err := c.Conn.ReadMsgUnix(hdr[got:], oob)
		if oobn > 0 {
			if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for i := range msgs {
					if fds, err := unix.ParseUnixRights(&msgs[i]); err == nil {
						r.FDs = append(r.FDs, fds...)
					}
				}
			}
		}
		got += n
		if err != nil {
			return r, classify(err)
		}
		if n == 0 {
			return r, ErrHangup
		}
	}
	r.Header = vhostuser.Header{
		Request: vhostuser.Request(binary.LittleEndian.Uint32(hdr)),
		Flags:   binary.LittleEndian.Uint32(hdr[4:]),
		Size:    binary.LittleEndian.Uint32(hdr[8:]),
	}
	if r.Header.Size > vhostuser.MaxPayloadSize {
		return r, fmt.Errorf("reply %v: size %d", r.Header.Request, r.Header.Size)
	}
	r.Payload = make([]byte, r.Header.Size)
	if _, err := io.ReadFull(c.Conn, r.Payload); err != nil {
		return r, classify(err)
	}
	return r, nil
}

func classify(err error) error {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return ErrNoReply
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return ErrHangup
	}
	return err
}

// Outcome is what a backend did with a request that asked for an answer.
type Outcome int

const (
	// Acked: REPLY_ACK with status 0 (or a reply body): accepted.
	Acked Outcome = iota
	// Nacked: REPLY_ACK with a non-zero status: refused, connection kept.
	Nacked
	// HungUp: the backend closed the connection: refused.
	HungUp
	// Silent: nothing within the timeout.
	Silent
)

func (o Outcome) String() string {
	return [...]string{"accepted", "nacked", "hung up", "silent"}[o]
}

// Refused reports whether the backend refused the request either way.
func (o Outcome) Refused() bool { return o == Nacked || o == HungUp }

// Ask sends a request with NEED_REPLY (REPLY_ACK must have been
// negotiated) and says what the backend did, waiting at most timeout.
func (c *RawConn) Ask(req vhostuser.Request, payload []byte, timeout time.Duration, fds ...int) (Outcome, error) {
	if err := c.Send(req, vhostuser.FlagNeedReply, payload, fds...); err != nil {
		if errors.Is(classify(err), ErrHangup) {
			return HungUp, nil
		}
		return Silent, err
	}
	return c.Await(timeout)
}

// Await reads one reply and classifies it as Ask does.
func (c *RawConn) Await(timeout time.Duration) (Outcome, error) {
	r, err := c.ReadReply(timeout)
	for _, fd := range r.FDs {
		unix.Close(fd)
	}
	switch {
	case errors.Is(err, ErrHangup):
		return HungUp, nil
	case errors.Is(err, ErrNoReply):
		return Silent, nil
	case err != nil:
		return Silent, err
	}
	if len(r.Payload) == 8 && !r.Header.Request.HasReply() && binary.LittleEndian.Uint64(r.Payload) != 0 {
		return Nacked, nil
	}
	return Acked, nil
}

// WaitHangup reads and discards replies until the backend closes the
// connection (true) or timeout passes (false).
func (c *RawConn) WaitHangup(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		_, err := c.ReadReply(left)
		switch {
		case errors.Is(err, ErrHangup):
			return true
		case errors.Is(err, ErrNoReply):
			return false
		case err != nil:
			return true
		}
	}
}

// Responsive reports whether GET_FEATURES is answered within timeout: the
// backend still serves this connection.
func (c *RawConn) Responsive(timeout time.Duration) bool {
	if err := c.Send(vhostuser.GetFeatures, 0, nil); err != nil {
		return false
	}
	r, err := c.ReadReply(timeout)
	return err == nil && r.Header.Request == vhostuser.GetFeatures
}

// Wrong kinds of file descriptors. Each is closed when the test ends.

// Eventfd returns a non-blocking eventfd, the right kind for kick and call.
func Eventfd(tb testing.TB) int {
	tb.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		tb.Fatalf("eventfd: %v", err)
	}
	tb.Cleanup(func() { unix.Close(fd) })
	return fd
}

// Pipe returns the two ends of a pipe.
func Pipe(tb testing.TB) (r, w int) {
	tb.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		tb.Fatalf("pipe: %v", err)
	}
	tb.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	return p[0], p[1]
}

// SocketFD returns one end of a stream socketpair whose other end stays
// open (and unread) until the test ends: reads block, writes fill up.
func SocketFD(tb testing.TB) int {
	tb.Helper()
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatalf("socketpair: %v", err)
	}
	tb.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	return p[0]
}

// SocketPair returns both ends of a stream socketpair.
func SocketPair(tb testing.TB) (a, b int) {
	tb.Helper()
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatalf("socketpair: %v", err)
	}
	tb.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	return p[0], p[1]
}

// RegularFile returns a read-write descriptor of a regular file of size
// bytes in a temporary directory.
func RegularFile(tb testing.TB, size int64) int {
	tb.Helper()
	f, err := os.Create(filepath.Join(tb.TempDir(), "regular"))
	if err != nil {
		tb.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		tb.Fatal(err)
	}
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(fd) })
	return fd
}

// DevZero returns a descriptor of /dev/zero: always readable, never
// empty.
func DevZero(tb testing.TB) int {
	tb.Helper()
	fd, err := unix.Open("/dev/zero", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		tb.Fatalf("open /dev/zero: %v", err)
	}
	tb.Cleanup(func() { unix.Close(fd) })
	return fd
}

// Memfd returns an unsealed memfd of size bytes: its owner may shrink it
// while a backend has it mapped.
func Memfd(tb testing.TB, size int64) int {
	tb.Helper()
	fd, err := unix.MemfdCreate("vhostusertest-hostile", unix.MFD_CLOEXEC)
	if err != nil {
		tb.Fatalf("memfd_create: %v", err)
	}
	tb.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, size); err != nil {
		tb.Fatalf("ftruncate memfd: %v", err)
	}
	return fd
}

// Kick writes 1 to an eventfd (or 8 bytes to whatever fd is).
func Kick(fd int) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], 1)
	_, err := unix.Write(fd, b[:])
	return err
}

// MemTablePayload encodes a SET_MEM_TABLE payload for regions, with the
// region count given separately so that it can lie.
func MemTablePayload(count uint32, regions ...vhostuser.MemoryRegion) []byte {
	b := binary.LittleEndian.AppendUint32(nil, count)
	b = binary.LittleEndian.AppendUint32(b, 0)
	for _, r := range regions {
		b = appendRegionRaw(b, r)
	}
	return b
}

// MemRegPayload encodes an ADD_MEM_REG / REM_MEM_REG payload.
func MemRegPayload(r vhostuser.MemoryRegion) []byte {
	return appendRegionRaw(make([]byte, 8), r)
}

func appendRegionRaw(b []byte, r vhostuser.MemoryRegion) []byte {
	le := binary.LittleEndian
	b = le.AppendUint64(b, r.GuestAddr)
	b = le.AppendUint64(b, r.Size)
	b = le.AppendUint64(b, r.UserAddr)
	return le.AppendUint64(b, r.MmapOffset)
}
