package backend

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/veloce-io/veloce/internal/guestproto"
	"github.com/veloce-io/veloce/internal/ring"
	"github.com/veloce-io/veloce/internal/slots"
	"github.com/veloce-io/veloce/vhostuser"
)

// The virtio transport: guestlib in a VM speaks guestproto in UDP
// datagrams to the service address and port. The port answers control
// requests at once (the reply goes back in the poller's reply buffer) and
// feeds Emits to the runtime. A message for one of the port's sinks is
// written straight into the guest's next RX buffer on queue pair 0, by
// whichever thread delivers it (vhostuser.NetDevice.DeliverRX): from a
// VM source, out of the sender's TX buffer, one copy in all; from a host
// application, out of its slot, one copy. Only when that buffer is not
// there (the guest has not posted one, frames wait ahead of it, the ring
// is not running, the port is frozen for a migration) does the message
// wait in the port's outbox, whole frames in fixed slots, until queue
// pair 0's poller puts it on the ring: three copies then (into the slot,
// out of it, onto the ring). One queue pair keeps each source's order.

const (
	// outboxSlots is how many frames a port holds for its guest; when
	// they are all taken, messages for its sinks are dropped and counted.
	outboxSlots = 1024
	// outboxSlotSize holds one frame at the default MTU.
	outboxSlotSize = 2048
	// GuestMTU is the link MTU guests are given.
	GuestMTU = 1500
	// MaxGuestPayload is the largest message a guest source may emit,
	// such that a Deliver carrying it fits the link MTU.
	MaxGuestPayload = GuestMTU - 20 - 8 - guestproto.DeliverOverhead
)

// outbox is a port's frames for its guest: slots of a pool, each with
// its frame's length, and the queue of filled ones. A slot is held by
// deliver from Get until it queues it on ready, then by FillRX (or
// dropSessions) until Put.
type outbox struct {
	slots *slots.Pool[uint16]
	ready *ring.Queue
}

func newOutbox() *outbox {
	o := &outbox{slots: slots.MustNew[uint16](slots.Options{Slots: outboxSlots, SlotSize: outboxSlotSize})}
	o.ready, _ = ring.New(outboxSlots)
	return o
}

var _ endpoint = (*Port)(nil)

// String implements endpoint.
func (p *Port) String() string { return "vm:" + p.opts.Name }

// deliver implements endpoint: the message becomes a Deliver frame in the
// outbox. It takes no lock and does not allocate, but while the port
// migrates (migrate.go).
func (p *Port) deliver(sk *Sink, source, seq uint64, payload []byte) bool {
	p.inflight.Add(1)
	defer p.inflight.Add(-1)
	if m := p.moving.Load(); m != nil {
		return m.hold(p, sk, source, seq, payload)
	}
	if h := p.handoff.Load(); h != nil && h.owns(sk) {
		return h.direct(p, sk, source, seq, payload)
	}
	return p.deliverOutbox(sk, source, seq, payload)
}

// deliverOutbox puts a Deliver frame in the outbox, if the sink's credit
// allows (guestproto.Credit): a guest that has not read what is on the
// way gets nothing more, so its kernel never drops the sink's messages
// unseen; they wait here (a reliable stream retries them) or are dropped
// and counted (best effort).
func (p *Port) deliverOutbox(sk *Sink, source, seq uint64, payload []byte) bool {
	if len(payload) > p.maxDeliver() {
		return p.deliverFrags(sk, source, seq, payload) // guestlarge.go
	}
	c := sk.credit.Load()
	if c != 0 && !creditAllows(c, sk.index.Load()) {
		sk.creditWaits.Add(1)
		return false
	}
	index := nextIndex(sk, c)
	if !p.frozen.Load() {
		switch p.dev.DeliverRX(0, p, vhostuser.RXMessage{Ref: sk, Args: [3]uint64{source, seq, uint64(index)}, Data: payload}) {
		case vhostuser.RXDelivered:
			return true // WriteRX counted its copy
		case vhostuser.RXFailed:
			return false // the guest broke its ring: its frontend is dropped
		}
	}
	id, ok := p.out.slots.Get()
	if !ok {
		return false
	}
	slot := p.out.slots.Bytes(id)
	n, err := guestproto.PutDeliver(slot[DatagramHeaderLen:], sk.session.ID, sk.ID, sk.Channel, index, source, seq, payload)
	if err == nil {
		p.copies.Add(1) // the payload into the slot; counted before the guest can see it
	}
	if !p.queueFrame(sk, id, n, err) {
		return false
	}
	p.dev.Wake()
	return true
}

var _ vhostuser.RXWriter = (*Port)(nil)

// WriteRX implements vhostuser.RXWriter: the Deliver datagram of a
// message for one of the port's sinks (m.Ref, the *Sink; m.Args: source,
// sequence number, delivery index; m.Data: the payload) written into buf,
// the guest's RX buffer. It reads nothing back from buf but the UDP
// checksum's input, which only the receiving guest could have changed;
// there is no checksum when the guest takes DATA_VALID (m.DataValid).
func (p *Port) WriteRX(buf []byte, m vhostuser.RXMessage) int {
	sk, ok := m.Ref.(*Sink)
	if !ok || len(buf) < DatagramHeaderLen {
		return 0
	}
	n, err := guestproto.PutDeliver(buf[DatagramHeaderLen:], sk.session.ID, sk.ID, sk.Channel, uint32(m.Args[2]), m.Args[0], m.Args[1], m.Data)
	if err != nil {
		return 0
	}
	if m.DataValid {
		// The guest is told the frame is valid (DATA_VALID): no
		// checksum over the payload, as vhost-net gives its guests.
		n, err = p.peer.PutDatagramNoChecksum(buf, sk.session.Addr, buf[DatagramHeaderLen:DatagramHeaderLen+n])
	} else {
		n, err = p.peer.PutDatagram(buf, sk.session.Addr, buf[DatagramHeaderLen:DatagramHeaderLen+n])
	}
	if err != nil {
		return 0
	}
	p.copies.Add(1) // the payload into the RX buffer, before DeliverRX publishes it
	return n
}

// copyCount is how many times the port copied a message for its guest
// (WriteRX, PutDeliver into an outbox slot, FillRX out of one); the
// device's own copies are in vhostuser.NetStats.Copies.
func (p *Port) copyCount() uint64 { return p.copies.Load() }

// nextIndex is the delivery index of sk's next frame: numbered once its
// guest sent a Credit (c, the sink's credit, not 0), skipping 0, which is
// "unnumbered".
func nextIndex(sk *Sink, c uint64) uint32 {
	if c == 0 {
		return 0
	}
	index := sk.index.Add(1)
	if index == 0 {
		index = sk.index.Add(1)
	}
	return index
}

// queueFrame wraps the guestproto frame of n bytes built in outbox slot
// id (err: building it failed) in its datagram to sk's guest and queues
// it; false, the slot given back, when it cannot.
func (p *Port) queueFrame(sk *Sink, id uint32, n int, err error) bool {
	slot := p.out.slots.Bytes(id)
	if err == nil {
		n, err = p.peer.PutDatagram(slot, sk.session.Addr, slot[DatagramHeaderLen:DatagramHeaderLen+n])
	}
	if err != nil {
		p.out.slots.Put(id)
		return false
	}
	*p.out.slots.Meta(id) = uint16(n)
	p.out.ready.PushWait(id)
	return true
}

// maxCreditRoom bounds the room a guest may grant one sink: more than
// any socket buffer holds is no flow control.
const maxCreditRoom = 1 << 16

// packCredit packs a Credit for Sink.credit: never 0 (that is "no
// credit yet"), room bounded by maxCreditRoom.
func packCredit(seen, room uint32) uint64 {
	return uint64(seen)<<32 | 1<<31 | uint64(min(room, maxCreditRoom))
}

// creditAllows reports whether a sink whose last delivery index is last
// may send one more under credit c. Indexes wrap: what is in flight is
// last - seen in 32 bits; a seen the sink never sent (the guest's credit
// counts an earlier numbering: the sink was imported by a migration)
// leaves everything sent under this numbering in flight.
func creditAllows(c uint64, last uint32) bool {
	seen, room := uint32(c>>32), int64(c&(1<<31-1))
	inflight := int64(int32(last - seen))
	if inflight < 0 {
		inflight = int64(last)
	}
	return inflight < room
}

// credit takes a guest's Credit for one of its session's sinks (one for
// a sink it no longer has, sent as the sink closed, is ignored).
func (p *Port) credit(s *Session, m *guestproto.Message) {
	if sk := s.sink(m.ID); sk != nil {
		sk.credit.Store(packCredit(m.Seen, m.Room))
	}
}

// FillRX implements vhostuser.RXSource for queue pair 0.
func (p *Port) FillRX(qp int, buf []byte) int {
	if qp != 0 || p.out == nil || p.frozen.Load() {
		return 0
	}
	id, ok := p.out.ready.Pop()
	if !ok {
		return 0
	}
	p.copies.Add(1)
	n := copy(buf, p.out.slots.Bytes(id)[:*p.out.slots.Meta(id)])
	p.out.slots.Put(id)
	return n
}

// PendingRX implements vhostuser.RXSource.
func (p *Port) PendingRX(qp int) bool {
	return qp == 0 && p.out != nil && !p.frozen.Load() && p.out.ready.Len() > 0
}

// handleGuest handles one guestproto datagram from src; a reply frame, if
// any, is written to reply and its length returned.
func (p *Port) handleGuest(src netip.AddrPort, payload, reply []byte) int {
	var m guestproto.Message
	if err := guestproto.Parse(payload, &m); err != nil {
		p.malformed.Add(1)
		return 0
	}
	if m.Type == guestproto.Emit {
		s := p.session(m.Session, src)
		if s == nil {
			return p.outcome(reply, src, m.Session, m.ID, m.Token, guestproto.StatusNoSession)
		}
		s.hear() // no clock read per message (Session.heard)
		so := s.Source(m.ID)
		switch {
		case so == nil:
			return p.outcome(reply, src, m.Session, m.ID, m.Token, guestproto.StatusNotFound)
		case len(m.Payload) > MaxGuestPayload:
			return p.outcome(reply, src, m.Session, m.ID, m.Token, guestproto.StatusTooLarge)
		case so.Unreachable():
			return p.outcome(reply, src, m.Session, m.ID, m.Token, guestproto.StatusPeerUnreachable)
		}
		// Back-pressure: a message no destination had room for is
		// refused (guestlib's Outcome: ErrNoBuffers; retrying it
		// duplicates nothing). One that some destinations took is not:
		// the full ones count it (velocectl streams: the source's full,
		// the sink's dropped), and a stuck sink cannot make every emit
		// on its channel cost the source an Outcome frame.
		if taken, full := p.rt.emit(so, m.Payload); full > 0 && taken == 0 {
			return p.outcome(reply, src, m.Session, m.ID, m.Token, guestproto.StatusNoBuffers)
		}
		return 0
	}
	if m.Type == guestproto.Credit {
		if s := p.session(m.Session, src); s != nil {
			s.hear()
			p.credit(s, &m)
		} else {
			p.malformed.Add(1) // not this address's session (a closed one's late credit, or a forgery)
		}
		return 0
	}
	t := time.Now() // one clock read: the wall time and the monotonic one
	if m.Type == guestproto.EmitFrag {
		return p.emitFrag(src, &m, reply, t)
	}
	now := t.UnixNano()
	if m.Type >= guestproto.Reply {
		p.malformed.Add(1) // only the daemon sends replies and deliveries
		return 0
	}
	res := p.control(&m, src, now)
	n, err := guestproto.PutReply(reply[DatagramHeaderLen:], m.Header, &res)
	if err != nil {
		return 0
	}
	n, err = p.peer.PutDatagram(reply, src, reply[DatagramHeaderLen:DatagramHeaderLen+n])
	if err != nil {
		return 0
	}
	return n
}

func (p *Port) outcome(reply []byte, dst netip.AddrPort, session, source uint32, token uint64, st guestproto.Status) int {
	n, err := guestproto.PutOutcome(reply[DatagramHeaderLen:], session, source, token, st)
	if err == nil {
		n, err = p.peer.PutDatagram(reply, dst, reply[DatagramHeaderLen:DatagramHeaderLen+n])
	}
	if err != nil {
		return 0
	}
	return n
}

// session returns the port's session id if src owns it.
func (p *Port) session(id uint32, src netip.AddrPort) *Session {
	s := p.sessions.Get(id)
	if s == nil || s.Addr != src {
		return nil
	}
	return s
}

// control runs a control request. It allocates; control is not the hot
// path. guestlib resends a request whose reply was lost with the same
// request id: the request is answered from the replay cache instead of
// being run twice (a second session, source or sink the application never
// learns of; a close answered "not found").
func (p *Port) control(m *guestproto.Message, src netip.AddrPort, now int64) guestproto.Result {
	if m.Type == guestproto.Ping || m.Type == guestproto.LargeDeliveries { // liveness, idempotent: never limited, nothing to replay
		return p.runControl(m, src, now)
	}
	cached := m.RequestID != 0 // 0: the client does not resend
	key := replayKey{src: src, session: m.Session, request: m.RequestID, typ: m.Type}
	if cached {
		if res, ok := p.replies.get(key, now); ok {
			return res
		}
	}
	// Past the port's control rate the request is refused, not run, and
	// the refusal not remembered: resent later, it runs.
	if err := p.acct.allowControl(now); err != nil {
		return errorResult(err)
	}
	res := p.runControl(m, src, now)
	if cached {
		p.replies.put(key, res, now)
	}
	return res
}

func (p *Port) runControl(m *guestproto.Message, src netip.AddrPort, now int64) guestproto.Result {
	if m.Type == guestproto.OpenSession {
		s, err := p.rt.openSession(p, src, p.opts.Tenant, p.acct)
		if err != nil {
			return errorResult(err)
		}
		s.touch()
		p.setSession(s.ID, s)
		// The largest message: guestlib may then send larger ones than a
		// frame as EmitFrag (guestlarge.go); older ones ignore it.
		return guestproto.Result{ID: s.ID, Plugin: binaryMaxMessage(p.rt.maxMessage())}
	}
	s := p.session(m.Session, src)
	if s == nil {
		return guestproto.Result{Status: guestproto.StatusNoSession, Message: []byte(fmt.Sprintf("session %d: not open from %s", m.Session, src))}
	}
	s.touch()
	return runControl(s, m)
}

// runControl runs a control request of an open session, for every
// transport.
func runControl(s *Session, m *guestproto.Message) guestproto.Result {
	fail := func(st guestproto.Status, err error) guestproto.Result {
		return guestproto.Result{Status: st, Message: []byte(err.Error())}
	}

	var err error
	switch m.Type {
	case guestproto.Ping:
		return guestproto.Result{ID: s.ID}
	case guestproto.LargeDeliveries:
		s.guestLarge.Store(int32(min(int(m.ID), s.rt.maxMessage(), guestFragMax)))
		return guestproto.Result{ID: s.ID}
	case guestproto.CloseSession:
		s.Close()
		return guestproto.Result{ID: s.ID}
	case guestproto.CreateStream:
		st, err := s.CreateStream(StreamOptions{
			Acceleration: m.Options.Acceleration != 0, Frugal: m.Options.ResourceUse != 0,
			TimeSensitive: m.Options.TimeSensitive != 0, Reliable: m.Options.Reliable != 0,
			Poll: m.Options.Consumption == guestproto.ConsumePoll,
		})
		if err != nil {
			return errorResult(err)
		}
		return guestproto.Result{ID: st.ID, Plugin: []byte(st.Datapath), Message: []byte(st.Warning)}
	case guestproto.CreateSource:
		var so *Source
		if so, err = s.CreateSource(m.Stream, m.Channel); err == nil {
			return guestproto.Result{ID: so.ID}
		}
	case guestproto.CreateSink:
		var sk *Sink
		if sk, err = s.CreateSink(m.Stream, m.Channel); err == nil {
			return guestproto.Result{ID: sk.ID}
		}
	case guestproto.CloseStream:
		err = s.CloseStream(m.ID)
	case guestproto.CloseSource:
		err = s.CloseSource(m.ID)
	case guestproto.CloseSink:
		err = s.CloseSink(m.ID)
	default:
		return fail(guestproto.StatusBadRequest, fmt.Errorf("request %v not supported", m.Type))
	}
	if err != nil {
		return errorResult(err)
	}
	return guestproto.Result{ID: m.ID}
}

// errorResult is the reply refusing a request for err: a LimitError is
// StatusLimit naming the limit (guestlib: ErrLimit), ErrNotFound
// StatusNotFound, ErrTenantCollision StatusDenied (ErrPermission),
// anything else StatusInternal.
func errorResult(err error) guestproto.Result {
	var le *LimitError
	st := guestproto.StatusInternal
	switch {
	case errors.As(err, &le):
		return guestproto.Result{Status: guestproto.StatusLimit, Plugin: []byte(le.Limit), Message: []byte(err.Error())}
	case errors.Is(err, ErrNotFound):
		st = guestproto.StatusNotFound
	case errors.Is(err, ErrTenantCollision):
		st = guestproto.StatusDenied
	}
	return guestproto.Result{Status: st, Message: []byte(err.Error())}
}

// setSession adds (s non-nil) or removes a session of the port, in
// O(log n) of the port's sessions (internal/cow).
func (p *Port) setSession(id uint32, s *Session) {
	p.sessMu.Lock()
	defer p.sessMu.Unlock()
	if s == nil {
		p.sessions.Delete(id)
	} else {
		p.sessions.Store(id, s)
	}
}

// sessionClosed implements endpoint.
func (p *Port) sessionClosed(s *Session) { p.setSession(s.ID, nil) }

// dropSessions releases every session of the port: its VM went away.
func (p *Port) dropSessions() {
	if p.rt == nil {
		return
	}
	p.rt.closeSessions(p)
	// Frames still waiting for the old guest are discarded.
	for {
		id, ok := p.out.ready.Pop()
		if !ok {
			break
		}
		p.out.slots.Put(id)
	}
}

// replayCache remembers the replies to the last control requests for
// replayWindow, so that a resent request gets the first answer again.
type replayCache struct {
	mu      sync.Mutex
	entries [64]replayEntry // +checklocks:mu
	next    int             // +checklocks:mu
}

// replayWindow covers guestlib resending a request (every RequestTimeout)
// and is no longer than an idle session lives.
const replayWindow = int64(10 * time.Second)

type replayKey struct {
	src     netip.AddrPort
	session uint32
	request uint32
	typ     guestproto.Type
}

type replayEntry struct {
	key replayKey
	at  int64
	res guestproto.Result
}

func (c *replayCache) get(k replayKey, now int64) (guestproto.Result, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.entries {
		if e := &c.entries[i]; e.at != 0 && e.key == k && now-e.at < replayWindow {
			return e.res, true
		}
	}
	return guestproto.Result{}, false
}

func (c *replayCache) put(k replayKey, res guestproto.Result, now int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries[c.next] = replayEntry{key: k, at: now, res: res}
	c.next = (c.next + 1) % len(c.entries)
}

// streamChanged implements streamNotifier: a StreamChanged frame goes to
// the session's application through the outbox (after the deliveries
// queued before it). With no free slot it waits briefly, then is lost
// (the guest still sees the change in velocectl streams).
func (p *Port) streamChanged(s *Session, streamID uint32, datapath, warning string) {
	var id uint32
	ok := false
	for try := 0; try < 100 && !ok; try++ {
		if id, ok = p.out.slots.Get(); !ok {
			time.Sleep(time.Millisecond)
		}
	}
	if !ok {
		return
	}
	slot := p.out.slots.Bytes(id)
	n, err := guestproto.PutStreamChanged(slot[DatagramHeaderLen:], s.ID, streamID, []byte(datapath), []byte(warning))
	if err == nil {
		n, err = p.peer.PutDatagram(slot, s.Addr, slot[DatagramHeaderLen:DatagramHeaderLen+n])
	}
	if err != nil {
		p.out.slots.Put(id)
		return
	}
	*p.out.slots.Meta(id) = uint16(n)
	p.out.ready.PushWait(id)
	p.dev.Wake()
}

// binaryMaxMessage is an OpenSession reply's Plugin for a largest
// message of n bytes.
func binaryMaxMessage(n int) []byte {
	var b [guestproto.MaxMessageLen]byte
	return guestproto.PutMaxMessage(&b, uint32(n))
}
