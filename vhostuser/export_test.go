package vhostuser

import (
	"github.com/veloce-io/veloce/internal/fd"
	"golang.org/x/sys/unix"
)

// Hooks for the external tests (package vhostuser_test), which cannot live
// in this package because vhostusertest imports it.

// TestPoller drives a queue pair's per-frame work in the calling goroutine,
// without the poller's thread, so that tests can measure it.
type TestPoller struct{ p *poller }

// NewTestPoller returns a poller for queue pair qp of d over the given
// rings (either may be nil), as if the frontend had negotiated features.
// rxCall and txCall are eventfds to signal, or -1; the poller signals
// duplicates, which Close releases. d must have no frontend.
func NewTestPoller(d *NetDevice, qp int, features Features, rx, tx *SplitRing, rxCall, txCall int) *TestPoller {
	var r, t Queue
	if rx != nil {
		r = rx
	}
	if tx != nil {
		t = tx
	}
	return NewTestPollerQueues(d, qp, features, r, t, rxCall, txCall)
}

// NewTestPollerQueues is NewTestPoller over any rings of this package
// (SplitRing or PackedRing; nil for none).
func NewTestPollerQueues(d *NetDevice, qp int, features Features, rx, tx Queue, rxCall, txCall int) *TestPoller {
	d.mu.Lock()
	d.features = features
	p := newPoller(d, qp)
	d.mu.Unlock()
	if rx != nil {
		p.rx = rx.(pollRing)
	}
	if tx != nil {
		p.tx = tx.(pollRing)
	}
	p.rxCall, p.txCall = dupEventFD(rxCall), dupEventFD(txCall)
	return &TestPoller{p: p}
}

func dupEventFD(raw int) *fd.EventFD {
	if raw < 0 {
		return nil
	}
	d, err := unix.FcntlInt(uintptr(raw), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		panic(err)
	}
	f, _ := fd.New(d)
	e, err := fd.NewEventFDFrom(f)
	if err != nil {
		panic(err)
	}
	return e
}

// Close releases the duplicated call eventfds.
func (tp *TestPoller) Close() {
	tp.p.rxCall.Close()
	tp.p.txCall.Close()
}

// ProcessTX runs one TX round (frames to the handler, replies to RX) and
// publishes, as the poller's loop does.
func (tp *TestPoller) ProcessTX() int {
	n := tp.p.processTX()
	tp.p.flush()
	return n
}

// Deliver puts one frame on the RX ring and publishes.
func (tp *TestPoller) Deliver(frame []byte) {
	tp.p.deliver(frame)
	tp.p.flush()
}

// ProcessRX runs one round of the RXSource and publishes.
func (tp *TestPoller) ProcessRX() int {
	n := tp.p.processRX()
	tp.p.flush()
	return n
}

// PollerSleeps returns how many times queue pair qp's running poller went
// to sleep in poll(2), or -1 when none runs.
func (d *NetDevice) PollerSleeps(qp int) int64 {
	ps := d.running.Load()
	if ps == nil || (*ps)[qp] == nil {
		return -1
	}
	return int64((*ps)[qp].sleeps.Load())
}

// Round runs one poll round as the poller's loop does (poller.round):
// the RX backlog first, then the RXSource while nothing is backlogged,
// then TX; then it publishes. It returns the frames moved.
func (tp *TestPoller) Round() int {
	n := tp.p.round()
	tp.p.flush() // round publishes only when it moved frames
	return n
}

// Backlogged returns the frames waiting in the queue pair's RX backlog.
func (tp *TestPoller) Backlogged() int { return tp.p.bl.Len() }

// WaitsForRX reports whether the poller would ask for RX kicks before it
// sleeps.
func (tp *TestPoller) WaitsForRX() bool { return tp.p.waitsForRX() }

// RXBacklogFrames is the RX backlog's capacity in frames.
const RXBacklogFrames = rxBacklogFrames

// PollerHandle identifies queue pair qp's running poller (nil when none):
// two equal handles are the same poller, not a restarted one.
func (d *NetDevice) PollerHandle(qp int) any {
	ps := d.running.Load()
	if ps == nil || (*ps)[qp] == nil {
		return nil
	}
	return (*ps)[qp]
}

// Unpop is the poller's unpop on a ring of this package.
func Unpop(q Queue, c *Chain) bool { return q.(pollRing).unpop(c) }

// SetInflightStep makes r call step after every store to its inflight
// region that a crash could fall after, and after it makes a used batch
// visible; a step that panics is a backend dying there.
func SetInflightStep(r *PackedRing, step func()) {
	if r.inflight != nil {
		r.inflight.step = step
	}
}

// PackedInflightState is what a packed ring recovers from its region.
type PackedInflightState struct {
	Restored bool     // the region held state
	UsedIdx  uint16   // where the ring resumes returning buffers
	UsedWrap bool     // and its wrap counter
	InFlight uint16   // ring descriptors the chains to resubmit take
	Resubmit []uint16 // head entries of the chains to resubmit, oldest first
	Free     int      // entries on the free list once settled
}

// ParsePackedInflight recovers region as a packed ring of size
// descriptors starting at used position 0, wrap 1, would, with the
// ring's descriptor at the old used position published or not, and
// settles the region (writes what it found back).
func ParsePackedInflight(region []byte, size uint16, published bool) (PackedInflightState, error) {
	s, err := parsePackedInflight(region, size, func(uint16, bool) bool { return published })
	if err != nil {
		return PackedInflightState{}, err
	}
	st := PackedInflightState{Restored: s.restored, InFlight: s.inFlight, Resubmit: append([]uint16(nil), s.resubmit...)}
	s.settle(0, true)
	st.UsedIdx, st.UsedWrap = s.usedIdx, s.usedWrap
	for x := s.freeHead; x < size && st.Free <= int(size); x = s.next[x] {
		st.Free++
	}
	return st, nil
}

// PollGroupMembers returns how many pollers cpu's poll group serves (0:
// no group).
func PollGroupMembers(cpu int) int {
	pollGroups.mu.Lock()
	defer pollGroups.mu.Unlock()
	g := pollGroups.m[cpu]
	if g == nil {
		return 0
	}
	return len(*g.members.Load())
}

// SetFrontendKeepsRings makes every frontend count as one that carries
// its packed rings on across a reconnection (as QEMU does), or restores
// the real test (ringstate.go); it returns the undo.
func SetFrontendKeepsRings(all bool) func() {
	old := frontendKeepsRings
	if all {
		frontendKeepsRings = func(int) bool { return true }
	}
	return func() { frontendKeepsRings = old }
}
