package vhostuser

import (
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
)

// Direct RX: another thread writes a frame straight into the guest.
//
// A queue pair's poller is the RX ring's producer: it places replies,
// announcements, backlogged frames and its RXSource's frames. A frame
// built elsewhere (a message another VM's poller took off that VM's TX
// ring, or one from a host application's slot) would otherwise be copied
// into a queue for the RXSource, copied out of it by FillRX, and copied
// again into the RX buffer. NetDevice.DeliverRX instead hands the caller
// the guest's next RX buffer, and the caller builds the frame in it: one
// copy of the payload, from wherever it was, into the guest.
//
// The RX side of a queue has one producer at a time: every producer, the
// queue pair's own poller included, holds the queue pair's rxProducer
// lock while it pops, fills, pushes or publishes RX buffers. The poller
// takes it only in rounds with RX work (something pending for the guest,
// a reply, a publication), never around the FrameHandler, which may itself
// deliver to this same device (a VM's source and sink on one port). A
// direct frame never overtakes one that waits: while the poller has a
// backlog, or its RXSource reports a frame pending, DeliverRX refuses and
// the caller queues behind them.
//
// Faults: DeliverRX writes the receiving guest's memory from the caller's
// thread. A fault there (the receiver shrank its memfd) drops the
// receiver's frontend, as one on its own poller would, and DeliverRX
// reports RXFailed; the caller is unharmed. A fault on any other memory
// (the payload, a view into the sending guest's TX buffer) is not the
// receiver's: it goes on to the caller's own recovery (the sender's
// poller drops the sender).
//
// The rxProducer outlives pollers: it belongs to the device, one per queue
// pair. The control path clears its poller (under the lock) before it
// stops one, and takes the lock when it waits for rings to move past a
// dirty log it replaced (quiesceLocked), so no direct writer uses a ring
// or a log that is gone.

// RXWriter builds one frame in a guest's RX buffer (NetDevice.DeliverRX).
type RXWriter interface {
	// WriteRX writes the whole Ethernet frame for m at the start of buf
	// (guest memory: the RX buffer after the virtio-net header) and
	// returns its length, or 0 when it does not fit (nothing is delivered
	// then). buf is shared with the guest: WriteRX must not trust what it
	// reads back from it.
	WriteRX(buf []byte, m RXMessage) int
}

// RXMessage is what an RXWriter builds one frame from; its meaning is the
// writer's. It is passed by value, so that DeliverRX allocates nothing for
// it whatever the caller's goroutine (a long-lived writer, such as the
// device's owner, and a per-call message).
type RXMessage struct {
	Ref  any       // a pointer the writer knows
	Args [3]uint64 // the writer's
	Data []byte    // the payload (read by the writer, never by DeliverRX)
	// DataValid is set by DeliverRX, not the caller: the guest negotiated
	// VIRTIO_NET_F_GUEST_CSUM, and the frame goes to it marked
	// VIRTIO_NET_HDR_F_DATA_VALID (its checksums need no verifying, as
	// vhost-net and DPDK's vhost mark what they checked or built). The
	// writer may then leave the UDP checksum out (0: none, in IPv4). A
	// guest without the feature gets no mark: checksum its frames.
	DataValid bool
}

// netHdrFDataValid is VIRTIO_NET_HDR_F_DATA_VALID, in the virtio-net
// header's flags (its first byte).
const netHdrFDataValid = 2

// RXResult is what DeliverRX did.
type RXResult uint8

const (
	// RXDelivered: the frame is on the guest's RX ring, published.
	RXDelivered RXResult = iota
	// RXUnavailable: nothing was taken. The queue pair's RX ring is not
	// running, frames wait ahead (backlog, RXSource), the guest has no
	// buffer posted, or the frame did not fit the next buffer's first
	// segment: queue it the ordinary way (RXSource).
	RXUnavailable
	// RXFailed: the guest broke its RX ring or faulted its memory; its
	// frontend is being dropped.
	RXFailed
)

// rxProducer serializes the producers of one queue pair's RX ring.
type rxProducer struct {
	mu sync.Mutex
	// p is the running poller whose RX ring this is; nil when none.
	p *poller // +checklocks:mu
	// chain receives the buffer DeliverRX pops.
	chain *Chain // +checklocks:mu
	// dataValid: p's guest negotiated VIRTIO_NET_F_GUEST_CSUM
	// (RXMessage.DataValid).
	dataValid bool // +checklocks:mu
}

func newRXProducer() *rxProducer { return &rxProducer{chain: NewChain(maxSegments)} }

// setPoller makes p (nil: none) the ring's poller, once no producer is
// in the middle of a frame.
//
// +checklocksignore: both callers hold p.dev.mu (the features it reads
// are the control path's), which the analyzer cannot see through p.
func (q *rxProducer) setPoller(p *poller) {
	q.mu.Lock()
	q.p = p
	q.dataValid = p != nil && p.dev.features.Has(NetFGuestCsum)
	q.mu.Unlock()
}

// DeliverRX has w build one frame straight into the next RX buffer of
// queue pair qp, and publishes it (notifying the guest where it asked).
// It may be called from any goroutine; it does not allocate. It reports
// RXUnavailable, having taken nothing, whenever the frame should go the
// ordinary way instead (see RXUnavailable), and RXFailed when the guest
// broke its ring or memory on the way.
//
// +checklocksignore: q.mu is released on the normal path or, after a
// fault, by the deferred recovery; the analyzer follows neither through
// recover.
func (d *NetDevice) DeliverRX(qp int, w RXWriter, m RXMessage) (res RXResult) {
	if qp < 0 || qp >= len(d.rxq) {
		return RXUnavailable
	}
	q := d.rxq[qp]
	q.mu.Lock()
	p := q.p
	if p == nil || p.rx == nil || p.stopping.Load() || p.bl.n > 0 || (p.src != nil && p.src.PendingRX(qp)) {
		q.mu.Unlock()
		return RXUnavailable
	}
	prev := debug.SetPanicOnFault(true)
	defer func() {
		v := recover()
		debug.SetPanicOnFault(prev)
		if v == nil {
			return
		}
		q.mu.Unlock()
		// Not the receiver's memory: the caller's fault, for the
		// caller's recovery (faultFrom re-panics).
		f := faultFrom(v, fmt.Sprintf("queue pair %d, direct RX", qp), p.maps, mappings{dirty: d.logNow.Load()})
		p.stopping.Store(true)
		d.fail(qp, fmt.Errorf("queue pair %d: %w", qp, f))
		res = RXFailed
	}()
	res = d.deliverLocked(q, p, w, &m)
	q.mu.Unlock()
	return res
}

// deliverLocked is DeliverRX's work under q.mu.
// +checklocks:q.mu
func (d *NetDevice) deliverLocked(q *rxProducer, p *poller, w RXWriter, m *RXMessage) RXResult {
	c := q.chain
	for tries := 0; ; tries++ {
		ok, err := p.rx.Pop(c)
		if err == nil {
			if !ok {
				return RXUnavailable
			}
			break
		}
		if errors.Is(err, ErrRingBroken) {
			p.ringBroken(2*p.qp, err)
			return RXFailed
		}
		// A malformed chain went back to the used ring, empty: publish
		// it, and try the next one (a bounded number: the ring's size
		// is the most a driver can have posted).
		p.rx.Publish()
		if tries >= 1<<15 {
			return RXUnavailable
		}
	}
	hdr := p.hdrLen
	var buf []byte
	if wr := c.writable; len(wr) > 0 {
		buf = wr[0]
	}
	n := 0
	if len(buf) > hdr {
		m.DataValid = q.dataValid
		n = w.WriteRX(buf[hdr:], *m)
	}
	if n <= 0 || n > len(buf)-hdr {
		// The frame does not fit the first segment: put the buffer back,
		// untouched as far as the driver can tell (the writer wrote into
		// a buffer it still owns), for the ordinary path.
		if !p.rx.unpop(c) {
			p.rx.Push(c, 0)
			p.rx.Publish()
		}
		return RXUnavailable
	}
	clear(buf[:hdr])
	if q.dataValid {
		buf[0] = netHdrFDataValid
	}
	if hdr == 12 {
		buf[10] = 1 // num_buffers
	}
	p.rx.Push(c, uint32(hdr+n))
	p.rx.Publish()
	if p.rx.NeedsNotify() {
		p.rxCall.Signal()
	}
	d.stats.rxPackets.Add(1)
	d.stats.rxBytes.Add(uint64(n))
	return RXDelivered
}
