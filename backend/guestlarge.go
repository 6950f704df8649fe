package backend

// Large messages from VMs (issue 13, item 5): guestlib in a VM sends a
// message larger than one frame (MaxGuestPayload) as EmitFrag frames of
// guestproto.FragSize bytes (the last one the rest), to a daemon whose
// OpenSession reply gave its largest message. The port reassembles them
// (internal/frag: bounded by the runtime's largest message per message,
// guestFragMessages messages in progress per port, fragTimeout to
// complete; lost, evicted, inconsistent and duplicate fragments counted)
// and emits the message whole, as one Emit's. The guest link is not
// reliable: a message with a lost fragment is dropped at its timeout.
// Outcomes (no session, no such source) answer a message's first
// fragment only, and too large its first or last, so a refused message
// costs one or two Outcome frames; a
// complete message no destination had room for is refused as an Emit is.
//
// To VMs: a session whose guestlib sent LargeDeliveries (its largest
// reassembled message) gets a message larger than one frame for its sinks
// as DeliverFrag frames, each one outbox slot and one delivery index of
// the sink's credit: all of a message's frames must fit the credit and
// the outbox, or none is queued (the sink waits or drops, as for one
// frame). A port queues one large message at a time (deliverMu), so the
// frames of two never interleave for a sink: guestlib reassembles one
// message per sink. Older guestlibs get none (dropped for them, counted).

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/internal/frag"
	"github.com/veloce-io/veloce/internal/guestproto"
)

// guestFragMessages bounds the large messages one port reassembles at
// once (buffers of the runtime's largest message each, allocated on first
// use and reused).
const guestFragMessages = 4

// guestFragMax bounds the largest message to a guest: what the outbox
// holds as frames, with an eighth to spare for others' messages (1.2 MiB).
const guestFragMax = (outboxSlots - outboxSlots/8) * guestproto.FragSize

// guestLarge is a port's reassembly of its guests' large messages.
type guestLarge struct {
	// deliverMu serialises large deliveries to the port's guest.
	deliverMu sync.Mutex
	// sent counts large messages queued for the guest (PortInfo).
	sent atomic.Uint64

	mu         sync.Mutex
	r          *frag.Reassembler // +checklocks:mu
	lastExpire int64             // +checklocks:mu
}

// stats returns the reassembler's counters (zero before first use).
func (g *guestLarge) stats() frag.Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.r == nil {
		return frag.Stats{}
	}
	return g.r.Stats()
}

// emitFrag takes one EmitFrag from src and, once its message is whole,
// emits it; it returns the length of an Outcome frame written to reply,
// if any.
func (p *Port) emitFrag(src netip.AddrPort, m *guestproto.Message, reply []byte, t time.Time) int {
	first := m.FragIndex == 0
	refuse := func(st guestproto.Status) int {
		if !first {
			return 0
		}
		return p.outcome(reply, src, m.Session, m.ID, m.Token, st)
	}
	s := p.session(m.Session, src)
	if s == nil {
		return refuse(guestproto.StatusNoSession)
	}
	s.lastSeen.Store(monoAt(t))
	so := s.Source(m.ID)
	if so == nil {
		return refuse(guestproto.StatusNotFound)
	}
	now := t.UnixNano()
	g := &p.large
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.r == nil {
		max := p.rt.maxMessage()
		r, err := frag.New(frag.Config{FragSize: guestproto.FragSize, MaxMessage: max, MaxTotal: guestFragMessages * max, Timeout: fragTimeout})
		if err != nil {
			return p.outcome(reply, src, m.Session, m.ID, m.Token, guestproto.StatusInternal)
		}
		g.r = r
	}
	if g.r.Pending() > 0 && now-g.lastExpire >= int64(fragTimeout/10) {
		g.lastExpire = now
		g.r.Expire(now)
	}
	// A source's messages are told apart by their tokens.
	key := frag.Key{Peer: src, Source: uint64(m.Session)<<32 | uint64(m.ID), Seq: m.Token}
	msg, err := g.r.Add(key, m.FragIndex, m.FragCount, m.Payload, now)
	switch {
	case err == frag.ErrTooLarge:
		// Found at the first fragment (too many) or the last (too many
		// bytes): one Outcome, or two.
		if first || m.FragIndex == m.FragCount-1 {
			return p.outcome(reply, src, m.Session, m.ID, m.Token, guestproto.StatusTooLarge)
		}
		return 0
	case msg == nil:
		return 0
	case so.Unreachable():
		return p.outcome(reply, src, m.Session, m.ID, m.Token, guestproto.StatusPeerUnreachable)
	}
	// msg is valid until the next Add: emitted under g.mu.
	if taken, full := p.rt.emit(so, msg); full > 0 && taken == 0 {
		return p.outcome(reply, src, m.Session, m.ID, m.Token, guestproto.StatusNoBuffers)
	}
	return 0
}

// deliverFrags queues a message larger than one frame for sk as
// DeliverFrag frames, all or none.
func (p *Port) deliverFrags(sk *Sink, source, seq uint64, payload []byte) bool {
	if len(payload) > int(sk.session.guestLarge.Load()) {
		return false // an older guestlib, or over what it takes
	}
	count := (len(payload) + guestproto.FragSize - 1) / guestproto.FragSize
	p.large.deliverMu.Lock()
	defer p.large.deliverMu.Unlock()
	c := sk.credit.Load()
	if c != 0 && !creditAllows(c, sk.index.Load()+uint32(count)-1) {
		sk.creditWaits.Add(1)
		return false
	}
	if p.out.slots.Free() < count {
		return false
	}
	for i := 0; i < count; i++ {
		id, ok := p.out.slots.Get()
		if !ok {
			// Taken meanwhile by a one-frame delivery: the frames queued
			// are sent in vain (guestlib drops the incomplete message).
			p.dev.Wake()
			return false
		}
		slot := p.out.slots.Bytes(id)
		part := payload[i*guestproto.FragSize : min((i+1)*guestproto.FragSize, len(payload))]
		n, err := guestproto.PutDeliverFrag(slot[DatagramHeaderLen:], sk.session.ID, sk.ID, sk.Channel, nextIndex(sk, c), source, seq, uint16(i), uint16(count), part)
		if !p.queueFrame(sk, id, n, err) {
			return false
		}
	}
	p.dev.Wake()
	p.large.sent.Add(1)
	return true
}
