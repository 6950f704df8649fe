package backend

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/internal/ring"
	"github.com/veloce-io/veloce/internal/slots"
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
	// Peers are the other daemons' datapath addresses.
	Peers []netip.AddrPort
	// DirectoryInterval is how often the daemon tells its peers which
	// channels it has sinks for (also at once after a change); default 1s.
	DirectoryInterval time.Duration
}

const (
	remoteSlots    = 8192
	remoteSlotSize = 2048
	remoteBatch    = 32
	// MaxRemotePayload is the largest message sent to other hosts as one
	// datagram.
	MaxRemotePayload = remoteSlotSize - wire.HeaderLen
)

// remote sends the runtime's messages to peers that have sinks for their
// channel and delivers peers' messages to local sinks.
type remote struct {
	rt    *Runtime
	opts  RemoteOptions
	dps   []*datapathState // opts.Datapath first, then opts.Accelerated
	peers []*peer

	// slots hold the messages queued for peers: held by emit from Get
	// until it queues the slot on a datapath's ready queue, then by that
	// datapath's sender (or flusher) until it is sent and Put.
	slots *slots.Pool[remoteMeta]

	generation atomic.Uint64

	sent, received, dropped, malformed atomic.Uint64
}

// datapathState is one datapath's queue of slots to send.
type datapathState struct {
	dp         Datapath
	poller     Poller // dp, when it runs its own loop; nil otherwise
	index      int
	ready      *ring.Queue
	kick       chan struct{} // wakes the sender; buffered 1
	dirChanged chan struct{} // buffered 1
}

// remoteMeta is a remote slot's datagram length and destination.
type remoteMeta struct {
	len  uint16
	dest uint16 // index in remote.peers
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
	seen     atomic.Int64 // unix ns of its last directory
}

func newRemote(rt *Runtime, opts RemoteOptions) *remote {
	if opts.DirectoryInterval <= 0 {
		opts.DirectoryInterval = time.Second
	}
	rm := &remote{rt: rt, opts: opts,
		slots: slots.MustNew[remoteMeta](slots.Options{Slots: remoteSlots, SlotSize: remoteSlotSize}),
	}
	for _, dp := range append([]Datapath{opts.Datapath}, opts.Accelerated...) {
		if dp == nil {
			continue
		}
		st := &datapathState{dp: dp, index: len(rm.dps), kick: make(chan struct{}, 1), dirChanged: make(chan struct{}, 1)}
		st.poller, _ = dp.(Poller)
		st.ready, _ = ring.New(remoteSlots)
		rm.dps = append(rm.dps, st)
	}
	for _, a := range opts.Peers {
		p := &peer{addr: a}
		empty := []uint32{}
		p.channels.Store(&empty)
		for _, st := range rm.dps {
			if r, ok := st.dp.(Reacher); !ok || r.Reaches(a.Addr()) {
				p.via = append(p.via, st.index)
			}
		}
		if len(p.via) == 0 {
			rt.log.Warn("no datapath reaches peer", "peer", a)
		}
		rm.peers = append(rm.peers, p)
	}
	return rm
}

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
	return wire.Packet{Addr: rm.peers[m.dest].addr, Buf: rm.slots.Bytes(id), N: int(m.len)}
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
	if len(payload) > MaxRemotePayload {
		rm.dropped.Add(1)
		return 0, 0
	}
	want := src.Stream.dpIndex
	for i, p := range rm.peers {
		if len(p.via) == 0 {
			continue
		}
		if _, ok := slices.BinarySearch(*p.channels.Load(), src.Channel); !ok {
			continue
		}
		dpi := p.via[0]
		for _, v := range p.via {
			if v == want {
				dpi = v
				break
			}
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
		*rm.slots.Meta(id) = remoteMeta{len: uint16(n), dest: uint16(i)}
		st := rm.dps[dpi]
		st.ready.PushWait(id)
		queued++
		if st.poller != nil {
			st.poller.Wake()
			continue
		}
		select {
		case st.kick <- struct{}{}:
		default:
		}
	}
	return queued, full
}

// channelsChanged is called (under rt.mu) when local sinks came or went.
func (rm *remote) channelsChanged() {
	for _, st := range rm.dps {
		select {
		case st.dirChanged <- struct{}{}:
		default:
		}
	}
}

// run drives each datapath's sender and receiver until ctx ends.
func (rm *remote) run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, st := range rm.dps {
		wg.Add(2)
		go func() { defer wg.Done(); rm.sender(ctx, st) }()
		go func() { defer wg.Done(); rm.receiver(ctx, st) }()
	}
	wg.Wait()
}

// sender and receiver are not locked to OS threads: they block in system
// calls when idle, and handing a locked thread back and forth cost ~150 µs
// per round trip (veloce-bench streams). Pinning belongs to busy-polling
// plugins on dedicated cores.
func (rm *remote) sender(ctx context.Context, st *datapathState) {
	pkts := make([]wire.Packet, remoteBatch)
	ids := make([]uint32, remoteBatch)
	dirBuf := make([]byte, wire.HeaderLen+wire.MaxDirectoryLen)
	tick := time.NewTicker(rm.opts.DirectoryInterval)
	defer tick.Stop()
	rm.sendDirectory(st, dirBuf)
	if st.poller != nil {
		// The polling thread sends the messages (flusher); this
		// goroutine only keeps the peers' directories current.
		for {
			select {
			case <-ctx.Done():
				return
			case <-st.dirChanged:
				rm.sendDirectory(st, dirBuf)
			case <-tick.C:
				rm.sendDirectory(st, dirBuf)
			}
		}
	}
	for {
		n := 0
		for n < remoteBatch {
			id, ok := st.ready.Pop()
			if !ok {
				break
			}
			ids[n] = id
			pkts[n] = rm.packet(id)
			n++
		}
		if n > 0 {
			done := 0
			for done < n {
				k, err := st.dp.SendBatch(pkts[done:n])
				done += k
				if err != nil {
					done++ // that packet cannot go: skip it
					rm.dropped.Add(1)
				} else if k == 0 {
					// The send queue is full: let the kernel drain it.
					time.Sleep(50 * time.Microsecond)
				}
				if ctx.Err() != nil {
					return
				}
			}
			rm.sent.Add(uint64(n))
			for _, id := range ids[:n] {
				rm.slots.Put(id)
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-st.kick:
		case <-st.dirChanged:
			rm.sendDirectory(st, dirBuf)
		case <-tick.C:
			rm.sendDirectory(st, dirBuf)
		}
	}
}

// sendDirectory tells every peer st reaches which channels have local
// sinks.
func (rm *remote) sendDirectory(st *datapathState, buf []byte) {
	gen := rm.generation.Add(1)
	chans := rm.rt.remoteChannels() // sorted; only channels peers may reach (tenants.go)
	total := max(1, (len(chans)+wire.MaxDirectoryChannels-1)/wire.MaxDirectoryChannels)
	pkts := make([]wire.Packet, 0, len(rm.peers))
	for frag := 0; frag < total; frag++ {
		part := chans[min(frag*wire.MaxDirectoryChannels, len(chans)):min((frag+1)*wire.MaxDirectoryChannels, len(chans))]
		d := wire.Directory{Node: rm.rt.opts.NodeID, Generation: gen, Channels: part}
		n, err := d.Marshal(buf[wire.HeaderLen:])
		if err != nil {
			continue
		}
		h := wire.Header{Kind: wire.KindDirectory, FragIndex: uint16(frag), FragCount: uint16(total), PayloadLen: uint16(n),
			Source: wire.NewSourceID(rm.rt.opts.NodeID, 0), Seq: gen}
		m, err := h.MarshalPacket(buf, buf[wire.HeaderLen:wire.HeaderLen+n])
		if err != nil {
			continue
		}
		pkts = pkts[:0]
		for _, p := range rm.peers {
			if slices.Contains(p.via, st.index) {
				pkts = append(pkts, wire.Packet{Addr: p.addr, Buf: buf, N: m})
			}
		}
		if len(pkts) > 0 {
			st.dp.SendBatch(pkts)
		}
	}
}

func (rm *remote) receiver(ctx context.Context, st *datapathState) {
	rx := &receiveState{rm: rm, chans: make([]uint32, 0, wire.MaxDirectoryChannels), pending: map[netip.AddrPort]*directoryParts{}}
	if st.poller != nil {
		f := &flusher{rm: rm, st: st, pkts: make([]wire.Packet, remoteBatch), ids: make([]uint32, remoteBatch)}
		if err := st.poller.Poll(ctx, rx.handle, f.flush); err != nil && ctx.Err() == nil {
			rm.rt.log.Error("datapath stopped receiving", "datapath", st.dp.Name(), "err", err)
		}
		return
	}
	pkts := make([]wire.Packet, remoteBatch)
	for i := range pkts {
		pkts[i].Buf = make([]byte, 65536)
	}
	for ctx.Err() == nil {
		n, err := st.dp.RecvBatch(pkts, 100*time.Millisecond)
		if err != nil {
			if errors.Is(err, context.Canceled) || ctx.Err() != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		rx.handle(pkts[:n])
	}
}

// flusher sends a Poller datapath's queued messages from its polling
// thread, a batch per call.
type flusher struct {
	rm      *remote
	st      *datapathState
	pkts    []wire.Packet
	ids     []uint32
	n, done int // the batch in hand and how much of it went
}

// flush sends (some of) a batch and reports whether there was one. A batch
// the datapath could not take whole (a full queue, a neighbour being
// resolved) stays in hand for the next call.
func (f *flusher) flush() bool {
	rm := f.rm
	if f.done == f.n {
		f.n, f.done = 0, 0
		for f.n < len(f.ids) {
			id, ok := f.st.ready.Pop()
			if !ok {
				break
			}
			f.ids[f.n] = id
			f.pkts[f.n] = rm.packet(id)
			f.n++
		}
		if f.n == 0 {
			return false
		}
	}
	k, err := f.st.dp.SendBatch(f.pkts[f.done:f.n])
	f.done += k
	if err != nil {
		f.done++ // that packet cannot go: skip it
		rm.dropped.Add(1)
	}
	if f.done >= f.n {
		rm.sent.Add(uint64(f.n))
		for _, id := range f.ids[:f.n] {
			rm.slots.Put(id)
		}
		f.done = f.n
	}
	return true
}

// receiveState is one datapath receiver's: directory fragments being
// collected, by sender.
type receiveState struct {
	rm      *remote
	chans   []uint32
	pending map[netip.AddrPort]*directoryParts
}

// directoryParts collects one peer's directory fragments.
type directoryParts struct {
	gen   uint64
	next  uint16
	chans []uint32
}

// maxDirectoryChannels bounds one peer's directory.
const maxDirectoryChannels = 1 << 16

// handle dispatches a received batch: data to local sinks, directories to
// the peer table.
func (rx *receiveState) handle(pkts []wire.Packet) {
	rm := rx.rm
	for i := range pkts {
		h, payload, err := wire.Parse(pkts[i].Bytes())
		if err != nil {
			rm.malformed.Add(1)
			continue
		}
		switch h.Kind {
		case wire.KindData:
			if h.FragCount != 1 {
				rm.malformed.Add(1) // fragmented messages are not sent yet
				continue
			}
			rm.received.Add(1)
			rm.rt.deliverLocal(h.Channel, uint64(h.Source), h.Seq, payload)
		case wire.KindDirectory:
			d, err := wire.ParseDirectory(payload, rx.chans[:0])
			if err != nil {
				rm.malformed.Add(1)
				continue
			}
			p := rm.peerAt(pkts[i].Addr)
			if p == nil || d.Generation < p.gen.Load() {
				continue
			}
			// Fragments come in order, one generation at a time; anything
			// else starts over, and a directory never grows past
			// maxDirectoryChannels (a spoofed fragment count cannot make
			// this loop collect forever).
			part := rx.pending[pkts[i].Addr]
			if h.FragIndex == 0 || part == nil || h.FragIndex != part.next || d.Generation != part.gen {
				if h.FragIndex != 0 {
					delete(rx.pending, pkts[i].Addr)
					rm.malformed.Add(1)
					continue
				}
				part = &directoryParts{gen: d.Generation}
				rx.pending[pkts[i].Addr] = part
			}
			if len(part.chans)+len(d.Channels) > maxDirectoryChannels {
				delete(rx.pending, pkts[i].Addr)
				rm.malformed.Add(1)
				continue
			}
			part.chans = append(part.chans, d.Channels...)
			part.next++
			if int(h.FragIndex)+1 < int(h.FragCount) {
				continue
			}
			delete(rx.pending, pkts[i].Addr)
			acc := part.chans
			list := slices.Clone(acc)
			slices.Sort(list)
			p.channels.Store(&list)
			p.node.Store(d.Node)
			p.gen.Store(d.Generation)
			p.seen.Store(time.Now().UnixNano())
		}
	}
}

func (rm *remote) peerAt(a netip.AddrPort) *peer {
	for _, p := range rm.peers {
		if p.addr == a {
			return p
		}
	}
	return nil
}

// PeerInfo is what velocectl shows for a peer.
type PeerInfo struct {
	Addr     string   `json:"addr"`
	Node     uint32   `json:"node"`
	Channels []uint32 `json:"channels"`
	LastSeen string   `json:"last_directory,omitempty"`
}

// StatsReporter is a Datapath with counters for velocectl.
type StatsReporter interface {
	// DatapathStats returns a JSON-encodable snapshot of the counters.
	DatapathStats() any
}

// DatapathInfo is what velocectl shows for a datapath to other hosts.
type DatapathInfo struct {
	Name    string `json:"name"`
	Addr    string `json:"addr"`
	Default bool   `json:"default"`
	// Peers are the peers the datapath reaches.
	Peers  []string `json:"peers"`
	Queued int      `json:"queued"`
	Stats  any      `json:"stats,omitempty"`
}

// RemoteInfo is the daemon's view of other hosts: its datapaths and peers.
type RemoteInfo struct {
	Datapaths []DatapathInfo `json:"datapaths"`
	Peers     []PeerInfo     `json:"peers"`
	Sent      uint64         `json:"sent"`
	Received  uint64         `json:"received"`
	Dropped   uint64         `json:"dropped"`
	Malformed uint64         `json:"malformed"`
}

// Remote returns the datapaths to other hosts and the peers.
func (r *Runtime) Remote() RemoteInfo {
	info := RemoteInfo{Datapaths: []DatapathInfo{}, Peers: []PeerInfo{}}
	rm := r.remote
	if rm == nil {
		return info
	}
	info.Sent, info.Received, info.Dropped, info.Malformed = rm.sent.Load(), rm.received.Load(), rm.dropped.Load(), rm.malformed.Load()
	for _, st := range rm.dps {
		d := DatapathInfo{Name: st.dp.Name(), Addr: st.dp.LocalAddr().String(), Default: st.index == 0 && rm.opts.Datapath != nil,
			Peers: []string{}, Queued: st.ready.Len()}
		for _, p := range rm.peers {
			if slices.Contains(p.via, st.index) {
				d.Peers = append(d.Peers, p.addr.String())
			}
		}
		if sr, ok := st.dp.(StatsReporter); ok {
			d.Stats = sr.DatapathStats()
		}
		info.Datapaths = append(info.Datapaths, d)
	}
	for _, p := range rm.peers {
		pi := PeerInfo{Addr: p.addr.String(), Node: p.node.Load(), Channels: slices.Clone(*p.channels.Load())}
		if ns := p.seen.Load(); ns != 0 {
			pi.LastSeen = time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
		}
		info.Peers = append(info.Peers, pi)
	}
	return info
}
