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

// RemoteOptions connect a runtime to its peers.
type RemoteOptions struct {
	// Datapath carries messages between daemons; nil means none.
	Datapath Datapath
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
	dp    Datapath
	opts  RemoteOptions
	peers []*peer

	mem   []byte
	lens  []uint16
	dest  []uint16 // peer index of each slot
	free  *ring.Queue
	ready *ring.Queue
	kick  chan struct{} // wakes the sender; buffered 1

	dirChanged chan struct{} // buffered 1
	generation uint64        // owned by the sender goroutine

	sent, received, dropped, malformed atomic.Uint64
}

type peer struct {
	addr netip.AddrPort
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
	rm := &remote{rt: rt, dp: opts.Datapath, opts: opts,
		mem: make([]byte, remoteSlots*remoteSlotSize), lens: make([]uint16, remoteSlots), dest: make([]uint16, remoteSlots),
		kick: make(chan struct{}, 1), dirChanged: make(chan struct{}, 1)}
	rm.free, _ = ring.New(remoteSlots)
	rm.ready, _ = ring.New(remoteSlots)
	for i := uint32(0); i < remoteSlots; i++ {
		rm.free.Push(i)
	}
	for _, a := range opts.Peers {
		p := &peer{addr: a}
		empty := []uint32{}
		p.channels.Store(&empty)
		rm.peers = append(rm.peers, p)
	}
	return rm
}

func (rm *remote) slot(id uint32) []byte {
	return rm.mem[int(id)*remoteSlotSize : (int(id)+1)*remoteSlotSize]
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

// emit queues a message for every peer with sinks on its channel. It
// takes no lock and does not allocate.
func (rm *remote) emit(src *Source, seq uint64, payload []byte) {
	if len(payload) > MaxRemotePayload {
		rm.dropped.Add(1)
		return
	}
	queued := false
	for i, p := range rm.peers {
		if _, ok := slices.BinarySearch(*p.channels.Load(), src.Channel); !ok {
			continue
		}
		id, ok := rm.free.Pop()
		if !ok {
			rm.dropped.Add(1)
			continue
		}
		h := wire.Header{Kind: wire.KindData, Class: classOf(src.Stream.Options), FragCount: 1,
			PayloadLen: uint16(len(payload)), Channel: src.Channel, Source: wire.SourceID(src.Global), Seq: seq}
		n, err := h.MarshalPacket(rm.slot(id), payload)
		if err != nil {
			rm.free.Push(id)
			rm.dropped.Add(1)
			continue
		}
		rm.lens[id], rm.dest[id] = uint16(n), uint16(i)
		rm.ready.Push(id)
		queued = true
	}
	if queued {
		select {
		case rm.kick <- struct{}{}:
		default:
		}
	}
}

// channelsChanged is called (under rt.mu) when local sinks came or went.
func (rm *remote) channelsChanged() {
	select {
	case rm.dirChanged <- struct{}{}:
	default:
	}
}

// run drives the sender and the receiver until ctx ends.
func (rm *remote) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); rm.sender(ctx) }()
	go func() { defer wg.Done(); rm.receiver(ctx) }()
	wg.Wait()
}

// sender and receiver are not locked to OS threads: they block in system
// calls when idle, and handing a locked thread back and forth cost ~150 µs
// per round trip (veloce-bench streams). Pinning belongs to busy-polling
// plugins on dedicated cores.
func (rm *remote) sender(ctx context.Context) {
	pkts := make([]wire.Packet, remoteBatch)
	ids := make([]uint32, remoteBatch)
	dirBuf := make([]byte, wire.HeaderLen+wire.MaxDirectoryLen)
	tick := time.NewTicker(rm.opts.DirectoryInterval)
	defer tick.Stop()
	rm.sendDirectory(dirBuf)
	for {
		n := 0
		for n < remoteBatch {
			id, ok := rm.ready.Pop()
			if !ok {
				break
			}
			ids[n] = id
			pkts[n] = wire.Packet{Addr: rm.peers[rm.dest[id]].addr, Buf: rm.slot(id), N: int(rm.lens[id])}
			n++
		}
		if n > 0 {
			done := 0
			for done < n {
				k, err := rm.dp.SendBatch(pkts[done:n])
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
				rm.free.Push(id)
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-rm.kick:
		case <-rm.dirChanged:
			rm.sendDirectory(dirBuf)
		case <-tick.C:
			rm.sendDirectory(dirBuf)
		}
	}
}

// sendDirectory tells every peer which channels have local sinks.
func (rm *remote) sendDirectory(buf []byte) {
	rm.generation++
	var chans []uint32
	for ch, sinks := range rm.rt.channels.Load() {
		if len(sinks) > 0 {
			chans = append(chans, ch)
		}
	}
	slices.Sort(chans)
	total := max(1, (len(chans)+wire.MaxDirectoryChannels-1)/wire.MaxDirectoryChannels)
	pkts := make([]wire.Packet, 0, len(rm.peers))
	for frag := 0; frag < total; frag++ {
		part := chans[min(frag*wire.MaxDirectoryChannels, len(chans)):min((frag+1)*wire.MaxDirectoryChannels, len(chans))]
		d := wire.Directory{Node: rm.rt.opts.NodeID, Generation: rm.generation, Channels: part}
		n, err := d.Marshal(buf[wire.HeaderLen:])
		if err != nil {
			continue
		}
		h := wire.Header{Kind: wire.KindDirectory, FragIndex: uint16(frag), FragCount: uint16(total), PayloadLen: uint16(n),
			Source: wire.NewSourceID(rm.rt.opts.NodeID, 0), Seq: rm.generation}
		m, err := h.MarshalPacket(buf, buf[wire.HeaderLen:wire.HeaderLen+n])
		if err != nil {
			continue
		}
		pkts = pkts[:0]
		for _, p := range rm.peers {
			pkts = append(pkts, wire.Packet{Addr: p.addr, Buf: buf, N: m})
		}
		rm.dp.SendBatch(pkts)
	}
}

func (rm *remote) receiver(ctx context.Context) {
	pkts := make([]wire.Packet, remoteBatch)
	for i := range pkts {
		pkts[i].Buf = make([]byte, 65536)
	}
	chans := make([]uint32, 0, wire.MaxDirectoryChannels)
	pending := map[netip.AddrPort][]uint32{} // directory fragments being collected
	for ctx.Err() == nil {
		n, err := rm.dp.RecvBatch(pkts, 100*time.Millisecond)
		if err != nil {
			if errors.Is(err, context.Canceled) || ctx.Err() != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		for i := range pkts[:n] {
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
				d, err := wire.ParseDirectory(payload, chans[:0])
				if err != nil {
					rm.malformed.Add(1)
					continue
				}
				p := rm.peerAt(pkts[i].Addr)
				if p == nil || d.Generation < p.gen.Load() {
					continue
				}
				acc := append(pending[pkts[i].Addr][:0:0], pending[pkts[i].Addr]...)
				if h.FragIndex == 0 {
					acc = acc[:0]
				}
				acc = append(acc, d.Channels...)
				if int(h.FragIndex)+1 < int(h.FragCount) {
					pending[pkts[i].Addr] = acc
					continue
				}
				delete(pending, pkts[i].Addr)
				list := slices.Clone(acc)
				slices.Sort(list)
				p.channels.Store(&list)
				p.node.Store(d.Node)
				p.gen.Store(d.Generation)
				p.seen.Store(time.Now().UnixNano())
			}
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
