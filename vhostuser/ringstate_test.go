package vhostuser_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
)

// keptPair is a packed RX and TX ring pair of a fake guest that speaks
// QEMU's virtio-net protocol: no inflight region, so the only bases it
// ever sends are the first ones (or what GET_VRING_BASE told it).
type keptPair struct {
	t       *testing.T
	g       *vhostusertest.Guest
	rx, tx  *vhostusertest.PackedDriver
	bases   [2]uint32
	kicks   [2]int
	calls   [2]int
	rec     *recorder
	posted  []uint16
	dataOff uint64
}

// newKeptPair lays out fresh rings of size at ring slot n of g (zeroed:
// a driver that starts over).
func newKeptPair(t *testing.T, g *vhostusertest.Guest, rec *recorder, n uint64, size uint16) *keptPair {
	p := &keptPair{t: t, g: g, rec: rec}
	p.rx = vhostusertest.NewPackedDriver(g, ringGPA+2*n*ringStride, size, dataGPA, dataGPA+dataStride)
	p.tx = vhostusertest.NewPackedDriver(g, ringGPA+(2*n+1)*ringStride, size, dataGPA+dataStride, dataGPA+2*dataStride)
	p.bases = [2]uint32{p.rx.Base() | p.rx.Base()<<16, p.tx.Base() | p.tx.Base()<<16}
	p.kicks = [2]int{newEventfd(t), newEventfd(t)}
	p.calls = [2]int{newEventfd(t), newEventfd(t)}
	return p
}

// connect serves dev to a QEMU-like frontend that sets the rings up with
// p.bases.
func (p *keptPair) connect(dev *vhostuser.NetDevice) (*testFrontend, func() error) {
	t := p.t
	t.Helper()
	f, wait := serveDevice(t, dev)
	if acked := f.negotiate(linuxFeatures|vhostuser.Bit(vhostuser.FRingPacked), qemuProtocol); !acked.Has(vhostuser.FRingPacked) {
		t.Fatalf("RING_PACKED not acked: %#x", uint64(acked))
	}
	f.setMemTable(p.g)
	for index, d := range []*vhostusertest.PackedDriver{p.rx, p.tx} {
		i := uint32(index)
		f.vringState(vhostuser.SetVringNum, i, uint32(d.Size))
		f.vringState(vhostuser.SetVringBase, i, p.bases[index])
		f.set(vhostuser.SetVringAddr, vhostuser.AppendVringAddr(nil, d.Addr(i, false)))
		f.set(vhostuser.SetVringKick, u64(uint64(i)), p.kicks[index])
		f.set(vhostuser.SetVringCall, u64(uint64(i)), p.calls[index])
		f.vringState(vhostuser.SetVringEnable, i, 1)
	}
	f.sync()
	return f, wait
}

// postRX posts one RX buffer.
func (p *keptPair) postRX() {
	p.rx.ResetData(dataGPA + p.dataOff%4*2048)
	p.dataOff++
	id, _ := p.rx.AddChain(vhostusertest.Buf{WriteLen: 1526})
	p.posted = append(p.posted, id)
}

// exchange sends an ARP request tagged tag and checks the device took it
// and answered into the oldest RX buffer posted.
func (p *keptPair) exchange(tag byte) {
	t := p.t
	t.Helper()
	p.postRX()
	p.tx.ResetData(dataGPA + dataStride)
	p.tx.AddChain(txChain(arpRequest(tag), tag%2 == 0)...)
	writeEventfd(t, p.kicks[1])
	if got := p.rec.next(t); got.frame[41] != tag {
		t.Fatalf("frame tag %d, want %d", got.frame[41], tag)
	}
	waitPackedUsed(t, p.tx)
	want := p.posted[0]
	p.posted = p.posted[1:]
	if id, l := waitPackedUsed(t, p.rx); id != want || l != netHdrLen+42 {
		t.Fatalf("RX used (%d, %d), want (%d, %d)", id, l, want, netHdrLen+42)
	}
}

// serve connects dev, runs enough exchanges (tagged from first) to wrap
// the rings, and lets the backend die with them running (the frontend
// hangs up: no GET_VRING_BASE). It returns dev's statistics.
func (p *keptPair) serve(dev *vhostuser.NetDevice, first byte) vhostuser.NetStats {
	p.t.Helper()
	f, wait := p.connect(dev)
	for tag := first; tag <= first+byte(p.rx.Size)+3; tag++ {
		p.exchange(tag)
	}
	st := dev.Stats()
	f.fe.Conn.Close()
	wait()
	return st
}

// TestPackedRingStateSurvivesBackendRestart: QEMU's virtio-net hands a
// vhost-user backend no inflight region, and after the backend dies it
// sets the next one's packed rings up with the only base it knows, the
// first. A device with RingState keeps each packed ring's state in a
// file, so a new device (the restarted daemon) on the same files resumes
// the rings where the dead one left them: the exchange goes on after the
// rings wrapped, the RX buffer posted before the crash is used, none
// twice. Without the kept state the new backend looks for descriptors at
// the first position, laps behind, and the first exchange times out.
//
// The state is not resumed where the rings are not the ones that ran: a
// frontend that stopped the rings (GET_VRING_BASE) and set fresh ones up
// at the same addresses, rings elsewhere (another driver or frontend), or
// a frontend other than QEMU, which resets its rings when it reconnects
// (DPDK virtio-user).
func TestPackedRingStateSurvivesBackendRestart(t *testing.T) {
	const size = 8
	undo := vhostuser.SetFrontendKeepsRings(true) // the frontend plays QEMU
	defer undo()
	prefix := filepath.Join(t.TempDir(), "port")
	rec := newRecorder(func(_ int, frame, reply []byte) int { return arpReply(frame, reply) })
	newDev := func() *vhostuser.NetDevice {
		d, err := vhostuser.NewNetDevice(vhostuser.NetOptions{QueuePairs: 1, Handler: rec, RingState: prefix})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	g := vhostusertest.NewGuest(t, guestGPA, guestUser, guestSize)
	p := newKeptPair(t, g, rec, 0, size)

	dev := newDev()
	f, wait := p.connect(dev)
	p.postRX() // one RX buffer ahead: posted, not taken, when the backend goes
	for tag := byte(1); tag <= size+3; tag++ {
		p.exchange(tag)
	}
	f.fe.Conn.Close() // the backend dies: no GET_VRING_BASE
	wait()
	for i := range 2 {
		if _, err := os.Stat(prefix + ".ring" + string(rune('0'+i))); err != nil {
			t.Fatalf("kept state of ring %d: %v", i, err)
		}
	}

	// The restarted backend, set up with the first bases.
	dev = newDev()
	f, wait = p.connect(dev)
	for tag := byte(20); tag <= 20+size+3; tag++ {
		p.exchange(tag)
	}
	rec.expectNone(t)
	if s := dev.Stats(); s.Errors != 0 {
		t.Errorf("device errors %d after the restart", s.Errors)
	}

	t.Run("stopped cleanly, then fresh rings", func(t *testing.T) {
		// The frontend stops the rings and learns their positions: then
		// it resets the device, and the driver lays fresh rings out at
		// the same addresses (a guest reboot).
		for i := uint32(0); i < 2; i++ {
			f.getVringBase(i)
		}
		f.fe.Conn.Close()
		wait()
		q := newKeptPair(t, g, rec, 0, size)
		q.t = t
		q.serve(newDev(), 40)
	})
	t.Run("rings elsewhere", func(t *testing.T) {
		// The last backend died with rings running (no GET_VRING_BASE
		// above); a frontend whose rings are elsewhere starts afresh.
		q := newKeptPair(t, g, rec, 1, size)
		q.t = t
		q.serve(newDev(), 60)
	})
	t.Run("corrupt state", func(t *testing.T) {
		// The last backend died with the rings of "rings elsewhere"
		// running; their kept regions are scribbled on. The next
		// backend refuses the state, logs it, and starts the rings from
		// the frontend's base: the frontend is served, not dropped.
		q := newKeptPair(t, g, rec, 1, size)
		q.t = t
		for i := range 2 {
			path := prefix + ".ring" + string(rune('0'+i))
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for j := 4096; j < len(b); j++ {
				b[j] = 0xa5
			}
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if s := q.serve(newDev(), 80); s.Failures != 0 {
			t.Errorf("%d failures: the frontend was dropped over the daemon's own file", s.Failures)
		}
	})
	t.Run("a frontend that resets its rings", func(t *testing.T) {
		// A QEMU-like frontend's backend dies with the rings running.
		q := newKeptPair(t, g, rec, 0, size)
		q.t = t
		q.serve(newDev(), 100)
		// Then a frontend that is not QEMU (the test process, as it is)
		// lays fresh rings out at the same addresses, as DPDK
		// virtio-user does when it reconnects: they start at its base.
		undo()
		defer vhostuser.SetFrontendKeepsRings(true) // for the subtests after
		q = newKeptPair(t, g, rec, 0, size)
		q.t = t
		q.serve(newDev(), 120)
	})
	t.Run("port removed", func(t *testing.T) {
		d := newDev()
		d.RemoveRingState()
		for i := range 2 {
			if _, err := os.Stat(prefix + ".ring" + string(rune('0'+i))); !os.IsNotExist(err) {
				t.Errorf("ring %d's file after RemoveRingState: %v", i, err)
			}
		}
	})
}
