package vhostusertest

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"golang.org/x/sys/unix"
)

// Frontend is a fake vhost-user frontend: it sends requests, with file
// descriptors, and reads the backend's replies.
type Frontend struct {
	Conn *net.UnixConn // the frontend's end of the socket
}

// NewPair returns the backend end of a connected unix socket pair and a
// Frontend on the other end. Both are closed when the test ends.
func NewPair(tb testing.TB) (*net.UnixConn, *Frontend) {
	tb.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatalf("socketpair: %v", err)
	}
	be := fileConn(tb, fds[0], "backend")
	fe := fileConn(tb, fds[1], "frontend")
	return be, &Frontend{Conn: fe}
}

func fileConn(tb testing.TB, fd int, name string) *net.UnixConn {
	tb.Helper()
	f := os.NewFile(uintptr(fd), name)
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		tb.Fatalf("FileConn: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return c.(*net.UnixConn)
}

// Send sends a request with flags Version|extraFlags. The fds stay owned
// by the caller.
func (f *Frontend) Send(req vhostuser.Request, extraFlags uint32, payload []byte, fds ...int) error {
	return vhostuser.WriteMessage(f.Conn, uint32(req), vhostuser.Version|extraFlags, payload, fds)
}

// SendRaw writes b as is, with fds as SCM_RIGHTS, for malformed messages.
func (f *Frontend) SendRaw(b []byte, fds ...int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err := f.Conn.WriteMsgUnix(b, oob, nil)
	return err
}

// Reply is a reply read by the Frontend.
type Reply struct {
	Header  vhostuser.Header // the reply header
	Payload []byte           // Header.Size bytes
	FDs     []int            // received descriptors, owned by the caller
}

// U64 decodes a u64 reply payload.
func (r Reply) U64() (uint64, error) {
	if len(r.Payload) != 8 {
		return 0, fmt.Errorf("reply %v: %d-byte payload, want 8", r.Header.Request, len(r.Payload))
	}
	return binary.LittleEndian.Uint64(r.Payload), nil
}

// ReadReply reads one reply and checks its flags.
func (f *Frontend) ReadReply() (Reply, error) {
	hdr := make([]byte, vhostuser.HeaderSize)
	oob := make([]byte, unix.CmsgSpace(vhostuser.MaxFDs*4))
	n, oobn, _, _, err := f.Conn.ReadMsgUnix(hdr, oob)
	if err != nil {
		return Reply{}, err
	}
	if n != len(hdr) {
		return Reply{}, fmt.Errorf("short reply header: %d bytes", n)
	}
	var r Reply
	r.Header = vhostuser.Header{
		Request: vhostuser.Request(binary.LittleEndian.Uint32(hdr)),
		Flags:   binary.LittleEndian.Uint32(hdr[4:]),
		Size:    binary.LittleEndian.Uint32(hdr[8:]),
	}
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return Reply{}, err
		}
		for i := range msgs {
			if fds, err := unix.ParseUnixRights(&msgs[i]); err == nil {
				r.FDs = append(r.FDs, fds...)
			}
		}
	}
	if r.Header.Flags != vhostuser.Version|vhostuser.FlagReply {
		return r, fmt.Errorf("reply %v: flags %#x, want %#x", r.Header.Request, r.Header.Flags, vhostuser.Version|vhostuser.FlagReply)
	}
	if r.Header.Size > vhostuser.MaxPayloadSize {
		return r, fmt.Errorf("reply %v: size %d", r.Header.Request, r.Header.Size)
	}
	r.Payload = make([]byte, r.Header.Size)
	for got := 0; got < len(r.Payload); {
		n, err := f.Conn.Read(r.Payload[got:])
		if err != nil {
			return r, err
		}
		got += n
	}
	return r, nil
}
