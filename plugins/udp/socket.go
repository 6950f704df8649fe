package udp

import (
	"fmt"
	"log/slog"
	"net/netip"

	"golang.org/x/sys/unix"
)

// openSocket returns a non-blocking UDP socket bound to addr (unmapped,
// unzoned) with the buffer sizes opts ask for.
func openSocket(addr netip.AddrPort, opts Options, log *slog.Logger) (int, error) {
	family := unix.AF_INET
	if addr.Addr().Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, fmt.Errorf("create socket: %w", err)
	}
	if err := setupSocket(fd, addr, opts, log); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func setupSocket(fd int, addr netip.AddrPort, opts Options, log *slog.Logger) error {
	var sa unix.Sockaddr
	if addr.Addr().Is6() {
		if addr.Addr().IsUnspecified() {
			// Dual stack whatever net.ipv6.bindv6only says.
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
				return fmt.Errorf("set IPV6_V6ONLY: %w", err)
			}
		}
		sa = &unix.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16()}
	} else {
		sa = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}
	}
	if err := setBuffer(fd, "receive", unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, opts.RecvBuffer, log); err != nil {
		return err
	}
	if err := setBuffer(fd, "send", unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, opts.SendBuffer, log); err != nil {
		return err
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fmt.Errorf("bind %s: %w", addr, err)
	}
	return nil
}

// setBuffer sets a socket buffer size: with the FORCE option when the
// process may (CAP_NET_ADMIN), else the plain one, which the kernel caps
// at its sysctl maximum. It warns when the kernel granted less.
func setBuffer(fd int, what string, force, plain, size int, log *slog.Logger) error {
	switch {
	case size < 0:
		return nil
	case size == 0:
		size = DefaultSocketBuffer
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, size); err != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, plain, size); err != nil {
			return fmt.Errorf("set %s buffer: %w", what, err)
		}
	}
	// The kernel reports twice the size asked for (bookkeeping overhead).
	got, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, plain)
	if err != nil {
		return fmt.Errorf("get %s buffer: %w", what, err)
	}
	if got/2 < size {
		log.Warn("udp socket buffer smaller than requested (raise net.core.rmem_max/wmem_max or grant CAP_NET_ADMIN)",
			"buffer", what, "requested", size, "granted", got/2)
	}
	return nil
}

// localAddr returns the address the socket is bound to.
func localAddr(fd int) (netip.AddrPort, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("get socket name: %w", err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), nil
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)), nil
	}
	return netip.AddrPort{}, fmt.Errorf("get socket name: unexpected address %T", sa)
}
