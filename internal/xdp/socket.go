package xdp

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// BindMode chooses between copy and zero-copy.
type BindMode uint8

// Bind modes.
const (
	// BindAuto lets the kernel pick: zero-copy when the driver supports
	// it, copy otherwise (Socket.ZeroCopy says which it got).
	BindAuto BindMode = iota
	// BindCopy forces copy mode (XDP_COPY): works on every interface with
	// an XDP program, generic or native.
	BindCopy
	// BindZeroCopy forces zero-copy (XDP_ZEROCOPY); binding fails where
	// the driver cannot (veth, generic XDP).
	BindZeroCopy
)

func (m BindMode) String() string {
	switch m {
	case BindCopy:
		return "copy"
	case BindZeroCopy:
		return "zero-copy"
	}
	return "auto"
}

// BindBusyWait is how long OpenSocket retries a bind that fails with
// EBUSY (the queue's previous socket is still being released).
const BindBusyWait = time.Second

// SocketConfig describes a Socket.
type SocketConfig struct {
	// Ifindex and Queue are the interface and RX/TX queue to bind to.
	Ifindex, Queue int
	// Frames is the number of UMEM frames, a power of two; half go to the
	// fill ring for receiving, half are transmit buffers. The four rings
	// have Frames/2 entries each.
	Frames int
	// FrameSize is a frame's size: a power of two from 2048 to the page
	// size.
	FrameSize int
	// Mode is copy, zero-copy or the kernel's choice.
	Mode BindMode
}

// Socket is an AF_XDP socket bound with XDP_USE_NEED_WAKEUP to one queue,
// with its own UMEM. It owns the socket's descriptor and every mapping,
// which Close releases.
type Socket struct {
	fd        int
	umem      []byte
	frameSize uint64
	zeroCopy  bool
	fill, tx  prodRing
	rx, comp  consRing
	maps      [][]byte // ring mappings, for Close
}

// OpenSocket creates, configures and binds the socket. Errors name the
// step that failed and wrap the errno (EPERM without CAP_NET_RAW,
// EAFNOSUPPORT without AF_XDP in the kernel, EOPNOTSUPP for zero-copy on
// a driver without it, EBUSY for a queue another socket holds).
func OpenSocket(cfg SocketConfig) (_ *Socket, err error) {
	if cfg.Frames < 4 || cfg.Frames&(cfg.Frames-1) != 0 {
		return nil, fmt.Errorf("open xsk: %d frames is not a power of two of at least 4", cfg.Frames)
	}
	if cfg.FrameSize < 2048 || cfg.FrameSize > unix.Getpagesize() || cfg.FrameSize&(cfg.FrameSize-1) != 0 {
		return nil, fmt.Errorf("open xsk: frame size %d is not a power of two from 2048 to the page size", cfg.FrameSize)
	}
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("create AF_XDP socket: %w", err)
	}
	s := &Socket{fd: fd, frameSize: uint64(cfg.FrameSize)}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	s.umem, err = unix.Mmap(-1, 0, cfg.Frames*cfg.FrameSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("map UMEM of %d frames: %w", cfg.Frames, err)
	}
	if err := registerUMEM(fd, s.umem, cfg.FrameSize); err != nil {
		return nil, fmt.Errorf("register UMEM: %w", err)
	}
	n := cfg.Frames / 2
	for _, o := range []struct {
		opt  int
		name string
	}{{unix.XDP_UMEM_FILL_RING, "fill"}, {unix.XDP_UMEM_COMPLETION_RING, "completion"}, {unix.XDP_RX_RING, "RX"}, {unix.XDP_TX_RING, "TX"}} {
		if err := unix.SetsockoptInt(fd, unix.SOL_XDP, o.opt, n); err != nil {
			return nil, fmt.Errorf("size %s ring: %w", o.name, err)
		}
	}
	if err := s.mapRings(uint32(n)); err != nil {
		return nil, err
	}
	flags := uint16(unix.XDP_USE_NEED_WAKEUP)
	switch cfg.Mode {
	case BindCopy:
		flags |= unix.XDP_COPY
	case BindZeroCopy:
		flags |= unix.XDP_ZEROCOPY
	}
	sa := &unix.SockaddrXDP{Flags: flags, Ifindex: uint32(cfg.Ifindex), QueueID: uint32(cfg.Queue)}
	// A socket closed a moment ago keeps its queue until the kernel's
	// deferred release of its buffer pool runs (a work queue): a daemon
	// restarted at once, or a plugin reopened, would get EBUSY. Retry for
	// up to BindBusyWait before calling the queue taken.
	err = unix.Bind(fd, sa)
	for deadline := time.Now().Add(BindBusyWait); errors.Is(err, unix.EBUSY) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		err = unix.Bind(fd, sa)
	}
	if err != nil {
		return nil, fmt.Errorf("bind xsk to ifindex %d queue %d (%s): %w", cfg.Ifindex, cfg.Queue, cfg.Mode, err)
	}
	opts, err := xdpOptions(fd)
	if err != nil {
		return nil, fmt.Errorf("read xsk options: %w", err)
	}
	s.zeroCopy = opts&unix.XDP_OPTIONS_ZEROCOPY != 0
	return s, nil
}

// FD returns the socket's descriptor (for the XSKMAP and poll(2)); it
// stays owned by the Socket.
func (s *Socket) FD() int { return s.fd }

// ZeroCopy reports whether the socket runs in zero-copy mode.
func (s *Socket) ZeroCopy() bool { return s.zeroCopy }

// FrameSize returns the size of one UMEM frame.
func (s *Socket) FrameSize() int { return int(s.frameSize) }

// Frames returns the number of UMEM frames.
func (s *Socket) Frames() int { return len(s.umem) / int(s.frameSize) }

// Frame returns the whole frame that holds UMEM address addr.
func (s *Socket) Frame(addr uint64) []byte {
	base := addr &^ (s.frameSize - 1)
	return s.umem[base : base+s.frameSize : base+s.frameSize]
}

// Data returns len bytes of UMEM at addr (a received descriptor's).
func (s *Socket) Data(addr uint64, n uint32) []byte {
	end := addr + uint64(n)
	if end > (addr&^(s.frameSize-1))+s.frameSize {
		end = (addr &^ (s.frameSize - 1)) + s.frameSize
	}
	return s.umem[addr:end:end]
}

// Base returns the address of the start of addr's frame.
func (s *Socket) Base(addr uint64) uint64 { return addr &^ (s.frameSize - 1) }

// Receive takes up to len(descs) descriptors off the RX ring. The frames
// stay the caller's until it gives them back with Fill.
func (s *Socket) Receive(descs []unix.XDPDesc) int {
	n := s.rx.peek(uint32(len(descs)))
	for i := range n {
		descs[i] = s.rx.descs[(s.rx.cachedCons+i)&s.rx.mask]
	}
	s.rx.release(n)
	return int(n)
}

// RxEmpty reports whether the RX ring has nothing for Receive.
func (s *Socket) RxEmpty() bool { return s.rx.peek(1) == 0 }

// Fill puts frame addresses on the fill ring for the kernel to receive
// into and returns how many it took.
func (s *Socket) Fill(addrs []uint64) int {
	n := s.fill.reserve(uint32(len(addrs)))
	for i := range n {
		s.fill.addrs[(s.fill.cachedProd+i)&s.fill.mask] = addrs[i]
	}
	s.fill.submit(n)
	return int(n)
}

// FillNeedsWakeup reports whether the driver waits for a system call to
// look at the fill ring again (it ran empty).
func (s *Socket) FillNeedsWakeup() bool { return s.fill.needWakeup() }

// Transmit puts descriptors on the TX ring and returns how many it took
// (fewer when the ring is full). Kick then, when TxNeedsWakeup says so.
func (s *Socket) Transmit(descs []unix.XDPDesc) int {
	n := s.tx.reserve(uint32(len(descs)))
	for i := range n {
		s.tx.descs[(s.tx.cachedProd+i)&s.tx.mask] = descs[i]
	}
	s.tx.submit(n)
	return int(n)
}

// TxPending reports whether the kernel has not yet taken every descriptor
// on the TX ring.
func (s *Socket) TxPending() bool { return s.tx.pending() }

// TxNeedsWakeup reports whether the kernel processes the TX ring only when
// kicked (always so in copy mode).
func (s *Socket) TxNeedsWakeup() bool { return s.tx.needWakeup() }

// Complete takes up to len(addrs) addresses of sent frames off the
// completion ring.
func (s *Socket) Complete(addrs []uint64) int {
	n := s.comp.peek(uint32(len(addrs)))
	for i := range n {
		addrs[i] = s.comp.addrs[(s.comp.cachedCons+i)&s.comp.mask]
	}
	s.comp.release(n)
	return int(n)
}

// Kick makes the kernel process the TX ring: sendto(2) with MSG_DONTWAIT.
// EAGAIN, EBUSY and ENOBUFS (the kernel could not take everything now)
// are not errors; the caller kicks again later.
func (s *Socket) Kick() error {
	_, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
	switch e {
	case 0, unix.EAGAIN, unix.EBUSY, unix.ENOBUFS:
		return nil
	}
	return e
}

// WakeRx makes the driver look at the fill ring (and, with busy polling,
// runs its NAPI loop): recvfrom(2) with MSG_DONTWAIT.
func (s *Socket) WakeRx() {
	unix.Syscall6(unix.SYS_RECVFROM, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
}

// SetBusyPoll sets SO_PREFER_BUSY_POLL, SO_BUSY_POLL (usec) and
// SO_BUSY_POLL_BUDGET (packets) on the socket.
func (s *Socket) SetBusyPoll(usec, budget int) error {
	if err := unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_PREFER_BUSY_POLL, 1); err != nil {
		return fmt.Errorf("set SO_PREFER_BUSY_POLL: %w", err)
	}
	if err := unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_BUSY_POLL, usec); err != nil {
		return fmt.Errorf("set SO_BUSY_POLL: %w", err)
	}
	if err := unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_BUSY_POLL_BUDGET, budget); err != nil {
		return fmt.Errorf("set SO_BUSY_POLL_BUDGET: %w", err)
	}
	return nil
}

// Statistics returns the kernel's counters for the socket (XDP_STATISTICS).
func (s *Socket) Statistics() (unix.XDPStatistics, error) { return statistics(s.fd) }

// Close closes the socket and unmaps its rings and UMEM. It may be called
// once, after every other use.
func (s *Socket) Close() error {
	var errs []error
	if s.fd >= 0 {
		errs = append(errs, unix.Close(s.fd))
		s.fd = -1
	}
	for _, m := range s.maps {
		errs = append(errs, unix.Munmap(m))
	}
	s.maps = nil
	if s.umem != nil {
		errs = append(errs, unix.Munmap(s.umem))
		s.umem = nil
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close xsk: %w", err)
	}
	return nil
}
