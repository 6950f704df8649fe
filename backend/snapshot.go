package backend

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"

	"github.com/veloce-io/veloce/internal/guestproto"
	"github.com/veloce-io/veloce/migration"
)

// Stream state in and out of a port: the backend half of live migration
// (package migration holds the format, migrate.go the transfer between
// daemons).
//
// Export reads a port's state into a migration.PortSnapshot: the link
// peer's view of the guest, the sessions with their streams, sources
// (global id, next sequence number, counters) and sinks (counters and the
// messages waiting in the port's outbox), and the replay cache. It is
// consistent only while the port is frozen (Freeze): no message reaches
// the outbox, the guest gets nothing from it, and the guest is paused by
// its hypervisor, so it sends nothing either.
//
// Import is all or nothing. It checks the snapshot against the port in
// full — the port has a runtime and is idle (no sessions, an empty outbox),
// it gives guests the same addresses and service port, no session id is in
// use in the runtime, the port's limits hold the sessions, streams,
// sources and sinks, the queued messages fit the outbox — before it
// changes anything; on an error the port and the runtime are as they were.
// Imported sessions belong to the port's tenant and are charged to its
// account, their sources keep their global ids and sequence numbers (a
// receiver sees one source, in order), streams are mapped to datapaths
// again by this daemon's policy, and the queued messages are in the
// outbox, in their order, before the sinks see a new message.
//
// For the hypervisor's own migration stream (vhost-user DEVICE_STATE),
// ExportSnapshot and ImportSnapshot do the same in bytes.

// Errors of import and export.
var (
	// ErrPortBusy: Import into a port that has sessions or queued frames.
	ErrPortBusy = errors.New("port not idle")
	// ErrSnapshotMismatch: a snapshot the port cannot take as it is
	// configured (other addresses, a session id in use, over its limits).
	ErrSnapshotMismatch = errors.New("snapshot does not fit the port")
	// ErrNoRuntime: a port without a runtime has no stream state.
	ErrNoRuntime = errors.New("port has no runtime")
)

// Freeze holds the port's stream state still for Export: the guest gets
// no more frames from the outbox, and messages for the port's sinks are
// held by hold (nil: dropped and counted as drops). It returns once no
// delivery is under way. Thaw undoes it.
func (p *Port) freeze(m *outMove) {
	p.frozen.Store(true)
	p.moving.Store(m)
	for p.inflight.Load() != 0 {
		time.Sleep(10 * time.Microsecond)
	}
}

// thaw lets the guest have the outbox again and messages reach it.
func (p *Port) thaw() {
	p.moving.Store(nil)
	p.frozen.Store(false)
	p.dev.Wake()
}

// Export returns the port's stream state. The port should be frozen
// (a migration freezes it); otherwise the state may be torn. It returns
// ErrNoRuntime for a port without a runtime.
func (p *Port) Export() (*migration.PortSnapshot, error) {
	if p.rt == nil {
		return nil, fmt.Errorf("export port %s: %w", p.opts.Name, ErrNoRuntime)
	}
	s := &migration.PortSnapshot{Port: p.opts.Name, Link: p.linkState()}
	r := p.rt
	sinkIndex := map[[2]uint32]int{} // session, sink -> index in s.Sinks
	var sessions []*Session
	for _, se := range p.sessions.All() {
		sessions = append(sessions, se)
	}
	r.mu.Lock()
	for _, se := range sessions {
		r.exportSessionLocked(se, s, sinkIndex)
	}
	r.mu.Unlock()
	// The outbox: pop every frame and push it back, in order (frozen:
	// nobody else touches it).
	n := p.out.ready.Len()
	for range n {
		id, ok := p.out.ready.Pop()
		if !ok {
			break
		}
		frame := p.out.slots.Bytes(id)[:*p.out.slots.Meta(id)]
		var m guestproto.Message
		if len(frame) > DatagramHeaderLen && guestproto.Parse(frame[DatagramHeaderLen:], &m) == nil && m.Type == guestproto.Deliver {
			if i, ok := sinkIndex[[2]uint32{m.Session, m.ID}]; ok {
				s.Sinks[i].Queued = append(s.Sinks[i].Queued, migration.Message{Source: m.Source, Seq: m.Seq, Payload: clone(m.Payload)})
			}
		}
		p.out.ready.PushWait(id)
	}
	s.Replay = p.replies.export(time.Now().UnixNano())
	return s, nil
}

func clone(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

// exportSessionLocked appends the state of s, a session of r, to out.
//
// +checklocks:r.mu
func (r *Runtime) exportSessionLocked(s *Session, out *migration.PortSnapshot, sinkIndex map[[2]uint32]int) {
	out.Sessions = append(out.Sessions, migration.Session{ID: s.ID, Addr: s.Addr, LastSeen: time.Now().UnixNano() - (monoNow() - s.seen(monoNow()))})
	for _, st := range s.streams { // +checklocksignore: s.rt is r, locked
		o := st.Options
		out.Streams = append(out.Streams, migration.Stream{ID: st.ID, Session: s.ID, Datapath: st.Datapath, Warning: st.Warning,
			QoS: migration.QoS{Acceleration: b2u(o.Acceleration), ResourceUse: b2u(o.Frugal), TimeSensitive: b2u(o.TimeSensitive), Reliable: b2u(o.Reliable)}})
	}
	for _, so := range s.sources.All() {
		out.Sources = append(out.Sources, migration.Source{ID: so.ID, Stream: so.Stream.ID, Channel: so.Channel, Global: so.Global,
			NextSeq: so.seq.Load() + 1, Emitted: so.emitted.Load(), Full: so.full.Load()})
	}
	for _, sk := range s.sinks.All() {
		sinkIndex[[2]uint32{s.ID, sk.ID}] = len(out.Sinks)
		out.Sinks = append(out.Sinks, migration.Sink{ID: sk.ID, Stream: sk.Stream.ID, Channel: sk.Channel,
			Delivered: sk.delivered.Load(), Dropped: sk.dropped.Load()})
	}
}

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// linkState is the link peer's state as a snapshot holds it.
func (p *Port) linkState() migration.LinkState {
	lo := p.peer.Options()
	l := migration.LinkState{ServicePort: lo.ServicePort, MTU: lo.MTU}
	copy(l.ServiceMAC[:], lo.ServiceMAC)
	if mac := p.peer.Learned(); mac != nil {
		copy(l.GuestMAC[:], mac)
		l.GuestMACKnown = true
	}
	l.Lease.Addr = lo.GuestIP.Addr().As4()
	l.Lease.PrefixBits = uint8(lo.GuestIP.Bits())
	l.Lease.ServerID = lo.ServiceIP.As4()
	if lo.LeaseTime >= InfiniteLease {
		l.Lease.Seconds = migration.InfiniteLease
	} else {
		l.Lease.Seconds = uint32(min(lo.LeaseTime/time.Second, math.MaxUint32-1))
	}
	return l
}

// export returns the cache's live entries.
func (c *replayCache) export(now int64) []migration.ReplayEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []migration.ReplayEntry
	buf := make([]byte, guestproto.HeaderLen+10+2*guestproto.MaxText)
	for i := range c.entries {
		e := &c.entries[i]
		if e.at == 0 || now-e.at >= replayWindow {
			continue
		}
		n, err := guestproto.PutReply(buf, guestproto.Header{}, &e.res)
		if err != nil || n-guestproto.HeaderLen > migration.MaxReplyLen {
			continue
		}
		out = append(out, migration.ReplayEntry{Src: e.key.src, Session: e.key.session, Request: e.key.request, Type: uint8(e.key.typ),
			At: e.at, Reply: clone(buf[guestproto.HeaderLen:n])})
	}
	return out
}

// ExportSnapshot is Export encoded, signed with key when key is not nil
// (migration.EncodeSigned).
func (p *Port) ExportSnapshot(key []byte) ([]byte, error) {
	s, err := p.Export()
	if err != nil {
		return nil, err
	}
	if key != nil {
		return migration.EncodeSigned(s, key)
	}
	return migration.Encode(s)
}

// ImportSnapshot decodes b (checking its HMAC under key when key is not
// nil) and imports it (Import). Nothing changes on any error.
func (p *Port) ImportSnapshot(b, key []byte) error {
	var s *migration.PortSnapshot
	var err error
	if key != nil {
		s, err = migration.DecodeSigned(b, key, nil)
	} else {
		s, err = migration.Decode(b, nil)
	}
	if err != nil {
		return fmt.Errorf("import into port %s: %w", p.opts.Name, err)
	}
	return p.Import(s)
}

// Import applies s to the port, all or nothing (see the comment at the
// top of snapshot.go). Errors wrap ErrNoRuntime, ErrPortBusy,
// ErrSnapshotMismatch or migration.ErrInvalid, and say what to change.
func (p *Port) Import(s *migration.PortSnapshot) error {
	_, err := p.importState(s, nil)
	return err
}

// imported is what an import created, for a migration to undo or watch.
type imported struct {
	sinks map[*Sink]bool
}

// importState is Import; before the sinks are published it calls
// beforePublish (when not nil) with them, under the runtime's lock.
func (p *Port) importState(s *migration.PortSnapshot, beforePublish func(map[*Sink]bool)) (*imported, error) {
	if p.rt == nil {
		return nil, p.importErr(ErrNoRuntime)
	}
	if err := s.Validate(); err != nil {
		return nil, p.importErr(err)
	}
	if err := p.checkLink(&s.Link); err != nil {
		return nil, p.importErr(err)
	}
	queued := 0
	for _, sk := range s.Sinks {
		queued += len(sk.Queued)
		for _, m := range sk.Queued {
			if len(m.Payload) > MaxGuestPayload {
				return nil, p.importErr(fmt.Errorf("%w: sink %d: a queued message of %d bytes exceeds %d", ErrSnapshotMismatch, sk.ID, len(m.Payload), MaxGuestPayload))
			}
		}
	}
	if queued > outboxSlots {
		return nil, p.importErr(fmt.Errorf("%w: %d queued messages, the outbox holds %d", ErrSnapshotMismatch, queued, outboxSlots))
	}
	r := p.rt
	p.sessMu.Lock() // no session comes or goes on the port meanwhile
	defer p.sessMu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := p.sessions.Len(); n > 0 || p.out.ready.Len() > 0 {
		return nil, p.importErr(fmt.Errorf("%w: %d sessions, %d queued frames: import only into a port no guest uses (a new port, or one whose VM left)", ErrPortBusy, n, p.out.ready.Len()))
	}
	tid, err := r.tenantLocked(p.opts.Tenant)
	if err != nil {
		return nil, p.importErr(err)
	}
	for _, se := range s.Sessions {
		if other, ok := r.sessions[se.ID]; ok {
			return nil, p.importErr(fmt.Errorf("%w: session id %d is in use here (%s)", ErrSnapshotMismatch, se.ID, other.ep.String()))
		}
	}
	if err := p.acct.fits(len(s.Sessions), len(s.Streams), len(s.Sources), len(s.Sinks)); err != nil {
		return nil, p.importErr(fmt.Errorf("%w: %w", ErrSnapshotMismatch, err))
	}

	// Everything checked: apply.
	sessions := map[uint32]*Session{}
	maxID := uint32(0)
	for _, se := range s.Sessions {
		x := &Session{ID: se.ID, rt: r, ep: p, Addr: se.Addr, Tenant: p.opts.Tenant, tenant: tid, acct: p.acct,
			streams: map[uint32]*Stream{}}
		x.touch() // the guest was paused: not idle
		sessions[se.ID] = x
		maxID = max(maxID, se.ID)
		p.acct.takeLocked(limitSessions) // fits: cannot fail
	}
	streams := map[uint32]*Stream{}
	for _, st := range s.Streams {
		x := sessions[st.Session]
		opts := StreamOptions{Acceleration: st.QoS.Acceleration != 0, Frugal: st.QoS.ResourceUse != 0,
			TimeSensitive: st.QoS.TimeSensitive != 0, Reliable: st.QoS.Reliable != 0}
		dp, warn := r.opts.Policy.Choose(opts, r.opts.Datapaths)
		y := &Stream{ID: st.ID, Options: opts, Datapath: dp, Warning: warn, session: x, dpIndex: -1}
		if r.remote != nil {
			y.dpIndex = r.remote.datapathIndex(dp)
		}
		if dp != st.Datapath {
			r.log.Info("migrated stream maps to another datapath here", "port", p.opts.Name, "stream", st.ID, "was", st.Datapath, "now", dp)
		}
		x.streams[st.ID] = y // +checklocksforce: x is new, r.mu is held
		streams[st.ID] = y
		maxID = max(maxID, st.ID)
		p.acct.takeLocked(limitStreams)
	}
	for _, so := range s.Sources {
		st := streams[so.Stream]
		key := r.keyLocked(tid, so.Channel)
		y := &Source{ID: so.ID, Global: so.Global, Channel: so.Channel, Stream: st, key: key, remote: r.remoteKey(key)}
		if so.NextSeq > 0 {
			y.seq.Store(so.NextSeq - 1)
		}
		y.emitted.Store(so.Emitted)
		y.full.Store(so.Full)
		st.session.sources.Store(so.ID, y)
		maxID = max(maxID, so.ID)
		p.acct.takeLocked(limitSources)
	}
	sinks := make(map[*Sink]bool, len(s.Sinks))
	var order []*Sink
	for i := range s.Sinks {
		sk := &s.Sinks[i]
		st := streams[sk.Stream]
		y := &Sink{ID: sk.ID, Channel: sk.Channel, Stream: st, session: st.session, key: r.keyLocked(tid, sk.Channel)}
		y.delivered.Store(sk.Delivered)
		y.dropped.Store(sk.Dropped)
		st.session.sinks.Store(sk.ID, y)
		sinks[y] = true
		order = append(order, y)
		maxID = max(maxID, sk.ID)
		p.acct.takeLocked(limitSinks)
	}
	for _, x := range sessions {
		r.sessions[x.ID] = x
		p.sessions.Store(x.ID, x)
	}
	r.nextID = max(r.nextID, maxID)
	if s.Link.GuestMACKnown {
		p.peer.learn(s.Link.GuestMAC)
	}
	// The queued messages first, in their order (the outbox has room:
	// checked above, and it was empty), then the sinks are published.
	for i, y := range order {
		for _, m := range s.Sinks[i].Queued {
			p.deliverOutbox(y, m.Source, m.Seq, m.Payload)
		}
	}
	if beforePublish != nil {
		beforePublish(sinks)
	}
	for _, y := range order {
		r.updateChannelLocked(y.key, func(l []*Sink) []*Sink { return append(l, y) })
	}
	p.replies.importEntries(s.Replay)
	r.log.Info("port state imported", "port", p.opts.Name, "sessions", len(s.Sessions), "streams", len(s.Streams),
		"sources", len(s.Sources), "sinks", len(s.Sinks), "queued", queued)
	return &imported{sinks: sinks}, nil
}

func (p *Port) importErr(err error) error {
	return fmt.Errorf("import into port %s: %w", p.opts.Name, err)
}

// checkLink refuses a snapshot of a guest this port would address
// otherwise: the guest keeps its address, its service address and port
// (they are in its memory), so the destination must give the same.
func (p *Port) checkLink(l *migration.LinkState) error {
	lo := p.peer.Options()
	addr := netip.AddrFrom4(l.Lease.Addr)
	svc := netip.AddrFrom4(l.Lease.ServerID)
	switch {
	case addr != lo.GuestIP.Addr() || int(l.Lease.PrefixBits) != lo.GuestIP.Bits():
		return fmt.Errorf("%w: the guest has %v/%d, this port gives %v: give the destination the same guest address", ErrSnapshotMismatch,
			addr, l.Lease.PrefixBits, lo.GuestIP)
	case svc != lo.ServiceIP:
		return fmt.Errorf("%w: the guest's service address is %v, this port's %v: give the destination the same service address", ErrSnapshotMismatch, svc, lo.ServiceIP)
	case l.ServicePort != lo.ServicePort:
		return fmt.Errorf("%w: the guest's service port is %d, this port's %d", ErrSnapshotMismatch, l.ServicePort, lo.ServicePort)
	}
	return nil
}

// importEntries puts snapshot entries into the cache (entries it cannot
// parse are skipped: a resent request then runs again).
func (c *replayCache) importEntries(es []migration.ReplayEntry) {
	for _, e := range es {
		b := make([]byte, guestproto.HeaderLen+len(e.Reply))
		guestproto.PutHeader(b, guestproto.Header{Type: guestproto.Reply})
		copy(b[guestproto.HeaderLen:], e.Reply)
		var m guestproto.Message
		if guestproto.Parse(b, &m) != nil {
			continue
		}
		res := guestproto.Result{Status: m.Result.Status, ID: m.Result.ID, Plugin: clone(m.Result.Plugin), Message: clone(m.Result.Message)}
		c.put(replayKey{src: e.Src, session: e.Session, request: e.Request, typ: guestproto.Type(e.Type)}, res, e.At)
	}
}

// fits reports whether the account can take that many more of each kind,
// as a LimitError if not (not counted as a refusal: nothing was asked of
// the guest).
func (a *account) fits(sessions, streams, sources, sinks int) error {
	if a == nil {
		return nil
	}
	for k, n := range [...]int{limitSessions: sessions, limitStreams: streams, limitSources: sources, limitSinks: sinks} {
		if m := a.max(limitKind(k)); m >= 0 && a.held[k].Load()+int64(n) > int64(m) {
			return &LimitError{Limit: limitNames[k], Max: m, Owner: a.owner}
		}
	}
	return nil
}
