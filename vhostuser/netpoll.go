package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"

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

	rx, tx                 *SplitRing
	rxKick, txKick         int
	rxCall, txCall         int
	wake                   int // eventfd: stop requests
	stopping               atomic.Bool
	done                   chan struct{}
	txChain                *Chain
	rxChains               [maxMerge]*Chain
	rxWritten              [maxMerge]uint32
	linear                 []byte // a TX frame gathered from several segments
	reply                  []byte
	pollFDs                []unix.PollFd
	errorsAtStop           uint64
	rxPending, txPublished bool
}

func newPoller(d *NetDevice, qp int) *poller {
	p := &poller{
		dev: d, qp: qp, hdrLen: d.netHeaderLenLocked(), merge: d.features.Has(NetFMrgRxbuf),
		rxKick: -1, txKick: -1, rxCall: -1, txCall: -1, wake: -1,
		done:    make(chan struct{}),
		txChain: NewChain(maxSegments),
		linear:  make([]byte, 65536+64),
		reply:   make([]byte, replyCap),
	}
	for i := range p.rxChains {
		p.rxChains[i] = NewChain(maxSegments)
	}
	return p
}

func (p *poller) start() error {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("start queue pair %d: eventfd: %w", p.qp, err)
	}
	p.wake = fd
	p.pollFDs = []unix.PollFd{{Fd: int32(p.wake), Events: unix.POLLIN}}
	if p.txKick >= 0 {
		p.pollFDs = append(p.pollFDs, unix.PollFd{Fd: int32(p.txKick), Events: unix.POLLIN})
	}
	go p.run()
	return nil
}

// stop asks the poller to finish its round and waits for it.
func (p *poller) stop() {
	p.stopping.Store(true)
	signal(p.wake)
	<-p.done
	unix.Close(p.wake)
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
	defer runtime.UnlockOSThread()
	defer close(p.done)
	if p.tx == nil {
		// An RX-only pair has nothing to do until frames are injected.
		p.sleep()
		for !p.stopping.Load() {
			p.sleep()
		}
		return
	}
	p.tx.DisableNotifications()
	idle := 0
	for !p.stopping.Load() {
		if n := p.processTX(); n > 0 {
			idle = 0
			continue
		}
		idle++
		if idle < spinRounds {
			if idle%64 == 0 {
				runtime.Gosched()
			}
			continue
		}
		// Going to sleep: ask for kicks, then look once more, since a
		// buffer posted before the driver saw the request is not kicked.
		if p.tx.EnableNotifications() {
			p.tx.DisableNotifications()
			idle = 0
			continue
		}
		p.sleep()
		p.tx.DisableNotifications()
		idle = 0
	}
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
	for _, pfd := range p.pollFDs {
		if pfd.Revents&unix.POLLIN != 0 {
			drain(int(pfd.Fd))
		}
	}
}

// processTX handles up to txBurst frames and returns how many it took.
func (p *poller) processTX() int {
	st := &p.dev.stats
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
			st.errors.Add(1)
			p.tx.Push(p.txChain, 0)
			continue
		}
		st.txPackets.Add(1)
		st.txBytes.Add(uint64(len(frame)))
		rn := p.dev.opts.Handler.HandleFrame(p.qp, frame, p.reply)
		p.tx.Push(p.txChain, 0)
		if rn > 0 {
			p.deliver(p.reply[:rn])
		}
	}
	if n > 0 {
		p.tx.Publish()
		if p.tx.NeedsNotify() {
			signal(p.txCall)
		}
		if p.rxPending {
			p.rxPending = false
			p.rx.Publish()
			if p.rx.NeedsNotify() {
				signal(p.rxCall)
			}
		}
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
	st := &p.dev.stats
	if p.rx == nil {
		st.drops.Add(1)
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
			continue
		}
		if !ok {
			break
		}
		used++
		off := 0
		if written == 0 {
			var hdr [12]byte
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
		st.drops.Add(1)
		return
	}
	if p.hdrLen == 12 {
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
	st.rxPackets.Add(1)
	st.rxBytes.Add(uint64(len(frame)))
}

var one = [8]byte{1}

// signal writes 1 to an eventfd (a call or the wake fd); -1 is ignored.
func signal(fd int) {
	if fd >= 0 {
		unix.Write(fd, one[:])
	}
}

// drain empties an eventfd.
func drain(fd int) {
	var b [8]byte
	unix.Read(fd, b[:])
}
