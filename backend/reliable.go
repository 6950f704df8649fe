package backend

// Reliable streams (issue 13, item 2): exactly-once, in-order delivery of
// a reliable source's messages to every peer, over any datagram datapath
// (kernel UDP, DPDK, AF_XDP: one wire).
//
// Per (source, peer) the sender keeps a window (relSend): each message it
// sends to that peer gets the next number of that window's own sequence
// (1, 2, ... in the wire header's Seq), so a peer sees no gaps for the
// messages it had no sinks for, and a copy stays in the window until the
// peer acknowledges it. The receiver (relRecv, per source) buffers what
// arrives out of order or what its sinks cannot take yet, delivers in
// order, drops duplicates, and answers with acks (wire.Ack): the
// cumulative sequence, selective blocks of what arrived past it, and its
// credit — the free slots of its buffer. The sender never has more in
// flight than the credit allows nor more than relWindow, so a sink that
// stops consuming fills the receiver's buffer, the credit falls to zero
// and the source's emits find no room (Runtime.emit reports them full:
// guestlib's ErrNoBuffers on the virtio transport; on the host transport
// the application blocks instead, emitWait); nothing is dropped, and the receiver's acks
// reopen the window once the sink consumes again.
//
// Loss is repaired by retransmission: on a selective ack that shows a hole
// (fast retransmit, once per message) and by timer, relMinRTO doubled per
// attempt up to relMaxRTO. Acks are sent for every received batch, when the
// credit reopens, and as keepalives while the receiver holds messages or
// has advertised less than its whole buffer, so a sender waiting for
// credit can tell a slow sink from a dead peer: a peer that acknowledges
// nothing for RemoteOptions.ReliableTimeout while the window holds
// messages (or waits for credit) is unreachable. The source then fails
// visibly — Source.Unreachable, guestproto.StatusPeerUnreachable for its
// emits (guestlib.ErrPeerUnreachable), "peer-unreachable" in velocectl
// streams — and its windows are freed: nothing is queued without bound.
//
// A datapath that is reliable itself (RDMA RC: ReliableDatapath) carries
// reliable streams directly; the runtime adds no acks there.
//
// Costs: a window holds relWindow datagram copies (1 MiB), allocated when
// a reliable source first sends to a peer; a receiver the same per
// reliable source it hears from, at most relMaxRecvPerPeer sources per
// peer (more are dropped, counted), reclaimed after relIdle without
// traffic. Emit and receive take the window's mutex (one source's emits
// and its peer's acks meet there; uncontended otherwise) and allocate
// nothing per message.
//
// A peer that restarts (a directory with a new boot id) gets fresh
// receivers here, and this daemon's windows toward it start over at 1,
// under a new epoch, with what the old run had not acknowledged
// (peerRestarted).
//
// Every window has an epoch (the wall clock when it was made, and always
// later than the daemon's previous one), carried with each message. A
// window made again for the same source and peer — the source migrated
// away and back, the peer restarted, a receiver forgot it — numbers from
// 1 under a later epoch, and the receiver, once it has delivered the old
// numbering's messages, starts over with it; messages of an earlier
// epoch are dropped as duplicates. (An ack of the old window still in
// flight when a new one starts is not told apart: windows are made
// again seconds apart, acks live for a round trip.)
//
// A message held for a sink without room is retried every relTick; the
// sinks that took it are remembered by position in the channel's sink
// list, so a sink closing meanwhile may make the next one miss that
// message.
//
// The window's numbers are the wire's; the payload is preceded by the
// source's own sequence number and the epoch (relPrefixLen bytes); the
// source's number is what sinks
// see: the same numbering whichever peer's window carried a message, so a
// sink that migrates from one daemon to another (and hears the source
// through both for a while) keeps one order and drops the copies.
//
// Not yet: a migrated reliable source's windows (and a receiver's
// buffer) are not in the migration snapshot; a migrated source starts new
// windows on its new daemon, and what its old windows had not delivered
// when the old daemon released it is lost; a peer's sink may get the new
// windows' first messages before the old ones' last (two receivers). A receiver's messages for a migrating sink go with the sink
// (held, then forwarded). Co-located sinks get a reliable stream's
// messages through emitWait's retries (a full sink, or a VM sink without
// credit, holds a host application's source).

import (
	"context"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/internal/wire"
)

// ReliableDatapath is a Datapath that delivers in order and without loss
// by itself (RDMA over RC queue pairs): reliable streams on it get no
// acknowledgements or retransmissions from the runtime.
type ReliableDatapath interface {
	// CarriesReliable reports whether the datapath is reliable.
	CarriesReliable() bool
}

const (
	// relWindow is how many messages a reliable source has in flight to
	// one peer at most, and how many a receiver buffers per source.
	relWindow = 512
	// relPrefixLen is what goes ahead of a reliable message's payload:
	// the source's sequence number and the window's epoch (u64 each).
	relPrefixLen = 16
	// relTick is how often the timers run.
	relTick = 2 * time.Millisecond
	// relMinRTO and relMaxRTO bound the retransmission timeout, doubled
	// per attempt of a message.
	relMinRTO = 20 * time.Millisecond
	relMaxRTO = time.Second
	// relKeepalive is how often a receiver acks while it holds messages.
	relKeepalive = 50 * time.Millisecond
	// relIdle reclaims a receiver that heard nothing for that long and
	// holds nothing.
	relIdle = time.Minute
	// relMaxReclaimed bounds the reclaimed receivers remembered (about
	// 40 bytes each); past it a reclaimed source's next message is held
	// as out of order, as before this table.
	relMaxReclaimed = 1 << 16
	// relMaxRecvPerPeer bounds the reliable sources one peer may open
	// receivers for.
	relMaxRecvPerPeer = 64
	// DefaultReliableTimeout is RemoteOptions.ReliableTimeout's default.
	DefaultReliableTimeout = 5 * time.Second
)

// relKey names a sender window: a local source toward a peer, or a
// receiver: a peer's source.
type relKey struct {
	source uint64
	peer   *peer
}

// relEntry is one message in a window or a receive buffer.
type relEntry struct {
	n     int   // datagram (sender) or payload (receiver) length; 0: empty
	tries int   // sender: transmissions so far
	sent  int64 // sender: unix ns of the last transmission
	seq   uint64
	// fi and fc are the receiver's entry's FragIndex and FragCount (a
	// fragment of a large message when fc > 1; large.go).
	fi, fc uint16
}

// relMark is where a reclaimed receiver's window stood.
type relMark struct{ cum, epoch uint64 }

// newEpoch returns an epoch for a new window numbering: the wall clock
// in ns, and never less than one past the last, so a later window of
// this daemon always has a later epoch even when the clock steps back
// (a window of an earlier run is told apart by the peer's boot id).
func (rl *reliable) newEpoch() uint64 {
	now := uint64(time.Now().UnixNano())
	for {
		last := rl.lastEpoch.Load()
		e := max(now, last+1)
		if rl.lastEpoch.CompareAndSwap(last, e) {
			return e
		}
	}
}

// relSend is a reliable source's window toward one peer.
type relSend struct {
	// src and p are set before the window is published, then only read.
	src *Source // +checklocksignore
	p   *peer   // +checklocksignore
	// dpi is the datapath retransmissions take: the route of the
	// window's first message, moved by SetStreamQoS (setqos.go).
	dpi int // +checklocks:mu

	mu sync.Mutex
	// epoch names the window's numbering (reliable.newEpoch): a window
	// made again for the same source and peer (the source migrated back
	// to this daemon, or the peer restarted) numbers from 1 again under a
	// later epoch, and the receiver starts over with it.
	epoch uint64 // +checklocks:mu
	// base is the lowest unacknowledged sequence, next the next one to
	// send; credit the highest the receiver allows.
	base   uint64 // +checklocks:mu
	next   uint64 // +checklocks:mu
	credit uint64 // +checklocks:mu
	// lastAck is the unix ns time of the last ack (or of the window's
	// creation).
	lastAck int64 // +checklocks:mu
	failed  bool  // +checklocks:mu
	// entries[seq%relWindow] holds message seq; mem their datagrams.
	entries []relEntry // +checklocks:mu
	mem     []byte     // +checklocks:mu
	// backlog holds a large message whose fragments the window had no
	// room for yet (large.go): fragment blNext of blCount goes next.
	backlog relBacklog // +checklocks:mu
}

// relBacklog is a reliable large message waiting for room in its window.
type relBacklog struct {
	buf         []byte // allocated once, MaxMessage bytes
	n           int    // message length
	next, count int    // fragments
	srcSeq      uint64
	class       wire.Class
	channel     uint32
	source      wire.SourceID
}

// pending reports whether fragments wait.
func (b *relBacklog) pending() bool { return b.next < b.count }

// relRecv is the receiving side of a peer's reliable source.
type relRecv struct {
	// key, channel and dpi (the datapath acks go back on) are set before
	// the receiver is published, then only read.
	key     relKey // +checklocksignore
	channel uint32 // +checklocksignore
	dpi     int    // +checklocksignore

	mu sync.Mutex
	// epoch is the sender's window's (0 until its first message).
	epoch uint64 // +checklocks:mu
	// cum is the highest sequence received with everything before it;
	// head the next to deliver (head <= cum+1).
	cum  uint64 // +checklocks:mu
	head uint64 // +checklocks:mu
	// headDone is how many of the channel's sinks took message head.
	headDone int // +checklocks:mu
	// ooo counts buffered messages past cum.
	ooo int // +checklocks:mu
	// dirty: an ack is owed; lastAck, lastData: unix ns.
	dirty    bool  // +checklocks:mu
	lastAck  int64 // +checklocks:mu
	lastData int64 // +checklocks:mu
	// advertised is the window the last ack gave.
	advertised uint32     // +checklocks:mu
	entries    []relEntry // +checklocks:mu
	mem        []byte     // +checklocks:mu
	// large joins a large message's fragments as they are delivered in
	// order (large.go).
	large relJoin // +checklocks:mu
}

// relJoin is a large message being joined by a receiver.
type relJoin struct {
	buf         []byte // allocated once, MaxMessage bytes
	n           int
	next, count uint16
	srcSeq      uint64
	ready       bool // the last fragment is in: the message waits for its sinks
}

// reliable is the runtime's reliable-stream state, part of remote.
type reliable struct {
	rm *remote
	// timeout: see RemoteOptions.ReliableTimeout.
	timeout time.Duration

	mu sync.Mutex // serialises creation and removal in the tables
	// senders and receivers are read without a lock.
	senders   cowMap[relKey, *relSend]
	receivers cowMap[relKey, *relRecv]
	// recvPerPeer counts receivers per peer.
	recvPerPeer map[*peer]int // +checklocks:mu
	// reclaimed keeps, for each receiver reclaimed while idle, the last
	// sequence number it delivered and its window's epoch: its sender's
	// window goes on from there (it never learns of the reclaim), so a
	// receiver created again for the source must too. A few bytes per
	// source, dropped with the peer.
	reclaimed map[relKey]relMark // +checklocks:mu
	// lastEpoch is the latest epoch given to a window.
	lastEpoch atomic.Uint64
	// started wakes run when the first window or receiver appears: with
	// none, the timers do not tick (an idle daemon stays idle).
	started chan struct{}

	// Counters.
	retransmits, duplicates, refused, overflow, unreachable, malformed atomic.Uint64
}

func newReliable(rm *remote) *reliable {
	t := rm.opts.ReliableTimeout
	if t <= 0 {
		t = DefaultReliableTimeout
	}
	return &reliable{rm: rm, timeout: t, recvPerPeer: map[*peer]int{}, reclaimed: map[relKey]relMark{}, started: make(chan struct{}, 1)}
}

// info returns the counters.
func (rl *reliable) info() ReliableInfo {
	return ReliableInfo{Windows: rl.senders.Len(), Receivers: rl.receivers.Len(), Retransmits: rl.retransmits.Load(),
		Duplicates: rl.duplicates.Load(), WindowFull: rl.refused.Load(), Unreachable: rl.unreachable.Load(), Overflow: rl.overflow.Load(),
		Malformed: rl.malformed.Load()}
}

// datapathReliable reports whether dp carries reliable streams itself.
func datapathReliable(dp Datapath) bool {
	r, ok := dp.(ReliableDatapath)
	return ok && r.CarriesReliable()
}

// ReliableInfo counts the work of reliable streams (acks,
// retransmissions) on datagram datapaths, as velocectl remote shows it.
type ReliableInfo = control.ReliableInfo

// Unreachable reports whether the source failed: a peer with sinks for
// it acknowledged nothing within the reliable timeout (reliable streams
// only). Its emits are refused from then on (StatusPeerUnreachable).
func (so *Source) Unreachable() bool { return so.unreachable.Load() }

// sender returns src's window toward p over datapath dpi, creating it.
func (rl *reliable) sender(src *Source, p *peer, dpi int) *relSend {
	k := relKey{src.Global, p}
	if rs := rl.senders.Get(k); rs != nil {
		return rs
	}
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if rs := rl.senders.Get(k); rs != nil {
		return rs
	}
	rs := &relSend{src: src, p: p}
	rs.mu.Lock()
	rs.epoch = rl.newEpoch()
	rs.dpi = dpi
	rs.base, rs.next, rs.credit = 1, 1, relWindow
	rs.lastAck = time.Now().UnixNano()
	rs.entries = make([]relEntry, relWindow)
	rs.mem = make([]byte, relWindow*remoteSlotSize)
	rs.mu.Unlock()
	rl.senders.Store(k, rs)
	rl.wake()
	return rs
}

// room reports whether src's window toward p has room for a message
// (or has failed).
func (rl *reliable) room(src *Source, p *peer, dpi int) bool {
	rs := rl.sender(src, p, dpi)
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.failed || (!rs.backlog.pending() && rs.next-rs.base < relWindow && rs.next <= rs.credit)
}

// emit queues a reliable message for p: it is emit's per-peer step for a
// reliable source on a datapath that is not reliable itself. It reports
// false when the window or the credit is exhausted, the source failed, or
// no slot is free (the message is not sent to p).
func (rl *reliable) emit(src *Source, p *peer, dpi int, srcSeq uint64, payload []byte) bool {
	rs := rl.sender(src, p, dpi)
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.failed || rs.backlog.pending() || rs.next-rs.base >= relWindow || rs.next > rs.credit {
		rl.refused.Add(1)
		return false
	}
	if rs.next == rs.base && rs.next <= rs.credit {
		rs.lastAck = time.Now().UnixNano() // idle until now: the peer's clock starts with this message
	}
	h := wire.Header{Kind: wire.KindData, Class: classOf(src.Stream.Options), FragCount: 1,
		Channel: src.Channel, Source: wire.SourceID(src.Global)}
	if len(payload) > rl.rm.dps[dpi].maxPayload {
		rl.emitLargeLocked(rs, h, srcSeq, payload) // large.go
		return true
	}
	return rl.putLocked(rs, dpi, h, srcSeq, payload)
}

// putLocked puts one datagram in rs's window, as its next entry, and
// queues it on datapath dpi: a message (h.FragCount 1) or a fragment.
// It reports false when no slot is free.
//
// +checklocks:rs.mu
func (rl *reliable) putLocked(rs *relSend, dpi int, h wire.Header, srcSeq uint64, payload []byte) bool {
	rm := rl.rm
	p := rs.p
	id, ok := rm.slots.Get()
	if !ok {
		return false
	}
	seq := rs.next
	h.Seq = seq
	buf := rm.slots.Bytes(id)
	// The payload goes after the source's own sequence number (the
	// header's Seq is the window's: sinks see the source's numbering,
	// whichever peers' windows carried it, as a migrated sink hears one
	// source through two daemons) and the window's epoch.
	body := buf[wire.HeaderLen:]
	if len(body) < relPrefixLen+len(payload) {
		rm.slots.Put(id)
		return false
	}
	binary.LittleEndian.PutUint64(body, srcSeq)
	binary.LittleEndian.PutUint64(body[8:], rs.epoch)
	copy(body[relPrefixLen:], payload)
	n, err := h.MarshalPacket(buf, body[:relPrefixLen+len(payload)])
	if err != nil {
		rm.slots.Put(id)
		return false
	}
	i := seq % relWindow
	copy(rs.mem[int(i)*remoteSlotSize:], buf[:n])
	rs.entries[i] = relEntry{n: n, tries: 1, sent: time.Now().UnixNano(), seq: seq}
	rs.next++
	rm.queue(dpi, id, n, p, h.Class) // under mu: the window's order is the ring's
	return true
}

// queue puts slot id, a datagram of n bytes for p of class c, on
// datapath dpi's queue for its traffic class and wakes its sender.
func (rm *remote) queue(dpi int, id uint32, n int, p *peer, c wire.Class) {
	*rm.slots.Meta(id) = remoteMeta{len: uint16(n), dest: p}
	st := rm.dps[dpi]
	st.pushed.Add(1)
	st.queueFor(c).PushWait(id)
	if st.poller != nil {
		st.poller.Wake()
		return
	}
	if st.polled.Load() {
		return // the polling thread sends it (dppoll.go)
	}
	if rm.inline.Load() > 0 {
		return // the batch's emitter sends it, or kicks (flushInline)
	}
	select {
	case st.kick <- struct{}{}:
	default:
	}
}

// retransmitLocked sends message i of rs's window again.
//
// +checklocks:rs.mu
func (rl *reliable) retransmitLocked(rs *relSend, i uint64, now int64) {
	rm := rl.rm
	e := &rs.entries[i]
	id, ok := rm.slots.Get()
	if !ok {
		return // the next tick tries again
	}
	h, payload, err := wire.Parse(rs.mem[int(i)*remoteSlotSize : int(i)*remoteSlotSize+e.n])
	if err != nil {
		rm.slots.Put(id)
		return
	}
	h.Flags |= wire.FlagRetransmit
	n, err := h.MarshalPacket(rm.slots.Bytes(id), payload)
	if err != nil {
		rm.slots.Put(id)
		return
	}
	e.tries++
	e.sent = now
	rl.retransmits.Add(1)
	rm.queue(rs.dpi, id, n, rs.p, h.Class)
}

// ack takes an ack from peer p.
func (rl *reliable) ack(p *peer, h wire.Header, body []byte) {
	a, err := wire.ParseAck(body)
	if err != nil {
		rl.rm.reject(p, err)
		return
	}
	rs := rl.senders.Get(relKey{uint64(h.Source), p})
	if rs == nil {
		return // not ours (any more)
	}
	now := time.Now().UnixNano()
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.failed {
		return
	}
	defer rl.pumpLocked(rs) // room freed: a large message's waiting fragments go (large.go)
	cum := h.Seq
	if cum >= rs.next || cum+uint64(a.Window) < cum {
		rl.rm.reject(p, wire.ErrMalformed) // acknowledges what was never sent
		return
	}
	rs.lastAck = now
	for rs.base <= cum {
		rs.entries[rs.base%relWindow].n = 0
		rs.base++
	}
	rs.credit = max(rs.credit, cum+uint64(a.Window))
	if a.N == 0 {
		return
	}
	top := cum
	for _, b := range a.Blocks[:a.N] {
		for s := cum + uint64(b.First); s <= cum+uint64(b.Last) && s < rs.next; s++ {
			if e := &rs.entries[s%relWindow]; e.seq == s {
				e.n = 0
			}
		}
		top = cum + uint64(b.Last)
	}
	// Fast retransmit: what the receiver lacks below the highest message
	// it has, sent once so far, goes again now.
	for s := rs.base; s < top && s < rs.next; s++ {
		if e := &rs.entries[s%relWindow]; e.n != 0 && e.tries == 1 {
			rl.retransmitLocked(rs, s%relWindow, now)
		}
	}
}

// data takes a reliable source's message from peer p on datapath dpi and
// reports whether an ack is owed (the caller sends it after its batch).
func (rx *receiveState) reliableData(p *peer, h wire.Header, payload []byte) {
	rl := rx.rm.rel
	k := relKey{uint64(h.Source), p}
	rr := rl.receivers.Get(k)
	if rr == nil {
		if rr = rl.newReceiver(k, h.Channel, rx.index); rr == nil {
			rl.overflow.Add(1)
			return
		}
	}
	rr.mu.Lock()
	rr.lastData = time.Now().UnixNano()
	seq := h.Seq
	var epoch uint64
	if len(payload) >= relPrefixLen {
		epoch = binary.LittleEndian.Uint64(payload[8:])
	}
	if epoch > rr.epoch && rr.epoch != 0 && len(payload) >= relPrefixLen && h.Channel == rr.channel {
		// A new window of the source's daemon, numbered from 1: start
		// over once every message of the old one is delivered (until
		// then the new ones are not taken, and come again).
		if rr.head <= rr.cum {
			rl.duplicates.Add(1)
			rr.mu.Unlock()
			return
		}
		rr.restartLocked(epoch)
	}
	switch {
	case len(payload) < relPrefixLen:
		rl.malformed.Add(1) // no source sequence number: not ours
	case epoch < rr.epoch:
		rl.duplicates.Add(1) // a late message of an earlier window
	case seq <= rr.cum || seq >= rr.head+relWindow || h.Channel != rr.channel:
		// A duplicate, or past the credit: the ack tells the sender.
		rl.duplicates.Add(1)
	case rr.entries[seq%relWindow].n != 0:
		rl.duplicates.Add(1)
	default:
		rr.epoch = epoch // the first message's, or the same
		i := seq % relWindow
		copy(rr.mem[int(i)*remoteSlotSize:], payload)
		rr.entries[i] = relEntry{n: len(payload) + 1, seq: seq, fi: h.FragIndex, fc: h.FragCount} // n: length+1, so an empty message is held too
		if seq == rr.cum+1 {
			for rr.cum++; rr.ooo > 0 && rr.entries[(rr.cum+1)%relWindow].n != 0 && rr.entries[(rr.cum+1)%relWindow].seq == rr.cum+1; rr.cum++ {
				rr.ooo--
			}
		} else {
			rr.ooo++
		}
		rl.deliverLocked(rr)
	}
	if !rr.dirty {
		rr.dirty = true
		rx.acks = append(rx.acks, rr) // cap: remoteBatch
	}
	rr.mu.Unlock()
}

// restartLocked starts rr over for a new window numbering, everything
// of the old one delivered.
//
// +checklocks:rr.mu
func (rr *relRecv) restartLocked(epoch uint64) {
	clear(rr.entries)
	rr.epoch, rr.cum, rr.head, rr.headDone, rr.ooo = epoch, 0, 1, 0, 0
	rr.large.reset()
}

// newReceiver creates the receiver of peer k.peer's source k.source, or
// returns nil when the peer has relMaxRecvPerPeer already.
func (rl *reliable) newReceiver(k relKey, channel uint32, dpi int) *relRecv {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if rr := rl.receivers.Get(k); rr != nil {
		return rr
	}
	if rl.recvPerPeer[k.peer] >= relMaxRecvPerPeer {
		return nil
	}
	rl.recvPerPeer[k.peer]++
	rr := &relRecv{key: k, channel: channel, dpi: dpi}
	rr.mu.Lock()
	rr.head, rr.advertised = 1, relWindow
	if m, ok := rl.reclaimed[k]; ok { // the source's numbering goes on
		rr.cum, rr.head, rr.epoch = m.cum, m.cum+1, m.epoch
		delete(rl.reclaimed, k)
	}
	rr.entries = make([]relEntry, relWindow)
	rr.mem = make([]byte, relWindow*remoteSlotSize)
	rr.mu.Unlock()
	rl.receivers.Store(k, rr)
	rl.wake()
	return rr
}

// deliverLocked hands rr's messages, in order, to the local sinks until
// one of them has no room.
//
// +checklocks:rr.mu
func (rl *reliable) deliverLocked(rr *relRecv) bool {
	rt := rl.rm.rt
	key := chanKey{rt.hostTenant, rr.channel}
	if len(rt.shared) > 0 && rt.shared[rr.channel] {
		key.tenant = SharedTenant
	}
	moved := false
	for rr.head <= rr.cum {
		i := rr.head % relWindow
		e := &rr.entries[i]
		msg := rr.mem[int(i)*remoteSlotSize : int(i)*remoteSlotSize+e.n-1]
		srcSeq, payload := binary.LittleEndian.Uint64(msg), msg[relPrefixLen:]
		if e.fc > 1 || rr.large.next > 0 {
			// A fragment of a large message (large.go): joined in order;
			// the message goes to the sinks with its last fragment.
			var whole bool
			if payload, whole = rl.joinLocked(rr, e, srcSeq, payload); !whole {
				e.n = 0
				rr.head++
				rr.headDone = 0
				moved = true
				continue
			}
		}
		sinks := rt.channels.Get(key)
		for rr.headDone < len(sinks) {
			sk := sinks[rr.headDone]
			if !fits(sk, len(payload)) {
				sk.dropped.Add(1) // it never would: see sizedEndpoint (large.go)
				rl.rm.large.undeliverable.Add(1)
				rr.headDone++
				continue
			}
			if !sk.session.ep.deliver(sk, rr.key.source, srcSeq, payload) {
				return moved // back-pressure: keep it, the timer tries again
			}
			sk.delivered.Add(1)
			rr.headDone++
		}
		rl.rm.received.Add(1)
		if rr.large.ready {
			rr.large.reset()
			rl.rm.large.relReceived.Add(1)
		}
		e.n = 0
		rr.head++
		rr.headDone = 0
		moved = true
	}
	return moved
}

// window is the credit rr gives: the free slots past cum.
//
// +checklocks:rr.mu
func (rr *relRecv) windowLocked() uint32 { return uint32(rr.head + relWindow - 1 - rr.cum) }

// sendAck queues an ack for rr (its lock held).
//
// +checklocks:rr.mu
func (rl *reliable) sendAckLocked(rr *relRecv, now int64) {
	rm := rl.rm
	rr.dirty = false
	rr.lastAck = now
	id, ok := rm.slots.Get()
	if !ok {
		return // the keepalive makes up for it
	}
	var a wire.Ack
	a.Window = rr.windowLocked()
	rr.advertised = a.Window
	if rr.ooo > 0 {
		in := false
		for s := rr.cum + 2; s < rr.head+relWindow; s++ {
			e := &rr.entries[s%relWindow]
			has := e.n != 0 && e.seq == s
			switch {
			case has && !in:
				if a.N == wire.MaxAckBlocks {
					s = rr.head + relWindow // no more room: the rest waits
					continue
				}
				a.Blocks[a.N] = wire.AckBlock{First: uint32(s - rr.cum), Last: uint32(s - rr.cum)}
				a.N++
				in = true
			case has:
				a.Blocks[a.N-1].Last = uint32(s - rr.cum)
			default:
				in = false
			}
		}
	}
	buf := rm.slots.Bytes(id)
	n, err := a.Marshal(buf[wire.HeaderLen:])
	if err == nil {
		h := wire.Header{Kind: wire.KindAck, Class: wire.ClassReliable, FragCount: 1, Channel: rr.channel,
			Source: wire.SourceID(rr.key.source), Seq: rr.cum}
		n, err = h.MarshalPacket(buf, buf[wire.HeaderLen:wire.HeaderLen+n])
	}
	if err != nil {
		rm.slots.Put(id)
		return
	}
	rm.queue(rr.dpi, id, n, rr.key.peer, wire.ClassReliable) // acks are bulk
}

// flushAcks sends the acks a received batch owes.
func (rx *receiveState) flushAcks() {
	if len(rx.acks) == 0 {
		return
	}
	now := time.Now().UnixNano()
	for i, rr := range rx.acks {
		rr.mu.Lock()
		if rr.dirty {
			rx.rm.rel.sendAckLocked(rr, now)
		}
		rr.mu.Unlock()
		rx.acks[i] = nil
	}
	rx.acks = rx.acks[:0]
}

// run drives the timers until ctx ends: retransmission and the peer
// timeout for windows; delivery retries, keepalive acks and reclaiming
// for receivers.
func (rl *reliable) run(ctx context.Context) {
	tick := time.NewTicker(relTick)
	defer tick.Stop()
	for {
		if rl.senders.Len()+rl.receivers.Len() == 0 {
			tick.Stop()
			select {
			case <-ctx.Done():
				return
			case <-rl.started:
			}
			tick.Reset(relTick)
		}
		select {
		case <-ctx.Done():
			return
		case t := <-tick.C:
			rl.tick(t.UnixNano())
		}
	}
}

// wake tells run that a window or receiver exists.
func (rl *reliable) wake() {
	select {
	case rl.started <- struct{}{}:
	default:
	}
}

func (rl *reliable) tick(now int64) {
	var gone []*relSend
	for _, rs := range rl.senders.All() {
		rs.mu.Lock()
		if rl.tickSendLocked(rs, now) {
			gone = append(gone, rs)
		}
		rs.mu.Unlock()
	}
	if len(gone) > 0 {
		rl.mu.Lock()
		for _, rs := range gone {
			rl.senders.Delete(relKey{rs.src.Global, rs.p})
		}
		rl.mu.Unlock()
	}
	type reclaim struct {
		rr *relRecv
		m  relMark
	}
	var idle []reclaim
	for _, rr := range rl.receivers.All() {
		rr.mu.Lock()
		if rr.head <= rr.cum && rl.deliverLocked(rr) {
			rr.dirty = true
		}
		holding := rr.head <= rr.cum || rr.ooo > 0 || rr.advertised < relWindow
		if rr.dirty || (holding && now-rr.lastAck >= int64(relKeepalive)) {
			rl.sendAckLocked(rr, now)
		}
		if !holding && now-rr.lastData > int64(relIdle) {
			idle = append(idle, reclaim{rr, relMark{rr.cum, rr.epoch}})
		}
		rr.mu.Unlock()
	}
	if len(idle) > 0 {
		rl.mu.Lock()
		for _, x := range idle {
			rl.receivers.Delete(x.rr.key)
			rl.recvPerPeer[x.rr.key.peer]--
			if len(rl.reclaimed) < relMaxReclaimed {
				rl.reclaimed[x.rr.key] = x.m
			}
		}
		rl.mu.Unlock()
	}
}

// tickSendLocked runs rs's timers; it reports whether the window is
// done with (its source closed and nothing is left to send, or it
// failed).
//
// +checklocks:rs.mu
func (rl *reliable) tickSendLocked(rs *relSend, now int64) (remove bool) {
	closed := rs.src.Stream.session.sources.Get(rs.src.ID) != rs.src
	if rs.failed {
		return closed
	}
	rl.pumpLocked(rs)
	if rs.next == rs.base && !rs.backlog.pending() {
		if closed {
			rs.failed = true
			rs.entries, rs.mem = nil, nil
		}
		return closed // a closed source's messages in flight are still sent
	}
	if now-rs.lastAck > int64(rl.timeout) {
		rl.failLocked(rs)
		return closed
	}
	for s := rs.base; s < rs.next; s++ {
		e := &rs.entries[s%relWindow]
		if e.n == 0 || e.seq != s {
			continue
		}
		rto := min(relMinRTO<<min(e.tries-1, 16), relMaxRTO)
		if now-e.sent >= int64(rto) {
			rl.retransmitLocked(rs, s%relWindow, now)
		}
	}
	return false
}

// failLocked fails rs's source: its peer is unreachable.
//
// +checklocks:rs.mu
func (rl *reliable) failLocked(rs *relSend) {
	rs.failed = true
	rs.entries, rs.mem = nil, nil // nothing queued without bound
	rs.backlog = relBacklog{}
	rl.unreachable.Add(1)
	if !rs.src.unreachable.Swap(true) {
		rl.rm.rt.log.Warn("reliable source failed: peer unreachable", "source", rs.src.ID, "channel", rs.src.Channel,
			"peer", rs.p.addr, "unacknowledged", rs.next-rs.base, "timeout", rl.timeout)
	}
}

// peerRestarted is told that p restarted (a directory with a new boot
// id): what this daemon's receivers held of p's old run is dropped, and
// every window toward p starts over at sequence 1 with the messages the
// old run had not acknowledged, renumbered in order (the old run
// delivered the rest). It allocates (a rare event).
func (rl *reliable) peerRestarted(p *peer) {
	rl.mu.Lock()
	for k := range rl.receivers.All() {
		if k.peer == p {
			rl.receivers.Delete(k)
		}
	}
	delete(rl.recvPerPeer, p)
	for k := range rl.reclaimed {
		if k.peer == p {
			delete(rl.reclaimed, k)
		}
	}
	rl.mu.Unlock()
	for k, rs := range rl.senders.All() {
		if k.peer != p {
			continue
		}
		rs.mu.Lock()
		if !rs.failed {
			rl.renumberLocked(rs)
		}
		rs.mu.Unlock()
	}
}

// +checklocks:rs.mu
func (rl *reliable) renumberLocked(rs *relSend) {
	var keep [][]byte
	for s := rs.base; s < rs.next; s++ {
		i := s % relWindow
		if e := rs.entries[i]; e.n != 0 && e.seq == s {
			keep = append(keep, append([]byte(nil), rs.mem[int(i)*remoteSlotSize:int(i)*remoteSlotSize+e.n]...))
		}
	}
	clear(rs.entries)
	rs.base, rs.next, rs.credit = 1, 1, relWindow
	rs.epoch = rl.newEpoch()
	rs.lastAck = time.Now().UnixNano()
	for _, d := range keep {
		h, payload, err := wire.Parse(d)
		if err != nil || len(payload) < relPrefixLen {
			continue
		}
		h.Seq = rs.next
		binary.LittleEndian.PutUint64(payload[8:], rs.epoch)
		i := rs.next % relWindow
		n, err := h.MarshalPacket(rs.mem[int(i)*remoteSlotSize:int(i+1)*remoteSlotSize], payload)
		if err != nil {
			continue
		}
		rs.entries[i] = relEntry{n: n, tries: 1, seq: rs.next} // sent 0: the next tick sends it
		rs.next++
	}
}

// emitWait is emit for the host transport: a reliable source's message
// that no destination had room for (a full window, no credit, a local
// sink's full queue or a VM sink's exhausted credit) is tried again, with
// pauses, until one takes it, the source fails, gone says the
// application left, or the reliable timeout passes. The caller holds the
// application's TX slot meanwhile, so the application blocks in
// GetBufferContext instead of seeing refusals it would have to resend out
// of order. Retrying duplicates nothing: no destination took the message.
// A best-effort source's message is tried once.
//
// A message refused because its stream is moving to another datapath
// (SetStreamQoS) waits too, whatever the stream's reliability, for at most
// the drain bound past the reliable timeout.
//
// inBatch says the caller is in a batch of emits (batchEmits): the wait
// ends the batch first (what it queued goes out, or its senders are
// kicked), and begins another after.
func (r *Runtime) emitWait(src *Source, payload []byte, gone *atomic.Bool, inBatch bool) (taken, full int) {
	taken, full, reliable, paused := r.emitOnce(src, payload)
	if (!reliable && !paused) || taken > 0 || full == 0 {
		return taken, full
	}
	timeout := DefaultReliableTimeout
	if r.remote != nil {
		timeout = r.remote.rel.timeout
	}
	deadline := time.Now().Add(timeout + QoSDrainTimeout)
	if inBatch {
		r.remote.flushInline()
		defer r.remote.batchEmits()
	}
	for pause := 10 * time.Microsecond; ; pause = min(2*pause, time.Millisecond) {
		time.Sleep(pause)
		if src.Unreachable() || gone.Load() || time.Now().After(deadline) {
			return taken, full
		}
		src.emitted.Add(^uint64(0)) // the same message again: counted once
		if taken, full, reliable, paused = r.emitOnce(src, payload); taken > 0 || full == 0 || (!reliable && !paused) {
			return taken, full
		}
	}
}
