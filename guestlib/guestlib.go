// Package guestlib is Veloce's client library: the INSANE API in Go. An
// application opens a Session with the local Veloce daemon, creates
// Streams with QoS options, and on them Sources and Sinks bound to channel
// ids; messages emitted by a source reach every sink of its channel — in
// the same VM, in other VMs, in host processes, on other hosts — over the
// datapath the daemon chose for the stream.
//
// Inside a VM the library speaks to the daemon over the VM's virtio-net
// link: UDP datagrams to the service address (default 169.254.77.1:7077,
// which every Veloce port answers; override with $VELOCE_SERVICE). It needs
// no root, no cgo and no driver. The protocol is internal/guestproto.
//
// On the host, the same API reaches the daemon over its unix socket
// (Options.Socket, $VELOCE_APP_SOCKET, or /run/veloce/app.sock when it
// exists) with messages in shared memory: the daemon hands the session a
// memfd region of slots, mapped by both. GetBuffer returns a free TX slot,
// written in place; Emit puts its id on a ring the daemon reads, so
// nothing is copied on the way in. A received Message's Data is the RX
// slot the daemon copied the message into, read in place until Release
// gives the slot back. A busy stream makes no system call per message
// (see internal/shm for the layout and the wake-up protocol). The slots
// are a fixed pool per session (512 to send, 1024 to receive, 2 KiB
// each): GetBuffer fails with ErrNoBuffers when every TX slot is in
// flight, and GetBufferContext waits for one; a session that holds all
// its RX slots (unreleased or queued messages) gets no more messages
// until it releases some — the daemon drops them and counts them for the
// sink. Messages larger than a slot, up to Session.MaxMessage (the
// daemon's --max-message, 1 MiB by default), take runs of adjacent slots
// from a part of each pool set aside for them (room for two 1 MiB
// messages each way): Data is one contiguous slice either way.
//
// The API follows the paper's (section 5.1): get a buffer, write into it,
// emit it and get a token, ask for the token's outcome; sinks deliver by
// callback, or by blocking or non-blocking consume, and say how much data
// is waiting; a received message is released when done. All methods are
// safe for concurrent use; a Source's Emit calls are ordered as they are
// made.
//
// # Order that matters
//
// A message goes to the sinks its channel has when the daemon takes it:
// a sink created after the emit misses it (nothing is kept for sinks to
// come). Create the sinks first; across hosts, a peer learns of a new
// sink a moment after CreateSink returns. Emit sends len(Buffer.Data)
// bytes: cut a buffer to what was written (Buffer.Truncate). Open fails
// with ErrNoDaemon, saying what to check, when no daemon answers
// (Options.OpenTimeout on the virtio transport).
//
// Outcome answers for a source's last OutcomeWindow tokens and returns
// ErrOutcomeUnknown for older ones. (It used to answer nil, accepted, for
// any token it held no refusal for, and held at most 65,536 refusals a
// session: past that, refused messages read as accepted.)
package guestlib

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/internal/guestproto"
	"github.com/veloce-io/veloce/internal/shm"
)

// DefaultService is where a Veloce daemon answers on every VM link.
var DefaultService = netip.MustParseAddrPort("169.254.77.1:7077")

// MaxMessage is the largest message a source may emit over the virtio
// transport (a Deliver carrying it must fit the link's 1500-byte MTU);
// on the host transport, Session.MaxMessage says.
const MaxMessage = 1500 - 20 - 8 - guestproto.DeliverOverhead

// maxLargeMessage bounds the largest message a daemon may announce
// (veloced's --max-message is at most 64 MiB): a virtio session's large
// buffers are of that size.
const maxLargeMessage = 64 << 20

// Errors.
var (
	// ErrClosed: the session, stream, source or sink is closed.
	ErrClosed = errors.New("guestlib: closed")
	// ErrTooLarge: a message larger than Session.MaxMessage.
	ErrTooLarge = errors.New("guestlib: message too large")
	// ErrNoSession: the daemon does not know the session (it restarted, or
	// released the session after a silence).
	ErrNoSession = errors.New("guestlib: session unknown to the daemon")
	// ErrNotFound: the daemon does not know the stream, source or sink.
	ErrNotFound = errors.New("guestlib: no such stream, source or sink")
	// ErrNoBuffers: no buffer is free; on the host transport, every TX
	// slot of the session is in flight (back-pressure: retry, or use
	// GetBufferContext to wait). Status guestproto.StatusNoBuffers.
	ErrNoBuffers = errors.New("guestlib: out of buffers")
	// ErrOutcomeUnknown: Source.Outcome no longer knows what became of
	// the message (its token is more than OutcomeWindow emits old), or the
	// token is not one the source handed out.
	ErrOutcomeUnknown = errors.New("guestlib: outcome no longer known")
	// ErrLimit: the daemon refused the request because it would exceed
	// a limit the operator set for the port or tenant (sessions, streams,
	// sources, sinks, control requests per second); the RequestError's
	// Limit names which. Status guestproto.StatusLimit. Closing what the
	// application no longer uses, or retrying later (control-rate),
	// helps; retrying at once does not.
	ErrLimit = errors.New("guestlib: daemon limit reached")
	// ErrPermission: the daemon refused the request for the tenant the
	// application belongs to. Status guestproto.StatusDenied.
	ErrPermission = errors.New("guestlib: permission denied")
	// ErrNoDaemon: Open found no daemon: no socket (or nobody listening)
	// at the host transport's path, or no answer from the service address
	// within Options.OpenTimeout on the virtio transport. The error says
	// what to check.
	ErrNoDaemon = errors.New("guestlib: no Veloce daemon")
	// ErrPeerUnreachable: the source is on a reliable stream and a host
	// with sinks for it stopped acknowledging its messages; the daemon
	// failed the source (Outcome of its emits from then on; velocectl
	// streams shows it as peer-unreachable). Messages the peer had not
	// acknowledged may be lost. Close the source and create a new one
	// once the peer is back. Status guestproto.StatusPeerUnreachable.
	ErrPeerUnreachable = errors.New("guestlib: reliable stream's peer unreachable")
	// ErrBackPressure is the former name of ErrNoBuffers.
	//
	// Deprecated: use ErrNoBuffers.
	ErrBackPressure = ErrNoBuffers
)

// RequestError is a request the daemon refused.
type RequestError struct {
	// Op is the request ("open session", "create sink"...).
	Op string
	// Status is the daemon's status code.
	Status guestproto.Status
	// Message is the daemon's explanation.
	Message string
	// Limit names the limit a StatusLimit refusal hit: "sessions",
	// "streams", "sources", "sinks" or "control-rate" (guestproto's
	// Limit* names); empty for other statuses.
	Limit string
}

func (e *RequestError) Error() string {
	return fmt.Sprintf("guestlib: %s: %s (status %d)", e.Op, e.Message, e.Status)
}

// Is maps statuses to the package's sentinels.
func (e *RequestError) Is(target error) bool { return statusErr(e.Status) == target }

func statusErr(st guestproto.Status) error {
	switch st {
	case guestproto.StatusOK:
		return nil
	case guestproto.StatusNoSession:
		return ErrNoSession
	case guestproto.StatusNotFound:
		return ErrNotFound
	case guestproto.StatusNoBuffers:
		return ErrNoBuffers
	case guestproto.StatusTooLarge:
		return ErrTooLarge
	case guestproto.StatusLimit:
		return ErrLimit
	case guestproto.StatusDenied:
		return ErrPermission
	case guestproto.StatusPeerUnreachable:
		return ErrPeerUnreachable
	}
	return fmt.Errorf("guestlib: daemon status %d", st)
}

// Options configure a session.
type Options struct {
	// Service is the daemon's address and port; default $VELOCE_SERVICE,
	// else DefaultService.
	Service netip.AddrPort
	// PingInterval is how often an otherwise silent session tells the
	// daemon it is alive (the daemon releases silent sessions); default 1s.
	// Virtio transport only: on the host the daemon watches the
	// connection.
	PingInterval time.Duration
	// RequestTimeout bounds one control request attempt before it is
	// retried (UDP); default 250ms. The caller's context bounds the whole.
	RequestTimeout time.Duration
	// OpenTimeout bounds how long Open waits for the daemon's first
	// answer before it fails with ErrNoDaemon (the caller's context may
	// end it sooner); default 5s.
	OpenTimeout time.Duration
	// Socket selects the host transport: the daemon's unix socket for
	// host applications (SOCK_SEQPACKET; messages in shared memory). Empty
	// means $VELOCE_APP_SOCKET, else DefaultAppSocket if it exists, else
	// the virtio transport.
	Socket string
}

// DefaultAppSocket is where a daemon on the host listens for host
// applications.
const DefaultAppSocket = "/run/veloce/app.sock"

// conn is the transport's socket: a connected UDP socket (virtio) or a
// unix SOCK_SEQPACKET connection (host).
type conn interface {
	Read([]byte) (int, error)
	Write([]byte) (int, error)
	Close() error
}

func dial(o *Options) (conn, string, error) {
	sock := o.Socket
	if sock == "" {
		sock = os.Getenv("VELOCE_APP_SOCKET")
	}
	if sock == "" && !o.Service.IsValid() {
		if fi, err := os.Stat(DefaultAppSocket); err == nil && fi.Mode()&os.ModeSocket != 0 {
			sock = DefaultAppSocket
		}
	}
	if sock != "" {
		c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
		if err != nil {
			if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
				return nil, sock, fmt.Errorf("%w at %s (is veloced running with --app-socket %s?): %w", ErrNoDaemon, sock, sock, err)
			}
			return nil, sock, err
		}
		return c, sock, nil
	}
	if !o.Service.IsValid() {
		o.Service = DefaultService
		if v := os.Getenv("VELOCE_SERVICE"); v != "" {
			ap, err := netip.ParseAddrPort(v)
			if err != nil {
				return nil, v, fmt.Errorf("VELOCE_SERVICE: %w", err)
			}
			o.Service = ap
		}
	}
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(o.Service))
	if err != nil {
		if unreachable(err) {
			return nil, o.Service.String(), fmt.Errorf("%w: no route to %s (%s): %w", ErrNoDaemon, o.Service.Addr(), vmHint, err)
		}
		return nil, o.Service.String(), err
	}
	setReceiveBuffer(c, receiveBuffer)
	reportSendErrors(c)
	return c, o.Service.String(), nil
}

// receiveBuffer is the socket receive buffer a session asks for: a
// stream's messages arrive in bursts (a VM's vCPU descheduled, a
// migration's switchover), and what does not fit is lost in the guest's
// kernel (Udp RcvbufErrors).
const receiveBuffer = 4 << 20

// setReceiveBuffer sets c's receive buffer to n bytes: past the
// kernel's net.core.rmem_max where the process may (SO_RCVBUFFORCE, root
// or CAP_NET_ADMIN), else up to rmem_max (SO_RCVBUF, which the kernel
// caps silently: 208 KiB by default, so raise net.core.rmem_max for
// unprivileged applications that take bursts).
func setReceiveBuffer(c *net.UDPConn, n int) {
	if rc, err := c.SyscallConn(); err == nil {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
		}); err == nil && serr == nil {
			return
		}
	}
	c.SetReadBuffer(n)
}

// reportSendErrors makes the kernel report a datagram its link could not
// queue (IP_RECVERR): without it a UDP send that meets a full transmit
// queue — the VM's virtio ring not drained fast enough by a busy host —
// "succeeds" and the datagram is dropped, counted only in the guest's
// Udp SndbufErrors. With it, Write fails with ENOBUFS and Emit waits
// for the queue (writeEmit). The errors it also queues (ICMP) are
// drained by the receive loop (drainErrors).
func reportSendErrors(c *net.UDPConn) {
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVERR, 1) })
	}
}

// drainErrors empties c's error queue (IP_RECVERR), whose entries count
// against the receive buffer.
func drainErrors(c conn) {
	uc, ok := c.(*net.UDPConn)
	if !ok {
		return
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return
	}
	var b, oob [512]byte
	rc.Control(func(fd uintptr) {
		for range 64 {
			if _, _, _, _, err := unix.Recvmsg(int(fd), b[:], oob[:], unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT); err != nil {
				return
			}
		}
	})
}

// Bounds of Emit's wait for a full transmit queue (ENOBUFS).
const (
	sendRetryFirst = 20 * time.Microsecond
	sendRetryMax   = time.Millisecond
	sendRetryFor   = 250 * time.Millisecond
)

// writeEmit writes one Emit datagram, waiting while the link's transmit
// queue is full (ENOBUFS, see reportSendErrors), for at most
// sendRetryFor; then the message is refused with ErrNoBuffers. Nothing
// is sent twice: a datagram refused with ENOBUFS was not queued.
func (s *Session) writeEmit(b []byte) error {
	_, err := s.conn.Write(b)
	if err == nil || !errors.Is(err, syscall.ENOBUFS) {
		return err
	}
	deadline := time.Now().Add(sendRetryFor)
	for pause := sendRetryFirst; ; pause = min(2*pause, sendRetryMax) {
		time.Sleep(pause)
		if _, err = s.conn.Write(b); err == nil || !errors.Is(err, syscall.ENOBUFS) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: the link's transmit queue stayed full for %v: %w", ErrNoBuffers, sendRetryFor, err)
		}
	}
}

// receiveBufferOf returns the bytes c's kernel buffer holds (what
// SO_RCVBUF reports: the kernel doubles what was asked for, and charges
// each datagram's whole buffer against it).
func receiveBufferOf(c *net.UDPConn) int {
	n := 0
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { n, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF) })
	}
	return n
}

// Flow control on the virtio link (guestproto.Credit): each sink tells
// the daemon how many of its messages may be on the way — no more than
// its queue has room for, and no more than the socket buffer holds — so
// the guest's kernel does not drop messages the application was too busy
// to read (Udp RcvbufErrors, which nobody sees); the daemon holds them
// instead (a reliable stream's arrive later) or drops and counts them
// (velocectl streams: the sink's dropped and credit_waits).
const (
	// creditBytes is what one message may cost the socket buffer: a
	// full-MTU frame's buffer and its bookkeeping.
	creditBytes = 4096
	// maxCredit bounds a sink's window.
	maxCredit = 1024
	// maxLargeCredit bounds the window, in frames, of a sink that takes
	// large messages (each of its frames one delivery).
	maxLargeCredit = 4096
	// minCredit is the least window: below it the link idles.
	minCredit = 16
)

// creditWindow is a sink's window for its queue length on a socket
// buffer of rcvbuf bytes.
func creditWindow(queue, rcvbuf int) uint32 {
	return uint32(max(minCredit, min(queue, maxCredit, rcvbuf/creditBytes)))
}

// vmHint is what to check when the service address does not answer.
const vmHint = "is this VM's NIC attached to veloced, and does the guest have its address (DHCP)?"

// unreachable reports a network with no route to the service address.
func unreachable(err error) bool {
	return errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.EADDRNOTAVAIL)
}

// Session is an application's attachment to the daemon.
type Session struct {
	opts Options
	conn conn
	peer string // the daemon's address, for errors
	id   uint32
	// host is the host transport's shared memory; nil on the virtio
	// transport. Set by Open before any other goroutine uses it.
	host *hostShm
	// rcvbuf is the virtio socket's receive buffer in bytes (0 on the
	// host transport): it bounds the sinks' credit.
	rcvbuf int
	// lost is closed when the host transport's connection ends.
	lost     chan struct{}
	lostOnce sync.Once

	nextReq atomic.Uint32
	bufs    sync.Pool // of *[]byte, datagram-sized
	// maxEmit is the largest message the virtio transport's sources may
	// emit: the daemon's limit when its OpenSession reply gave one (it
	// takes EmitFrag), else MaxMessage. Set by Open.
	maxEmit int
	large   sync.Pool // of *[]byte of maxEmit bytes: large messages' buffers
	// largeRX: the daemon sends this session's sinks messages larger
	// than a frame as DeliverFrag frames (LargeDeliveries accepted).
	// Set by Open.
	largeRX bool

	mu      sync.Mutex
	pending map[uint32]chan reply // +checklocks:mu
	sinks   map[uint32]*Sink      // +checklocks:mu
	// sources are the session's sources by id, for their outcomes. A
	// closed source stays (the daemon still refuses its late emits) until
	// the daemon reuses its id or the session goes.
	sources map[uint32]*Source // +checklocks:mu
	// streams are the session's streams by id, for StreamChanged.
	streams map[uint32]*Stream // +checklocks:mu
	closed  bool               // +checklocks:mu

	done chan struct{}
	wg   sync.WaitGroup
}

type reply struct {
	status  guestproto.Status
	id      uint32
	plugin  string
	message string
	fds     []int // descriptors that came with it (host transport)
}

const datagramSize = 2048

// Open connects to the daemon and opens a session. It fails fast when no
// daemon is there, with an error wrapping ErrNoDaemon that says what to
// check: on the host, when nothing listens at the socket; in a VM, when
// the service address does not answer within Options.OpenTimeout.
func Open(ctx context.Context, opts Options) (*Session, error) {
	if opts.OpenTimeout <= 0 {
		opts.OpenTimeout = 5 * time.Second
	}
	if opts.PingInterval <= 0 {
		opts.PingInterval = time.Second
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 250 * time.Millisecond
	}
	conn, peer, err := dial(&opts)
	if err != nil {
		return nil, fmt.Errorf("guestlib: open session with %s: %w", peer, err)
	}
	s := &Session{opts: opts, conn: conn, peer: peer, pending: map[uint32]chan reply{}, sinks: map[uint32]*Sink{},
		sources: map[uint32]*Source{}, done: make(chan struct{}), lost: make(chan struct{})}
	s.bufs.New = func() any { b := make([]byte, datagramSize); return &b }
	if c, ok := conn.(*net.UDPConn); ok {
		s.rcvbuf = receiveBufferOf(c)
	}
	uc, host := conn.(*net.UnixConn)
	s.wg.Add(1)
	if host {
		go s.receiveHost(uc)
	} else {
		go s.receive()
	}
	octx, cancel := context.WithTimeout(ctx, opts.OpenTimeout)
	r, err := s.request(octx, &guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession}})
	cancel()
	if err != nil {
		s.shutdown()
		if !host && unreachable(err) {
			return nil, fmt.Errorf("%w: no route to %s (%s): %w", ErrNoDaemon, peer, vmHint, err)
		}
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			hint := vmHint
			if host {
				hint = "is veloced stuck? see its log"
			}
			return nil, fmt.Errorf("%w: no answer from %s within %v (%s)", ErrNoDaemon, peer, opts.OpenTimeout, hint)
		}
		return nil, err
	}
	s.id = r.id
	if host {
		// The daemon watches the connection: no pings.
		maxMsg, _ := guestproto.ParseMaxMessage([]byte(r.plugin))
		if s.host, err = newHostShm(r.fds, int(maxMsg)); err != nil {
			s.shutdown()
			return nil, fmt.Errorf("guestlib: open session with %s: %w", peer, err)
		}
		s.wg.Add(1)
		go s.host.receive(s)
		return s, nil
	}
	shm.CloseFDs(r.fds)
	s.maxEmit = MaxMessage
	if n, ok := guestproto.ParseMaxMessage([]byte(r.plugin)); ok && int(n) > MaxMessage {
		s.maxEmit = min(int(n), maxLargeMessage)
		s.large.New = func() any { b := make([]byte, s.maxEmit); return &b }
		// Large messages to this session's sinks too, up to as large.
		r, err := s.request(ctx, &guestproto.Message{Header: guestproto.Header{Type: guestproto.LargeDeliveries}, ID: uint32(s.maxEmit)})
		s.largeRX = err == nil && r.status == guestproto.StatusOK
	}
	s.wg.Add(1)
	go s.ping()
	return s, nil
}

// ID returns the session id the daemon gave.
func (s *Session) ID() uint32 { return s.id }

// MaxMessage returns the largest message the session's sources may emit
// (GetBuffer's largest size), the daemon's limit (veloced --max-message,
// default 1 MiB) learned when the session opened; with a daemon from
// before large messages, the package's MaxMessage. It is also the
// largest message its sinks receive. On the virtio transport a message
// larger than a frame travels as fragments both ways
// (guestproto.EmitFrag, DeliverFrag), joined by the daemon or by the
// sink; a sink's credit then counts frames, so a large message reaches
// it only if its queue (SinkOptions.Queue) and socket buffer (root, or a
// raised net.core.rmem_max) have room for all its frames at once (749
// for 1 MiB).
func (s *Session) MaxMessage() int {
	if s.host != nil {
		return s.host.maxMsg
	}
	return max(s.maxEmit, MaxMessage)
}

// Close closes the session: the daemon releases its streams, sources and
// sinks. Messages not consumed are dropped.
func (s *Session) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if s.host != nil {
		s.host.flush(ctx) // what was emitted goes out before the session closes
	}
	_, err := s.request(ctx, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CloseSession}})
	s.shutdown()
	return err
}

func (s *Session) shutdown() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	sinks := s.sinks
	s.sinks = map[uint32]*Sink{}
	s.mu.Unlock()
	close(s.done)
	s.conn.Close()
	if s.host != nil {
		s.host.stop() // wakes its receive goroutine
	}
	s.wg.Wait()
	for _, sk := range sinks {
		sk.closeLocal()
	}
	if s.host != nil {
		s.host.close()
	}
}

// request sends a control request and waits for its reply, resending
// while ctx allows.
func (s *Session) request(ctx context.Context, m *guestproto.Message) (reply, error) {
	m.RequestID = s.nextReq.Add(1)
	m.Session = s.id
	ch := make(chan reply, 1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return reply{}, ErrClosed
	}
	s.pending[m.RequestID] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.pending, m.RequestID)
		s.mu.Unlock()
		select {
		case r := <-ch: // a reply that came too late
			shm.CloseFDs(r.fds)
		default:
		}
	}()
	var b [64]byte
	n, err := guestproto.PutRequest(b[:], m)
	if err != nil {
		return reply{}, err
	}
	op := m.Type.String()
	// UDP may lose a request or its reply: resend after RequestTimeout.
	// The host transport's connection loses nothing: wait for the reply.
	_, host := s.conn.(*net.UnixConn)
	for {
		if _, err := s.conn.Write(b[:n]); err != nil {
			if host && (errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)) {
				return reply{}, fmt.Errorf("guestlib: %s: connection to %s lost: %w", op, s.peer, ErrNoSession)
			}
			return reply{}, fmt.Errorf("guestlib: %s: %w", op, err)
		}
		t := time.NewTimer(s.opts.RequestTimeout)
		resend := t.C
		if host {
			resend = nil
		}
		var r reply
		select {
		case r = <-ch:
		case <-ctx.Done():
			t.Stop()
			return reply{}, fmt.Errorf("guestlib: %s: no answer from %s: %w", op, s.peer, ctx.Err())
		case <-s.done:
			t.Stop()
			return reply{}, ErrClosed
		case <-s.lost:
			// The reply, if it came, was queued before the connection ended.
			select {
			case r = <-ch:
			default:
				t.Stop()
				return reply{}, fmt.Errorf("guestlib: %s: connection to %s lost: %w", op, s.peer, ErrNoSession)
			}
		case <-resend:
			continue
		}
		t.Stop()
		if r.status != guestproto.StatusOK {
			shm.CloseFDs(r.fds)
			e := &RequestError{Op: op, Status: r.status, Message: r.message}
			if r.status == guestproto.StatusLimit {
				e.Limit = r.plugin
			}
			return r, e
		}
		return r, nil
	}
}

func (s *Session) ping() {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.PingInterval)
	defer t.Stop()
	var b [guestproto.HeaderLen]byte
	var lb [guestproto.HeaderLen + 4]byte
	var sinks []*Sink
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			guestproto.PutHeader(b[:], guestproto.Header{Type: guestproto.Ping, RequestID: s.nextReq.Add(1), Session: s.id})
			s.conn.Write(b[:])
			if s.largeRX {
				// Again, for a daemon that does not know it: the one this
				// VM migrated to (a session's state moves without it).
				n, _ := guestproto.PutRequest(lb[:], &guestproto.Message{Header: guestproto.Header{Type: guestproto.LargeDeliveries,
					RequestID: s.nextReq.Add(1), Session: s.id}, ID: uint32(s.maxEmit)})
				s.conn.Write(lb[:n])
			}
			// Credits again, in case one was lost: a sink whose last
			// credit went missing while its window was full would get
			// nothing more.
			sinks = sinks[:0]
			s.mu.Lock()
			for _, sk := range s.sinks {
				sinks = append(sinks, sk)
			}
			s.mu.Unlock()
			for _, sk := range sinks {
				sk.sendCredit()
			}
		}
	}
}

// receive reads the daemon's datagrams: replies, deliveries, outcomes.
func (s *Session) receive() {
	defer s.wg.Done()
	for {
		bp := s.bufs.Get().(*[]byte)
		n, err := s.conn.Read(*bp)
		if err != nil {
			s.bufs.Put(bp)
			select {
			case <-s.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			drainErrors(s.conn)
			continue // e.g. ECONNREFUSED from an ICMP error: keep going
		}
		var m guestproto.Message
		if guestproto.Parse((*bp)[:n], &m) != nil {
			s.bufs.Put(bp)
			continue
		}
		switch m.Type {
		case guestproto.Reply:
			s.mu.Lock()
			ch := s.pending[m.RequestID]
			s.mu.Unlock()
			if ch != nil {
				select {
				case ch <- reply{m.Result.Status, m.Result.ID, string(m.Result.Plugin), string(m.Result.Message), nil}:
				default:
				}
			}
			s.bufs.Put(bp)
		case guestproto.Outcome:
			s.refused(m.ID, m.Token, m.Status)
			s.bufs.Put(bp)
		case guestproto.StreamChanged:
			s.streamChanged(&m)
			s.bufs.Put(bp)
		case guestproto.Deliver:
			s.mu.Lock()
			sk := s.sinks[m.ID]
			s.mu.Unlock()
			if sk == nil {
				s.bufs.Put(bp)
				continue
			}
			if m.RequestID != 0 { // the delivery index (guestproto.Credit)
				sk.lastIndex.Store(m.RequestID)
			}
			msg := messagePool.Get().(*Message)
			*msg = Message{Data: m.Payload, Source: m.Source, Seq: m.Seq, Channel: m.Channel, buf: bp, sink: sk}
			sk.push(msg)
		case guestproto.DeliverFrag:
			s.mu.Lock()
			sk := s.sinks[m.ID]
			s.mu.Unlock()
			if sk != nil && s.largeRX {
				if m.RequestID != 0 {
					sk.lastIndex.Store(m.RequestID)
				}
				sk.fragment(&m)
			}
			s.bufs.Put(bp)
		default:
			s.bufs.Put(bp)
		}
	}
}

// StreamOptions are a stream's QoS hints (the INSANE paper, section 5.2).
type StreamOptions struct {
	// Acceleration asks for a kernel-bypass datapath (RDMA, DPDK, AF_XDP).
	Acceleration bool
	// Frugal says resource use matters: prefer AF_XDP to DPDK.
	Frugal bool
	// TimeSensitive schedules by the 802.1Qbv gate schedule.
	TimeSensitive bool
	// Reliable asks for reliable, in-order delivery.
	Reliable bool
	// Poll is INSANE's consumption=poll: while the stream is open, its
	// session spins on the shared rings at both ends instead of sleeping
	// (the lowest latency, a core kept busy on each side). Give it with
	// TimeSensitive where the host has the cores: TimeSensitive alone
	// does not poll. Host transport only (on the virtio transport the
	// stream gets a warning). A daemon older than Poll refuses a stream
	// that asks for it.
	Poll bool
}

// Stream is a set of channels sharing options and a datapath.
type Stream struct {
	s  *Session
	id uint32
	// Datapath is what the daemon mapped the stream to: udp, rdma, dpdk
	// or xdp.
	Datapath string
	// Warning says how the mapping fell short of the options (acceleration
	// asked for on a host without any: kernel UDP; an option the datapath
	// does not honour yet, such as TimeSensitive); empty when it did not.
	// Datapath and Warning are the stream's at creation: Current has
	// them after a move (Events).
	Warning string

	events chan StreamEvent
	mu     sync.Mutex
	cur    StreamEvent // +checklocks:mu
	// polls: the stream makes its host session poll (poll.go).
	polls atomic.Bool
}

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// CreateStream opens a stream; check Warning for a fallback.
func (s *Session) CreateStream(ctx context.Context, o StreamOptions) (*Stream, error) {
	r, err := s.request(ctx, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateStream},
		Options: guestproto.StreamOptions{Acceleration: b2u(o.Acceleration), ResourceUse: b2u(o.Frugal), TimeSensitive: b2u(o.TimeSensitive), Reliable: b2u(o.Reliable),
			Consumption: b2u(o.Poll) * guestproto.ConsumePoll}})
	if err != nil {
		return nil, err
	}
	st := &Stream{s: s, id: r.id, Datapath: r.plugin, Warning: r.message, events: make(chan StreamEvent, streamEvents)}
	if s.host != nil && o.Poll {
		st.polls.Store(true)
		s.host.startPolling()
	}
	st.cur = StreamEvent{Datapath: r.plugin, Warning: r.message}
	s.mu.Lock()
	if s.streams == nil {
		s.streams = map[uint32]*Stream{}
	}
	s.streams[st.id] = st
	s.mu.Unlock()
	return st, nil
}

// StreamEvent tells that the daemon moved a stream to another datapath
// (velocectl streams set-qos): the datapath it takes now and the warning
// of its new options (empty when they are met).
type StreamEvent struct {
	Datapath string
	Warning  string
}

// streamEvents is how many events a stream keeps unread; past it the
// oldest is dropped (Current always has the latest).
const streamEvents = 8

// Events returns the stream's events: one per move of the stream to
// another datapath, in order. Reading them is optional.
func (st *Stream) Events() <-chan StreamEvent { return st.events }

// Current returns the datapath the stream takes now and its warning:
// Datapath and Warning as the stream was created, updated by every move.
func (st *Stream) Current() StreamEvent {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.cur
}

// streamChanged takes a StreamChanged from the daemon.
func (s *Session) streamChanged(m *guestproto.Message) {
	s.mu.Lock()
	st := s.streams[m.ID]
	s.mu.Unlock()
	if st == nil {
		return
	}
	ev := StreamEvent{Datapath: string(m.Result.Plugin), Warning: string(m.Result.Message)}
	st.mu.Lock()
	st.cur = ev
	st.mu.Unlock()
	for {
		select {
		case st.events <- ev:
			return
		default:
		}
		select { // full: drop the oldest
		case <-st.events:
		default:
		}
	}
}

// ID returns the stream id.
func (st *Stream) ID() uint32 { return st.id }

// Close closes the stream with its sources and sinks.
func (st *Stream) Close(ctx context.Context) error {
	if h := st.s.host; h != nil {
		h.flush(ctx) // the close must not overtake what was emitted (shared memory, not the socket)
	}
	_, err := st.s.request(ctx, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CloseStream}, ID: st.id})
	if st.polls.CompareAndSwap(true, false) {
		st.s.host.stopPolling()
	}
	return err
}

// Source emits messages on a channel.
type Source struct {
	s       *Session
	id      uint32
	channel uint32
	mu      sync.Mutex // orders Emit calls
	// token is the last token handed out; written under mu, read
	// without it (by outcomes).
	token    atomic.Uint64
	outcomes outcomes
}

// CreateSource opens a source on channel.
func (st *Stream) CreateSource(ctx context.Context, channel uint32) (*Source, error) {
	r, err := st.s.request(ctx, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateSource}, Stream: st.id, Channel: channel})
	if err != nil {
		return nil, err
	}
	so := &Source{s: st.s, id: r.id, channel: channel}
	st.s.mu.Lock()
	st.s.sources[so.id] = so
	st.s.mu.Unlock()
	return so, nil
}

// Buffer is a message being written: fill Data, then Emit it.
type Buffer struct {
	// Data is where the message goes; its length is what was asked for
	// and may be shortened before Emit (Truncate): Emit sends len(Data)
	// bytes. On the host transport it is a
	// slot of the memory shared with the daemon.
	Data  []byte
	raw   *[]byte  // virtio transport
	large *[]byte  // virtio transport, a message larger than a frame
	host  *hostShm // host transport: Data is TX slot slot
	slot  uint32
}

// GetBuffer returns a buffer for a message of size bytes (at most
// Session.MaxMessage: ErrTooLarge past it). The message is built in
// place: Emit sends it without a copy. On the host transport a message
// larger than one slot takes a run of adjacent slots, so Data is one
// contiguous slice of the shared region whatever its size; on the
// virtio transport, a message larger than a frame is built in a buffer
// of the session's and sent as fragments (guestproto.EmitFrag). It does not
// wait: on the host transport, when every TX slot of the session is in
// flight (or no run of free slots is long enough), it returns an error
// wrapping ErrNoBuffers (see GetBufferContext). It may also return
// ErrClosed.
func (so *Source) GetBuffer(size int) (*Buffer, error) {
	if h := so.s.host; h != nil {
		if size < 0 || size > h.maxMsg {
			return nil, ErrTooLarge
		}
		id, err := h.alloc(size)
		if err != nil {
			return nil, err
		}
		return h.buffer(id, size), nil
	}
	if size > MaxMessage && size <= so.s.maxEmit {
		// Sent as fragments (emitLarge).
		bp := so.s.large.Get().(*[]byte)
		b := bufferPool.Get().(*Buffer)
		*b = Buffer{Data: (*bp)[:size], large: bp}
		return b, nil
	}
	if size < 0 || size > MaxMessage {
		return nil, ErrTooLarge
	}
	bp := so.s.bufs.Get().(*[]byte)
	b := bufferPool.Get().(*Buffer)
	*b = Buffer{Data: (*bp)[guestproto.EmitOverhead : guestproto.EmitOverhead+size], raw: bp}
	return b, nil
}

// Truncate cuts the buffer's message to its first n bytes, so that Emit
// sends only what was written:
//
//	b, _ := src.GetBuffer(guestlib.MaxMessage)
//	b.Truncate(copy(b.Data, msg))
//
// It panics if n is negative or larger than len(b.Data).
func (b *Buffer) Truncate(n int) {
	if n < 0 || n > len(b.Data) {
		panic(fmt.Sprintf("guestlib: Buffer.Truncate(%d) out of range [0, %d]", n, len(b.Data)))
	}
	b.Data = b.Data[:n]
}

// GetBufferContext is GetBuffer that waits, until ctx ends, for a TX slot
// when none is free (the daemon returns each slot as soon as it has
// passed the message on). On the virtio transport it never waits. The
// error when ctx ends wraps both ctx.Err() and ErrNoBuffers.
//
// Do not call it from a sink's Callback: callbacks run on the goroutine
// that learns of returned TX slots, so a callback waiting for one waits
// until ctx ends. Use GetBuffer there and handle ErrNoBuffers.
func (so *Source) GetBufferContext(ctx context.Context, size int) (*Buffer, error) {
	h := so.s.host
	if h == nil || size < 0 || size > h.maxMsg {
		return so.GetBuffer(size)
	}
	id, err := h.waitTX(ctx, so.s.done, size)
	if err != nil {
		return nil, err
	}
	return h.buffer(id, size), nil
}

// Token identifies an emitted message for Outcome.
type Token uint64

// Emit sends the buffer's message and gives the buffer back: it must not
// be used afterwards. The token asks Outcome for what became of it.
func (so *Source) Emit(b *Buffer) (Token, error) {
	if b.host != nil {
		return so.emitHost(b)
	}
	if b.large != nil {
		return so.emitLarge(b)
	}
	if b.raw == nil {
		return 0, errors.New("guestlib: buffer already emitted")
	}
	raw := *b.raw
	if len(b.Data) > MaxMessage || (len(b.Data) > 0 && &b.Data[0] != &raw[guestproto.EmitOverhead]) {
		return 0, errors.New("guestlib: buffer data moved or grew; write into Data in place")
	}
	so.mu.Lock()
	tok := so.token.Add(1)
	n, _ := guestproto.PutEmit(raw, so.s.id, so.id, tok, b.Data)
	err := so.s.writeEmit(raw[:n])
	so.mu.Unlock()
	so.s.bufs.Put(b.raw)
	b.raw, b.Data = nil, nil
	bufferPool.Put(b)
	if err != nil {
		return Token(tok), fmt.Errorf("guestlib: emit: %w", err)
	}
	return Token(tok), nil
}

// emitLarge sends a message larger than a frame as EmitFrag frames of
// guestproto.FragSize bytes (the last one the rest), in order, from one
// datagram buffer: the daemon reassembles them. A message cut to a frame
// (Truncate) goes as an Emit.
func (so *Source) emitLarge(b *Buffer) (Token, error) {
	bp, data := b.large, b.Data
	if len(data) > so.s.maxEmit || (len(data) > 0 && &data[0] != &(*bp)[0]) {
		return 0, errors.New("guestlib: buffer data moved or grew; write into Data in place")
	}
	frame := so.s.bufs.Get().(*[]byte)
	count := (len(data) + guestproto.FragSize - 1) / guestproto.FragSize
	so.mu.Lock()
	tok := so.token.Add(1)
	var err error
	if len(data) <= MaxMessage {
		n, _ := guestproto.PutEmit(*frame, so.s.id, so.id, tok, data)
		err = so.s.writeEmit((*frame)[:n])
	} else {
		for i := 0; i < count && err == nil; i++ {
			part := data[i*guestproto.FragSize : min((i+1)*guestproto.FragSize, len(data))]
			n, _ := guestproto.PutEmitFrag(*frame, so.s.id, so.id, tok, uint16(i), uint16(count), part)
			err = so.s.writeEmit((*frame)[:n])
		}
	}
	so.mu.Unlock()
	so.s.bufs.Put(frame)
	so.s.large.Put(bp)
	*b = Buffer{}
	bufferPool.Put(b)
	if err != nil {
		return Token(tok), fmt.Errorf("guestlib: emit: %w", err)
	}
	return Token(tok), nil
}

// Close closes the source.
func (so *Source) Close(ctx context.Context) error {
	if h := so.s.host; h != nil {
		h.flush(ctx) // the close must not overtake what was emitted (shared memory, not the socket)
	}
	_, err := so.s.request(ctx, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CloseSource}, ID: so.id})
	return err
}

// Message is a received message. Release it when done: its memory is
// reused.
type Message struct {
	// Data is the message.
	Data []byte
	// Source is the global id of the source that emitted it.
	Source uint64
	// Seq is its sequence number at that source (from 1, no gaps unless
	// messages were dropped).
	Seq uint64
	// Channel is the channel it was emitted on.
	Channel uint32
	buf     *[]byte  // virtio transport
	large   *[]byte  // virtio transport, reassembled from DeliverFrag frames
	frames  uint32   // virtio transport: deliveries it took of the sink's credit, less one
	host    *hostShm // host transport: Data is RX slot slot
	slot    uint32
	sink    *Sink
}

// Release gives the message's memory back (on the host transport, its
// slot to the daemon); the Message must not be used afterwards.
func (m *Message) Release() {
	switch {
	case m.host != nil:
		// Its slot's own Message (hostShm.msgs), not a pooled one:
		// cleared before the slot goes back.
		h, slot := m.host, m.slot
		*m = Message{}
		h.releaseRX(slot)
		return
	case m.buf != nil:
		m.sink.s.bufs.Put(m.buf)
	case m.large != nil:
		m.sink.s.large.Put(m.large)
	default:
		return
	}
	*m = Message{}
	messagePool.Put(m)
}

// Messages and Buffers are reused, so receiving and emitting allocate
// nothing in the steady state.
var (
	messagePool = sync.Pool{New: func() any { return new(Message) }}
	bufferPool  = sync.Pool{New: func() any { return new(Buffer) }}
)

// Sink receives a channel's messages.
type Sink struct {
	s       *Session
	id      uint32
	channel uint32
	queue   chan *Message
	cb      func(*Message)
	dropped atomic.Uint64
	mu      sync.RWMutex // push holds it shared; closeLocal exclusively
	closed  bool         // +checklocks:mu

	// Credit (virtio transport; window 0 on the host transport): the
	// last delivery index read, the messages taken since the last Credit.
	window      uint32
	lastIndex   atomic.Uint32
	sinceCredit atomic.Uint32
	creditMu    sync.Mutex
	creditBuf   [guestproto.CreditLen]byte // +checklocks:creditMu

	// The large message being reassembled from DeliverFrag frames (the
	// receive goroutine's): its buffer, what it is, how far it got.
	asm               *[]byte
	asmSource, asmSeq uint64
	asmNext, asmCount uint16
	asmLen            int
	asmStart          time.Time
}

// largeTimeout bounds how long a large message may take to arrive whole.
const largeTimeout = time.Second

// fragment takes one DeliverFrag for the sink. The daemon sends a
// message's frames in order, one message at a time per port: a frame out
// of order, or a new message before the last completed, drops the
// message in progress (counted with Dropped), as does a message over the
// session's largest or one older than largeTimeout.
func (sk *Sink) fragment(m *guestproto.Message) {
	s := sk.s
	if m.FragIndex == 0 {
		if sk.asm != nil { // the previous one lost its last frames
			sk.dropAsm()
		}
		if int(m.FragCount-1)*guestproto.FragSize >= s.maxEmit {
			sk.dropped.Add(1)
			return
		}
		sk.asm = s.large.Get().(*[]byte)
		sk.asmSource, sk.asmSeq, sk.asmNext, sk.asmCount, sk.asmLen, sk.asmStart = m.Source, m.Seq, 0, m.FragCount, 0, time.Now()
	}
	if sk.asm == nil {
		return // the rest of a message whose start was lost (counted then)
	}
	if m.FragIndex != sk.asmNext || m.FragCount != sk.asmCount || m.Source != sk.asmSource || m.Seq != sk.asmSeq ||
		sk.asmLen+len(m.Payload) > s.maxEmit || (m.FragIndex < m.FragCount-1 && len(m.Payload) != guestproto.FragSize) ||
		time.Since(sk.asmStart) > largeTimeout {
		sk.dropAsm()
		return
	}
	sk.asmLen += copy((*sk.asm)[sk.asmLen:], m.Payload)
	sk.asmNext++
	if sk.asmNext < sk.asmCount {
		return
	}
	msg := messagePool.Get().(*Message)
	*msg = Message{Data: (*sk.asm)[:sk.asmLen], Source: sk.asmSource, Seq: sk.asmSeq, Channel: m.Channel, large: sk.asm,
		frames: uint32(sk.asmCount) - 1, sink: sk}
	sk.asm = nil
	sk.push(msg)
}

// dropAsm drops the large message in progress (counted), giving its
// frames back to the credit.
func (sk *Sink) dropAsm() {
	sk.s.large.Put(sk.asm)
	sk.asm = nil
	sk.dropped.Add(1)
	sk.tookFrames(uint32(sk.asmNext))
}

// SinkOptions configure a sink.
type SinkOptions struct {
	// Callback, when set, is called for every message on the session's
	// receive goroutine (it must not block for long — in particular not
	// in Source.GetBufferContext — and should Release the message);
	// Consume then returns nothing.
	Callback func(*Message)
	// Queue is how many messages wait for Consume before new ones are
	// dropped; default 4096. On the host transport a waiting message
	// holds one of the session's RX slots.
	Queue int
}

// CreateSink opens a sink on channel.
func (st *Stream) CreateSink(ctx context.Context, channel uint32, o SinkOptions) (*Sink, error) {
	if o.Queue <= 0 {
		o.Queue = 4096
	}
	sk := &Sink{s: st.s, channel: channel, queue: make(chan *Message, o.Queue), cb: o.Callback}
	r, err := st.s.request(ctx, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateSink}, Stream: st.id, Channel: channel})
	if err != nil {
		return nil, err
	}
	sk.id = r.id
	if st.s.host == nil {
		sk.window = creditWindow(o.Queue, st.s.rcvbuf)
		if st.s.largeRX {
			// Credit counts frames, and a large message's must all fit
			// the window at once: up to maxLargeCredit, still within
			// the queue (a frame may be a message) and the socket buffer.
			sk.window = uint32(max(minCredit, min(o.Queue, maxLargeCredit, st.s.rcvbuf/creditBytes)))
		}
	}
	st.s.mu.Lock()
	st.s.sinks[sk.id] = sk
	st.s.mu.Unlock()
	sk.sendCredit()
	return sk, nil
}

// took counts a message off the sink's window (consumed, handed to the
// callback, or dropped) and sends a Credit every quarter window.
func (sk *Sink) took() { sk.tookFrames(1) }

// tookFrames is took for a message that took n deliveries of the credit
// (a large one's frames).
func (sk *Sink) tookFrames(n uint32) {
	if sk.window == 0 {
		return
	}
	if sk.sinceCredit.Add(n) >= max(1, sk.window/4) {
		sk.sinceCredit.Store(0)
		sk.sendCredit()
	}
}

// sendCredit tells the daemon the last index read and the room left.
func (sk *Sink) sendCredit() {
	if sk.window == 0 {
		return
	}
	room := sk.window - min(sk.window, uint32(len(sk.queue)))
	sk.creditMu.Lock()
	defer sk.creditMu.Unlock()
	n, _ := guestproto.PutCredit(sk.creditBuf[:], sk.s.id, sk.id, sk.lastIndex.Load(), room)
	sk.s.conn.Write(sk.creditBuf[:n])
}

func (sk *Sink) push(m *Message) {
	frames := m.frames + 1
	if sk.cb != nil {
		sk.cb(m)
		sk.tookFrames(frames)
		return
	}
	sk.mu.RLock()
	defer sk.mu.RUnlock()
	sk.pushLocked(m)
}

// pushLocked queues m for Consume, or drops it (counted) when the queue
// is full; the caller holds mu shared and the sink has no callback.
//
// +checklocksread:sk.mu
func (sk *Sink) pushLocked(m *Message) {
	if sk.closed {
		m.Release()
		return
	}
	select {
	case sk.queue <- m:
	default:
		sk.dropped.Add(1)
		frames := m.frames + 1
		m.Release()
		sk.tookFrames(frames)
	}
}

// Consume waits for the next message. On a polling session (Poll) it
// spins instead of sleeping.
func (sk *Sink) Consume(ctx context.Context) (*Message, error) {
	if h := sk.s.host; h != nil && h.polling.Load() > 0 {
		return sk.consumePoll(ctx, h)
	}
	// A message waiting is taken without a select on ctx (which locks
	// both channels): the busy sink's path.
	select {
	case m, ok := <-sk.queue:
		return sk.consumed(m, ok)
	default:
	}
	select {
	case m, ok := <-sk.queue:
		return sk.consumed(m, ok)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// consumed is Consume's end for a receive from the queue (ok false: closed).
func (sk *Sink) consumed(m *Message, ok bool) (*Message, error) {
	if !ok {
		return nil, ErrClosed
	}
	sk.tookFrames(m.frames + 1)
	return m, nil
}

// TryConsume returns the next message if one is waiting.
func (sk *Sink) TryConsume() (*Message, bool) {
	select {
	case m, ok := <-sk.queue:
		if ok {
			sk.tookFrames(m.frames + 1)
		}
		return m, ok
	default:
		return nil, false
	}
}

// DataAvailable returns how many messages wait for Consume.
func (sk *Sink) DataAvailable() int { return len(sk.queue) }

// Dropped returns how many messages arrived while the queue was full.
func (sk *Sink) Dropped() uint64 { return sk.dropped.Load() }

// Close closes the sink.
func (sk *Sink) Close(ctx context.Context) error {
	_, err := sk.s.request(ctx, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CloseSink}, ID: sk.id})
	sk.s.mu.Lock()
	delete(sk.s.sinks, sk.id)
	sk.s.mu.Unlock()
	sk.closeLocal()
	return err
}

func (sk *Sink) closeLocal() {
	sk.mu.Lock()
	defer sk.mu.Unlock()
	if !sk.closed {
		sk.closed = true
		close(sk.queue)
	}
}
