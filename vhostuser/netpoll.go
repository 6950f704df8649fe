package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"

	"github.com/veloce-io/veloce/internal/fd"
	"golang.org/x/sys/unix"
)

// Poller tuning. An idle poller spins (yielding the processor) for
// spinRounds empty rounds, then re-enables guest notifications and sleeps
// on the kick eventfd: an idle port costs no CPU, a busy one no syscalls.
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

	rx, tx *SplitRing
	// The rings' kick and call eventfds, borrowed from the device's
	// vrings (nil when none): the device stops the poller before it
	// closes or replaces them.
	rxKick, txKick         *fd.EventFD
	rxCall, txCall         *fd.EventFD
	wake                   *fd.EventFD   // owned: stop requests and NetDevice.Wake
	pollEvs                []*fd.EventFD // the eventfd of each pollFDs entry
	stopping               atomic.Bool
	sleeping               atomic.Bool // in (or about to enter) poll(2); NetDevice.Wake signals only then
	done                   chan struct{}
	txChain                *Chain
	rxChains               [maxMerge]*Chain
	rxWritten              [maxMerge]uint32
	linear                 []byte // a TX frame gathered from several segments
	reply                  []byte
	pollFDs                []unix.PollFd
	errorsAtStop           uint64
	rxPending, txPublished bool
	// Counters of the current round, added to the device's once per
	// round (flush): atomics per frame stall on the frame's cache misses.
	txPackets, txBytes, rxPackets, rxBytes, drops, errs uint64
	src                                                 RXSource  // the handler, when it originates frames
	announcer                                           Announcer // the handler, until it has announced
	gen                                                 []byte    // frame buffer for src
}

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
	if p.waitsForRX() {
		p.watch(p.rxKick)
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
	if cpus := p.dev.opts.PollCPUs; len(cpus) > 0 {
		var set unix.CPUSet
		set.Set(cpus[p.qp%len(cpus)])
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			p.dev.log.Warn("cannot pin polling thread", "queue_pair", p.qp, "cpu", cpus[p.qp%len(cpus)], "err", err)
		}
		// The thread's affinity is changed for good: let it die with the
		// goroutine instead of returning it to the runtime's pool.
	} else {
		defer runtime.UnlockOSThread()
	}
	p.disableNotifications()
	idle := 0
	for !p.stopping.Load() {
		n := 0
		if p.announcer != nil && p.rx.Pending() > 0 {
			p.announce()
		}
		if p.tx != nil {
			n += p.processTX()
		}
		if p.src != nil && p.rx != nil {
			n += p.processRX()
		}
		if n > 0 {
			p.flush()
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
		// and a source's frame queued before it saw sleeping is not woken.
		p.sleeping.Store(true)
		if p.enableNotifications() || (p.src != nil && p.rx != nil && p.src.PendingRX(p.qp)) {
			p.sleeping.Store(false)
			p.disableNotifications()
			idle = 0
			continue
		}
		p.sleep()
		p.sleeping.Store(false)
		p.disableNotifications()
		idle = 0
	}
}

// announce delivers the Announcer's frame, once per frontend connection.
func (p *poller) announce() {
	if n := p.announcer.Announce(p.qp, p.reply); n > 0 {
		p.deliver(p.reply[:n])
		p.flush()
	}
	p.dev.announced[p.qp].Store(true)
	p.announcer = nil
}

// waitsForRX says whether the poller needs the guest's RX kicks: a source
// or an announcement waits for buffers.
func (p *poller) waitsForRX() bool {
	return p.rx != nil && (p.src != nil || p.announcer != nil)
}

// The rings whose kicks wake the poller: TX always, RX when something
// waits for the guest's buffers.
func (p *poller) enableNotifications() (pending bool) {
	if p.tx != nil && p.tx.EnableNotifications() {
		pending = true
	}
	if p.waitsForRX() && p.rx.EnableNotifications() {
		pending = true
	}
	return pending
}

func (p *poller) disableNotifications() {
	if p.tx != nil {
		p.tx.DisableNotifications()
	}
	if p.waitsForRX() {
		p.rx.DisableNotifications()
	}
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
		p.rx.Publish()
		if p.rx.NeedsNotify() {
			p.rxCall.Signal()
		}
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

// sleep waits for a kick or a stop request.
func (p *poller) sleep() {
	for i := range p.pollFDs {
		p.pollFDs[i].Revents = 0
	}
	_, err := unix.Poll(p.pollFDs, sleepTimeoutM)
	if err != nil && !errors.Is(err, unix.EINTR) {
		return
	}
	for i, pfd := range p.pollFDs {
		if pfd.Revents&unix.POLLIN != 0 {
			p.pollEvs[i].Drain()
		}
	}
}

// processTX handles up to txBurst frames and returns how many it took.
func (p *poller) processTX() int {
	n := 0
	for n < txBurst {
		ok, err := p.tx.Pop(p.txChain)
		if err != nil {
			if errors.Is(err, ErrRingBroken) {
				p.stopping.Store(true)
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
			p.deliver(p.reply[:rn])
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
	return p.linear[p.hdrLen:total]
}

// deliver puts one frame on the RX ring, spanning several buffers when the
// driver negotiated mergeable RX buffers. Publication is batched by the
// caller.
func (p *poller) deliver(frame []byte) {
	if p.rx == nil {
		p.drops++
		return
	}
	need := p.hdrLen + len(frame)
	used := 0
	written := 0
	for written < need {
		if used == len(p.rxChains) || (used > 0 && !p.merge) {
			break
		}
		c := p.rxChains[used]
		ok, err := p.rx.Pop(c)
		if err != nil {
			if errors.Is(err, ErrRingBroken) {
				break
			}
			// The malformed chain went back to the used ring with
			// length 0: publish it even if this frame is dropped.
			p.rxPending = true
			continue
		}
		if !ok {
			break
		}
		used++
		off := 0
		if written == 0 {
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
		// Not enough buffers: give back what was taken, empty.
		for i := 0; i < used; i++ {
			p.rx.Push(p.rxChains[i], 0)
		}
		if used > 0 {
			p.rxPending = true
		}
		p.drops++
		return
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
}
