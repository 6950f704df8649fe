package backend

// Live QoS change (issue 13, item 4; INSANE's /change/qos): SetStreamQoS
// gives a running stream new options and, when the policy maps them to
// another datapath, moves the stream there without losing, duplicating or
// reordering a message:
//
//  1. pause: the stream's emits are refused from then on, before they
//     take a sequence number (back-pressure: a guest application gets
//     ErrNoBuffers and emits again; a host application's emit waits,
//     emitWait), and the emits already inside are waited for (if one
//     stays inside past QoSDrainTimeout, the change is refused and
//     nothing moves);
//  2. drain: every datapath's queue is sent up to what it held at the
//     pause (the old path's messages are on the wire), and a reliable
//     stream's windows are waited for until the peers acknowledged
//     everything (the old path's messages arrived): a message of the new
//     path cannot overtake them at the receiver. A best-effort stream has
//     no acknowledgements: it waits qosSettle more for what is on the
//     wire. Both waits are bounded by QoSDrainTimeout; past it the stream
//     moves anyway (a reliable receiver still orders by the window's
//     sequence, which the move keeps) and the log says so;
//  3. switch: Options, Datapath, Warning and the datapath index change,
//     and the reliable windows' retransmissions take the new route;
//  4. resume, and tell the session's application (guestproto
//     StreamChanged on the virtio and host transports).
//
// A reliable stream keeps its windows and their numbering across the move
// (a window is per source and peer, whatever the datapath), so the peer's
// receiver sees one sequence. One peer address is reached by both
// datapaths (the peer table has one entry per address): a peer with
// kernel UDP and DPDK must give them the same address on separate links,
// or it hears the same datagram on both (see the README).

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"
)

// QoSDrainTimeout bounds how long SetStreamQoS waits for a stream's
// messages on its old datapath to leave (and, reliable, to be
// acknowledged).
const QoSDrainTimeout = 2 * time.Second

// qosSettle is how long a best-effort stream waits, once its old
// datapath sent everything, for those datagrams to arrive before the new
// datapath carries its messages.
const qosSettle = 5 * time.Millisecond

// qosGate pauses a stream's emits (SetStreamQoS). enter and leave are
// two atomic operations on the emit path; no lock, no allocation.
type qosGate struct {
	paused   atomic.Bool
	inflight atomic.Int64
}

// enter admits an emit, or reports false while the stream is paused.
func (g *qosGate) enter() bool {
	g.inflight.Add(1)
	if g.paused.Load() {
		g.inflight.Add(-1)
		return false
	}
	return true
}

func (g *qosGate) leave() { g.inflight.Add(-1) }

// pause stops new emits and waits (up to deadline) for those inside.
func (g *qosGate) pause(deadline time.Time) bool {
	g.paused.Store(true)
	for g.inflight.Load() != 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Microsecond)
	}
	return true
}

func (g *qosGate) resume() { g.paused.Store(false) }

// streamNotifier is an endpoint that tells its application of a stream
// that moved (guestport, hostapp: guestproto.StreamChanged).
type streamNotifier interface {
	streamChanged(s *Session, streamID uint32, datapath, warning string)
}

// SetStreamQoS gives stream streamID (of any session: ids are unique in
// the runtime) the options opts: the policy maps them to a datapath as
// CreateStream does (with the same fallback and warnings) and the stream
// moves there (drained, switched, resumed; see the top of this file). It
// returns the stream as Streams shows it. It fails with ErrNotFound for
// an unknown stream and ErrBadQoS when the policy names a datapath this
// host does not have.
func (r *Runtime) SetStreamQoS(streamID uint32, opts StreamOptions) (StreamInfo, error) {
	r.mu.Lock()
	st, s := r.streamByIDLocked(streamID)
	if st == nil {
		r.mu.Unlock()
		return StreamInfo{}, fmt.Errorf("stream %d: %w", streamID, ErrNotFound)
	}
	opts.Poll = st.Options.Poll // the consumption mode is the stream's from its creation (poll.go)
	dp, warn := r.opts.Policy.Choose(opts, r.opts.Datapaths)
	if !slices.Contains(r.opts.Datapaths, dp) {
		r.mu.Unlock()
		return StreamInfo{}, fmt.Errorf("stream %d: the policy chose datapath %q, which this host does not have (it has %v): %w",
			streamID, dp, r.opts.Datapaths, ErrBadQoS)
	}
	warn = joinWarnings(warn, unhonoured(opts, dp, r.scheduled()))
	idx := -1
	if r.remote != nil {
		idx = r.remote.datapathIndex(dp)
	}
	if st.moving {
		r.mu.Unlock()
		return StreamInfo{}, fmt.Errorf("stream %d is moving to another datapath already: %w", streamID, ErrBadQoS)
	}
	if st.Options == opts && st.Datapath == dp && st.dpIndex == idx {
		r.mu.Unlock()
		return r.streamInfo(streamID)
	}
	st.moving = true
	old := st.Datapath
	r.mu.Unlock()

	start := time.Now()
	deadline := start.Add(QoSDrainTimeout)
	if !st.gate.pause(deadline) {
		// An emit stuck inside (a sink's endpoint blocking): the fields
		// cannot change under it. Nothing moved.
		st.gate.resume()
		r.mu.Lock()
		st.moving = false
		r.mu.Unlock()
		return StreamInfo{}, fmt.Errorf("stream %d: its emits did not pause within %v: %w", streamID, QoSDrainTimeout, ErrBadQoS)
	}
	drained := r.drain(st, deadline)

	r.mu.Lock()
	st.Options, st.Datapath, st.Warning, st.dpIndex = opts, dp, warn, idx
	st.moving = false
	r.retargetWindowsLocked(st)
	st.gate.resume()
	closed := s.closed // +checklocksignore: s.rt is r, locked
	r.mu.Unlock()

	r.log.Info("stream QoS changed", "session", s.ID, "stream", streamID, "from", old, "to", dp, "options", opts,
		"drained", drained, "paused", time.Since(start).Round(time.Microsecond))
	if !drained {
		r.log.Warn("stream moved before its old datapath drained (bound reached)", "stream", streamID, "bound", QoSDrainTimeout)
	}
	if warn != "" {
		r.log.Warn("stream options not met", "session", s.ID, "stream", streamID, "datapath", dp, "warning", warn)
	}
	if n, ok := s.ep.(streamNotifier); ok && !closed {
		n.streamChanged(s, streamID, dp, warn)
	}
	return r.streamInfo(streamID)
}

// ErrBadQoS refuses a QoS change the runtime cannot make.
var ErrBadQoS = errors.New("QoS change refused")

// streamByIDLocked finds a stream and its session.
//
// +checklocks:r.mu
func (r *Runtime) streamByIDLocked(id uint32) (*Stream, *Session) {
	for _, s := range r.sessions {
		if st, ok := s.streams[id]; ok { // +checklocksignore: s.rt is r, locked
			return st, s
		}
	}
	return nil, nil
}

// streamInfo returns Streams' entry for stream id.
func (r *Runtime) streamInfo(id uint32) (StreamInfo, error) {
	for _, info := range r.Streams() {
		if info.Stream == id {
			return info, nil
		}
	}
	return StreamInfo{}, fmt.Errorf("stream %d (closed meanwhile): %w", id, ErrNotFound)
}

// drain waits, up to deadline, until every datapath sent what it held
// when st paused and st's reliable windows are acknowledged; a
// best-effort stream then waits qosSettle for its datagrams in flight.
func (r *Runtime) drain(st *Stream, deadline time.Time) bool {
	rm := r.remote
	if rm == nil {
		return true // local sinks only: delivery is synchronous
	}
	targets := make([]uint64, len(rm.dps))
	for i, d := range rm.dps {
		targets[i] = d.pushed.Load()
	}
	for {
		left := false
		for i, d := range rm.dps {
			if d.done.Load() < targets[i] {
				left = true
			}
		}
		if !left && !rm.rel.inFlight(st) {
			break
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Microsecond)
	}
	if !st.Options.Reliable { // only SetStreamQoS writes it (st.moving)
		time.Sleep(qosSettle)
	}
	return true
}

// inFlight reports whether some window of st's sources holds messages
// its peer has not acknowledged (a failed window holds none).
func (rl *reliable) inFlight(st *Stream) bool {
	for _, rs := range rl.senders.All() {
		if rs.src.Stream != st {
			continue
		}
		rs.mu.Lock()
		busy := !rs.failed && (rs.base != rs.next || rs.backlog.pending())
		rs.mu.Unlock()
		if busy {
			return true
		}
	}
	return false
}

// retargetWindowsLocked points the retransmissions of st's reliable
// windows at the stream's new route.
//
// +checklocks:r.mu
func (r *Runtime) retargetWindowsLocked(st *Stream) {
	rm := r.remote
	if rm == nil {
		return
	}
	for _, rs := range rm.rel.senders.All() {
		if rs.src.Stream != st {
			continue
		}
		dpi := rm.route(rs.p, st.dpIndex)
		rs.mu.Lock()
		rs.dpi = dpi
		rs.mu.Unlock()
	}
}
