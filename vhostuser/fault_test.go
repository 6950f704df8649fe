package vhostuser_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
	"golang.org/x/sys/unix"
)

// setErrFDs gives every ring of fg an err eventfd and returns them.
func (f *testFrontend) setErrFDs(fg *fakeGuest) []int {
	f.t.Helper()
	var fds []int
	for _, q := range fg.vqs {
		e := newEventfd(f.t)
		f.set(vhostuser.SetVringErr, u64(uint64(q.index)), e)
		fds = append(fds, e)
	}
	return fds
}

// expectDropped checks the device dropped the frontend for want: Serve's
// error, State's failure, the failure count, and the err eventfds of the
// queue pair's rings.
func expectDropped(t *testing.T, dev *vhostuser.NetDevice, wait func() error, want error, reason string, errFDs []int) {
	t.Helper()
	err := wait()
	if !errors.Is(err, want) {
		t.Fatalf("Serve returned %v, want %v", err, want)
	}
	st := dev.State()
	if !strings.Contains(st.Failure, reason) {
		t.Errorf("State().Failure = %q, want it to say %q", st.Failure, reason)
	}
	if st.Connected || st.QueuePairs != 0 {
		t.Errorf("State after the drop: %+v", st)
	}
	if n := dev.Stats().Failures; n != 1 {
		t.Errorf("Stats().Failures = %d, want 1", n)
	}
	for i, e := range errFDs {
		if !waitEventfd(t, e, 0) {
			t.Errorf("err eventfd of ring %d not signalled", i)
		}
	}
}

// servedAgain checks that a new, well-behaved frontend is served: a TX
// frame reaches the handler, and the failure is forgotten.
func servedAgain(t *testing.T, dev *vhostuser.NetDevice, rec *recorder) {
	t.Helper()
	f, _ := serveDevice(t, dev)
	fg := newFakeGuest(t, 1)
	f.startQEMU(fg, linuxFeatures)
	fg.tx(0).post(txChain(arpRequest(9), false)...)
	if got := rec.next(t); got.frame[41] != 9 {
		t.Fatalf("new frontend: frame tag %d", got.frame[41])
	}
	if st := dev.State(); st.Failure != "" {
		t.Errorf("failure still shown with a new frontend: %q", st.Failure)
	}
}

// TestFrontendShrinksGuestMemory: a frontend truncates the memfd it handed
// over, while the port is idle or as it kicks. The daemon does not fault:
// that frontend is dropped (ErrMemoryFault), its rings' err eventfds are
// signalled, and the next frontend is served.
func TestFrontendShrinksGuestMemory(t *testing.T) {
	for _, kick := range []bool{false, true} {
		name := "idle"
		if kick {
			name = "kicked"
		}
		t.Run(name, func(t *testing.T) {
			rec := newRecorder(nil)
			dev := newNetDevice(t, 1, rec)
			f, wait := serveDevice(t, dev)
			fg := newFakeGuest(t, 1)
			f.startQEMU(fg, linuxFeatures)
			errFDs := f.setErrFDs(fg)
			fd := fg.g.DupFD(t)
			if err := unix.Ftruncate(fd, 0); err != nil {
				t.Fatal(err)
			}
			unix.Close(fd)
			// The test must not touch fg's memory from here on.
			if kick {
				writeEventfd(t, fg.tx(0).kick)
			} // idle: the sleeping poller looks at its rings within a second
			expectDropped(t, dev, wait, vhostuser.ErrMemoryFault, "guest memory", errFDs)
			servedAgain(t, dev, rec)
		})
	}
}

// TestFrontendShrinksMemoryDuringControl: the memory is cut before the
// rings start, so the control path (ring set-up reads the used index)
// faults, and the frontend is dropped the same way.
func TestFrontendShrinksMemoryDuringControl(t *testing.T) {
	rec := newRecorder(nil)
	dev := newNetDevice(t, 1, rec)
	f, wait := serveDevice(t, dev)
	fg := newFakeGuest(t, 1)
	f.negotiate(linuxFeatures, qemuProtocol)
	f.setMemTable(fg.g)
	errFDs := f.setErrFDs(fg)
	fd := fg.g.DupFD(t)
	unix.Ftruncate(fd, 0)
	unix.Close(fd)
	q := fg.tx(0)
	f.ack = false // the device hangs up instead of acking the last step
	f.setupVring(q, 0, false, stepNum, stepBase, stepAddr, stepCall, stepEnable)
	f.send(vhostuser.SetVringKick, 0, u64(uint64(q.index)), q.kick)
	expectDropped(t, dev, wait, vhostuser.ErrMemoryFault, "control path", errFDs)
	servedAgain(t, dev, rec)
}

// TestBrokenRingDropsFrontend: a driver that moves avail->idx by more
// than the queue size breaks the ring (virtio 1.1, 2.6.6); the device
// drops the frontend as for a fault, naming the ring.
func TestBrokenRingDropsFrontend(t *testing.T) {
	for _, ring := range []string{"TX", "RX"} {
		t.Run(ring, func(t *testing.T) {
			rec := newRecorder(func(_ int, frame, reply []byte) int { return arpReply(frame, reply) })
			dev := newNetDevice(t, 1, rec)
			f, wait := serveDevice(t, dev)
			fg := newFakeGuest(t, 1)
			f.startQEMU(fg, linuxFeatures)
			errFDs := f.setErrFDs(fg)
			tx, rx := fg.tx(0), fg.rx(0)
			want := "ring 1 broken"
			if ring == "RX" {
				// The reply to a TX frame finds the RX ring broken.
				rx.drv.SetAvailIdx(rx.drv.AvailIdx() + qSize + 1)
				want = "ring 0 broken"
			} else {
				tx.drv.SetAvailIdx(tx.drv.AvailIdx() + qSize + 1)
			}
			if ring == "RX" {
				tx.post(txChain(arpRequest(1), false)...)
				rec.next(t)
			} else {
				writeEventfd(t, tx.kick)
			}
			expectDropped(t, dev, wait, vhostuser.ErrRingBroken, want, errFDs)
			servedAgain(t, dev, rec)
		})
	}
}

// TestIdlePollerSleepsWithRXBuffersPosted: a guest that posted RX buffers
// and sends nothing, to a handler that originates frames (an RXSource
// with nothing pending), with and without EVENT_IDX: the poller sleeps in
// poll(2) (before, an RX ring holding buffers kept it spinning forever),
// and still wakes for a frame the source queues (Wake) and for a TX kick.
func TestIdlePollerSleepsWithRXBuffersPosted(t *testing.T) {
	for _, eventIdx := range []bool{true, false} {
		name := "EVENT_IDX"
		feat := linuxFeatures
		if !eventIdx {
			name, feat = "no EVENT_IDX", linuxFeatures&^vhostuser.Bit(vhostuser.FRingEventIdx)
		}
		t.Run(name, func(t *testing.T) {
			h := &arpResponder{genLen: 100}
			dev := newNetDevice(t, 1, h)
			f, _ := serveDevice(t, dev)
			fg := newFakeGuest(t, 1)
			f.startQEMU(fg, feat)
			rx := fg.rx(0)
			for range 16 {
				rx.post(vhostusertest.Buf{WriteLen: 1526})
			}
			eventually(t, "the idle poller sleeps in poll(2)", func() bool { return dev.PollerSleeps(0) > 0 })
			h.pending.Store(1)
			dev.Wake()
			if _, n := rx.waitUsed(); n != 100+netHdrLen {
				t.Fatalf("frame from the source: %d bytes", n)
			}
			s := dev.PollerSleeps(0)
			eventually(t, "the poller sleeps again", func() bool { return dev.PollerSleeps(0) > s })
			tx := fg.tx(0)
			tx.post(txChain(arpRequest(2), false)...)
			tx.waitUsed()
			if _, n := rx.waitUsed(); n != 42+netHdrLen {
				t.Fatalf("ARP reply: %d bytes", n)
			}
		})
	}
}
