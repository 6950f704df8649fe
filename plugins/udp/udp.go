package udp

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	netnsx "github.com/veloce-io/veloce/internal/netns"
	"github.com/veloce-io/veloce/internal/wire"
)

// Defaults and limits for Options.
const (
	// DefaultBatchSize is the batch size when Options.BatchSize is 0.
	DefaultBatchSize = 32
	// MaxBatchSize is the largest batch one sendmmsg(2) or recvmmsg(2)
	// call takes (the kernel's UIO_MAXIOV).
	MaxBatchSize = 1024
	// DefaultSocketBuffer is the socket buffer size requested when
	// Options.RecvBuffer or Options.SendBuffer is 0.
	DefaultSocketBuffer = 4 << 20
)

// Name is what Plugin.Name returns: the datapath's name in the runtime's
// QoS policy (backend.DatapathUDP).
const Name = "udp"

// Options configure New. The zero value is not usable: Listen must be set.
type Options struct {
	// Listen is the local address and port to bind. Port 0 lets the kernel
	// pick a free port (LocalAddr reports it). An IPv4 address (or an
	// IPv4-mapped IPv6 one) makes an IPv4 socket; an IPv6 address makes an
	// IPv6 socket, which for the unspecified address [::] also carries
	// IPv4. Zoned addresses are refused.
	Listen netip.AddrPort

	// RecvBuffer is the socket receive buffer (SO_RCVBUF) in bytes. 0
	// means DefaultSocketBuffer; negative leaves the kernel's default.
	// With CAP_NET_ADMIN the size may exceed net.core.rmem_max
	// (SO_RCVBUFFORCE); without it the kernel caps it there, and New logs
	// a warning.
	RecvBuffer int

	// SendBuffer is the socket send buffer (SO_SNDBUF) in bytes, with the
	// same rules as RecvBuffer (net.core.wmem_max, SO_SNDBUFFORCE). It
	// bounds how many bytes SendBatch queues before it reports a full
	// buffer.
	SendBuffer int

	// BatchSize is the most packets one system call moves: SendBatch
	// splits larger batches, RecvBatch fills at most this many. 0 means
	// DefaultBatchSize; at most MaxBatchSize. The per-batch headers are
	// preallocated for this many packets.
	BatchSize int

	// Logger receives setup warnings and the leak warning; nothing is
	// logged per packet or per batch. nil discards.
	Logger *slog.Logger
}

// Stats is a snapshot of a Plugin's counters, which count from New.
type Stats struct {
	PacketsSent     uint64 // datagrams the kernel accepted
	BytesSent       uint64 // their bytes (wire headers included)
	PacketsReceived uint64 // datagrams received, truncated ones included
	BytesReceived   uint64 // bytes stored in the caller's buffers
	SendErrors      uint64 // packets SendBatch returned an error for
	SendBufferFull  uint64 // SendBatch calls that stopped at a full send buffer
	RecvTruncated   uint64 // datagrams longer than the buffer offered (cut short)
	RecvErrors      uint64 // recvmmsg(2) or poller failures RecvBatch returned
}

// Plugin is a kernel-UDP datapath: one UDP socket with batched send and
// receive. Create it with New.
type Plugin struct {
	netns int // the socket's network namespace (for Reaches), or -1
	local netip.AddrPort
	v6    bool // the socket is AF_INET6
	batch int
	log   *slog.Logger
	fds   *fdSet
	// raw reaches the socket through the runtime poller (fds.file's
	// SyscallConn): every system call on the socket goes through it, so
	// the descriptor stays valid during the call even if Close runs. Set
	// by New, read-only after: no lock.
	raw syscall.RawConn // +checklocksignore

	// closing is set once by Close before it closes the socket (which
	// wakes the receiver).
	closing atomic.Bool
	// mu guards closed: the batch methods hold it for reading while they
	// run (one uncontended atomic per batch), Close holds it for writing
	// to wait for them.
	mu     sync.RWMutex
	closed bool // +checklocks:mu

	tx *txState // used only by the goroutine inside SendBatch
	rx *rxState // used only by the goroutine inside RecvBatch
}

// txState is the sender's preallocated state and counters; rxState the
// receiver's. They are separate allocations so the two goroutines do not
// share cache lines.
//
// The system calls run in callbacks handed to syscall.RawConn, which take
// their arguments and leave their results in these structs: the callbacks
// are method values made once in New, so a batch allocates no closure.
type txState struct {
	mmsg mmsgBatch
	// send is tx.sendOnce; k, n and errno its argument and results.
	send    func(fd uintptr)
	k, n    int
	errno   unix.Errno
	packets atomic.Uint64
	bytes   atomic.Uint64
	errors  atomic.Uint64
	full    atomic.Uint64
}

// sendOnce is one sendmmsg(2) of the first k prepared headers.
func (tx *txState) sendOnce(fd uintptr) {
	tx.n, tx.errno = sendmmsg(int(fd), tx.mmsg.hdrs[:tx.k])
}

type rxState struct {
	mmsg mmsgBatch
	// try is rx.recvOnce and wait rx.recvReady; k, n and errno their
	// argument and results.
	try   func(fd uintptr)
	wait  func(fd uintptr) bool
	k, n  int
	errno unix.Errno
	// deadline says the socket has a read deadline set (by a RecvBatch
	// with a positive timeout), which a RecvBatch without one must clear;
	// interrupted, that InterruptRecv set one.
	deadline    bool
	interrupted atomic.Bool
	packets     atomic.Uint64
	bytes       atomic.Uint64
	truncated   atomic.Uint64
	errors      atomic.Uint64
}

// recvOnce is one non-blocking recvmmsg(2) into the first k prepared
// headers.
func (rx *rxState) recvOnce(fd uintptr) {
	for {
		rx.n, rx.errno = recvmmsg(int(fd), rx.mmsg.hdrs[:rx.k])
		if rx.errno != unix.EINTR {
			return
		}
	}
}

// recvReady is recvOnce for RawConn.Read: false (park the goroutine in
// the poller until the socket is readable) when nothing is queued.
func (rx *rxState) recvReady(fd uintptr) bool {
	rx.recvOnce(fd)
	return rx.errno != unix.EAGAIN
}

// fdSet owns the socket, as an *os.File registered with the runtime
// poller. The leak cleanup holds it, not the Plugin.
type fdSet struct {
	file   *os.File
	closed bool
}

// close closes the socket. A receiver parked in the poller wakes (with
// an error, which RecvBatch reports as ErrClosed), and the descriptor
// itself is closed once the system calls under way on it have returned;
// close waits for that.
func (f *fdSet) close() error {
	if f.closed {
		return nil
	}
	f.closed = true
	if err := f.file.Close(); err != nil {
		return fmt.Errorf("close socket: %w", err)
	}
	return nil
}

// New opens a UDP socket bound to opts.Listen, sized and set up as opts
// say, and the Plugin that owns it. Errors are wrapped system call errors
// (for example unix.EADDRINUSE) or a description of a bad option.
func New(opts Options) (*Plugin, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	batch := opts.BatchSize
	switch {
	case batch == 0:
		batch = DefaultBatchSize
	case batch < 0 || batch > MaxBatchSize:
		return nil, fmt.Errorf("new udp plugin: batch size %d outside 1..%d", batch, MaxBatchSize)
	}
	addr := opts.Listen.Addr()
	if !addr.IsValid() {
		return nil, errors.New("new udp plugin: no listen address")
	}
	if addr.Zone() != "" {
		return nil, fmt.Errorf("new udp plugin: zoned listen address %s not supported", addr)
	}
	addr = addr.Unmap()
	v6 := addr.Is6()

	sock, err := openSocket(netip.AddrPortFrom(addr, opts.Listen.Port()), opts, log)
	if err != nil {
		return nil, fmt.Errorf("new udp plugin: %w", err)
	}
	local, err := localAddr(sock)
	if err != nil {
		unix.Close(sock)
		return nil, fmt.Errorf("new udp plugin: %w", err)
	}
	// The socket is non-blocking (O_NONBLOCK), so os.NewFile registers it
	// with the runtime poller: RecvBatch parks in the poller like any Go
	// network read, and Close wakes it by closing the file.
	fds := &fdSet{file: os.NewFile(uintptr(sock), "udp "+local.String())}
	raw, err := fds.file.SyscallConn()
	if err == nil {
		// Fails (os.ErrNoDeadline) when the poller did not take the socket.
		err = fds.file.SetReadDeadline(time.Time{})
	}
	if err != nil {
		fds.close()
		return nil, fmt.Errorf("new udp plugin: register socket with the runtime poller: %w", err)
	}
	nsfd, err := netnsx.Self()
	if err != nil {
		nsfd = -1
	}
	p := &Plugin{
		netns: nsfd,
		local: local,
		v6:    v6,
		batch: batch,
		log:   log,
		fds:   fds,
		raw:   raw,
		tx:    &txState{mmsg: newMmsgBatch(batch)},
		rx:    &rxState{mmsg: newMmsgBatch(batch)},
	}
	p.tx.send = p.tx.sendOnce
	p.rx.try = p.rx.recvOnce
	p.rx.wait = p.rx.recvReady
	log.Debug("udp plugin open", "addr", local, "batch", batch)
	runtime.AddCleanup(p, func(f *fdSet) {
		if !f.closed {
			log.Warn("udp plugin dropped without Close; closing its socket", "addr", local)
			f.close()
		}
	}, fds)
	return p, nil
}

// Name returns "udp".
func (p *Plugin) Name() string { return Name }

// LocalAddr returns the address and port the socket is bound to; for Port
// 0 in Options.Listen, the port the kernel picked.
func (p *Plugin) LocalAddr() netip.AddrPort { return p.local }

// Reaches reports whether the kernel has a route from the plugin's local
// address to addr: it connects a throwaway UDP socket bound to that
// address, which resolves the route without sending anything. A peer on a
// link the kernel does not own (a DPDK port's) is not reached.
func (p *Plugin) Reaches(addr netip.Addr) bool {
	if p.netns < 0 {
		return p.reaches(addr)
	}
	// The route is the socket's namespace's, not the caller's.
	ok := false
	if err := netnsx.DoFd(p.netns, func() error { ok = p.reaches(addr); return nil }); err != nil {
		return p.reaches(addr)
	}
	return ok
}

func (p *Plugin) reaches(addr netip.Addr) bool {
	local := p.local.Addr()
	if local.Is4() != addr.Unmap().Is4() && !p.v6 {
		return false
	}
	laddr := &net.UDPAddr{IP: local.AsSlice()}
	if local.IsUnspecified() {
		laddr = nil
	}
	c, err := net.DialUDP("udp", laddr, net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr.Unmap(), 9)))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Stats returns a snapshot of the counters. It may be called from any
// goroutine, also after Close.
func (p *Plugin) Stats() Stats {
	return Stats{
		PacketsSent:     p.tx.packets.Load(),
		BytesSent:       p.tx.bytes.Load(),
		PacketsReceived: p.rx.packets.Load(),
		BytesReceived:   p.rx.bytes.Load(),
		SendErrors:      p.tx.errors.Load(),
		SendBufferFull:  p.tx.full.Load(),
		RecvTruncated:   p.rx.truncated.Load(),
		RecvErrors:      p.rx.errors.Load(),
	}
}

// Close wakes a receiver blocked in RecvBatch, closes the socket, and
// waits until the batch calls under way have returned. It is safe to call
// from any goroutine and more than once; calls after the first return nil.
func (p *Plugin) Close() error {
	if !p.closing.CompareAndSwap(false, true) {
		return nil
	}
	// Closing the file evicts the socket from the poller, which wakes a
	// parked receiver; the descriptor is closed once no system call is
	// using it (fds.close waits for that), and calls that get to the
	// socket after this see closing and return ErrClosed.
	err := p.fds.close()
	if p.netns >= 0 {
		unix.Close(p.netns)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	return err
}

// rawError turns an error from the poller (RawConn, SetReadDeadline)
// into RecvBatch's or SendBatch's: ErrClosed once Close has begun (the
// poller then reports the file closed), else wrapped.
func (p *Plugin) rawError(op string, err error) error {
	if p.closing.Load() {
		return ErrClosed
	}
	return fmt.Errorf("%s: %w", op, err)
}

// SendBatch sends pkts[i].Buf[:pkts[i].N] to pkts[i].Addr, in order, with
// one sendmmsg(2) per BatchSize packets, and returns how many packets from
// the front of pkts the kernel took. It never blocks. It keeps no reference
// to pkts or their buffers after it returns.
//
//   - n == len(pkts), nil: all sent.
//   - n < len(pkts), nil: the socket's send buffer (or, ENOBUFS, the
//     device queue) is full; pkts[n:] were not sent. Try them again later
//     (after a short sleep, or when acknowledgements come back).
//   - n < len(pkts), err: pkts[n] could not be sent: ErrAddress or
//     ErrLength for a bad packet, a wrapped system call error (for example
//     unix.EMSGSIZE, unix.ENETUNREACH) from the kernel, or ErrClosed. The
//     caller may drop pkts[n] and continue with pkts[n+1:].
//
// Only one goroutine may be in SendBatch at a time.
func (p *Plugin) SendBatch(pkts []wire.Packet) (int, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return 0, ErrClosed
	}
	tx := p.tx
	sent := 0
	var bytes uint64
	var err error
	for sent < len(pkts) {
		chunk := pkts[sent:min(len(pkts), sent+p.batch)]
		k, bad := tx.mmsg.fillSend(chunk, p.v6)
		var n int
		if k > 0 {
			tx.k = k
			if cerr := p.raw.Control(tx.send); cerr != nil {
				err = p.rawError("send batch", cerr)
				break
			}
			n = tx.n
			errno := tx.errno
			for i := range n {
				bytes += uint64(chunk[i].N)
			}
			sent += n
			if errno == unix.EAGAIN || errno == unix.ENOBUFS {
				tx.full.Add(1)
				break
			}
			if errno != 0 {
				err = fmt.Errorf("send batch: sendmmsg: %w", errno)
				break
			}
		}
		if n == k && bad != nil {
			err = bad
			break
		}
		// n < k: the kernel stopped early (buffer full, or an error it
		// does not report with a partial count); the next round tells.
	}
	tx.mmsg.release()
	if err != nil && err != ErrClosed {
		tx.errors.Add(1)
	}
	tx.packets.Add(uint64(sent))
	tx.bytes.Add(bytes)
	return sent, err
}

// RecvBatch receives up to min(len(pkts), BatchSize) datagrams with one
// recvmmsg(2), filling pkts[i].Buf, pkts[i].N and pkts[i].Addr for i < n,
// and returns n (0 at once when pkts is empty). When none is queued it
// waits for one up to timeout in the runtime's network poller, as a read
// on a net.Conn does: timeout 0 does not wait, a negative timeout waits
// until a datagram arrives or Close is called. After the wait it takes
// what is queued without waiting for more. It returns 0, nil when the
// time runs out; ErrClosed when the Plugin is closed (also while
// waiting); a wrapped system call error otherwise. A datagram longer than
// len(Buf) is cut to len(Buf) and counted in Stats.RecvTruncated (see
// wire.Packet). It keeps no reference to pkts or their buffers after it
// returns.
//
// A positive timeout is a read deadline on the socket, set only when
// RecvBatch has to wait; a later call without a timeout clears it.
//
// Only one goroutine may be in RecvBatch at a time.
func (p *Plugin) RecvBatch(pkts []wire.Packet, timeout time.Duration) (int, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return 0, ErrClosed
	}
	rx := p.rx
	k := min(len(pkts), p.batch)
	if k == 0 {
		return 0, nil
	}
	pkts = pkts[:k]
	rx.mmsg.fillRecv(pkts)
	defer rx.mmsg.release()
	rx.k = k
	// First try without the poller's read path (no deadline check).
	if err := p.raw.Control(rx.try); err != nil {
		return 0, p.rawError("receive batch", err)
	}
	if rx.errno == unix.EAGAIN {
		if timeout == 0 {
			return 0, nil
		}
		if err := p.setDeadline(timeout); err != nil {
			return 0, p.rawError("receive batch: set deadline", err)
		}
		// Read calls rx.wait, and while that reports nothing queued parks
		// the goroutine until the poller says the socket is readable, the
		// deadline passes, or Close closes the file.
		switch err := p.raw.Read(rx.wait); {
		case err == nil:
		case err == os.ErrDeadlineExceeded:
			rx.deadline = true // ours, or InterruptRecv's: the next wait without one clears it
			return 0, nil
		default:
			return 0, p.rawError("receive batch: wait", err)
		}
	}
	if rx.errno != 0 {
		rx.errors.Add(1)
		return 0, fmt.Errorf("receive batch: recvmmsg: %w", rx.errno)
	}
	n := rx.n
	var bytes uint64
	truncated := rx.mmsg.finishRecv(pkts[:n], &bytes)
	rx.packets.Add(uint64(n))
	rx.bytes.Add(bytes)
	if truncated > 0 {
		rx.truncated.Add(uint64(truncated))
	}
	return n, nil
}

// setDeadline sets the socket's read deadline for a wait of timeout
// (non-zero): now+timeout when positive, none when negative.
func (p *Plugin) setDeadline(timeout time.Duration) error {
	rx := p.rx
	if timeout > 0 {
		rx.deadline = true
		return p.fds.file.SetReadDeadline(time.Now().Add(timeout))
	}
	if !rx.deadline && !rx.interrupted.Swap(false) {
		return nil
	}
	rx.deadline = false
	return p.fds.file.SetReadDeadline(time.Time{})
}

// InterruptRecv makes a RecvBatch that is waiting now return at once (0,
// nil), as if its time ran out; a RecvBatch that is not waiting is not
// affected, nor is a later one. It may be called from any goroutine. The
// runtime uses it to take the receive side over from the goroutine that
// waits in RecvBatch (its polling thread then receives, with timeout 0).
func (p *Plugin) InterruptRecv() {
	p.rx.interrupted.Store(true)
	p.fds.file.SetReadDeadline(time.Now())
}

// DatapathStats returns Stats for velocectl remote.
func (p *Plugin) DatapathStats() any { return p.Stats() }
