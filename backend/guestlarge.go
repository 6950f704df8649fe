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
// Not yet: large messages to VMs (a sink in a VM gets at most
// MaxGuestPayload bytes; larger ones are dropped for it and counted).

import (
	"net/netip"
	"sync"
	"time"

	"github.com/veloce-io/veloce/internal/frag"
	"github.com/veloce-io/veloce/internal/guestproto"
)

// guestFragMessages bounds the large messages one port reassembles at
// once (buffers of the runtime's largest message each, allocated on first
// use and reused).
const guestFragMessages = 4

// guestLarge is a port's reassembly of its guests' large messages.
type guestLarge struct {
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
