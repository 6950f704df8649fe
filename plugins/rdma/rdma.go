package rdma

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/internal/rdma"
	"github.com/veloce-io/veloce/internal/wire"
)

// Name is the datapath's name in the QoS policy.
const Name = "rdma"

// Defaults.
const (
	DefaultPort          = 7000
	DefaultSlotSize      = 4096
	DefaultSendSlots     = 1024
	DefaultRecvSlots     = 1024
	DefaultMaxSendWR     = 256
	DefaultBurst         = 32
	DefaultSpinIdle      = 200 * time.Microsecond
	DefaultMaxSleep      = time.Millisecond
	DefaultRetryInterval = 200 * time.Millisecond
	// DefaultTimeout is the ACK timeout code: 4.096 µs << 16 = 268 ms,
	// so with 7 retries a dead peer is noticed in about two seconds.
	DefaultTimeout = 16
	// DefaultStallTimeout is how long a queue pair may hold sends with
	// no completion before it is taken for dead.
	DefaultStallTimeout = 5 * time.Second
)

// Errors.
var (
	// ErrClosed means the plugin was closed.
	ErrClosed = errors.New("rdma: plugin closed")
	// ErrTooLong means a message does not fit the peer's receive buffers.
	ErrTooLong = errors.New("rdma: message longer than the peer's receive buffers") // +checklocksignore: a sentinel, never written
	// ErrNotReachable means the address is not on the RDMA netdev's subnet.
	ErrNotReachable = errors.New("rdma: address not on the RDMA subnet")
	// ErrPeerDown means no queue pair to the peer is up and the last
	// attempt to connect failed (no plugin answers there, or it is
	// restarting); SendBatch keeps retrying every Options.RetryInterval.
	ErrPeerDown = errors.New("rdma: peer not connected")
)

// PeerError is SendBatch's error for a packet it could not send to Peer.
type PeerError struct {
	Peer netip.AddrPort
	Err  error // ErrPeerDown, ErrTooLong, ErrNotReachable
}

func (e *PeerError) Error() string { return fmt.Sprintf("rdma: %v: %v", e.Peer, e.Err) }
func (e *PeerError) Unwrap() error { return e.Err }

// Options configure New.
type Options struct {
	// Addr is the plugin's IPv4 address on the RDMA netdev, with the
	// subnet's prefix; peers on the subnet are reachable. Required.
	Addr netip.Prefix
	// Device is the RDMA device (e.g. rxe0); default: the device on the
	// netdev that has Addr (rdmamap).
	Device string
	// DevicePort is the device's port; default 1.
	DevicePort uint8
	// Port is the plugin's port: in LocalAddr, and the TCP port of the
	// default Signaller. Default DefaultPort (the kernel-UDP plugin's
	// default too, so a peer has one address for every datapath).
	Port uint16
	// Signaller carries connection set-up; default NewTCPSignaller on
	// Addr:Port. The plugin closes it.
	Signaller Signaller
	// SlotSize is the size of each registered send and receive buffer:
	// the longest message; default DefaultSlotSize.
	SlotSize int
	// SendSlots and RecvSlots are how many buffers are registered for
	// sending (shared by all peers) and posted to the shared receive
	// queue; defaults DefaultSendSlots and DefaultRecvSlots.
	SendSlots, RecvSlots int
	// MaxSendWR is each queue pair's send queue depth; default
	// DefaultMaxSendWR.
	MaxSendWR int
	// Burst is the most completions one poll moves; default DefaultBurst.
	Burst int
	// CPU pins the polling thread to that CPU; -1 leaves it unpinned.
	CPU int
	// SpinIdle is how long the polling thread spins without work before
	// it sleeps on the completion channel; MaxSleep bounds a sleep.
	// Defaults DefaultSpinIdle and DefaultMaxSleep.
	SpinIdle, MaxSleep time.Duration
	// Timeout is the queue pairs' ACK timeout code (4.096 µs << Timeout);
	// default DefaultTimeout. RetryCount (default 7) retries make a dead
	// peer's queue pair fail.
	Timeout, RetryCount uint8
	// RetryInterval is the pause between attempts to connect to a peer
	// that is down; default DefaultRetryInterval.
	RetryInterval time.Duration
	// StallTimeout fails a queue pair whose sends saw no completion for
	// that long, so that it is reconnected; default DefaultStallTimeout.
	// Soft-RoCE does not always report a vanished peer queue pair as
	// retries exceeded (a killed peer's device may answer RNR, which RC
	// retries forever), so transport errors alone do not notice a
	// restarted peer.
	StallTimeout time.Duration
	// Logger receives connection events; nil discards.
	Logger *slog.Logger
}

// Stats are the plugin's counters, its device and its queue pairs:
// control.RDMAStats, which velocectl remote decodes. QueuePairs has one
// entry per peer the plugin knows, sorted by address.
type Stats = control.RDMAStats

// Peer connection states in QueuePairInfo.State besides the QP states
// (RESET, INIT, RTR, RTS, SQD, SQE, ERR).
const (
	PeerConnecting = "connecting" // no queue pair yet, an attempt runs
	PeerDown       = "down"       // was connected; reconnecting every RetryInterval
	PeerNoRDMA     = "no-rdma"    // never connected, the last attempt failed: other datapaths carry its messages
	PeerFailed     = "failed"     // its queue pair failed; the next send reconnects
)

// QueuePairInfo is the queue pair to one peer (control.RDMAQueuePair);
// its State is the device's state (RTS when up) or one of PeerConnecting,
// PeerDown, PeerNoRDMA, PeerFailed.
type QueuePairInfo = control.RDMAQueuePair

// conn is one RC queue pair to a peer.
type conn struct {
	id         uint32
	peer       netip.AddrPort // the peer's LocalAddr
	qp         *rdma.QP
	remoteSlot int
	// The set-up's numbers, for velocectl remote: the first PSNs of
	// both sides and the peer's QPN. Set before the connection is
	// installed, read-only after.
	psn     uint32
	peerPSN uint32
	peerQPN uint32
	failed  atomic.Bool
	// retired, outstanding and progress are guarded by Plugin.txMu,
	// which checklocks cannot name from here: every access is in a
	// function annotated +checklocks:p.txMu (or holding it).
	retired bool // +checklocksignore
	// outstanding counts posted sends not completed; progress is when
	// the last of them completed or the first was posted (unix ns).
	outstanding int   // +checklocksignore
	progress    int64 // +checklocksignore
}

// peerState is what the plugin knows of one peer address.
type peerState struct {
	addr    netip.AddrPort
	cur     atomic.Pointer[conn]
	dialing atomic.Bool
	nextTry atomic.Int64 // unix ns before which no new attempt starts
	down    atomic.Bool  // the last attempt failed
	ever    atomic.Bool  // a connection was up once
	mu      sync.Mutex   // orders accepts and the ends of dials
	// gen counts the connections installed: a dial that began before
	// the last one is superseded.
	gen uint64 // +checklocks:mu
}

// tables are the lookups the data path makes, replaced whole (copy on
// write) on connection events, so the data path takes no lock.
type tables struct {
	peers map[netip.Addr]*peerState
	byQPN map[uint32]*conn
	byID  map[uint32]*conn
}

// Plugin is an RDMA device carrying wire messages over RC queue pairs. It
// implements the runtime's Datapath, Poller, Reacher, LiveReacher and
// StatsReporter.
type Plugin struct {
	opts  Options
	log   *slog.Logger
	local netip.AddrPort
	sig   Signaller

	ctx      *rdma.Context
	pd       *rdma.PD
	gidIndex int
	gid      rdma.GID
	mtu      rdma.MTU
	ch       *rdma.CompChannel
	sendCQ   *rdma.CQ
	recvCQ   *rdma.CQ
	srq      *rdma.SRQ
	sendMem  *rdma.Memory
	recvMem  *rdma.Memory
	sendMR   *rdma.MR
	recvMR   *rdma.MR
	wakeFd   int
	netdev   string

	tblMu sync.Mutex // serialises table updates
	tbl   atomic.Pointer[tables]
	ids   atomic.Uint32

	// txMu serialises sending: SendBatch, the polling thread's reaping
	// of send completions, and queue pair retirement.
	txMu    sync.Mutex
	free    []uint32           // +checklocks:txMu
	txWRs   []rdma.WorkRequest // +checklocks:txMu
	txWCs   []rdma.WC          // +checklocks:txMu
	retired []*conn            // +checklocks:txMu

	polling atomic.Bool
	closed  atomic.Bool
	pausing atomic.Bool
	lifeMu  sync.Mutex
	stopped sync.WaitGroup // Poll, RecvBatch, dials, Serve
	stop    context.Context
	cancel  context.CancelFunc

	// The receive side's buffers belong to whoever holds polling (Poll
	// or RecvBatch): one goroutine at a time, no lock.
	rxWCs  []rdma.WC
	rxWRs  []rdma.WorkRequest
	rxPkts []wire.Packet

	txMessages, txFull, txErrors, rxMessages, rxErrors, rxUnknown atomic.Uint64
	connects, accepts, connectFailed, qpFailures, sleeps          atomic.Uint64
}

// Available reports whether this build has the verbs binding.
func Available() bool { return rdma.Available() }

// New opens the device, registers the slot memory, fills the shared
// receive queue and starts answering connection requests. Errors wrap
// rdma.ErrUnavailable (build without the binding), rdma.ErrNoDevice (no
// RDMA device on the netdev) or rdma.ErrNoGID.
func New(opts Options) (p *Plugin, err error) {
	a := opts.Addr.Addr().Unmap()
	if !a.Is4() || opts.Addr.Bits() < 1 {
		return nil, fmt.Errorf("rdma: address %v is not an IPv4 address with its prefix", opts.Addr)
	}
	if !rdma.Available() {
		return nil, fmt.Errorf("rdma: %w", rdma.ErrUnavailable)
	}
	setDefaults(&opts)
	if opts.Device == "" {
		nd, err := rdma.NetdevForAddr(a)
		if err != nil {
			return nil, err
		}
		if opts.Device, err = rdma.DeviceForNetdev(nd); err != nil {
			return nil, err
		}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p = &Plugin{opts: opts, log: log, local: netip.AddrPortFrom(a, opts.Port), wakeFd: -1}
	p.netdev, _ = rdma.NetdevForAddr(a)
	defer func() {
		if err != nil {
			p.release()
		}
	}()
	if p.ctx, err = rdma.Open(opts.Device); err != nil {
		return nil, err
	}
	pa, err := p.ctx.QueryPort(opts.DevicePort)
	if err != nil {
		return nil, err
	}
	p.mtu = pa.ActiveMTU
	// The GID table follows the netdev's addresses a moment later.
	for i := 0; ; i++ {
		p.gidIndex, p.gid, err = p.ctx.RoCEv2GID(opts.DevicePort, a)
		if err == nil || i == 30 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return nil, err
	}
	if p.pd, err = p.ctx.AllocPD(); err != nil {
		return nil, err
	}
	if p.ch, err = p.ctx.NewCompChannel(); err != nil {
		return nil, err
	}
	if p.sendCQ, err = p.ctx.NewCQ(opts.SendSlots, nil); err != nil {
		return nil, err
	}
	if p.recvCQ, err = p.ctx.NewCQ(opts.RecvSlots, p.ch); err != nil {
		return nil, err
	}
	if p.srq, err = p.pd.NewSRQ(opts.RecvSlots); err != nil {
		return nil, err
	}
	if p.sendMem, err = rdma.Map(opts.SendSlots * opts.SlotSize); err != nil {
		return nil, err
	}
	if p.recvMem, err = rdma.Map(opts.RecvSlots * opts.SlotSize); err != nil {
		return nil, err
	}
	if p.sendMR, err = p.pd.RegisterMemory(p.sendMem, 0); err != nil {
		return nil, err
	}
	if p.recvMR, err = p.pd.RegisterMemory(p.recvMem, rdma.AccessLocalWrite); err != nil {
		return nil, err
	}
	if p.wakeFd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		return nil, fmt.Errorf("rdma: eventfd: %w", err)
	}
	p.initSendLocked()
	p.rxWCs = make([]rdma.WC, opts.Burst)
	p.rxWRs = make([]rdma.WorkRequest, 0, max(opts.Burst, opts.RecvSlots))
	p.rxPkts = make([]wire.Packet, opts.Burst)
	for i := 0; i < opts.RecvSlots; i++ {
		p.rxWRs = append(p.rxWRs, p.recvWR(uint32(i)))
	}
	if n, err := p.srq.PostRecv(p.rxWRs); err != nil || n != opts.RecvSlots {
		return nil, fmt.Errorf("rdma: fill the shared receive queue (%d of %d): %w", n, opts.RecvSlots, err)
	}
	p.rxWRs = p.rxWRs[:0]
	if err := p.recvCQ.ReqNotify(); err != nil {
		return nil, err
	}
	p.tbl.Store(&tables{peers: map[netip.Addr]*peerState{}, byQPN: map[uint32]*conn{}, byID: map[uint32]*conn{}})
	p.stop, p.cancel = context.WithCancel(context.Background())
	p.sig = opts.Signaller
	if p.sig == nil {
		if p.sig, err = NewTCPSignaller(p.local); err != nil {
			return nil, err
		}
	}
	p.stopped.Add(1)
	go func() {
		defer p.stopped.Done()
		if err := p.sig.Serve(p.accept); err != nil {
			p.log.Warn("rdma: connection listener stopped", "err", err)
		}
	}()
	log.Info("rdma datapath up", "device", opts.Device, "addr", opts.Addr, "port", opts.Port, "gid_index", p.gidIndex, "mtu", p.mtu.Bytes())
	return p, nil
}

// initSendLocked makes the send side's buffers; New calls it before
// anyone else sees p.
//
// +checklocksignore: p is not shared yet
func (p *Plugin) initSendLocked() {
	p.free = make([]uint32, p.opts.SendSlots)
	for i := range p.free {
		p.free[i] = uint32(p.opts.SendSlots - 1 - i)
	}
	p.txWRs = make([]rdma.WorkRequest, 0, p.opts.MaxSendWR)
	p.txWCs = make([]rdma.WC, 64)
}

func setDefaults(o *Options) {
	if o.DevicePort == 0 {
		o.DevicePort = 1
	}
	if o.Port == 0 {
		o.Port = DefaultPort
	}
	if o.SlotSize <= 0 {
		o.SlotSize = DefaultSlotSize
	}
	if o.SendSlots <= 0 {
		o.SendSlots = DefaultSendSlots
	}
	if o.RecvSlots <= 0 {
		o.RecvSlots = DefaultRecvSlots
	}
	if o.MaxSendWR <= 0 {
		o.MaxSendWR = DefaultMaxSendWR
	}
	if o.Burst <= 0 {
		o.Burst = DefaultBurst
	}
	if o.SpinIdle <= 0 {
		o.SpinIdle = DefaultSpinIdle
	}
	if o.MaxSleep <= 0 {
		o.MaxSleep = DefaultMaxSleep
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.RetryCount == 0 {
		o.RetryCount = 7
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = DefaultRetryInterval
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = DefaultStallTimeout
	}
}

func (p *Plugin) recvWR(slot uint32) rdma.WorkRequest {
	return rdma.WorkRequest{WRID: uint64(slot), Addr: p.recvMR.Addr() + uint64(slot)*uint64(p.opts.SlotSize),
		Len: uint32(p.opts.SlotSize), LKey: p.recvMR.LKey()}
}

// Name implements the runtime's Datapath.
func (p *Plugin) Name() string { return Name }

// LocalAddr is where peers reach this plugin.
func (p *Plugin) LocalAddr() netip.AddrPort { return p.local }

// Device returns the RDMA device's name.
func (p *Plugin) Device() string { return p.opts.Device }

// Reaches reports whether addr is on the RDMA netdev's subnet and not
// known to lack RDMA: a peer whose connection attempts all failed and that
// was never connected is taken to have no RDMA plugin (the runtime then
// uses another datapath for it).
func (p *Plugin) Reaches(addr netip.Addr) bool {
	addr = addr.Unmap()
	if !p.opts.Addr.Contains(addr) || addr == p.local.Addr() {
		return false
	}
	if ps := p.tbl.Load().peers[addr]; ps != nil && ps.down.Load() && !ps.ever.Load() {
		return false
	}
	return true
}

// ReachesNow is Reaches: no system call, no allocation, so the runtime
// asks it at every message (backend.LiveReacher) and follows the peers
// found to have RDMA or not.
func (p *Plugin) ReachesNow(addr netip.Addr) bool { return p.Reaches(addr) }

// Probe connects to the plugin at peer now, if not connected, and returns
// nil once a queue pair to it is up: an error wrapping ErrPeerDown (or
// ErrNotReachable) says the peer has no RDMA plugin, and Reaches turns
// false for it.
func (p *Plugin) Probe(ctx context.Context, peer netip.AddrPort) error {
	ps, err := p.peer(peer)
	if err != nil {
		return err
	}
	if c := ps.cur.Load(); c != nil && !c.failed.Load() {
		return nil
	}
	ps.nextTry.Store(0)
	for {
		p.connect(ps)
		for ps.dialing.Load() {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Millisecond):
			}
		}
		if c := ps.cur.Load(); c != nil && !c.failed.Load() {
			return nil
		}
		if ps.down.Load() {
			return &PeerError{Peer: peer, Err: ErrPeerDown}
		}
	}
}

// peer returns the state of peer, making it on first use.
func (p *Plugin) peer(peer netip.AddrPort) (*peerState, error) {
	a := peer.Addr().Unmap()
	if ps := p.tbl.Load().peers[a]; ps != nil {
		return ps, nil
	}
	if !p.opts.Addr.Contains(a) {
		return nil, &PeerError{Peer: peer, Err: ErrNotReachable}
	}
	p.tblMu.Lock()
	defer p.tblMu.Unlock()
	t := p.tbl.Load()
	if ps := t.peers[a]; ps != nil {
		return ps, nil
	}
	ps := &peerState{addr: netip.AddrPortFrom(a, peer.Port())}
	nt := *t
	nt.peers = cloneMap(t.peers)
	nt.peers[a] = ps
	p.tbl.Store(&nt)
	return ps, nil
}

func cloneMap[K comparable, V any](m map[K]V) map[K]V {
	n := make(map[K]V, len(m)+1)
	for k, v := range m {
		n[k] = v
	}
	return n
}

// newConn makes a queue pair in INIT and its local endpoint.
func (p *Plugin) newConn(peer netip.AddrPort) (*conn, Endpoint, error) {
	qp, err := p.pd.NewRCQP(rdma.QPOptions{SendCQ: p.sendCQ, RecvCQ: p.recvCQ, SRQ: p.srq, MaxSendWR: p.opts.MaxSendWR})
	if err != nil {
		return nil, Endpoint{}, err
	}
	if err := qp.ToInit(p.opts.DevicePort, 0); err != nil {
		qp.Close()
		return nil, Endpoint{}, err
	}
	c := &conn{id: p.ids.Add(1), peer: peer, qp: qp}
	return c, Endpoint{Addr: p.local, QPN: qp.Num(), PSN: rand.Uint32() & 0xffffff, GID: p.gid,
		SlotSize: uint32(p.opts.SlotSize), MTU: p.mtu}, nil
}

// connectQP moves c's queue pair to RTR and RTS towards remote.
func (p *Plugin) connectQP(c *conn, local, remote Endpoint) error {
	mtu := min(p.mtu, remote.MTU)
	if mtu == 0 {
		mtu = rdma.MTU1024
	}
	if err := c.qp.ToRTR(rdma.RTRAttr{Port: p.opts.DevicePort, DestQPN: remote.QPN, RQPSN: remote.PSN, DestGID: remote.GID,
		SGIDIndex: p.gidIndex, MTU: mtu}); err != nil {
		return err
	}
	if err := c.qp.ToRTS(rdma.RTSAttr{SQPSN: local.PSN, Timeout: p.opts.Timeout, RetryCount: p.opts.RetryCount}); err != nil {
		return err
	}
	c.remoteSlot = int(remote.SlotSize)
	c.peer = remote.Addr
	c.psn, c.peerPSN, c.peerQPN = local.PSN, remote.PSN, remote.QPN
	return nil
}

// install makes c the peer's connection (ps.mu held) and retires the one
// it replaces.
//
// +checklocks:ps.mu
func (p *Plugin) install(ps *peerState, c *conn) {
	p.tblMu.Lock()
	t := p.tbl.Load()
	nt := *t
	nt.byQPN, nt.byID = cloneMap(t.byQPN), cloneMap(t.byID)
	nt.byQPN[c.qp.Num()], nt.byID[c.id] = c, c
	p.tbl.Store(&nt)
	p.tblMu.Unlock()
	old := ps.cur.Swap(c)
	ps.gen++
	ps.down.Store(false)
	ps.ever.Store(true)
	if old != nil {
		p.txMu.Lock()
		p.retireLocked(old)
		p.txMu.Unlock()
	}
}

// retireLocked fails c's queue pair (its sends flush) and destroys it
// once no send is outstanding.
//
// +checklocks:p.txMu
func (p *Plugin) retireLocked(c *conn) {
	if c.retired {
		return
	}
	c.retired = true
	c.failed.Store(true)
	c.qp.ToError()
	p.retired = append(p.retired, c)
	p.destroyRetiredLocked()
}

// +checklocks:p.txMu
func (p *Plugin) destroyRetiredLocked() {
	k := 0
	for _, c := range p.retired {
		if c.outstanding > 0 {
			p.retired[k] = c
			k++
			continue
		}
		p.tblMu.Lock()
		t := p.tbl.Load()
		nt := *t
		nt.byQPN, nt.byID = cloneMap(t.byQPN), cloneMap(t.byID)
		delete(nt.byQPN, c.qp.Num())
		delete(nt.byID, c.id)
		p.tbl.Store(&nt)
		p.tblMu.Unlock()
		c.qp.Close()
	}
	clear(p.retired[k:])
	p.retired = p.retired[:k]
}

// accept answers a peer's connection request.
func (p *Plugin) accept(remote Endpoint) (Endpoint, error) {
	if p.closed.Load() {
		return Endpoint{}, ErrClosed
	}
	ps, err := p.peer(remote.Addr)
	if err != nil {
		return Endpoint{}, err
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	// Both sides dialling at once: the lower address's dial wins.
	if ps.dialing.Load() && p.local.Addr().Less(remote.Addr.Addr()) {
		return Endpoint{}, ErrRefused
	}
	c, local, err := p.newConn(remote.Addr)
	if err != nil {
		return Endpoint{}, err
	}
	if err := p.connectQP(c, local, remote); err != nil {
		c.qp.Close()
		return Endpoint{}, err
	}
	p.install(ps, c)
	p.accepts.Add(1)
	p.log.Info("rdma: peer connected", "peer", remote.Addr, "qpn", local.QPN, "peer_qpn", remote.QPN)
	return local, nil
}

// connect starts connecting to ps unless an attempt runs or the last
// one failed less than RetryInterval ago. It never blocks.
func (p *Plugin) connect(ps *peerState) {
	if time.Now().UnixNano() < ps.nextTry.Load() || !ps.dialing.CompareAndSwap(false, true) {
		return
	}
	p.lifeMu.Lock()
	if p.closed.Load() {
		p.lifeMu.Unlock()
		ps.dialing.Store(false)
		return
	}
	p.stopped.Add(1)
	p.lifeMu.Unlock()
	go func() {
		defer p.stopped.Done()
		ps.mu.Lock()
		gen := ps.gen
		ps.mu.Unlock()
		err := p.dial(ps, gen)
		ps.mu.Lock()
		if err != nil && ps.gen == gen {
			ps.down.Store(true)
			ps.nextTry.Store(time.Now().Add(p.opts.RetryInterval).UnixNano())
			p.connectFailed.Add(1)
			p.log.Debug("rdma: connect failed", "peer", ps.addr, "err", err)
		}
		ps.dialing.Store(false)
		ps.mu.Unlock()
	}()
}

var errSuperseded = errors.New("rdma: connection superseded by the peer's") // +checklocksignore: a sentinel, never written

func (p *Plugin) dial(ps *peerState, gen uint64) error {
	c, local, err := p.newConn(ps.addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(p.stop, sigIOTimeout)
	remote, err := p.sig.Request(ctx, ps.addr, local)
	cancel()
	if err == nil {
		ps.mu.Lock()
		defer ps.mu.Unlock()
		switch {
		case ps.gen != gen:
			err = errSuperseded
		default:
			if err = p.connectQP(c, local, remote); err == nil {
				p.install(ps, c)
				p.connects.Add(1)
				p.log.Info("rdma: connected to peer", "peer", remote.Addr, "qpn", local.QPN, "peer_qpn", remote.QPN)
				return nil
			}
		}
	}
	c.qp.Close()
	return err
}

// SendBatch sends pkts, each a wire message for its Addr, from registered
// slots (one copy each) in one chain of work requests per peer run. It
// returns how many went: fewer with a nil error when the send slots or
// the queue pair are full, or while the first connection to the next
// packet's peer is being made (try again); fewer with a *PeerError for a
// packet that cannot go (skip it): its peer is down (ErrPeerDown; the
// plugin reconnects every RetryInterval), off the subnet, or the message
// is too long.
func (p *Plugin) SendBatch(pkts []wire.Packet) (int, error) {
	if p.closed.Load() {
		return 0, ErrClosed
	}
	p.txMu.Lock()
	defer p.txMu.Unlock()
	if p.closed.Load() {
		return 0, ErrClosed
	}
	p.reapLocked()
	t := p.tbl.Load()
	done := 0
	var cur *conn
	for done < len(pkts) {
		d := &pkts[done]
		ps := t.peers[d.Addr.Addr().Unmap()]
		if ps == nil {
			var err error
			if ps, err = p.peer(d.Addr); err != nil {
				if n := p.flushLocked(cur); n < 0 {
					return done + n, nil
				}
				return done, err
			}
		}
		c := ps.cur.Load()
		if c == nil || c.failed.Load() {
			if n := p.flushLocked(cur); n < 0 {
				return done + n, nil
			}
			p.connect(ps)
			if ps.down.Load() {
				return done, &PeerError{Peer: d.Addr, Err: ErrPeerDown}
			}
			return done, nil
		}
		if d.N > c.remoteSlot || d.N > p.opts.SlotSize {
			if n := p.flushLocked(cur); n < 0 {
				return done + n, nil
			}
			return done, &PeerError{Peer: d.Addr, Err: ErrTooLong}
		}
		if c != cur {
			if n := p.flushLocked(cur); n < 0 {
				return done + n, nil
			}
			cur = c
		}
		if len(p.free) == 0 || c.outstanding+len(p.txWRs) >= p.opts.MaxSendWR || len(p.txWRs) == cap(p.txWRs) {
			if n := p.flushLocked(cur); n < 0 {
				return done + n, nil
			}
			p.reapLocked()
			if len(p.free) == 0 || c.outstanding >= p.opts.MaxSendWR {
				p.txFull.Add(1)
				if c.outstanding > 0 && time.Now().UnixNano()-c.progress > int64(p.opts.StallTimeout) && !c.failed.Load() {
					p.qpFailures.Add(1)
					p.log.Info("rdma: queue pair to peer stalled", "peer", c.peer, "outstanding", c.outstanding)
					c.failed.Store(true)
					c.qp.ToError() // its sends flush; the next SendBatch reconnects
				}
				return done, nil
			}
		}
		slot := p.free[len(p.free)-1]
		p.free = p.free[:len(p.free)-1]
		off := int(slot) * p.opts.SlotSize
		n := copy(p.sendMem.Bytes()[off:off+p.opts.SlotSize], d.Bytes())
		p.txWRs = append(p.txWRs, rdma.WorkRequest{WRID: uint64(c.id)<<32 | uint64(slot),
			Addr: p.sendMR.Addr() + uint64(off), Len: uint32(n), LKey: p.sendMR.LKey(), Flags: rdma.SendSignaled})
		done++
	}
	if n := p.flushLocked(cur); n < 0 {
		return done + n, nil // the queue pair took fewer: those go again
	}
	return done, nil
}

// flushLocked posts the pending chain on c; it returns 0, or minus the
// number of requests not taken (their slots are freed).
//
// +checklocks:p.txMu
func (p *Plugin) flushLocked(c *conn) int {
	if len(p.txWRs) == 0 {
		return 0
	}
	wrs := p.txWRs
	p.txWRs = p.txWRs[:0]
	if c.outstanding == 0 {
		c.progress = time.Now().UnixNano()
	}
	n, err := c.qp.PostSend(wrs)
	c.outstanding += n
	p.txMessages.Add(uint64(n))
	if n < len(wrs) {
		for _, w := range wrs[n:] {
			p.free = append(p.free, uint32(w.WRID))
		}
		if err != nil && !errors.Is(err, syscall.ENOMEM) {
			p.txErrors.Add(1)
		}
		p.txFull.Add(1)
		return n - len(wrs)
	}
	return 0
}

// reapLocked takes the send completions: slots go back to the free
// list, and a failed send fails its queue pair (a dead peer shows as
// transport retries exceeded), so the next send reconnects.
//
// +checklocks:p.txMu
func (p *Plugin) reapLocked() {
	for {
		n, err := p.sendCQ.Poll(p.txWCs)
		if err != nil || n == 0 {
			break
		}
		t := p.tbl.Load()
		now := time.Now().UnixNano()
		for _, wc := range p.txWCs[:n] {
			p.free = append(p.free, uint32(wc.WRID))
			c := t.byID[uint32(wc.WRID>>32)]
			if c == nil {
				continue
			}
			c.outstanding--
			c.progress = now
			if wc.Status != rdma.WCSuccess && !c.failed.Load() {
				if wc.Status != rdma.WCFlushErr {
					p.qpFailures.Add(1)
					p.log.Info("rdma: queue pair to peer failed", "peer", c.peer, "status", wc.Status.String())
				}
				c.failed.Store(true)
				c.qp.ToError()
			}
		}
		if n < len(p.txWCs) {
			break
		}
	}
	if len(p.retired) > 0 {
		p.destroyRetiredLocked()
	}
}

// receive polls the receive CQ once and returns the messages as views of
// the receive slots in p.rxPkts; repost returns the slots.
func (p *Plugin) receive(wcs []rdma.WC) int {
	n, err := p.recvCQ.Poll(wcs)
	if err != nil || n == 0 {
		return 0
	}
	t := p.tbl.Load()
	k := 0
	p.rxWRs = p.rxWRs[:0]
	mem := p.recvMem.Bytes()
	for _, wc := range wcs[:n] {
		slot := uint32(wc.WRID)
		p.rxWRs = append(p.rxWRs, p.recvWR(slot))
		if wc.Status != rdma.WCSuccess {
			if wc.Status != rdma.WCFlushErr {
				p.rxErrors.Add(1)
			}
			continue
		}
		c := t.byQPN[wc.QPNum]
		if c == nil {
			p.rxUnknown.Add(1)
			continue
		}
		off := int(slot) * p.opts.SlotSize
		p.rxPkts[k] = wire.Packet{Addr: c.peer, Buf: mem[off : off+p.opts.SlotSize], N: int(wc.ByteLen)}
		k++
	}
	p.rxMessages.Add(uint64(k))
	return k
}

func (p *Plugin) repost() {
	if len(p.rxWRs) == 0 {
		return
	}
	if n, err := p.srq.PostRecv(p.rxWRs); err != nil || n < len(p.rxWRs) {
		p.log.Error("rdma: repost receive buffers", "posted", n, "of", len(p.rxWRs), "err", err)
	}
	p.rxWRs = p.rxWRs[:0]
}

// Poll runs the polling thread until ctx ends or the plugin closes: it
// hands each batch of received messages to handle (views of the receive
// slots, valid during the call, reposted to the shared receive queue in
// one chain after it) and calls flush on every turn. After SpinIdle
// without work it arms the CQ and sleeps on the completion channel (and
// Wake's eventfd), at most MaxSleep.
func (p *Plugin) Poll(ctx context.Context, handle func(pkts []wire.Packet), flush func() bool) error {
	if !p.polling.CompareAndSwap(false, true) {
		return errors.New("rdma: the device is polled already")
	}
	defer p.polling.Store(false)
	p.lifeMu.Lock()
	if p.closed.Load() {
		p.lifeMu.Unlock()
		return ErrClosed
	}
	p.stopped.Add(1)
	p.lifeMu.Unlock()
	defer p.stopped.Done()

	runtime.LockOSThread()
	var saved unix.CPUSet
	pinned := false
	if p.opts.CPU >= 0 {
		var set unix.CPUSet
		set.Set(p.opts.CPU)
		if err := unix.SchedGetaffinity(0, &saved); err == nil && unix.SchedSetaffinity(0, &set) == nil {
			pinned = true
		} else {
			p.log.Warn("rdma: cannot pin the polling thread", "cpu", p.opts.CPU)
		}
	}
	defer func() {
		if pinned && unix.SchedSetaffinity(0, &saved) != nil {
			return // stays locked, and exits with this goroutine
		}
		runtime.UnlockOSThread()
	}()
	var done atomic.Bool
	stopCtx := context.AfterFunc(ctx, func() { done.Store(true); p.wake() })
	defer stopCtx()
	if flush == nil {
		flush = func() bool { return false }
	}
	fds := []unix.PollFd{{Fd: int32(p.ch.Fd()), Events: unix.POLLIN}, {Fd: int32(p.wakeFd), Events: unix.POLLIN}}
	var ts unix.Timespec
	var buf [8]byte
	last, busy := time.Now(), false
	sleep := time.Microsecond
	for polls := 0; ; polls++ {
		if done.Load() || p.closed.Load() {
			return nil
		}
		sent := flush()
		k := p.receive(p.rxWCs)
		if k > 0 {
			handle(p.rxPkts[:k])
		}
		if len(p.rxWRs) > 0 {
			p.repost()
			busy = true
		}
		if sent {
			busy = true
		}
		if polls&63 == 0 && !sent {
			p.txMu.Lock()
			p.reapLocked()
			p.txMu.Unlock()
		}
		if polls&63 != 0 {
			continue
		}
		now := time.Now()
		if busy {
			last, sleep, busy = now, time.Microsecond, false
			continue
		}
		if now.Sub(last) < p.opts.SpinIdle {
			continue
		}
		// Arm, announce the pause, and look once more for work that
		// came before either.
		p.recvCQ.ReqNotify()
		p.pausing.Store(true)
		if flush() {
			p.pausing.Store(false)
			last = time.Now()
			continue
		}
		if k := p.receive(p.rxWCs); k > 0 {
			p.pausing.Store(false)
			handle(p.rxPkts[:k])
			p.repost()
			last = time.Now()
			continue
		}
		p.sleeps.Add(1)
		ts = unix.NsecToTimespec(sleep.Nanoseconds())
		unix.Ppoll(fds, &ts, nil)
		p.pausing.Store(false)
		unix.Read(p.wakeFd, buf[:])
		p.ch.GetEvents()
		sleep = min(2*sleep, p.opts.MaxSleep)
	}
}

// Wake ends a pause of the polling thread (the runtime queued messages).
// It costs one atomic load when the thread is not pausing.
func (p *Plugin) Wake() {
	if p.pausing.Load() {
		p.wake()
	}
}

var one = [8]byte{1}

func (p *Plugin) wake() { unix.Write(p.wakeFd, one[:]) }

// RecvBatch receives like Poll but on the caller's thread, for callers
// that pull: it waits up to timeout for the first message and copies each
// into pkts[i].Buf. Do not use it while Poll runs.
func (p *Plugin) RecvBatch(pkts []wire.Packet, timeout time.Duration) (int, error) {
	if p.closed.Load() {
		return 0, ErrClosed
	}
	if !p.polling.CompareAndSwap(false, true) {
		return 0, errors.New("rdma: RecvBatch while the device is polled")
	}
	defer p.polling.Store(false)
	p.lifeMu.Lock()
	if p.closed.Load() {
		p.lifeMu.Unlock()
		return 0, ErrClosed
	}
	p.stopped.Add(1)
	p.lifeMu.Unlock()
	defer p.stopped.Done()
	wcs := p.rxWCs[:min(len(pkts), len(p.rxWCs))]
	var deadline time.Time
	for spins := 0; ; spins++ {
		k := p.receive(wcs)
		for i := range k {
			pkts[i].Addr = p.rxPkts[i].Addr
			pkts[i].N = copy(pkts[i].Buf, p.rxPkts[i].Bytes())
		}
		p.repost()
		if k > 0 {
			return k, nil
		}
		if p.closed.Load() {
			return 0, ErrClosed
		}
		if spins&63 == 63 {
			now := time.Now()
			if deadline.IsZero() {
				deadline = now.Add(timeout)
			} else if now.After(deadline) {
				return 0, nil
			}
			runtime.Gosched()
		}
	}
}

// Stats returns the counters and queries each queue pair's state (one
// verbs call per peer: for operators, not the data path).
func (p *Plugin) Stats() Stats {
	t := p.tbl.Load()
	s := Stats{Device: p.opts.Device, Netdev: p.netdev, DevicePort: p.opts.DevicePort, GIDIndex: p.gidIndex,
		GID: netip.AddrFrom16(p.gid).String(), MTU: p.mtu.Bytes(),
		Peers: len(t.peers), TxMessages: p.txMessages.Load(), TxFull: p.txFull.Load(),
		TxErrors: p.txErrors.Load(), RxMessages: p.rxMessages.Load(), RxErrors: p.rxErrors.Load(), RxUnknownQP: p.rxUnknown.Load(),
		Connects: p.connects.Load(), Accepts: p.accepts.Load(), ConnectFailed: p.connectFailed.Load(),
		QPFailures: p.qpFailures.Load(), Sleeps: p.sleeps.Load(), QueuePairs: make([]QueuePairInfo, 0, len(t.peers))}
	for _, ps := range t.peers {
		qi := QueuePairInfo{Peer: ps.addr.String()}
		c := ps.cur.Load()
		switch {
		case c == nil && ps.down.Load() && !ps.ever.Load():
			qi.State = PeerNoRDMA
		case c == nil && ps.down.Load():
			qi.State = PeerDown
		case c == nil:
			qi.State = PeerConnecting
		default:
			qi.QPN, qi.PeerQPN, qi.PSN, qi.PeerPSN = c.qp.Num(), c.peerQPN, c.psn, c.peerPSN
			qi.State = PeerFailed
			if !c.failed.Load() {
				s.Connected++
				if st, err := p.queryState(c); err == nil {
					qi.State = st.String()
				}
			}
		}
		s.QueuePairs = append(s.QueuePairs, qi)
	}
	slices.SortFunc(s.QueuePairs, func(a, b QueuePairInfo) int { return strings.Compare(a.Peer, b.Peer) })
	return s
}

// queryState asks the device for c's state, under txMu: a retired queue
// pair is destroyed under it.
func (p *Plugin) queryState(c *conn) (rdma.QPState, error) {
	p.txMu.Lock()
	defer p.txMu.Unlock()
	if c.retired || p.closed.Load() {
		return rdma.QPError, nil
	}
	return c.qp.State()
}

// CarriesReliable reports that the datapath delivers every message once
// and in order on its own (RC queue pairs: the device acknowledges and
// retransmits), so the runtime adds no acknowledgements of its own for
// reliable streams on it (backend.ReliableDatapath).
func (p *Plugin) CarriesReliable() bool { return true }

// ProbePeers connects, every interval until ctx ends or the plugin
// closes, to each of peers on the RDMA subnet that has no queue pair and
// was never connected: a peer that came up after this daemon, or one
// whose first attempt failed, is found to have RDMA (Reaches turns true)
// or found not to (false: the runtime sends to it over another
// datapath). Call it once, from its own goroutine, with the runtime's
// peer set.
func (p *Plugin) ProbePeers(ctx context.Context, peers []netip.AddrPort, interval time.Duration) {
	if interval <= 0 {
		interval = time.Second
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		for _, peer := range peers {
			if !p.opts.Addr.Contains(peer.Addr().Unmap()) || peer.Addr().Unmap() == p.local.Addr() {
				continue
			}
			ps, err := p.peer(peer)
			if err != nil || ps.ever.Load() || ps.cur.Load() != nil {
				continue
			}
			pctx, cancel := context.WithTimeout(ctx, sigIOTimeout)
			err = p.Probe(pctx, peer)
			cancel()
			if err == nil {
				p.log.Info("rdma: peer has RDMA", "peer", peer)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-p.stop.Done():
			return
		case <-tick.C:
		}
	}
}

// DatapathStats returns Stats for velocectl remote.
func (p *Plugin) DatapathStats() any { return p.Stats() }

// Close stops the polling thread and the connection listener, destroys
// every queue pair and releases the device.
func (p *Plugin) Close() error {
	p.lifeMu.Lock()
	if p.closed.Swap(true) {
		p.lifeMu.Unlock()
		return nil
	}
	p.lifeMu.Unlock()
	p.cancel()
	p.wake()
	p.sig.Close()
	p.stopped.Wait()
	p.release()
	return nil
}

// release frees what New made, in reverse order.
func (p *Plugin) release() {
	p.txMu.Lock()
	defer p.txMu.Unlock()
	if t := p.tbl.Load(); t != nil {
		for _, c := range t.byID {
			c.qp.Close()
		}
	}
	for _, c := range []interface{ Close() error }{p.srq, p.recvCQ, p.sendCQ, p.ch, p.sendMR, p.recvMR, p.sendMem, p.recvMem, p.pd, p.ctx} {
		if c != nil && !isNil(c) {
			c.Close()
		}
	}
	if p.wakeFd >= 0 {
		unix.Close(p.wakeFd)
		p.wakeFd = -1
	}
}

func isNil(c interface{ Close() error }) bool {
	switch v := c.(type) {
	case *rdma.SRQ:
		return v == nil
	case *rdma.CQ:
		return v == nil
	case *rdma.CompChannel:
		return v == nil
	case *rdma.MR:
		return v == nil
	case *rdma.Memory:
		return v == nil
	case *rdma.PD:
		return v == nil
	case *rdma.Context:
		return v == nil
	}
	return false
}
