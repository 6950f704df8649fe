package backend

// Large messages (issue 13, item 5): a message to other hosts larger
// than one datagram (MaxRemotePayload) goes as FragCount fragments of
// fragSize bytes each (1,392: they fit a 1500-byte MTU; the last one the rest), every one a
// datagram with the message's header, FragIndex set, on the stream's
// datapath (kernel UDP, DPDK and AF_XDP share the wire). The receiving
// datapath's receiver reassembles them (internal/frag: bounded by
// RemoteOptions.MaxMessage per message and fragTotalMessages messages in
// progress, fragTimeout to complete) before delivering the message to its
// local sinks.
//
// Best effort: a message with a lost fragment never completes and is
// dropped at its timeout (counted: LargeInfo.Lost), as are messages
// evicted for room (Overflow) and fragments that disagree with their
// message (Inconsistent). A sender that finds too few free slots for all
// of a message's fragments sends none of them (the emit reports no room).
//
// Reliable: each fragment is an entry of the window (reliable.go), with
// the source's sequence number and the epoch ahead of its part, acked and
// resent like any message; the receiver delivers the window in order and
// joins a message's fragments as they come (relRecv.large), so a message
// may have more fragments than the window has entries: the sender keeps
// the fragments the window has no room for yet (relSend.backlog) and
// sends them as acks free entries; the source's next message waits until
// they are all in the window.
//
// One-datagram messages take none of this: their path is unchanged and
// allocates nothing. A fragmented message costs a copy into the
// receiver's buffer; the buffers (MaxMessage each) are allocated on first
// use and reused.

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/internal/frag"
	"github.com/veloce-io/veloce/internal/guestproto"
	"github.com/veloce-io/veloce/internal/wire"
)

const (
	// DefaultMaxMessage is RemoteOptions.MaxMessage's default: 1 MiB.
	DefaultMaxMessage = 1 << 20
	// MaxMaxMessage is the largest RemoteOptions.MaxMessage: 64 MiB
	// (under the header's 65,535 fragments).
	MaxMaxMessage = 64 << 20
	// fragSize is a fragment's payload (every one but a message's last):
	// what a 1500-byte IP MTU leaves of a UDP datagram (1,472 bytes) after
	// the header, the authentication trailer and a reliable message's
	// prefix, so a fragment fits every datapath (the DPDK plugin's own
	// stack sends nothing over its MTU, and kernel UDP needs no IP
	// fragments, whose loss would lose the whole datagram) in either mode.
	fragSize = 1500 - 28 - wire.HeaderLen - wire.AuthTrailerLen - relPrefixLen
	// fragTotalMessages bounds the best-effort messages one datapath's
	// receiver reassembles at once (MaxMessage bytes of buffer each).
	fragTotalMessages = 8
	// fragTimeout is how long a best-effort message may take to complete.
	fragTimeout = time.Second
)

// LargeInfo counts messages sent as fragments, as velocectl remote shows
// them.
type LargeInfo = control.LargeInfo

type largeCounters struct {
	sent, fragments, tooLarge, relReceived, undeliverable atomic.Uint64

	reasms reassemblers
}

// reassemblers are the receivers' reassemblers, for their counters.
type reassemblers struct {
	mu   sync.Mutex
	list []*frag.Reassembler // +checklocks:mu
}

func (c *largeCounters) add(r *frag.Reassembler) {
	c.reasms.mu.Lock()
	c.reasms.list = append(c.reasms.list, r)
	c.reasms.mu.Unlock()
}

func (c *largeCounters) info(maxMessage int) LargeInfo {
	li := LargeInfo{MaxMessage: maxMessage, Sent: c.sent.Load(), Fragments: c.fragments.Load(), TooLarge: c.tooLarge.Load(),
		ReliableReceived: c.relReceived.Load(), Undeliverable: c.undeliverable.Load()}
	var s frag.Stats
	c.reasms.mu.Lock()
	for _, r := range c.reasms.list {
		s.Add(r.Stats())
	}
	c.reasms.mu.Unlock()
	li.Received, li.Lost, li.Overflow, li.Inconsistent, li.Duplicates, li.RefusedTooLarge, li.Pending =
		s.Complete, s.Lost, s.Overflow, s.Inconsistent, s.Duplicates, s.TooLarge, s.Pending
	return li
}

func (rm *remote) newReassembler() *frag.Reassembler {
	r, err := frag.New(frag.Config{FragSize: fragSize, MaxMessage: rm.maxMessage, MaxTotal: fragTotalMessages * rm.maxMessage,
		Timeout: fragTimeout})
	if err != nil {
		panic(err) // MaxMessage is checked by the daemon's flags
	}
	return r
}

// fragments returns how many fragments a message of n bytes takes.
func fragments(n int) int { return max(1, (n+fragSize-1)/fragSize) }

// emitFragments queues a best-effort message larger than one datagram
// for p as its fragments, all or none (no free slots for all: false).
func (rm *remote) emitFragments(src *Source, p *peer, dpi int, seq uint64, payload []byte) bool {
	count := fragments(len(payload))
	if rm.slots.Free() < count {
		rm.dropped.Add(1)
		return false
	}
	h := wire.Header{Kind: wire.KindData, Class: classOf(src.Stream.Options), FragCount: uint16(count),
		Channel: src.Channel, Source: wire.SourceID(src.Global), Seq: seq}
	for i := 0; i < count; i++ {
		id, ok := rm.slots.Get()
		if !ok {
			// Another emit took the slots meanwhile: the fragments
			// queued so far are sent in vain (the receiver drops the
			// message at its timeout).
			rm.dropped.Add(1)
			return false
		}
		h.FragIndex = uint16(i)
		part := payload[i*fragSize : min((i+1)*fragSize, len(payload))]
		n, err := h.MarshalPacket(rm.slots.Bytes(id), part)
		if err != nil {
			rm.slots.Put(id)
			rm.dropped.Add(1)
			return false
		}
		rm.queue(dpi, id, n, p, h.Class)
	}
	rm.large.sent.Add(1)
	rm.large.fragments.Add(uint64(count))
	return true
}

// fragment takes a best-effort message's fragment from peer p and
// delivers the message once complete.
func (rx *receiveState) fragment(p *peer, h wire.Header, payload []byte) {
	now := time.Now().UnixNano()
	msg, err := rx.frag.Add(frag.Key{Peer: p.addr, Source: uint64(h.Source), Seq: h.Seq}, h.FragIndex, h.FragCount, payload, now)
	if err == frag.ErrInconsistent {
		rx.rm.reject(p, wire.ErrMalformed)
		return
	}
	if msg == nil {
		return
	}
	rx.rm.received.Add(1)
	rx.rm.rt.deliverLocal(h.Channel, uint64(h.Source), h.Seq, msg)
}

// expireFragments drops the best-effort messages that did not complete
// in time (a fragment lost), checked at most every tenth of the timeout.
func (rx *receiveState) expireFragments() {
	if rx.frag.Pending() == 0 {
		return
	}
	now := time.Now().UnixNano()
	if now-rx.lastExpire < int64(fragTimeout/10) {
		return
	}
	rx.lastExpire = now
	rx.frag.Expire(now)
}

// emitLargeLocked takes a reliable large message into rs's backlog and
// puts as many of its fragments in the window as it has room for; acks
// and the timer put the rest (pumpLocked). The caller checked that no
// other message waits.
//
// +checklocks:rs.mu
func (rl *reliable) emitLargeLocked(rs *relSend, h wire.Header, srcSeq uint64, payload []byte) {
	b := &rs.backlog
	if b.buf == nil {
		b.buf = make([]byte, rl.rm.maxMessage) // once per window
	}
	b.n = copy(b.buf, payload)
	b.next, b.count = 0, fragments(len(payload))
	b.srcSeq, b.class, b.channel, b.source = srcSeq, h.Class, h.Channel, h.Source
	rl.rm.large.sent.Add(1)
	rl.pumpLocked(rs)
}

// pumpLocked puts the backlog's fragments in rs's window while it has
// room and credit.
//
// +checklocks:rs.mu
func (rl *reliable) pumpLocked(rs *relSend) {
	b := &rs.backlog
	for b.pending() && !rs.failed && rs.next-rs.base < relWindow && rs.next <= rs.credit {
		h := wire.Header{Kind: wire.KindData, Class: b.class, FragIndex: uint16(b.next), FragCount: uint16(b.count),
			Channel: b.channel, Source: b.source}
		part := b.buf[b.next*fragSize : min((b.next+1)*fragSize, b.n)]
		if !rl.putLocked(rs, rs.dpi, h, b.srcSeq, part) {
			return // no slot: the next tick goes on
		}
		b.next++
		rl.rm.large.fragments.Add(1)
	}
}

func (j *relJoin) reset() { j.n, j.next, j.count, j.srcSeq, j.ready = 0, 0, 0, 0, false }

// joinLocked takes the entry at rr's head into the large message being
// joined and returns the message once its last fragment is in (and
// until its sinks took it). A fragment out of sequence drops the message
// it belonged to (counted malformed: the window delivers in order, so
// only a peer that restarted mid-message, or a broken one, sends that).
//
// +checklocks:rr.mu
func (rl *reliable) joinLocked(rr *relRecv, e *relEntry, srcSeq uint64, part []byte) ([]byte, bool) {
	j := &rr.large
	if j.ready {
		return j.buf[:j.n], true // waiting for its sinks
	}
	if e.fc <= 1 {
		// A whole message where a fragment was due: the large one was
		// cut short.
		rl.malformed.Add(1)
		j.reset()
		return part, true
	}
	if e.fi != j.next || (e.fi > 0 && (e.fc != j.count || srcSeq != j.srcSeq)) {
		rl.malformed.Add(1)
		j.reset()
		if e.fi != 0 {
			return nil, false
		}
	}
	if j.n+len(part) > rl.rm.maxMessage {
		rl.malformed.Add(1)
		j.reset()
		return nil, false
	}
	if e.fi == 0 {
		j.count, j.srcSeq, j.n = e.fc, srcSeq, 0
		if j.buf == nil {
			j.buf = make([]byte, rl.rm.maxMessage) // once per receiver
		}
	}
	j.n += copy(j.buf[j.n:], part)
	j.next++
	if j.next < j.count {
		return nil, false
	}
	j.ready = true
	return j.buf[:j.n], true
}

// sizedEndpoint is an endpoint whose sinks cannot take messages over a
// size (its slots: the host transport's, a VM's outbox frames). A
// reliable message over it is dropped for that sink and counted
// (LargeInfo.Undeliverable, the sink's dropped), not retried: it would
// never fit, and the stream would stall behind it.
type sizedEndpoint interface {
	maxDeliver() int
}

func (c *hostClient) maxDeliver() int { return c.maxMsg }

func (p *Port) maxDeliver() int {
	return outboxSlotSize - DatagramHeaderLen - guestproto.DeliverOverhead
}

// maxMessage is the largest message the runtime's applications may
// emit: RemoteOptions.MaxMessage (--max-message), default
// DefaultMaxMessage, also without other hosts.
func (r *Runtime) maxMessage() int {
	if r.remote != nil {
		return r.remote.maxMessage
	}
	if m := r.opts.Remote.MaxMessage; m > 0 {
		return m
	}
	return DefaultMaxMessage
}

// fits reports whether ep can ever take a message of n bytes.
func fits(ep endpoint, n int) bool {
	se, ok := ep.(sizedEndpoint)
	return !ok || n <= se.maxDeliver()
}

// DatagramLimiter is a Datapath that sends no datagram over a size (a
// userspace stack's MTU: DPDK, AF_XDP); others take MaxRemotePayload's.
// A message that does not fit one of its datagrams goes as fragments.
type DatagramLimiter interface {
	MaxDatagram() int
}

// maxPayloadOf is the largest message dp carries as one datagram.
func maxPayloadOf(dp Datapath) int {
	if l, ok := dp.(DatagramLimiter); ok {
		return max(fragSize, min(MaxRemotePayload, l.MaxDatagram()-wire.HeaderLen-wire.AuthTrailerLen-relPrefixLen))
	}
	return MaxRemotePayload
}
