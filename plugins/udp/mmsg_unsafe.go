package udp

// Everything in this package that needs unsafe: the kernel's message
// headers pointing into caller buffers, socket addresses written and read
// in the kernel's layout, and the raw system calls.
//
// The headers, I/O vectors and socket addresses are Go memory allocated
// once per Plugin; the kernel reads and writes them only during a system
// call, and the pointers in them are typed Go pointers, so the garbage
// collector keeps the buffers they point at alive. release drops those
// pointers after every batch, so the Plugin never keeps a caller's buffer
// alive.

import (
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/internal/wire"
)

// mmsgBatch is the preallocated argument of one sendmmsg(2) or recvmmsg(2)
// call: hdrs[i] points at iovs[i] and addrs[i] for good.
type mmsgBatch struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	addrs []unix.RawSockaddrInet6 // large enough for either family
	used  int                     // entries whose iovs point into caller buffers
}

func newMmsgBatch(n int) mmsgBatch {
	b := mmsgBatch{
		hdrs:  make([]unix.Mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		addrs: make([]unix.RawSockaddrInet6, n),
	}
	for i := range b.hdrs {
		h := &b.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&b.addrs[i]))
		h.Iov = &b.iovs[i]
		h.SetIovlen(1)
	}
	return b
}

// setIov points iov at buf[:n].
func setIov(iov *unix.Iovec, buf []byte, n int) {
	if n > 0 {
		iov.Base = &buf[0]
	} else {
		iov.Base = nil
	}
	iov.SetLen(n)
}

// fillSend prepares the leading packets of pkts for sendmmsg and returns
// how many it prepared; if it stopped early, bad says why pkts[k] cannot be
// sent.
func (b *mmsgBatch) fillSend(pkts []wire.Packet, v6 bool) (k int, bad error) {
	for i := range pkts {
		p := &pkts[i]
		if p.N < 0 || p.N > len(p.Buf) {
			return i, ErrLength
		}
		namelen := putSockaddr(&b.addrs[i], p.Addr, v6)
		if namelen == 0 {
			return i, ErrAddress
		}
		b.hdrs[i].Hdr.Namelen = namelen
		setIov(&b.iovs[i], p.Buf, p.N)
		b.used = max(b.used, i+1)
	}
	return len(pkts), nil
}

// fillRecv prepares one entry per packet for recvmmsg.
func (b *mmsgBatch) fillRecv(pkts []wire.Packet) {
	for i := range pkts {
		b.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		b.hdrs[i].Hdr.Flags = 0
		b.hdrs[i].Len = 0
		setIov(&b.iovs[i], pkts[i].Buf, len(pkts[i].Buf))
	}
	b.used = max(b.used, len(pkts))
}

// finishRecv copies the results of recvmmsg into pkts (the received
// ones), adds the bytes to *bytes and returns how many were truncated.
func (b *mmsgBatch) finishRecv(pkts []wire.Packet, bytes *uint64) (truncated int) {
	for i := range pkts {
		h := &b.hdrs[i]
		pkts[i].N = int(h.Len)
		pkts[i].Addr = getSockaddr(&b.addrs[i], h.Hdr.Namelen)
		*bytes += uint64(h.Len)
		if h.Hdr.Flags&unix.MSG_TRUNC != 0 {
			truncated++
		}
	}
	return truncated
}

// release drops the pointers into caller buffers.
func (b *mmsgBatch) release() {
	for i := range b.used {
		b.iovs[i].Base = nil
	}
	b.used = 0
}

// putSockaddr writes ap into sa in the layout of the socket's family and
// returns its length, or 0 when ap cannot be sent from such a socket.
func putSockaddr(sa *unix.RawSockaddrInet6, ap netip.AddrPort, v6 bool) uint32 {
	a := ap.Addr()
	if !a.IsValid() || a.Zone() != "" {
		return 0
	}
	if v6 {
		*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16()}
		putPort(&sa.Port, ap.Port())
		return unix.SizeofSockaddrInet6
	}
	a = a.Unmap()
	if !a.Is4() {
		return 0
	}
	sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
	*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: a.As4()}
	putPort(&sa4.Port, ap.Port())
	return unix.SizeofSockaddrInet4
}

// getSockaddr decodes the sender address the kernel wrote into sa,
// unmapping IPv4-mapped IPv6 addresses and dropping scope ids.
func getSockaddr(sa *unix.RawSockaddrInet6, namelen uint32) netip.AddrPort {
	switch {
	case sa.Family == unix.AF_INET6 && namelen >= unix.SizeofSockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), getPort(&sa.Port))
	case sa.Family == unix.AF_INET && namelen >= unix.SizeofSockaddrInet4:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), getPort(&sa4.Port))
	}
	return netip.AddrPort{}
}

// putPort and getPort access a port field in network byte order.
func putPort(p *uint16, port uint16) {
	b := (*[2]byte)(unsafe.Pointer(p))
	b[0], b[1] = byte(port>>8), byte(port)
}

func getPort(p *uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// sendmmsg sends hdrs (non-empty) without blocking and returns how many
// messages the kernel took, or 0 and the error.
func sendmmsg(fd int, hdrs []unix.Mmsghdr) (int, unix.Errno) {
	for {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&hdrs[0])), uintptr(len(hdrs)), unix.MSG_DONTWAIT, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(r), 0
	}
}

// recvmmsg receives into hdrs (non-empty) without blocking and returns
// how many messages it filled, or 0 and the error.
func recvmmsg(fd int, hdrs []unix.Mmsghdr) (int, unix.Errno) {
	r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&hdrs[0])), uintptr(len(hdrs)), unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), 0
}
