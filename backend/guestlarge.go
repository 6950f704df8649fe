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
// as DeliverFrag frames, each one delivery index of the sink's credit,
// written straight into the guest's RX buffers while it has them posted
// and nothing waits ahead (one copy a frame, from the host application's
// slots or the reassembly buffer), the rest one outbox slot each: all of
// a message's frames must fit the credit and the outbox, or none is sent
// (the sink waits or drops, as for one frame). A port delivers one large
// message at a time (deliverMu), so the frames of two never interleave
// for a sink: guestlib reassembles one message per sink. Older guestlibs
// get none (dropped for them, counted).
//
// VM to VM a large message costs two copies a frame: into the sender's
// port's reassembly buffer, and out of it into the receiver's RX buffer.
// Forwarding each EmitFrag frame into the receiver as it comes (one copy)
// would give up what the reassembly guarantees the receiver: that a
// message is delivered only whole (a guest's link is not reliable, and a
// hostile sender's fragments may disagree), within the sink's credit for
// all of its frames, to every destination of the message, in the
// source's order, and refused with an Outcome when no destination has
// room. The copy into the reassembly buffer is counted in the sender's
// port's copyCount.

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/internal/frag"
	"github.com/veloce-io/veloce/internal/guestproto"
	"github.com/veloce-io/veloce/vhostuser"
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
	if err == nil {
		p.copies.Add(1) // the fragment into the reassembly buffer (copyCount)
	}
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

// deliverFrags delivers a message larger than one frame to sk as
// DeliverFrag frames, all or none, in order. Each frame is built straight
// in the guest's next RX buffer (NetDevice.DeliverRX: one copy, from the
// host application's slot or the port's reassembly buffer) while the
// guest has one posted and nothing waits ahead of it; from the first
// frame that finds none (the guest's ring holds fewer buffers than the
// message has frames, frames wait in the outbox, the port is frozen) the
// rest go through the outbox (three copies each), behind which nothing
// direct overtakes them (DeliverRX refuses while the outbox has frames).
//
// All or none: before the first frame, the sink's credit must allow all
// of the message's delivery indices and the outbox must have room for
// all of its frames, so that whatever the guest's ring does not take the
// outbox does. Only a one-frame delivery to another of the port's sinks
// taking outbox slots between that check and the fallback can cut a
// message short (the frames sent are in vain: guestlib drops the
// incomplete message), as before the direct path.
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
	direct := !p.frozen.Load()
	queued := false
	for i := 0; i < count; i++ {
		part := payload[i*guestproto.FragSize : min((i+1)*guestproto.FragSize, len(payload))]
		index := nextIndex(sk, c)
		if direct {
			m := vhostuser.RXMessage{Ref: sk, Args: [3]uint64{source, seq, fragArgs(index, i, count)}, Data: part}
			switch p.dev.DeliverRX(0, (*fragRX)(p), m) {
			case vhostuser.RXDelivered:
				continue // fragRX counted its copy
			case vhostuser.RXFailed:
				return false // the guest broke its ring: its frontend is dropped
			}
			direct = false // this frame and the rest wait in the outbox
		}
		id, ok := p.out.slots.Get()
		if !ok {
			// Taken meanwhile by a one-frame delivery: the frames sent
			// are in vain (guestlib drops the incomplete message).
			p.dev.Wake()
			return false
		}
		slot := p.out.slots.Bytes(id)
		n, err := guestproto.PutDeliverFrag(slot[DatagramHeaderLen:], sk.session.ID, sk.ID, sk.Channel, index, source, seq, uint16(i), uint16(count), part)
		if err == nil {
			p.copies.Add(1) // the part into the slot; FillRX and the device count the other two
		}
		if !p.queueFrame(sk, id, n, err) {
			p.dev.Wake()
			return false
		}
		queued = true
	}
	if queued {
		p.dev.Wake()
	}
	p.large.sent.Add(1)
	return true
}

// fragArgs packs a DeliverFrag frame's delivery index, its index in the
// message and the message's frame count into an RXMessage argument.
func fragArgs(index uint32, i, count int) uint64 {
	return uint64(index)<<32 | uint64(uint16(i))<<16 | uint64(uint16(count))
}

// fragRX is the port as the RXWriter of DeliverFrag frames
// (deliverFrags): m.Ref is the *Sink, m.Args its source, sequence number
// and fragArgs, m.Data the frame's part.
type fragRX Port

var _ vhostuser.RXWriter = (*fragRX)(nil)

// WriteRX implements vhostuser.RXWriter, as Port.WriteRX does for a
// Deliver: it reads nothing back from buf but the UDP checksum's input,
// which only the receiving guest could have changed.
func (w *fragRX) WriteRX(buf []byte, m vhostuser.RXMessage) int {
	p := (*Port)(w)
	sk, ok := m.Ref.(*Sink)
	if !ok || len(buf) < DatagramHeaderLen {
		return 0
	}
	a := m.Args[2]
	n, err := guestproto.PutDeliverFrag(buf[DatagramHeaderLen:], sk.session.ID, sk.ID, sk.Channel, uint32(a>>32), m.Args[0], m.Args[1], uint16(a>>16), uint16(a), m.Data)
	if err != nil {
		return 0
	}
	n, err = p.peer.PutDatagram(buf, sk.session.Addr, buf[DatagramHeaderLen:DatagramHeaderLen+n])
	if err != nil {
		return 0
	}
	p.copies.Add(1) // the part into the RX buffer, before DeliverRX publishes it
	return n
}
