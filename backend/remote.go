package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/internal/fleet"
	"github.com/veloce-io/veloce/internal/frag"
	"github.com/veloce-io/veloce/internal/ring"
	"github.com/veloce-io/veloce/internal/slots"
	"github.com/veloce-io/veloce/internal/tsn"
	"github.com/veloce-io/veloce/internal/wire"
)

// Datapath is what the runtime needs of a datapath plugin to reach other
// hosts: batches of datagrams, each a wire header and a payload
// (plugins/udp implements it; DPDK, AF_XDP and RDMA plugins will).
type Datapath interface {
	// Name is the datapath's name in the QoS policy (udp, dpdk, ...).
	Name() string
	// LocalAddr is where peers reach this daemon.
	LocalAddr() netip.AddrPort
	// SendBatch sends pkts; it returns how many went (fewer when the
	// send queue is full, with a nil error).
	SendBatch(pkts []wire.Packet) (int, error)
	// RecvBatch fills pkts, waiting up to timeout for the first.
	RecvBatch(pkts []wire.Packet, timeout time.Duration) (int, error)
	// Close releases the datapath.
	Close() error
}

// Poller is a Datapath that runs its own loop — a busy-polling thread
// pinned to a core, say — and runs to completion on it: each received
// batch is handed to the runtime from that thread, and the messages the
// runtime queued for the datapath are sent from it too. Nothing is handed
// from one thread to another, which on a busy host costs more than
// everything else on the path (a woken goroutine waits for a core the
// pollers hold).
type Poller interface {
	// Poll runs until ctx ends. It calls handle with each received batch
	// (the packets are valid only during the call) and flush on every turn
	// of its loop; flush sends some of what the runtime queued, through
	// SendBatch, and reports whether there was anything — activity, like
	// a received packet, that keeps the thread from pausing.
	Poll(ctx context.Context, handle func(pkts []wire.Packet), flush func() bool) error
	// Wake ends a pause of the polling thread: the runtime queued
	// messages. It is called on every emit, so it must be cheap when the
	// thread is not pausing.
	Wake()
}

// Reacher is a Datapath that can tell whether it reaches an address (a
// userspace stack owns one link; the kernel has routes). Datapaths that do
// not implement it are assumed to reach every peer.
type Reacher interface {
	Reaches(addr netip.Addr) bool
}

// RemoteOptions connect a runtime to its peers.
type RemoteOptions struct {
	// Datapath carries messages between daemons by default (kernel UDP);
	// nil means none.
	Datapath Datapath
	// Accelerated are further datapaths (DPDK, AF_XDP, RDMA) for streams
	// the policy maps to them. Each message goes to a peer over its
	// stream's datapath when that reaches the peer, else over the first
	// datapath that does.
	Accelerated []Datapath
	// Peers are the other daemons' datapath addresses: the initial
	// static peer set (Runtime.SetPeers replaces it later; peers from
	// Etcd join it). Datagrams
	// of any kind are accepted only from these addresses, exactly as the
	// datapath reports the sender (UDP source ip:port; the DPDK plugin's
	// own stack reports ip:port too); anything else is dropped and
	// counted (RemoteInfo.UnknownPeer) before it reaches a sink. That
	// stops honest mistakes (a daemon of another fleet, a stray sender)
	// and other hosts that cannot forge their source address; it does not
	// stop a host that can spoof source addresses (off-path spoofing on
	// an unfiltered network, or anyone on the path): that needs Key.
	Peers []netip.AddrPort
	// DirectoryInterval is how often the daemon tells its peers which
	// channels it has sinks for (also at once after a change); default 1s.
	DirectoryInterval time.Duration
	// DirectoryExpiry is how long a peer's directory stays valid without
	// a newer one: past it the peer is stale (RemoteInfo shows "stale"),
	// its channels are dropped and sources stop sending to it, until its
	// next directory. Default 3*DirectoryInterval; give every daemon of a
	// fleet the same DirectoryInterval.
	DirectoryExpiry time.Duration
	// Key is the fleet key for the authenticated mode (see LoadPeerKey,
	// wire.ParseKey; every daemon of the fleet has the same one). With a
	// key, every datagram carries a MAC (wire.Sealer) and datagrams
	// without a valid one, or replayed, are dropped and counted. Nil: no
	// authentication, and authenticated datagrams are dropped (counted as
	// BadAuth: the peers have a key this daemon lacks).
	Key []byte
	// ReliableTimeout is how long a peer may acknowledge nothing of a
	// reliable source's messages in flight before the source fails
	// (Source.Unreachable, reliable.go); default DefaultReliableTimeout.
	ReliableTimeout time.Duration
	// Schedule is the 802.1Qbv gate schedule every datapath to other
	// hosts applies to its traffic classes (txsched.go); nil: FIFO. Check
	// it with CheckSchedule first.
	Schedule *tsn.Schedule
	// Etcd, when set, is the fleet directory in etcd (package fleet;
	// its Self and OnEvent are the runtime's): the daemon registers its
	// node id, boot id, datapath addresses and channels under a lease and
	// learns the other daemons, and their channels, from the store's
	// watch (fleetdir.go). Peers from etcd join Peers; for an address in
	// both the etcd entry wins, and no directory datagrams go to or are
	// taken from a peer learned from etcd. Key applies to them as to
	// any peer.
	Etcd *fleet.Options
	// MaxMessage bounds a message to other hosts (bytes); larger than
	// MaxRemotePayload, it goes as fragments of 1,392 bytes (fit for a 1500-byte MTU)
	// (the wire header's FragIndex and FragCount) and is reassembled by
	// the receiving daemon before delivery (large.go). Default
	// DefaultMaxMessage; every daemon of a fleet should have the same.
	MaxMessage int
}

const (
	remoteSlots    = 8192
	remoteSlotSize = 2048
	remoteBatch    = 32
	// MaxRemotePayload is the largest message sent to other hosts as one
	// datagram (room is kept for the authentication trailer, with or
	// without a key, and for a reliable message's prefix, so the limit
	// depends on neither the fleet's mode nor the stream's).
	MaxRemotePayload = remoteSlotSize - wire.HeaderLen - wire.AuthTrailerLen - relPrefixLen
)

// remote sends the runtime's messages to peers that have sinks for their
// channel and delivers peers' messages to local sinks.
type remote struct {
	rt   *Runtime
	opts RemoteOptions
	dps  []*datapathState // opts.Datapath first, then opts.Accelerated
	// inline counts the emitters in a batch that they will flush
	// themselves (flushInline).
	inline atomic.Int32
	// host is the poller of the runtime's polling sessions that the first
	// Poller datapath's thread runs (poll.go); nil without one.
	host *hostPoller

	// peers is the peer set, replaced whole (copy on write) by setPeers
	// under peersMu and read without a lock by emit and the receivers.
	peers   atomic.Pointer[peerTable]
	peersMu sync.Mutex
	// static are the peers of RemoteOptions.Peers and SetPeers; fleet,
	// those learned from etcd, by node id (fleetdir.go). The table is
	// built from both (rebuildLocked).
	static []netip.AddrPort      // +checklocks:peersMu
	fleet  map[uint32]fleetEntry // +checklocks:peersMu
	// registry is the fleet directory (nil without RemoteOptions.Etcd
	// or before run); fleetChanged (buffered 1) tells its publisher the
	// local channels changed.
	registry     atomic.Pointer[fleet.Registry]
	fleetChanged chan struct{}
	// fleetMu orders the channel sets handed to the registry
	// (publishFleet, a migration's move: fleetdir.go); fleetHidden are
	// the ports whose sinks arrived in a hand-off not yet committed,
	// left out of the entry until the move.
	fleetMu     sync.Mutex
	fleetHidden map[*Port]bool // +checklocks:fleetMu

	// boot is this daemon's boot id, random per start; it goes in every
	// directory and authentication trailer.
	boot uint64
	// authCounter numbers the datagrams this daemon seals. It starts at
	// the wall clock in ns, and no daemon seals a datagram per ns, so a
	// restarted daemon's counters start above its previous run's and the
	// peers' replay windows take them (as long as the clock did not step
	// back across the restart).
	authCounter atomic.Uint64

	// slots hold the messages queued for peers: held by emit from Get
	// until it queues the slot on a datapath's ready queue, then by that
	// datapath's sender (or flusher) until it is sent and Put (release:
	// for a datapath that sends from the slot itself, once it is done
	// with it). They live in the first SlotMemory datapath's memory
	// (slotmem.go), behind remoteHeadroom bytes each.
	slots *slots.Pool[remoteMeta]

	// generation numbers the local directory's lists: it changes only
	// when the list does (directoryNow); dirList is the list it names.
	// dirMsgs and dirBytes count the directory datagrams sent (full
	// fragments and digests: directory.go).
	generation atomic.Uint64
	dirMu      sync.Mutex
	dirList    []uint32 // +checklocks:dirMu
	dirMsgs    atomic.Uint64
	dirBytes   atomic.Uint64

	rel *reliable // reliable streams (reliable.go)

	// maxMessage is RemoteOptions.MaxMessage; large counts fragmented
	// messages (large.go).
	maxMessage int
	large      largeCounters

	sent, received, dropped, malformed atomic.Uint64
	// Datagrams dropped on receipt, by reason (malformed above).
	unknownPeer, badAuth, stale, badVersion atomic.Uint64
	// expired counts peers' directories dropped for age.
	expired atomic.Uint64
}

// peerTable is one version of the peer set.
type peerTable struct {
	list   []*peer
	byAddr map[netip.AddrPort]*peer
}

// datapathState is one datapath's queue of slots to send.
type datapathState struct {
	dp         Datapath
	poller     Poller // dp, when it runs its own loop; nil otherwise
	reliable   bool   // dp carries reliable streams itself (ReliableDatapath)
	index      int
	ready      *ring.Queue
	kick       chan struct{} // wakes the sender; buffered 1
	dirChanged chan struct{} // buffered 1
	// loop is the receive and send state of a datapath the runtime drives
	// itself (not a Poller), set by run; polled says the process's
	// polling thread drives it now, and rxResume and txResume (buffered
	// 1) wake its receiver and sender goroutines when that ends
	// (dppoll.go).
	loop atomic.Pointer[dpLoop]
	// hosts: dp's polling thread runs the polling sessions' rounds
	// (remote.host).
	hosts              bool
	polled             atomic.Bool
	rxResume, txResume chan struct{}
	// live is dp when it implements LiveReacher; fallback lists the
	// datapaths a stream on this one takes to peers it does not reach
	// (route.go). Set by newRemote, read-only after.
	live     LiveReacher
	fallback []int
	// tx gates the datapath's traffic classes by RemoteOptions.Schedule
	// (txsched.go); nil without one.
	tx *txSched
	// pushed counts the slots queued on the datapath, done those its
	// sender handed to the datapath (or skipped): SetStreamQoS waits for
	// done to reach what was pushed before it paused a stream.
	pushed, done atomic.Uint64
	// maxPayload is the largest message sent as one datagram on dp
	// (maxPayloadOf); larger ones go as fragments (large.go).
	maxPayload int
	// slotMem is dp when the remote slots live in its memory (set by
	// newRemote); held are the slots it sent and may still read, owned
	// by its sending goroutine (slotmem.go).
	slotMem SlotMemory
	held    heldSlots
	// sentGen is the directory generation last sent on dp; full, digest
	// and want are sendDirectory's scratch lists. Owned by dp's sender
	// goroutine (directory.go).
	sentGen            uint64
	full, digest, want []*peer
}

// remoteMeta is a remote slot's datagram length and destination.
type remoteMeta struct {
	len  uint16
	dest *peer
}

type peer struct {
	addr netip.AddrPort
	// via lists the indices of the datapaths that reach the peer, the
	// default datapath first when it does.
	via []int
	// channels this peer has sinks for: an immutable snapshot.
	channels atomic.Pointer[[]uint32]
	node     atomic.Uint32
	gen      atomic.Uint64
	boot     atomic.Uint64 // boot id of its last directory; 0 before
	seen     atomic.Int64  // unix ns of its last directory
	// expiredMark is set when its directory expired, cleared by the next.
	expiredMark atomic.Bool
	// fromFleet: the peer's channels and boot id come from etcd
	// (fleetdir.go), which wins over its directory datagrams.
	fromFleet atomic.Bool
	// digests: the peer sends directory digests, so it gets this
	// daemon's full directory only when it changes or when it asks
	// (wantFull); wantTheirs: send it a digest asking for its own.
	// lastFull and lastWant (unix ns) rate-limit both (directory.go).
	digests, wantFull, wantTheirs atomic.Bool
	lastFull, lastWant            atomic.Int64

	// Its datagrams dropped on receipt, by reason.
	restarts, badAuth, stale, malformed, badVersion atomic.Uint64

	// home is the index of the datapath whose receiver owns replay (set
	// by the first authenticated datagram; -1 before): a peer's datagrams
	// arrive on one datapath, and one goroutine owns the window.
	home   atomic.Int32
	replay wire.ReplayWindow // owned by the receiver of datapath home
}

func newRemotePeer(a netip.AddrPort, dps []*datapathState) *peer {
	p := &peer{addr: a}
	p.home.Store(-1)
	empty := []uint32{}
	p.channels.Store(&empty)
	for _, st := range dps {
		if r, ok := st.dp.(Reacher); !ok || r.Reaches(a.Addr()) {
			p.via = append(p.via, st.index)
		}
	}
	return p
}

func newRemote(rt *Runtime, opts RemoteOptions) *remote {
	if opts.DirectoryInterval <= 0 {
		opts.DirectoryInterval = time.Second
	}
	if opts.DirectoryExpiry <= 0 {
		opts.DirectoryExpiry = 3 * opts.DirectoryInterval
	}
	if opts.MaxMessage <= 0 {
		opts.MaxMessage = DefaultMaxMessage
	}
	rm := &remote{rt: rt, opts: opts, boot: rand.Uint64() | 1, fleet: map[uint32]fleetEntry{}, fleetChanged: make(chan struct{}, 1), fleetHidden: map[*Port]bool{}, maxMessage: opts.MaxMessage}
	for _, dp := range append([]Datapath{opts.Datapath}, opts.Accelerated...) {
		if dp == nil {
			continue
		}
		st := &datapathState{dp: dp, index: len(rm.dps), kick: make(chan struct{}, 1), dirChanged: make(chan struct{}, 1),
			rxResume: make(chan struct{}, 1), txResume: make(chan struct{}, 1)}
		st.poller, _ = dp.(Poller)
		st.reliable = datapathReliable(dp)
		st.maxPayload = maxPayloadOf(dp)
		st.ready, _ = ring.New(remoteSlots)
		if opts.Schedule != nil {
			st.tx = newTxSched(opts.Schedule, st.ready)
		}
		rm.dps = append(rm.dps, st)
	}
	for _, st := range rm.dps {
		if st.poller != nil {
			// Its polling thread drains the polling sessions too (poll.go).
			rm.host, st.hosts = &hostPoller{hosted: true, wake: st.poller.Wake}, true
			break
		}
	}
	rm.slots = rm.newSlotPool()
	rm.buildRoutes()
	rm.rel = newReliable(rm)
	rm.authCounter.Store(uint64(time.Now().UnixNano()))
	rm.setPeers(opts.Peers)
	return rm
}

// SetPeers replaces the runtime's static peer set (RemoteOptions.Peers at
// start); peers learned from etcd (RemoteOptions.Etcd) stay. Peers that
// stay keep their state (directory, replay window, counters); new ones
// start unknown until their first directory; messages stop at once for
// peers that left, and their datagrams are dropped from then on. Without
// a datapath to other hosts it does nothing.
func (r *Runtime) SetPeers(addrs []netip.AddrPort) {
	if r.remote != nil {
		r.remote.setPeers(addrs)
	}
}

func (rm *remote) setPeers(addrs []netip.AddrPort) {
	rm.peersMu.Lock()
	defer rm.peersMu.Unlock()
	rm.static = rm.static[:0]
	for _, a := range addrs {
		if !slices.Contains(rm.static, a) {
			rm.static = append(rm.static, a)
		}
	}
	rm.rebuildLocked()
}

// peerList returns the current peers.
func (rm *remote) peerList() []*peer { return rm.peers.Load().list }

// datapathIndex returns the index of the datapath called name, or -1.
func (rm *remote) datapathIndex(name string) int {
	for _, st := range rm.dps {
		if st.dp.Name() == name {
			return st.index
		}
	}
	return -1
}

// close closes every datapath.
func (rm *remote) close() {
	for _, st := range rm.dps {
		st.dp.Close()
	}
}

// packet returns the datagram queued in slot id.
func (rm *remote) packet(id uint32) wire.Packet {
	m := rm.slots.Meta(id)
	return wire.Packet{Addr: m.dest.addr, Buf: rm.slots.Bytes(id), N: int(m.len)}
}

// newSealer returns a Sealer for one sending goroutine, nil without a key.
func (rm *remote) newSealer() *wire.Sealer {
	if rm.opts.Key == nil {
		return nil
	}
	return wire.NewSealer(rm.opts.Key, rm.boot)
}

// seal authenticates pkt (a datagram in a buffer with room for the
// trailer) when there is a key.
func (rm *remote) seal(s *wire.Sealer, pkt *wire.Packet) {
	if s == nil {
		return
	}
	n, err := s.Seal(pkt.Buf, pkt.N, rm.authCounter.Add(1))
	if err != nil {
		// Every datagram the runtime builds has room: a bug. Send
		// nothing the peers would drop anyway.
		pkt.N = 0
		return
	}
	pkt.N = n
}

func classOf(o StreamOptions) wire.Class {
	var c wire.Class
	if o.Acceleration {
		c |= wire.ClassAccelerated
	}
	if o.Frugal {
		c |= wire.ClassFrugal
	}
	if o.TimeSensitive {
		c |= wire.ClassTimeSensitive
	}
	if o.Reliable {
		c |= wire.ClassReliable
	}
	return c
}

// emit queues a message for every peer with sinks on its channel, on the
// stream's datapath where that reaches the peer, and returns for how many
// peers it queued the message and for how many it found no free slot. It
// takes no lock and does not allocate.
func (rm *remote) emit(src *Source, seq uint64, payload []byte) (queued, full int) {
	if len(payload) > MaxRemotePayload && len(payload) > rm.maxMessage {
		rm.dropped.Add(1)
		rm.large.tooLarge.Add(1)
		return 0, 0
	}
	want := src.Stream.dpIndex
	for _, p := range rm.peers.Load().list {
		if !p.wants(src.Channel) {
			continue
		}
		dpi := rm.route(p, want)
		if src.Stream.Options.Reliable && !rm.dps[dpi].reliable {
			if rm.rel.emit(src, p, dpi, seq, payload) { // window, acks, retransmission
				queued++
			} else {
				full++
			}
			continue
		}
		if len(payload) > rm.dps[dpi].maxPayload {
			if rm.emitFragments(src, p, dpi, seq, payload) {
				queued++
			} else {
				full++
			}
			continue
		}
		id, ok := rm.slots.Get()
		if !ok {
			rm.dropped.Add(1)
			full++
			continue
		}
		h := wire.Header{Kind: wire.KindData, Class: classOf(src.Stream.Options), FragCount: 1,
			PayloadLen: uint16(len(payload)), Channel: src.Channel, Source: wire.SourceID(src.Global), Seq: seq}
		n, err := h.MarshalPacket(rm.slots.Bytes(id), payload)
		if err != nil {
			rm.slots.Put(id)
			rm.dropped.Add(1)
			continue
		}
		rm.queue(dpi, id, n, p, h.Class)
		queued++
	}
	return queued, full
}

// wants reports whether p can be reached and has sinks on channel.
func (p *peer) wants(channel uint32) bool {
	if len(p.via) == 0 {
		return false
	}
	_, ok := slices.BinarySearch(*p.channels.Load(), channel)
	return ok
}

// reliableRoom reports whether every peer a reliable source's message
// would go to through the runtime's windows has room for it (a failed
// window counts as room: emit refuses it and the source's failure
// ends the wait). A message must go to all of them or to none: one that
// a peer with a full window missed while another took it would be lost
// for that peer, since the source is not asked to emit it again.
func (rm *remote) reliableRoom(src *Source) bool {
	want := src.Stream.dpIndex
	for _, p := range rm.peers.Load().list {
		if !p.wants(src.Channel) {
			continue
		}
		if dpi := rm.route(p, want); !rm.dps[dpi].reliable && !rm.rel.room(src, p, dpi) {
			return false
		}
	}
	return true
}

// channelsChanged is called (under rt.mu) when local sinks came or went.
func (rm *remote) channelsChanged() {
	for _, st := range rm.dps {
		select {
		case st.dirChanged <- struct{}{}:
		default:
		}
	}
	select {
	case rm.fleetChanged <- struct{}{}:
	default:
	}
}

// run drives each datapath's sender and receiver until ctx ends.
func (rm *remote) run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, st := range rm.dps {
		if st.poller == nil {
			l := rm.newLoop(st)
			st.loop.Store(l)
			defer l.stopped.Store(true)
		}
		wg.Add(2)
		go func() { defer wg.Done(); rm.sender(ctx, st) }()
		go func() { defer wg.Done(); rm.receiver(ctx, st) }()
	}
	if rm.opts.Etcd != nil {
		if err := rm.startFleet(ctx); err != nil {
			rm.rt.log.Error("fleet directory: cannot start; peers come from --peer alone", "err", err)
		} else {
			wg.Add(1)
			go func() { defer wg.Done(); rm.publishFleet(ctx) }()
			defer func() { rm.registry.Load().Close() }() // revokes the lease: the others see this daemon leave
		}
	}
	wg.Add(2)
	go func() { defer wg.Done(); rm.expirer(ctx) }()
	go func() { defer wg.Done(); rm.rel.run(ctx) }()
	wg.Wait()
}

// expirer drops the channels of peers whose directory is older than the
// expiry, checking every directory interval.
func (rm *remote) expirer(ctx context.Context) {
	tick := time.NewTicker(rm.opts.DirectoryInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			rm.expire(now.UnixNano())
		}
	}
}

// expire drops the channels of every peer whose last directory is older
// than the expiry at now (unix ns). A directory that arrives meanwhile
// wins: its receiver stores the time before the list, and expire swaps
// the list it judged only if it is still there.
func (rm *remote) expire(now int64) {
	empty := []uint32{}
	for _, p := range rm.peers.Load().list {
		if p.fromFleet.Load() {
			continue // etcd's lease expires it (fleetdir.go)
		}
		old := p.channels.Load()
		seen := p.seen.Load()
		if seen == 0 || now-seen <= int64(rm.opts.DirectoryExpiry) {
			continue
		}
		if len(*old) > 0 && p.channels.CompareAndSwap(old, &empty) {
			// The generation held is gone: a digest naming it asks for
			// the directory again (directory.go).
			p.gen.Store(0)
		}
		if p.expiredMark.CompareAndSwap(false, true) {
			rm.expired.Add(1)
			rm.rt.log.Warn("peer stale: no directory within the expiry; its channels are dropped", "peer", p.addr,
				"node", p.node.Load(), "expiry", rm.opts.DirectoryExpiry)
		}
	}
}

// sender and receiver are not locked to OS threads: they block in system
// calls when idle, and handing a locked thread back and forth cost ~150 µs
// per round trip (veloce-bench streams). Pinning belongs to busy-polling
// plugins on dedicated cores.
func (rm *remote) sender(ctx context.Context, st *datapathState) {
	dirBuf := make([]byte, wire.HeaderLen+wire.MaxDirectoryLen+wire.AuthTrailerLen)
	seal := rm.newSealer()
	tick := time.NewTicker(rm.opts.DirectoryInterval)
	defer tick.Stop()
	rm.sendDirectory(st, dirBuf, seal, true)
	if st.poller != nil {
		// The polling thread sends the messages (flusher); this
		// goroutine only keeps the peers' directories current.
		for {
			select {
			case <-ctx.Done():
				return
			case <-st.dirChanged:
				rm.sendDirectory(st, dirBuf, seal, false)
			case <-tick.C:
				rm.sendDirectory(st, dirBuf, seal, true)
			}
		}
	}
	gate := time.NewTimer(time.Hour) // the gate scheduler's wake-up (txsched.go)
	gate.Stop()
	defer gate.Stop()
	l := st.loop.Load()
	for {
		if st.polled.Load() {
			// The polling thread sends (dppoll.go); keep the peers'
			// directories current meanwhile.
			select {
			case <-ctx.Done():
				return
			case <-st.txResume:
			case <-st.dirChanged:
				rm.sendDirectory(st, dirBuf, seal, false)
			case <-tick.C:
				rm.sendDirectory(st, dirBuf, seal, true)
			}
			continue
		}
		had, full, wait := l.send()
		if had {
			if full {
				// The send queue is full: let the kernel drain it.
				time.Sleep(50 * time.Microsecond)
			}
			if ctx.Err() != nil {
				return
			}
			continue
		}
		var gateC <-chan time.Time
		if wait > 0 {
			gate.Reset(wait)
			gateC = gate.C
		}
		select {
		case <-ctx.Done():
			return
		case <-gateC:
		case <-st.kick:
		case <-st.txResume:
		case <-st.dirChanged:
			rm.sendDirectory(st, dirBuf, seal, false)
		case <-tick.C:
			rm.sendDirectory(st, dirBuf, seal, true)
		}
	}
}

func (rm *remote) receiver(ctx context.Context, st *datapathState) {
	if st.poller != nil {
		rx := rm.newReceiveState(st.index)
		f := &flusher{rm: rm, st: st, pkts: make([]wire.Packet, remoteBatch), ids: make([]uint32, remoteBatch), seal: rm.newSealer()}
		flush := f.flush
		if st.hosts {
			defer rm.host.stop()
			flush = func() bool {
				busy := rm.host.hostedRound() // queues the sessions' messages,
				return f.flush() || busy      // which go out in this turn
			}
		}
		if err := st.poller.Poll(ctx, rx.handle, flush); err != nil && ctx.Err() == nil {
			rm.rt.log.Error("datapath stopped receiving", "datapath", st.dp.Name(), "err", err)
		}
		return
	}
	l := st.loop.Load()
	for ctx.Err() == nil {
		if !st.waitPolled(ctx.Done(), st.rxResume) {
			return
		}
		if err := l.receive(100 * time.Millisecond); err != nil {
			if errors.Is(err, context.Canceled) || ctx.Err() != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// flusher sends a datapath's queued messages, a batch per call: on a
// Poller's polling thread, and for the datapaths the runtime drives
// itself on their sender goroutine or the process's polling thread
// (dppoll.go).
type flusher struct {
	rm      *remote
	st      *datapathState
	pkts    []wire.Packet
	ids     []uint32
	n, done int          // the batch in hand and how much of it went
	end     int64        // its gate window's end (txsched.go)
	seal    *wire.Sealer // nil without a key
}

// flush is step for a Poller: whether there was work, counting messages
// held behind a closed gate (keep polling).
func (f *flusher) flush() bool {
	had, wait := f.step()
	return had || wait > 0
}

// step sends (some of) a batch, taking one when none is in hand, and
// reports whether there was one; with none, wait is how long until the
// gate opens for messages it holds (0: none held). A batch the datapath
// could not take whole (a full queue, a neighbour being resolved) stays
// in hand for the next call.
func (f *flusher) step() (had bool, wait time.Duration) {
	rm := f.rm
	if f.st.slotMem != nil {
		rm.reap(f.st) // slots the datapath finished with since the last turn
	}
	if f.done == f.n {
		f.n, f.done = 0, 0
		f.n, f.end, wait = rm.take(f.st, f.ids, f.pkts, f.seal)
		if f.n == 0 {
			return false, wait
		}
	}
	k, err := f.st.dp.SendBatch(f.pkts[f.done:f.n])
	f.done += k
	if err != nil {
		f.done++ // that packet cannot go: skip it
		rm.dropped.Add(1)
	}
	if f.done >= f.n {
		f.st.tx.sentBatch(f.end)
		rm.sent.Add(uint64(f.n))
		f.st.done.Add(uint64(f.n))
		rm.release(f.st, f.ids[:f.n])
		f.done = f.n
	}
	return true, 0
}

// receiveState is one datapath receiver's: directory fragments being
// collected, by sender, and the receiver's MAC state.
type receiveState struct {
	rm      *remote
	index   int // the datapath's
	chans   []uint32
	pending map[netip.AddrPort]*directoryParts
	open    *wire.Opener // nil without a key
	// acks are the reliable receivers the batch in hand owes an ack.
	acks []*relRecv
	// frag reassembles best-effort fragmented messages (large.go);
	// lastExpire is when it last dropped stale ones (unix ns).
	frag       *frag.Reassembler
	lastExpire int64
	// deliveries batch the batch in hand's deliveries to host
	// applications (Runtime.deliverBatch), flushed at its end.
	deliveries deliveryBatch
}

func (rm *remote) newReceiveState(index int) *receiveState {
	rx := &receiveState{rm: rm, index: index, chans: make([]uint32, 0, wire.MaxDirectoryChannels), pending: map[netip.AddrPort]*directoryParts{},
		acks: make([]*relRecv, 0, 4*remoteBatch)}
	if rm.opts.Key != nil {
		rx.open = wire.NewOpener(rm.opts.Key)
	}
	rx.frag = rm.newReassembler()
	rm.large.add(rx.frag)
	return rx
}

// directoryParts collects one peer's directory fragments.
type directoryParts struct {
	gen, boot uint64
	next      uint16
	chans     []uint32
}

// maxDirectoryChannels bounds one peer's directory.
const maxDirectoryChannels = 1 << 16

// handle dispatches a received batch: data to local sinks, directories to
// the peer table. Each datagram passes, in order: the sender is a peer
// (its address is in the peer set), its MAC verifies and its counter is
// fresh (with a key), it parses, and a directory is no older than the
// peer's current one. What fails is dropped and counted by reason, in all
// and per peer. It takes no lock and, but for directories, does not
// allocate.
func (rx *receiveState) handle(pkts []wire.Packet) {
	rm := rx.rm
	peers := rm.peers.Load()
	for i := range pkts {
		b := pkts[i].Bytes()
		p := peers.byAddr[pkts[i].Addr]
		if p == nil {
			rm.unknownPeer.Add(1)
			continue
		}
		var h wire.Header
		var payload []byte
		var err error
		if rx.open != nil {
			var tr wire.Trailer
			h, payload, tr, err = rx.open.Open(b)
			if err == nil {
				if home := p.home.Load(); home != int32(rx.index) && (home != -1 || !p.home.CompareAndSwap(-1, int32(rx.index))) {
					// Its datagrams arrive on another datapath, whose
					// receiver owns its replay window.
					rm.unknownPeer.Add(1)
					continue
				}
				if !p.replay.Admit(tr.Counter) {
					err = wire.ErrReplay
				}
			}
		} else if wire.IsAuthenticated(b) {
			err = wire.ErrNoAuth // the peer has a key, this daemon none
		} else {
			h, payload, err = wire.Parse(b)
		}
		if err != nil {
			rm.reject(p, err)
			continue
		}
		switch h.Kind {
		case wire.KindData:
			if h.Class&wire.ClassReliable != 0 && !rm.dps[rx.index].reliable {
				rx.reliableData(p, h, payload) // in order, once (reliable.go)
				continue
			}
			if h.FragCount != 1 {
				rx.fragment(p, h, payload) // large.go
				continue
			}
			rm.received.Add(1)
			rm.rt.deliverLocalBatch(&rx.deliveries, h.Channel, uint64(h.Source), h.Seq, payload)
		case wire.KindDirectory:
			rx.directory(p, &pkts[i], h, payload)
		case wire.KindAck:
			rm.rel.ack(p, h, payload)
		}
	}
	rx.deliveries.flush()
	rx.expireFragments()
	rx.flushAcks()
}

// reject counts a datagram from p dropped for err.
func (rm *remote) reject(p *peer, err error) {
	switch err {
	case wire.ErrNoAuth, wire.ErrBadTag:
		rm.badAuth.Add(1)
		p.badAuth.Add(1)
	case wire.ErrReplay:
		rm.stale.Add(1)
		p.stale.Add(1)
	case wire.ErrVersion:
		rm.badVersion.Add(1)
		p.badVersion.Add(1)
	default:
		rm.malformed.Add(1)
		p.malformed.Add(1)
	}
}

// directory takes a directory message from peer p.
func (rx *receiveState) directory(p *peer, pkt *wire.Packet, h wire.Header, payload []byte) {
	rm := rx.rm
	if p.fromFleet.Load() {
		return // its etcd entry wins (fleetdir.go)
	}
	if wire.IsDigest(payload) {
		rx.digest(p, payload)
		return
	}
	d, err := wire.ParseDirectory(payload, rx.chans[:0])
	if err != nil {
		rm.reject(p, err)
		return
	}
	// A new boot id is a restarted daemon: its directory replaces the
	// old run's at once, whatever the generations. Within one run an
	// older generation is stale (reordered or replayed).
	if d.Boot == p.boot.Load() && d.Generation < p.gen.Load() {
		rm.stale.Add(1)
		p.stale.Add(1)
		return
	}
	// Fragments come in order, one generation at a time; anything else
	// starts over, and a directory never grows past maxDirectoryChannels
	// (a spoofed fragment count cannot make this loop collect forever).
	part := rx.pending[pkt.Addr]
	if h.FragIndex == 0 || part == nil || h.FragIndex != part.next || d.Generation != part.gen || d.Boot != part.boot {
		if h.FragIndex != 0 {
			delete(rx.pending, pkt.Addr)
			rm.reject(p, wire.ErrMalformed)
			return
		}
		part = &directoryParts{gen: d.Generation, boot: d.Boot}
		rx.pending[pkt.Addr] = part
	}
	if len(part.chans)+len(d.Channels) > maxDirectoryChannels {
		delete(rx.pending, pkt.Addr)
		rm.reject(p, wire.ErrMalformed)
		return
	}
	part.chans = append(part.chans, d.Channels...)
	part.next++
	if int(h.FragIndex)+1 < int(h.FragCount) {
		return
	}
	delete(rx.pending, pkt.Addr)
	list := slices.Clone(part.chans)
	slices.Sort(list)
	if old := p.boot.Swap(d.Boot); old != d.Boot {
		if old != 0 {
			p.restarts.Add(1)
			rm.rel.peerRestarted(p) // reliable windows start over (reliable.go)
			rm.rt.log.Info("peer restarted: its directory replaces the old run's", "peer", p.addr, "node", d.Node)
		}
		// A new run (or a first sight) does not have this daemon's
		// directory: send it at once, and full ones until it speaks
		// digests (directory.go).
		p.digests.Store(false)
		rx.askFull(p)
	}
	p.node.Store(d.Node)
	p.gen.Store(d.Generation)
	p.seen.Store(time.Now().UnixNano()) // before the list: see expire
	p.expiredMark.Store(false)
	p.channels.Store(&list)
}

// Peer states in PeerInfo.
const (
	PeerWaiting = "waiting" // no directory yet
	PeerUp      = "up"      // its directory is current
	PeerStale   = "stale"   // no directory within the expiry: its channels are dropped
)

// PeerInfo is what velocectl shows for a peer.
type PeerInfo = control.PeerInfo

// StatsReporter is a Datapath with counters for velocectl.
type StatsReporter interface {
	// DatapathStats returns a JSON-encodable snapshot of the counters.
	DatapathStats() any
}

// DatapathInfo is what velocectl shows for a datapath to other hosts.
type DatapathInfo = control.DatapathInfo

// RemoteInfo is the daemon's view of other hosts: its datapaths and peers.
type RemoteInfo = control.RemoteInfo

// Remote returns the datapaths to other hosts and the peers.
func (r *Runtime) Remote() RemoteInfo {
	info := RemoteInfo{Datapaths: []DatapathInfo{}, Peers: []PeerInfo{}, Directory: DirectoryInfo{Sources: []string{}}}
	rm := r.remote
	if rm == nil {
		return info
	}
	info.Directory = rm.directoryInfo()
	info.Sent, info.Received, info.Dropped, info.Malformed = rm.sent.Load(), rm.received.Load(), rm.dropped.Load(), rm.malformed.Load()
	info.Authenticated, info.Boot = rm.opts.Key != nil, strconv.FormatUint(rm.boot, 16)
	info.UnknownPeer, info.BadAuth, info.Stale, info.BadVersion = rm.unknownPeer.Load(), rm.badAuth.Load(), rm.stale.Load(), rm.badVersion.Load()
	info.Expired = rm.expired.Load()
	info.Reliable = rm.rel.info()
	info.Large = rm.large.info(rm.maxMessage)
	peers := rm.peerList()
	for _, st := range rm.dps {
		d := DatapathInfo{Name: st.dp.Name(), Addr: st.dp.LocalAddr().String(), Default: st.index == 0 && rm.opts.Datapath != nil,
			Peers: []string{}, Queued: st.ready.Len()}
		for _, p := range peers {
			if rm.reachesNow(p, st.index) {
				d.Peers = append(d.Peers, p.addr.String())
			}
		}
		if sr, ok := st.dp.(StatsReporter); ok {
			d.Stats = sr.DatapathStats()
		}
		d.TSN = st.tx.info()
		d.Polled = st.polled.Load()
		if l := st.loop.Load(); l != nil {
			d.Wakeups, d.PolledBatches, d.InlineBatches = l.woken.Load(), l.polledBatches.Load(), l.inlineBatches.Load()
		}
		info.Datapaths = append(info.Datapaths, d)
	}
	now := time.Now().UnixNano()
	for _, p := range peers {
		pi := PeerInfo{Addr: p.addr.String(), Node: p.node.Load(), Channels: slices.Clone(*p.channels.Load()), State: PeerWaiting,
			Restarts: p.restarts.Load(), Source: DirectoryStatic, BadAuth: p.badAuth.Load(), Stale: p.stale.Load(), Malformed: p.malformed.Load(), BadVersion: p.badVersion.Load()}
		if p.fromFleet.Load() {
			pi.Source = DirectoryEtcd
		}
		if ns := p.seen.Load(); ns != 0 {
			pi.LastSeen = time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
			pi.State = PeerUp
			if !p.fromFleet.Load() && (p.expiredMark.Load() || now-ns > int64(rm.opts.DirectoryExpiry)) {
				pi.State = PeerStale
			}
		}
		if b := p.boot.Load(); b != 0 {
			pi.Boot = strconv.FormatUint(b, 16)
		}
		info.Peers = append(info.Peers, pi)
	}
	return info
}

// ErrKeyFileMode is returned (wrapped) by LoadPeerKey for a key file that
// other users can access.
var ErrKeyFileMode = errors.New("peer key file is accessible to other users")

// LoadPeerKey reads the fleet key (RemoteOptions.Key) from the file at
// path: at least wire.MinKeyLen random bytes, raw or in hex (see
// wire.ParseKey). It refuses a file that users other than its owner and
// group may read or write (ErrKeyFileMode: chmod 0400 or 0440) and a weak
// key (wire.ErrWeakKey, as a *wire.KeyError that says why).
func LoadPeerKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load peer key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("load peer key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("load peer key %s: not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o007 != 0 {
		return nil, fmt.Errorf("load peer key %s (mode %04o): %w; chmod 0400 it", path, perm, ErrKeyFileMode)
	}
	data, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return nil, fmt.Errorf("load peer key %s: %w", path, err)
	}
	key, err := wire.ParseKey(data)
	clear(data)
	if err != nil {
		return nil, fmt.Errorf("load peer key %s: %w", path, err)
	}
	return key, nil
}
