package guestlib

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/internal/guestproto"
	"github.com/veloce-io/veloce/internal/shm"
)

// The host transport: control requests over the daemon's unix
// SOCK_SEQPACKET socket, messages in the session's shared region (see
// internal/shm and backend/hostapp.go for the daemon's side).

// errNoTXSlot is GetBuffer's error when every TX slot is in flight; made
// once, so back-pressure costs no allocation.
var errNoTXSlot = fmt.Errorf("guestlib: get buffer: every slot in flight: %w", ErrNoBuffers)

// hostSmallTX is how many TX slots (the first) hold one-slot messages;
// the rest of the pool is for runs of slots (large messages), when the
// daemon's region has more (daemons before large messages: 512 slots
// only, no runs).
const hostSmallTX = 512

// hostShm is a session's shared region and the application's ends of its
// rings.
type hostShm struct {
	region *shm.Region
	layout shm.Layout
	txNote *shm.Notifier // signalled for the daemon: TX entries wait
	rxNote *shm.Notifier // signalled by the daemon: RX or TX-done entries
	// refs counts the session and every Buffer and Message holding a
	// slot: the region is unmapped when the last goes, so a slice the
	// application still holds never faults.
	refs    atomic.Int64
	stopped atomic.Bool // the session is closed
	// maxMsg is the session's largest message (Session.MaxMessage);
	// runLo to runHi-1 are the TX slots of runs (none if equal). Fixed.
	maxMsg int
	runLo  uint32
	runHi  uint32

	txMu sync.Mutex
	tx   shm.Producer // +checklocks:txMu
	done shm.Consumer // +checklocks:txMu
	// txFree are the one-slot TX slots free for GetBuffer.
	txFree []uint32 // +checklocks:txMu
	// runs allocates runs of TX slots past the one-slot ones for
	// messages larger than a slot; nil without room for runs.
	runs *shm.Runs // +checklocks:txMu
	// inFlight counts emitted messages whose slots the daemon has not
	// yet returned: Close waits for them.
	inFlight int // +checklocks:txMu

	rxMu   sync.Mutex
	rxFree shm.Producer // +checklocks:rxMu
	rx     shm.Consumer // the receive goroutine's
	// msgs has a Message per RX slot (by the slot, or a run's first): a
	// slot is one delivered message at a time, so its Message needs no
	// pool. It is in use while its host is set: receiveOnce fills it,
	// Release clears it before freeing the slot (so the daemon cannot
	// hand the slot back sooner). The slice is fixed; an element is the
	// receiver's while not in use, its holder's while in use (no lock).
	msgs []Message // +checklocksignore

	// GetBufferContext's waiters: woken (waitCh closed) by the receive
	// goroutine after the daemon signalled returned slots.
	waiters atomic.Int32
	waitMu  sync.Mutex
	waitCh  chan struct{} // +checklocks:waitMu

	// Polling (poll.go). rxPoll makes one goroutine at a time the RX
	// ring's consumer: the receive goroutine, or a polling Consume.
	rxPoll    sync.Mutex
	polling   atomic.Int32 // the session's polling streams
	consumers atomic.Int32 // polling Consumes under way
	// lastConsume is when (unix ns) the last polling Consume returned.
	lastConsume atomic.Int64
}

// newHostShm maps the region and eventfds that came with the reply to
// OpenSession: [region, TX eventfd, RX eventfd]. It takes ownership of
// fds. maxMsg is the largest message the daemon said it takes, 0 if it
// said nothing (a daemon before large messages: one slot's worth).
func newHostShm(fds []int, maxMsg int) (*hostShm, error) {
	if len(fds) != 3 {
		shm.CloseFDs(fds)
		return nil, fmt.Errorf("the daemon sent %d descriptors, want 3 (region, 2 eventfds)", len(fds))
	}
	region, err := shm.Open(fds[0])
	if err != nil {
		shm.CloseFDs(fds[1:])
		return nil, err
	}
	tx, err := shm.NotifierFromFD(fds[1])
	if err != nil {
		unix.Close(fds[2])
		region.Close()
		return nil, err
	}
	rx, err := shm.NotifierFromFD(fds[2])
	if err != nil {
		tx.Close()
		region.Close()
		return nil, err
	}
	region.CloseFD() // mapped: the descriptor is no longer needed
	l := region.Layout()
	h := &hostShm{region: region, layout: l, txNote: tx, rxNote: rx,
		tx: region.TXProducer(), done: region.DoneConsumer(), rxFree: region.FreeProducer(), rx: region.RXConsumer(),
		txFree: make([]uint32, 0, l.TXSlots), msgs: make([]Message, l.RXSlots)}
	small := min(l.TXSlots, hostSmallTX)
	for i := small; i > 0; i-- {
		h.txFree = append(h.txFree, i-1)
	}
	// Large messages need the daemon's word and room for runs; they are
	// bounded by the room of either pool's runs (a run of RX slots too
	// takes at most the RX pool's part past its one-slot slots, which the
	// application does not know: the daemon's maxMsg accounts for it).
	h.maxMsg = MaxMessage
	if l.TXSlots > small && maxMsg > int(l.SlotSize) {
		h.runs = shm.NewRuns(small, l.TXSlots-small) // +checklocksignore: not yet shared
		h.runLo, h.runHi = small, l.TXSlots
		h.maxMsg = min(maxMsg, int(l.TXSlots-small)*int(l.SlotSize))
	}
	h.refs.Store(1)
	return h, nil
}

// unref drops a reference; the last unmaps the region.
func (h *hostShm) unref() {
	if h.refs.Add(-1) == 0 {
		h.region.Close()
	}
}

// stop marks the session closed and wakes the receive goroutine.
func (h *hostShm) stop() {
	h.stopped.Store(true)
	h.rxNote.Close()
	h.wakeTXWaiters()
}

// close releases the eventfds and the session's reference, after the
// receive goroutine has ended.
func (h *hostShm) close() {
	h.txNote.Close()
	h.unref()
}

// allocTX takes a free TX slot: one the application never emitted, or
// one the daemon returned on the TX-done ring.
func (h *hostShm) allocTX() (uint32, error) {
	h.txMu.Lock()
	if h.stopped.Load() {
		h.txMu.Unlock()
		return 0, ErrClosed
	}
	if len(h.txFree) == 0 {
		h.reclaimLocked()
	}
	n := len(h.txFree)
	if n == 0 {
		h.txMu.Unlock()
		return 0, errNoTXSlot
	}
	id := h.txFree[n-1]
	h.txFree = h.txFree[:n-1]
	h.txMu.Unlock()
	h.refs.Add(1)
	return id, nil
}

// allocRun takes a run of free TX slots for a message of size bytes
// (more than a slot, at most maxMsg); it returns the run's first slot.
func (h *hostShm) allocRun(size int) (uint32, error) {
	count := h.layout.SlotsFor(uint32(size))
	h.txMu.Lock()
	if h.stopped.Load() {
		h.txMu.Unlock()
		return 0, ErrClosed
	}
	id, ok := h.runs.Alloc(count)
	if !ok {
		h.reclaimLocked()
		id, ok = h.runs.Alloc(count)
	}
	h.txMu.Unlock()
	if !ok {
		return 0, errNoTXSlot
	}
	h.refs.Add(1)
	return id, nil
}

// alloc is allocTX for a message of up to a slot, allocRun for larger.
func (h *hostShm) alloc(size int) (uint32, error) {
	if size <= int(h.layout.SlotSize) {
		return h.allocTX()
	}
	return h.allocRun(size)
}

// +checklocks:h.txMu
func (h *hostShm) reclaimLocked() {
	n, ok := h.done.Available()
	if !ok {
		h.done.Resync()
		return
	}
	for k := uint32(0); k < n; k++ {
		id := shm.GetID(h.done.Entry(k))
		switch {
		case h.isRun(id):
			if _, ok := h.runs.Free(id); ok {
				h.inFlight = max(0, h.inFlight-1)
			}
		case id < hostSmallTX && id < h.layout.TXSlots && len(h.txFree) < cap(h.txFree):
			h.txFree = append(h.txFree, id)
			h.inFlight = max(0, h.inFlight-1)
		}
	}
	h.done.Release(n)
}

// flush waits, until ctx ends, for the daemon to have taken every
// emitted message off the TX ring (it returns their slots): Close calls
// it so that a session closed right after its last Emit loses nothing.
func (h *hostShm) flush(ctx context.Context) {
	for wait := 20 * time.Microsecond; ; wait = min(2*wait, 5*time.Millisecond) {
		h.txMu.Lock()
		h.reclaimLocked()
		n := h.inFlight
		h.txMu.Unlock()
		if n == 0 || ctx.Err() != nil {
			return
		}
		time.Sleep(wait)
	}
}

// waitTX is allocTX that waits for a slot until ctx ends or the session
// closes.
func (h *hostShm) waitTX(ctx context.Context, closed <-chan struct{}, size int) (uint32, error) {
	for {
		id, err := h.alloc(size)
		if err != errNoTXSlot {
			return id, err
		}
		h.waitMu.Lock()
		if h.waitCh == nil {
			h.waitCh = make(chan struct{})
		}
		ch := h.waitCh
		h.waitMu.Unlock()
		h.waiters.Add(1)
		// Raise the flag, then look again: the daemon publishes returned
		// slots, then looks at the flag (internal/shm's wake-up protocol).
		h.region.AppWaitingTX().Set()
		if id, err = h.alloc(size); err != errNoTXSlot {
			h.waiters.Add(-1)
			return id, err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			h.waiters.Add(-1)
			return 0, fmt.Errorf("guestlib: get buffer: no slot came back: %w: %w", ctx.Err(), ErrNoBuffers)
		case <-closed:
			h.waiters.Add(-1)
			return 0, ErrClosed
		}
		h.waiters.Add(-1)
	}
}

func (h *hostShm) wakeTXWaiters() {
	h.waitMu.Lock()
	if h.waitCh != nil {
		close(h.waitCh)
		h.waitCh = nil
	}
	h.waitMu.Unlock()
}

func (h *hostShm) buffer(id uint32, size int) *Buffer {
	b := bufferPool.Get().(*Buffer)
	if size <= int(h.layout.SlotSize) {
		*b = Buffer{Data: h.region.TXSlot(id)[:size], host: h, slot: id}
	} else {
		// A run: the slots are adjacent in the region, Data is one slice.
		*b = Buffer{Data: h.region.TXRun(id, h.layout.SlotsFor(uint32(size)))[:size], host: h, slot: id}
	}
	return b
}

// isRun reports whether TX slot id is one of the slots of runs.
func (h *hostShm) isRun(id uint32) bool { return id >= h.runLo && id < h.runHi }

// capacity returns how many bytes the buffer's slot or run holds.
func (h *hostShm) capacity(b *Buffer) int {
	if h.isRun(b.slot) {
		return cap(b.Data)
	}
	return int(h.layout.SlotSize)
}

// giveBackLocked returns a buffer's slot or run that was not emitted.
//
// +checklocks:h.txMu
func (h *hostShm) giveBackLocked(slot uint32) {
	if h.isRun(slot) {
		h.runs.Free(slot)
		return
	}
	h.txFree = append(h.txFree, slot)
}

// emitHost puts a buffer's slot on the TX ring; the daemon is signalled
// only if it sleeps.
func (so *Source) emitHost(b *Buffer) (Token, error) {
	h := b.host
	if len(b.Data) > h.maxMsg || len(b.Data) > h.capacity(b) || (len(b.Data) > 0 && &b.Data[0] != &h.region.TXSlot(b.slot)[0]) {
		return 0, errors.New("guestlib: buffer data moved or grew; write into Data in place")
	}
	so.mu.Lock()
	tok := so.token.Add(1)
	h.txMu.Lock()
	ok := !h.stopped.Load() && h.tx.Space(1) > 0 // the ring has room for every slot
	if ok {
		shm.PutTX(h.tx.Entry(0), shm.TXEntry{Slot: b.slot, Len: uint32(len(b.Data)), Source: so.id, Token: tok})
		h.tx.Publish(1)
		h.inFlight++
	} else {
		h.giveBackLocked(b.slot)
	}
	h.txMu.Unlock()
	so.mu.Unlock()
	*b = Buffer{}
	bufferPool.Put(b)
	if !ok {
		h.unref()
		return Token(tok), ErrClosed
	}
	if h.region.DaemonWaiting().TakeIfSet() {
		h.txNote.Signal()
	}
	h.unref()
	return Token(tok), nil
}

// releaseRX gives an RX slot back to the daemon.
func (h *hostShm) releaseRX(slot uint32) {
	h.rxMu.Lock()
	if h.rxFree.Space(1) > 0 { // always: the ring has room for every slot
		shm.PutID(h.rxFree.Entry(0), slot)
		h.rxFree.Publish(1)
	}
	h.rxMu.Unlock()
	h.unref()
}

// receive takes delivered messages off the RX ring and hands them to
// their sinks, until the session closes. It sleeps on the RX eventfd as
// soon as the ring is empty, after raising its flag; while the session
// polls it spins instead (poll.go), or, while a polling Consume drives
// the ring, waits for it to finish.
func (h *hostShm) receive(s *Session) {
	defer s.wg.Done()
	wait := h.region.AppWaitingRX()
	for {
		if h.waiters.Load() > 0 {
			h.wakeTXWaiters()
		}
		if h.polling.Load() > 0 && h.consumeDrives() {
			time.Sleep(consumeGrace / 4) // a Consume has the ring
			if h.stopped.Load() {
				return
			}
			continue
		}
		h.rxPoll.Lock()
		n := h.receiveOnce(s)
		h.rxPoll.Unlock()
		if n > 0 {
			continue
		}
		if h.stopped.Load() {
			return
		}
		if h.polling.Load() > 0 {
			pollIdle()
			continue
		}
		wait.Set()
		if h.rx.Pending() || h.polling.Load() > 0 {
			wait.Clear()
			continue
		}
		if h.rxNote.Wait() != nil {
			return
		}
		wait.Clear()
	}
}

// receiveOnce hands what the RX ring holds to the sinks. It looks a sink
// up once for a run of entries to it (the session's lock), and takes the
// region's references for the whole batch at once.
//
// +checklocks:h.rxPoll
func (h *hostShm) receiveOnce(s *Session) uint32 {
	n, ok := h.rx.Available()
	if !ok {
		h.rx.Resync()
		return 1
	}
	if n == 0 {
		return 0
	}
	h.refs.Add(int64(n)) // one per message handed on; the rest given back below
	unused := int64(0)
	var sk *Sink
	var skID uint32
	looked := false
	// locked is sk while its queue's lock is held (shared) for the run of
	// entries to it: one lock per run, not per message. A callback sink
	// is called without it (the callback may close the sink).
	var locked *Sink
	for k := uint32(0); k < n; k++ {
		e := shm.GetRX(h.rx.Entry(k)) // copied out once
		// One slot, or a run of the slots its length takes (a large
		// message), within the RX pool.
		if int(e.Len) > max(h.maxMsg, int(h.layout.SlotSize)) || !h.layout.RunFits(e.Slot, e.Len, h.layout.RXSlots) {
			unused++
			continue // not from a working daemon
		}
		m := &h.msgs[e.Slot]
		if m.host != nil { // a slot the application still holds: nor is this
			unused++
			continue
		}
		if !looked || e.Sink != skID {
			locked = locked.runlock()
			s.mu.Lock()
			sk = s.sinks[e.Sink]
			s.mu.Unlock()
			skID, looked = e.Sink, true
			if sk != nil && sk.cb == nil {
				locked = sk.rlock()
			}
		}
		if sk == nil { // closed here already
			h.releaseRX(e.Slot) // gives its reference back
			continue
		}
		*m = Message{Data: h.region.RXRun(e.Slot, h.layout.SlotsFor(e.Len))[:e.Len], Source: e.Source, Seq: e.Seq, Channel: sk.channel, host: h, slot: e.Slot, sink: sk}
		if locked != nil {
			sk.pushLocked(m) // +checklocksforce: locked is sk, held shared
		} else {
			sk.push(m)
		}
	}
	locked.runlock()
	if unused > 0 {
		h.refs.Add(-unused) // the session's own reference keeps it above 0
	}
	h.rx.Release(n)
	return n
}

// rlock takes sk's queue lock shared, for a run of pushLocked, and
// returns sk; runlock lets it go (nil: none held) and returns nil. The
// lock is held across calls, which checklocks does not follow.
//
// +checklocksignore
func (sk *Sink) rlock() *Sink {
	sk.mu.RLock()
	return sk
}

// +checklocksignore
func (sk *Sink) runlock() *Sink {
	if sk != nil {
		sk.mu.RUnlock()
	}
	return nil
}

// receiveHost reads the daemon's messages on the host transport's socket:
// replies (the one to OpenSession with the region's descriptors) and
// outcomes of refused emits.
func (s *Session) receiveHost(c *net.UnixConn) {
	defer s.wg.Done()
	buf := make([]byte, datagramSize)
	oob := make([]byte, unix.CmsgSpace(4*4))
	for {
		n, fds, err := shm.ReadMsg(c, buf, oob)
		if err != nil {
			if errors.Is(err, shm.ErrBadRegion) {
				continue
			}
			s.connectionLost()
			return
		}
		var m guestproto.Message
		if guestproto.Parse(buf[:n], &m) != nil {
			shm.CloseFDs(fds)
			continue
		}
		switch m.Type {
		case guestproto.Reply:
			s.mu.Lock()
			ch := s.pending[m.RequestID]
			s.mu.Unlock()
			r := reply{m.Result.Status, m.Result.ID, string(m.Result.Plugin), string(m.Result.Message), fds}
			select {
			case ch <- r: // ch nil (no one waits): never ready
			default:
				shm.CloseFDs(fds)
			}
		case guestproto.Outcome:
			shm.CloseFDs(fds)
			s.refused(m.ID, m.Token, m.Status)
		case guestproto.StreamChanged:
			shm.CloseFDs(fds)
			s.streamChanged(&m)
		default:
			shm.CloseFDs(fds)
		}
	}
}

// connectionLost is called when the daemon closed the connection (it
// stopped, or closed the session): requests fail with ErrNoSession and
// sinks close, so Consume returns ErrClosed once their queues are empty.
func (s *Session) connectionLost() {
	s.lostOnce.Do(func() { close(s.lost) })
	s.mu.Lock()
	sinks := make([]*Sink, 0, len(s.sinks))
	for _, sk := range s.sinks {
		sinks = append(sinks, sk)
	}
	s.mu.Unlock()
	for _, sk := range sinks {
		sk.closeLocal()
	}
}
