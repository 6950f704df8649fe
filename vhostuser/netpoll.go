package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/internal/fd"
	"golang.org/x/sys/unix"
)

// Poller tuning. An idle poller spins for spinRounds empty rounds, then
// re-enables guest notifications and sleeps on the kick eventfds: an idle
// port costs no CPU, a busy one no syscalls. It sleeps on the TX kick
// always, and on the RX kick only while something waits for RX buffers
// the guest has not posted (an announcement, or a frame the RXSource has
// pending): an RX ring full of posted buffers with nothing to deliver
// does not keep it awake. NetDevice.Wake wakes it when the source gets a
// frame.
const (
	txBurst       = 64   // chains taken off the TX ring per round
	spinRounds    = 2048 // empty rounds before sleeping
	sleepTimeoutM = 1000 // poll(2) timeout in ms while sleeping (re-checks stop)
	maxSegments   = 64   // segments one chain may have
	maxMerge      = 64   // RX buffers one frame may span (mergeable buffers)
	replyCap      = 65536 + 14
)

// poller runs one queue pair: it takes frames off the TX ring, hands them
// to the FrameHandler, and puts replies on the RX ring. It runs on one
// locked OS thread; nothing on its per-frame path allocates or locks.
type poller struct {
	dev    *NetDevice
	qp     int
	hdrLen int
	merge  bool // VIRTIO_NET_F_MRG_RXBUF

	rx, tx pollRing
	// The rings' kick and call eventfds, borrowed from the device's
	// vrings (nil when none): the device stops the poller before it
	// closes or replaces them.
	rxKick, txKick *fd.EventFD
	rxCall, txCall *fd.EventFD
	wake           *fd.EventFD   // owned: stop requests and NetDevice.Wake
	pollEvs        []*fd.EventFD // the eventfd of each pollFDs entry
	stopping       atomic.Bool
	started        bool        // a pollGroup member: its first round came (pollgroup.go)
	sleeping       atomic.Bool // in (or about to enter) poll(2); NetDevice.Wake signals only then
	// rounds counts poll rounds and parked is set only inside poll(2),
	// after the round's last ring access: together they tell the control
	// path when the poller has moved past a change it made in place (a
	// new dirty log, see NetDevice.quiesceLocked).
	rounds atomic.Uint64
	parked atomic.Bool
	// bl holds frames for the guest that found the RX ring short
	// (rxbacklog.go); the device's, for this queue pair.
	bl *rxBacklog
	// rxq serializes the RX ring's producers: this poller and
	// NetDevice.DeliverRX's callers (directrx.go). rxLocked: the poller
	// holds it (recoverFault releases it).
	rxq                    *rxProducer
	rxLocked               bool
	sleeps                 atomic.Uint64 // poll(2) calls: the tests' proof that an idle poller sleeps
	done                   chan struct{}
	txChain                *Chain
	rxChains               [maxMerge]*Chain
	rxWritten              [maxMerge]uint32
	linear                 []byte // a TX frame gathered from several segments
	reply                  []byte
	pollFDs                []unix.PollFd
	rxPoll                 int      // index of the RX kick in pollFDs, -1 when not there
	rxNotify               bool     // RX notifications enabled for this sleep
	maps                   mappings // the frontend memory this poller touches (fault.go)
	errorsAtStop           uint64
	rxPending, txPublished bool
	// Counters of the current round, added to the device's once per
	// round (flush): atomics per frame stall on the frame's cache misses.
	txPackets, txBytes, rxPackets, rxBytes, drops, errs, copies uint64
	src                                                         RXSource  // the handler, when it originates frames
	announcer                                                   Announcer // the handler, until it has announced
	gen                                                         []byte    // frame buffer for src
}

// pollRing is what the poller needs of a ring beyond Queue: SplitRing
// and PackedRing provide it.
type pollRing interface {
	Queue
	// Pending returns how many buffers are available and not popped (a
	// PackedRing counts a bounded number ahead).
	Pending() uint16
	// unpop puts back the chain popped last (see SplitRing.unpop).
	unpop(c *Chain) bool
	// setLogging is SetLogging, reporting whether anything changed.
	setLogging(log *DirtyLog, logUsed bool, usedLogGPA uint64) bool
}

var (
	_ pollRing = (*SplitRing)(nil)
	_ pollRing = (*PackedRing)(nil)
)

// RXSource is implemented by a FrameHandler that also originates frames
// for the guest (the runtime delivering messages; a traffic generator).
// The poller asks it for a frame whenever the guest has an RX buffer free,
// so a frame FillRX hands out is not dropped for lack of buffers (unless
// it is larger than what the guest posted). A source that queues a frame
// calls NetDevice.Wake afterwards: that costs nothing unless the poller
// sleeps.
type RXSource interface {
	// FillRX writes the next frame for queue pair qp into buf (at least
	// 64 KiB) and returns its length, or 0 when it has none.
	FillRX(qp int, buf []byte) int
	// PendingRX reports whether FillRX has a frame for qp. The poller asks
	// it just before it sleeps.
	PendingRX(qp int) bool
}

// Announcer is implemented by a FrameHandler that greets the guest when a
// queue pair's RX ring starts (after connecting, reconnecting, or at the
// destination of a live migration): a gratuitous ARP for the service
// address, so the guest's neighbour entry is right at once.
type Announcer interface {
	// Announce writes a frame into buf and returns its length (0: none).
	Announce(qp int, buf []byte) int
}

func newPoller(d *NetDevice, qp int) *poller {
	p := &poller{
		dev: d, qp: qp, hdrLen: d.netHeaderLenLocked(), merge: d.features.Has(NetFMrgRxbuf),
		done:    make(chan struct{}),
		rxPoll:  -1,
		bl:      d.backlogs[qp],
		rxq:     d.rxq[qp],
		txChain: NewChain(maxSegments),
		linear:  make([]byte, 65536+64),
		reply:   make([]byte, replyCap),
	}
	for i := range p.rxChains {
		p.rxChains[i] = NewChain(maxSegments)
	}
	if src, ok := d.opts.Handler.(RXSource); ok {
		p.src, p.gen = src, make([]byte, replyCap)
	}
	return p
}

func (p *poller) start() error {
	wake, err := fd.NewEventFD()
	if err != nil {
		return fmt.Errorf("start queue pair %d: %w", p.qp, err)
	}
	p.wake = wake
	p.watch(p.wake)
	p.watch(p.txKick)
	if p.rx != nil {
		if a, ok := p.dev.opts.Handler.(Announcer); ok && !p.dev.announced[p.qp].Load() {
			p.announcer = a
		}
	}
	if p.rx != nil && p.rxKick.Int() >= 0 {
		p.rxPoll = len(p.pollFDs) // last: sleep leaves it out when not waiting for RX
		p.watch(p.rxKick)
	}
	if cpus := p.dev.opts.PollCPUs; len(cpus) > 0 {
		// Pinned pollers on one CPU share its thread (pollgroup.go).
		if err := joinPollGroup(cpus[p.qp%len(cpus)], p); err != nil {
			p.wake.Close()
			return fmt.Errorf("start queue pair %d: %w", p.qp, err)
		}
		return nil
	}
	go p.run()
	return nil
}

// watch adds e (when there is one) to the eventfds sleep polls.
func (p *poller) watch(e *fd.EventFD) {
	if e.Int() >= 0 {
		p.pollFDs = append(p.pollFDs, unix.PollFd{Fd: int32(e.Int()), Events: unix.POLLIN})
		p.pollEvs = append(p.pollEvs, e)
	}
}

// stop asks the poller to finish its round and waits for it.
func (p *poller) stop() {
	p.stopping.Store(true)
	p.wake.Signal()
	<-p.done
	p.wake.Close()
}

func (p *poller) ringErrors() uint64 {
	var n uint64
	if p.rx != nil {
		n += p.rx.Errors()
	}
	if p.tx != nil {
		n += p.tx.Errors()
	}
	return n
}

func (p *poller) run() {
	runtime.LockOSThread()
	defer close(p.done)
	// A fault on frontend memory (a shrunk memfd), here or in the
	// FrameHandler and RXSource called from here, becomes a panic that
	// recoverFault turns into a dropped frontend. The setting belongs to
	// this goroutine, which ends with run.
	debug.SetPanicOnFault(true)
	defer p.recoverFault()
	defer runtime.UnlockOSThread() // unpinned: pinned pollers run in a pollGroup
	p.disableNotifications()
	idle := 0
	for !p.stopping.Load() {
		if p.round() > 0 {
			idle = 0
			continue
		}
		idle++
		if idle < spinRounds {
			// Spin on a locked thread; the Go scheduler preempts it when
			// it must, and yielding here woke other threads for nothing.
			continue
		}
		// Going to sleep: ask for kicks, then look once more, since a
		// buffer posted before the driver saw the request is not kicked,
		// and a source's frame queued before it saw sleeping is woken
		// (Wake signals once sleeping is set).
		p.sleeping.Store(true)
		if p.enableNotifications() {
			p.sleeping.Store(false)
			p.disableNotifications()
			idle = 0
			continue
		}
		woken := p.sleep()
		p.sleeping.Store(false)
		p.disableNotifications()
		idle = 0
		if !woken {
			idle = spinRounds - 1 // a timeout: look once, then sleep again
		}
	}
}

// lockRX makes the poller the RX ring's producer (directrx.go).
func (p *poller) lockRX() {
	p.rxq.mu.Lock()
	p.rxLocked = true
}

func (p *poller) unlockRX() {
	p.rxLocked = false
	p.rxq.mu.Unlock()
}

// round is one poll round: RX work, TX work, then publication. It
// returns the frames it moved.
func (p *poller) round() int {
	p.rounds.Add(1)
	n := 0
	if p.rx != nil && (p.bl.n > 0 || p.announcer != nil || (p.src != nil && p.src.PendingRX(p.qp))) {
		// The round's RX work, as the ring's one producer of the moment
		// (directrx.go): backlogged frames first, before anything new,
		// then the announcement, then the source's.
		p.lockRX()
		if p.bl.n > 0 {
			n += p.drainBacklog()
		}
		if p.announcer != nil && p.rx.Pending() > 0 {
			n += p.announce()
		}
		if p.src != nil && p.bl.n == 0 {
			n += p.processRX()
		}
		p.unlockRX()
	}
	if p.tx != nil {
		n += p.processTX()
	}
	if n > 0 {
		p.flush()
	}
	return n
}

// recoverFault ends a poller that faulted on frontend memory: the device
// drops the frontend. Other panics are bugs and go on.
func (p *poller) recoverFault() {
	if p.rxLocked {
		p.unlockRX() // a fault while placing a frame: other producers go on
	}
	v := recover()
	if v == nil {
		return
	}
	p.faulted(v)
}

// faulted is recoverFault's work on a recovered panic value v.
func (p *poller) faulted(v any) {
	// The dirty log may have been replaced in place since the poller
	// started (SET_LOG_BASE during a migration).
	f := faultFrom(v, fmt.Sprintf("queue pair %d", p.qp), p.maps, mappings{dirty: p.dev.logNow.Load()})
	p.addStats()
	p.dev.fail(p.qp, fmt.Errorf("queue pair %d: %w", p.qp, f))
}

// ringBroken stops the poller for good and has the device drop the
// frontend: the driver broke ring (its vring index).
func (p *poller) ringBroken(ring int, err error) {
	p.stopping.Store(true)
	p.dev.fail(p.qp, fmt.Errorf("queue pair %d: %w", p.qp, &RingError{Ring: ring, Err: err}))
}

// announce delivers the Announcer's frame, once per frontend connection,
// and returns how many frames it delivered (the round's flush publishes
// it). The caller holds the RX lock.
func (p *poller) announce() int {
	n := p.announcer.Announce(p.qp, p.reply)
	if n > 0 {
		p.deliver(p.reply[:n])
	}
	p.dev.announced[p.qp].Store(true)
	p.announcer = nil
	if n > 0 {
		return 1
	}
	return 0
}

// waitsForRX says whether something waits for RX buffers: an
// announcement, a backlogged frame, or a frame the source has pending.
// Only then do the guest's RX kicks matter.
func (p *poller) waitsForRX() bool {
	return p.rx != nil && (p.announcer != nil || p.bl.n > 0 || (p.src != nil && p.src.PendingRX(p.qp)))
}

// enableNotifications asks for the kicks that should wake the poller (TX
// always, RX while something waits for RX buffers) and reports whether
// there is work already: TX chains, or RX buffers for what waits.
func (p *poller) enableNotifications() (pending bool) {
	if p.tx != nil && p.tx.EnableNotifications() {
		pending = true
	}
	p.rxNotify = p.waitsForRX()
	if p.rxNotify {
		p.lockRX()
		if p.rx.EnableNotifications() {
			pending = true
		}
		p.unlockRX()
	}
	return pending
}

func (p *poller) disableNotifications() {
	if p.tx != nil {
		p.tx.DisableNotifications()
	}
	if p.rx != nil {
		p.lockRX() // the used ring's flags: shared with direct RX writers
		p.rx.DisableNotifications()
		p.unlockRX()
	}
	p.rxNotify = false
}

// flush publishes what the round pushed and notifies the guest where it
// asked to be.
func (p *poller) flush() {
	p.addStats()
	if p.txPublished {
		p.txPublished = false
		p.tx.Publish()
		if p.tx.NeedsNotify() {
			p.txCall.Signal()
		}
	}
	if p.rxPending {
		p.rxPending = false
		p.lockRX()
		p.rx.Publish()
		if p.rx.NeedsNotify() {
			p.rxCall.Signal()
		}
		p.unlockRX()
	}
}

// addStats adds the round's counters to the device's.
func (p *poller) addStats() {
	st := &p.dev.stats
	if p.txPackets > 0 {
		st.txPackets.Add(p.txPackets)
		st.txBytes.Add(p.txBytes)
		p.txPackets, p.txBytes = 0, 0
	}
	if p.rxPackets > 0 {
		st.rxPackets.Add(p.rxPackets)
		st.rxBytes.Add(p.rxBytes)
		p.rxPackets, p.rxBytes = 0, 0
	}
	if p.drops > 0 {
		st.drops.Add(p.drops)
		p.drops = 0
	}
	if p.errs > 0 {
		st.errors.Add(p.errs)
		p.errs = 0
	}
	if p.copies > 0 {
		st.copies.Add(p.copies)
		p.copies = 0
	}
}

// processRX moves up to txBurst frames from the RXSource to the guest,
// asking for a frame only while the guest has a buffer for it.
func (p *poller) processRX() int {
	n := 0
	avail := int(p.rx.Pending()) // read the driver's index once a round
	for n < txBurst && n < avail {
		fl := p.src.FillRX(p.qp, p.gen)
		if fl <= 0 {
			break
		}
		p.deliver(p.gen[:fl])
		n++
	}
	return n
}

// sleep waits for a kick (of the RX ring only when rxNotify) or a wake-up
// (Wake, stop), and reports whether one came before the timeout.
func (p *poller) sleep() bool {
	fds := p.pollFDs
	if p.rxPoll >= 0 && !p.rxNotify {
		fds = fds[:p.rxPoll]
	}
	for i := range fds {
		fds[i].Revents = 0
	}
	p.sleeps.Add(1)
	p.parked.Store(true)
	n, err := unix.Poll(fds, sleepTimeoutM)
	p.parked.Store(false)
	if err != nil {
		return errors.Is(err, unix.EINTR)
	}
	for i, pfd := range fds {
		if pfd.Revents&unix.POLLIN != 0 {
			p.pollEvs[i].Drain()
		}
	}
	return n > 0
}

// processTX handles up to txBurst frames and returns how many it took.
func (p *poller) processTX() int {
	n := 0
	for n < txBurst {
		ok, err := p.tx.Pop(p.txChain)
		if err != nil {
			if errors.Is(err, ErrRingBroken) {
				p.ringBroken(2*p.qp+1, err)
				break
			}
			n++ // the bad chain was returned to the guest with length 0
			continue
		}
		if !ok {
			break
		}
		n++
		frame := p.frame(p.txChain)
		if frame == nil {
			p.errs++
			p.tx.Push(p.txChain, 0)
			continue
		}
		p.txPackets++
		p.txBytes += uint64(len(frame))
		rn := p.dev.opts.Handler.HandleFrame(p.qp, frame, p.reply)
		p.tx.Push(p.txChain, 0)
		if rn > 0 {
			// Not held around HandleFrame, which may deliver to this
			// very ring (DeliverRX).
			p.lockRX()
			p.deliver(p.reply[:rn])
			p.unlockRX()
		}
	}
	if n > 0 {
		p.txPublished = true
	}
	return n
}

// frame returns the Ethernet frame in a TX chain without its virtio-net
// header: a view into guest memory when the frame is contiguous, else a
// copy in p.linear. It returns nil for a chain too short to hold a header.
func (p *poller) frame(c *Chain) []byte {
	segs := c.Readable()
	total := int(c.ReadableLen())
	if total <= p.hdrLen || total > len(p.linear) {
		return nil
	}
	switch {
	case len(segs) == 1:
		return segs[0][p.hdrLen:]
	case len(segs) == 2 && len(segs[0]) == p.hdrLen:
		return segs[1]
	}
	c.Gather(p.linear[:total])
	p.copies++
	return p.linear[p.hdrLen:total]
}

// deliver puts one frame on the RX ring, spanning several buffers when
// the driver negotiated mergeable RX buffers, or in the backlog when the
// ring is short of buffers or frames wait there already (order is kept).
// Publication is batched by the caller, which holds the RX lock.
func (p *poller) deliver(frame []byte) {
	if p.rx != nil {
		if p.bl.n > 0 {
			p.drainBacklog()
		}
		if p.bl.n == 0 {
			switch p.place(frame) {
			case placed:
				return
			case placeTooBig:
				p.drops++
				return
			}
		}
	}
	// Short ring, frames ahead of this one, or no RX ring running yet
	// (its poller starts with the ring and drains the backlog).
	if !p.bl.push(frame) {
		p.drops++
	} else {
		p.copies++ // into the backlog (and once more onto the ring, later)
	}
}

// drainBacklog delivers backlogged frames, oldest first, while the RX
// ring has buffers for them, and returns how many it delivered.
func (p *poller) drainBacklog() int {
	n := 0
	for p.bl.n > 0 {
		switch p.place(p.bl.peek()) {
		case placeShort:
			return n
		case placeTooBig: // the driver's buffers shrank meanwhile
			p.drops++
		case placed:
			n++
		}
		p.bl.pop()
	}
	return n
}

// placeResult is what place did with a frame.
type placeResult uint8

const (
	placed      placeResult = iota // on the ring (published by the next flush)
	placeShort                     // the ring has not enough buffers now; nothing taken
	placeTooBig                    // larger than the buffers the driver posts, or a broken buffer
)

// place puts one frame on the RX ring. When the ring runs out of buffers
// part-way, the buffers taken are put back (unpopped), untouched as far
// as the driver can tell, and place reports placeShort.
func (p *poller) place(frame []byte) placeResult {
	need := p.hdrLen + len(frame)
	used := 0
	written := 0
	short := false
	// mixed: a malformed chain was returned after buffers this frame
	// took; those cannot be put back behind it (unpop puts back only
	// the chains popped last), so they go back empty.
	mixed := false
	for written < need {
		if used == len(p.rxChains) || (used > 0 && !p.merge) {
			break
		}
		c := p.rxChains[used]
		ok, err := p.rx.Pop(c)
		if err != nil {
			if errors.Is(err, ErrRingBroken) {
				p.ringBroken(2*p.qp, err)
				short = true
				break
			}
			// The malformed chain went back to the used ring with
			// length 0: publish it even if this frame is not placed.
			p.rxPending = true
			mixed = mixed || used > 0
			continue
		}
		if !ok {
			short = true
			break
		}
		used++
		off := 0
		if written == 0 {
			if w := c.writable; len(w) > 0 && len(w[0]) >= need {
				// The common case: header and frame fit the first
				// segment; num_buffers (offset 10) is 1.
				b := w[0][:need]
				clear(b[:p.hdrLen])
				if p.hdrLen == 12 {
					b[10] = 1
				}
				copy(b[p.hdrLen:], frame)
				written = need
				p.rxWritten[0] = uint32(need)
				break
			}
			// num_buffers (offset 10) is 1 when the frame fits the first
			// buffer, the common case: then the header is written once.
			var hdr [12]byte
			if p.hdrLen == 12 && int(c.WritableLen()) >= need {
				hdr[10] = 1
			}
			off = c.Scatter(hdr[:p.hdrLen], 0)
			if off < p.hdrLen {
				written = -1 // a buffer too small for the header
				break
			}
			written = off
		}
		n := c.Scatter(frame[written-p.hdrLen:], off)
		written += n
		p.rxWritten[used-1] = uint32(off + n)
	}
	if written < need {
		if short {
			// Put the buffers back for the next try, last first.
			for i := used - 1; i >= 0; i-- {
				if mixed || !p.rx.unpop(p.rxChains[i]) {
					p.rx.Push(p.rxChains[i], 0) // a resubmitted chain, or one before a malformed chain: return it empty
					p.rxPending = true
				}
			}
			return placeShort
		}
		// Too large for what the driver posts: give back what was
		// taken, empty.
		for i := 0; i < used; i++ {
			p.rx.Push(p.rxChains[i], 0)
		}
		if used > 0 {
			p.rxPending = true
		}
		return placeTooBig
	}
	if p.hdrLen == 12 && used > 1 {
		// num_buffers, little endian, at offset 10 of the first buffer.
		c := p.rxChains[0]
		var nb [2]byte
		binary.LittleEndian.PutUint16(nb[:], uint16(used))
		c.Scatter(nb[:], 10)
	}
	for i := 0; i < used; i++ {
		p.rx.Push(p.rxChains[i], p.rxWritten[i])
	}
	p.rxPending = true
	p.rxPackets++
	p.rxBytes += uint64(len(frame))
	p.copies++
	return placed
}

// quiesce waits until the poller has finished the round it is in (or is
// parked in poll(2), or stopped), so that it no longer uses what the
// control path just swapped out. It gives up at deadline.
func (p *poller) quiesce(deadline time.Time) bool {
	r0 := p.rounds.Load()
	for spins := 0; ; spins++ {
		if p.parked.Load() || p.rounds.Load() != r0 {
			return true
		}
		select {
		case <-p.done:
			return true
		default:
		}
		if time.Now().After(deadline) {
			return false
		}
		if spins < 64 {
			runtime.Gosched()
		} else {
			time.Sleep(20 * time.Microsecond)
		}
	}
}
