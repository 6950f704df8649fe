package vhostuser_test

import (
	"bytes"
	"sync/atomic"
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
)

// arpResponder answers ARP requests and, as an RXSource, originates
// pending frames of size genLen; it allocates nothing.
type arpResponder struct {
	pending atomic.Int32 // frames FillRX still has to give
	genLen  int
}

func (h *arpResponder) HandleFrame(_ int, frame, reply []byte) int { return arpReply(frame, reply) }

func (h *arpResponder) FillRX(_ int, buf []byte) int {
	if h.pending.Load() <= 0 {
		return 0
	}
	h.pending.Add(-1)
	for i := range h.genLen {
		buf[i] = byte(i)
	}
	return h.genLen
}

func (h *arpResponder) PendingRX(int) bool { return h.pending.Load() > 0 }

var _ vhostuser.RXSource = (*arpResponder)(nil)

// TestDatapathDoesNotAllocate measures the poller's per-frame work with
// testing.AllocsPerRun, with EVENT_IDX, mergeable buffers, dirty logging
// and call eventfds on: a TX frame answered on RX (processTX), a frame
// spanning three merged RX buffers (deliver) and a frame from an RXSource
// (processRX). Each must allocate nothing.
func TestDatapathDoesNotAllocate(t *testing.T) {
	g := vhostusertest.NewGuest(t, guestGPA, guestUser, guestSize)
	mem := g.Memory(t)
	rxDrv := vhostusertest.NewDriver(g, ringGPA, qSize, dataGPA, dataGPA+dataStride)
	txDrv := vhostusertest.NewDriver(g, ringGPA+ringStride, qSize, dataGPA+dataStride, dataGPA+2*dataStride)
	pages := uint64(guestGPA+guestSize) / vhostuser.LogPageSize
	log, _ := newLog(t, (pages+7)/8, 0)
	ring := func(d *vhostusertest.Driver, index uint32) *vhostuser.SplitRing {
		r, err := vhostuser.NewSplitRing(mem, vhostuser.SplitRingOptions{
			Size: qSize, Addr: d.Addr(index, true), EventIdx: true, IndirectDesc: true, Log: log,
		})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	h := &arpResponder{genLen: 900}
	dev := newNetDevice(t, 1, h)
	tp := vhostuser.NewTestPoller(dev, 0, linuxFeatures|vhostuser.Bit(vhostuser.FLogAll), ring(rxDrv, 0), ring(txDrv, 1), newEventfd(t), newEventfd(t))
	t.Cleanup(tp.Close)

	// Fixed buffers: TX descriptor 0 holds header and ARP request; RX
	// descriptors 0-3 are 512-byte receive buffers.
	txDrv.SetDesc(0, dataGPA+dataStride, netHdrLen+42, 0, 0)
	copy(g.Bytes(dataGPA+dataStride+netHdrLen, 42), arpRequest(1))
	for i := range uint16(4) {
		rxDrv.SetDesc(i, dataGPA+uint64(i)*512, 512, vhostuser.DescFWrite, 0)
	}
	big := bytes.Repeat([]byte{0xab}, 1400)
	reclaim := func(d *vhostusertest.Driver, want int) {
		for i := range want {
			if _, _, ok := d.Used(); !ok {
				t.Fatalf("used entry %d of %d missing", i, want)
			}
		}
		if _, _, ok := d.Used(); ok {
			t.Fatal("unexpected used entry")
		}
	}
	tests := []struct {
		name  string
		round func()
	}{
		{"processTX with a reply", func() {
			rxDrv.Offer(0)
			txDrv.Offer(0)
			if n := tp.ProcessTX(); n != 1 {
				t.Fatalf("ProcessTX = %d", n)
			}
			reclaim(txDrv, 1)
			reclaim(rxDrv, 1)
		}},
		{"deliver over merged buffers", func() {
			rxDrv.Offer(1)
			rxDrv.Offer(2)
			rxDrv.Offer(3)
			tp.Deliver(big)
			reclaim(rxDrv, 3)
		}},
		{"processRX from an RXSource", func() {
			h.pending.Store(1)
			rxDrv.Offer(1)
			rxDrv.Offer(2)
			if n := tp.ProcessRX(); n != 1 {
				t.Fatalf("ProcessRX = %d", n)
			}
			reclaim(rxDrv, 2)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if allocs := testing.AllocsPerRun(500, tc.round); allocs != 0 {
				t.Errorf("%v allocations per frame, want 0", allocs)
			}
		})
	}
	if s := dev.Stats(); s.Drops != 0 || s.Errors != 0 {
		t.Errorf("Stats = %+v", s)
	}
	if !log.IsMarked(dataGPA) || !log.IsMarked(rxDrv.UsedGPA) {
		t.Error("RX writes were not logged")
	}
}

// TestPollerSleepsUntilKicked checks the poller's back-off: once idle it
// asks for kicks (clears VIRTQ_USED_F_NO_NOTIFY, without EVENT_IDX) and
// sleeps on the kick eventfd, and a driver that kicks only when asked to
// still gets every frame through.
func TestPollerSleepsUntilKicked(t *testing.T) {
	rec := newRecorder(nil)
	dev := newNetDevice(t, 1, rec)
	f, _ := serveDevice(t, dev)
	fg := newFakeGuest(t, 1)
	f.startQEMU(fg, linuxFeatures&^vhostuser.Bit(vhostuser.FRingEventIdx))
	tx := fg.tx(0)
	for tag := byte(1); tag <= 3; tag++ {
		eventually(t, "poller asks for kicks", func() bool { return tx.drv.UsedFlags()&vhostuser.UsedFNoNotify == 0 })
		tx.post(txChain(arpRequest(tag), false)...)
		if got := rec.next(t); got.frame[41] != tag {
			t.Fatalf("frame tag %d, want %d", got.frame[41], tag)
		}
		tx.waitUsed()
	}
}

// greeter is a FrameHandler that is also an Announcer.
type greeter struct {
	*recorder
	announced atomic.Int32
}

func (g *greeter) Announce(_ int, buf []byte) int {
	g.announced.Add(1)
	return copy(buf, arpRequest(1)) // stands in for a gratuitous ARP
}

// TestAnnouncerGreetsOncePerConnection checks that the Announcer's frame
// is delivered once the RX ring has a buffer, once per frontend
// connection (not again when a ring restarts), and again after a
// reconnect.
func TestAnnouncerGreetsOncePerConnection(t *testing.T) {
	h := &greeter{recorder: newRecorder(nil)}
	dev := newNetDevice(t, 1, h)
	for conn := 1; conn <= 2; conn++ {
		f, _ := serveDevice(t, dev)
		fg := newFakeGuest(t, 1)
		f.startQEMU(fg, linuxFeatures)
		rx := fg.rx(0)
		_, addrs := rx.post(vhostusertest.Buf{WriteLen: 1526})
		_, n := rx.waitUsed()
		if _, frame := rxFrame(fg, addrs[0], n); !bytes.Equal(frame, arpRequest(1)) {
			t.Fatalf("connection %d: announcement %x", conn, frame)
		}
		// A ring restart (GET_VRING_BASE, then start again) does not
		// announce again.
		base := f.getVringBase(rx.index)
		f.setupVring(rx, uint16(base), false, qemuOrder...)
		rx.post(vhostusertest.Buf{WriteLen: 1526})
		f.sync()
		rx.expectNoUsed()
		if got := h.announced.Load(); got != int32(conn) {
			t.Fatalf("connection %d: Announce called %d times", conn, got)
		}
		f.fe.Conn.Close()
		eventually(t, "device sees the hang-up", func() bool { return !dev.State().Connected })
	}
}

// TestRXSourceFillsPostedBuffers checks that frames an RXSource originates
// reach the guest as buffers become available, spanning merged buffers
// when large, and that NetDevice.Wake restarts a source that ran dry.
func TestRXSourceFillsPostedBuffers(t *testing.T) {
	h := &arpResponder{genLen: 3000}
	dev := newNetDevice(t, 1, h)
	f, _ := serveDevice(t, dev)
	fg := newFakeGuest(t, 1)
	f.startQEMU(fg, linuxFeatures)
	rx := fg.rx(0)
	for range 8 {
		rx.post(vhostusertest.Buf{WriteLen: 1024})
	}
	h.pending.Store(2)
	dev.Wake()
	// Two frames of 3000 bytes (+12 header) take 3 buffers each.
	for i := range 6 {
		if _, n := rx.waitUsed(); n == 0 {
			t.Fatalf("buffer %d unused", i)
		}
	}
	f.sync()
	rx.expectNoUsed()
	// Two 1024-byte buffers are left: not enough for 3012 bytes. With a
	// third posted, the next frame fits.
	rx.post(vhostusertest.Buf{WriteLen: 1024})
	h.pending.Store(1)
	dev.Wake()
	for range 3 {
		rx.waitUsed()
	}
	if s := dev.Stats(); s.GuestRXPackets != 3 || s.GuestRXBytes != 9000 || s.Drops != 0 {
		t.Errorf("Stats = %+v", s)
	}
}
