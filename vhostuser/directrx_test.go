package vhostuser_test

import (
	"bytes"
	"encoding/binary"
	"sync"
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
	"golang.org/x/sys/unix"
)

// frameWriter is an RXWriter writing m.Args[0] bytes: m.Args[1] as a
// little-endian tag, then m.Data repeated. It counts its calls.
type frameWriter struct {
	mu    sync.Mutex
	calls int // +checklocks:mu
}

func (w *frameWriter) WriteRX(buf []byte, m vhostuser.RXMessage) int {
	w.mu.Lock()
	w.calls++
	w.mu.Unlock()
	n := int(m.Args[0])
	if n > len(buf) {
		return 0
	}
	binary.LittleEndian.PutUint64(buf, m.Args[1])
	for i := 8; i < n; i++ {
		buf[i] = m.Data[i%len(m.Data)]
	}
	return n
}

func directMsg(n int, tag uint64) vhostuser.RXMessage {
	return vhostuser.RXMessage{Args: [3]uint64{uint64(n), tag}, Data: []byte("direct")}
}

// directPort is a running device (Linux's features) with a plain handler
// and the guest driving it.
func directPort(t *testing.T, h vhostuser.FrameHandler) (*vhostuser.NetDevice, *fakeGuest, func() error) {
	t.Helper()
	dev := newNetDevice(t, 1, h)
	f, wait := serveDevice(t, dev)
	fg := newFakeGuest(t, 1)
	f.startQEMU(fg, linuxFeatures)
	return dev, fg, wait
}

// TestDeliverRXWritesIntoTheNextBuffer: the writer's frame lands in the
// guest's next RX buffer behind a virtio-net header with num_buffers 1,
// published; no buffer, or a frame larger than the buffer's first
// segment, takes nothing (RXUnavailable) and leaves the buffer to the
// next frame.
func TestDeliverRXWritesIntoTheNextBuffer(t *testing.T) {
	dev, fg, _ := directPort(t, newRecorder(nil))
	w := &frameWriter{}
	if r := dev.DeliverRX(0, w, directMsg(60, 1)); r != vhostuser.RXUnavailable {
		t.Fatalf("no RX buffer posted: %v, want RXUnavailable", r)
	}
	rx := fg.rx(0)
	_, addrs := rx.post(vhostusertest.Buf{WriteLen: 1526})
	if r := dev.DeliverRX(0, w, directMsg(1600, 2)); r != vhostuser.RXUnavailable {
		t.Fatalf("a frame larger than the buffer: %v, want RXUnavailable", r)
	}
	rx.expectNoUsed()
	if r := dev.DeliverRX(0, w, directMsg(100, 3)); r != vhostuser.RXDelivered {
		t.Fatalf("DeliverRX = %v, want RXDelivered", r)
	}
	_, n := rx.waitUsed()
	if n != netHdrLen+100 {
		t.Fatalf("used length %d, want %d", n, netHdrLen+100)
	}
	hdr, frame := rxFrame(fg, addrs[0], n)
	if numBuffers(hdr) != 1 || !bytes.Equal(hdr[:10], make([]byte, 10)) {
		t.Errorf("virtio-net header % x", hdr)
	}
	if binary.LittleEndian.Uint64(frame) != 3 {
		t.Errorf("frame tag %d, want 3 (the buffer was not kept for the frame that fit)", binary.LittleEndian.Uint64(frame))
	}
	st := dev.Stats()
	if st.GuestRXPackets != 1 || st.GuestRXBytes != 100 || st.Copies != 0 {
		t.Errorf("stats %+v: want 1 packet, 100 bytes, no device copy", st)
	}
}

// TestDeliverRXKeepsOrderBehindWaitingFrames: while the RXSource has a
// frame pending, a direct frame would overtake it: DeliverRX refuses.
func TestDeliverRXKeepsOrderBehindWaitingFrames(t *testing.T) {
	h := &arpResponder{genLen: 60}
	h.pending.Store(1)
	dev, fg, _ := directPort(t, h) // no RX buffer yet: the frame waits
	if r := dev.DeliverRX(0, &frameWriter{}, directMsg(60, 1)); r != vhostuser.RXUnavailable {
		t.Fatalf("with a source frame waiting: %v, want RXUnavailable", r)
	}
	fg.rx(0).post(vhostusertest.Buf{WriteLen: 1526})
	fg.rx(0).waitUsed() // the source's frame first
	eventually(t, "source frame taken", func() bool { return !h.PendingRX(0) })
	fg.rx(0).post(vhostusertest.Buf{WriteLen: 1526})
	if r := dev.DeliverRX(0, &frameWriter{}, directMsg(60, 1)); r != vhostuser.RXDelivered {
		t.Fatalf("after it: %v, want RXDelivered", r)
	}
}

// TestDeliverRXFromManyGoroutines: writers on several goroutines and the
// poller's own replies share the RX ring; every frame lands exactly once
// (run with -race: the ring has one producer at a time).
func TestDeliverRXFromManyGoroutines(t *testing.T) {
	const writers, each = 4, 40
	dev, fg, _ := directPort(t, newRecorder(func(_ int, frame, reply []byte) int { return arpReply(frame, reply) }))
	rx := fg.rx(0)
	bufs := map[uint32]uint64{}
	for range writers*each + 8 {
		head, addrs := rx.post(vhostusertest.Buf{WriteLen: 1526})
		bufs[uint32(head)] = addrs[0]
	}
	w := &frameWriter{}
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if r := dev.DeliverRX(0, w, directMsg(64, uint64(g*each+i+1))); r != vhostuser.RXDelivered {
					t.Errorf("writer %d frame %d: %v", g, i, r)
					return
				}
			}
		}()
	}
	fg.tx(0).post(txChain(arpRequest(7), false)...) // a reply the poller places meanwhile
	wg.Wait()
	seen := map[uint64]bool{}
	replies := 0
	for range writers*each + 1 {
		id, n := rx.waitUsed()
		_, frame := rxFrame(fg, bufs[id], n)
		if n != netHdrLen+64 {
			replies++
			continue
		}
		tag := binary.LittleEndian.Uint64(frame)
		if tag == 0 || tag > writers*each || seen[tag] {
			t.Fatalf("frame tag %d: unknown or seen twice", tag)
		}
		seen[tag] = true
	}
	if replies != 1 || len(seen) != writers*each {
		t.Errorf("%d poller replies and %d direct frames on the ring, want 1 and %d", replies, len(seen), writers*each)
	}
}

// TestDeliverRXAllocatesNothing: the direct path's per-frame work.
func TestDeliverRXAllocatesNothing(t *testing.T) {
	const runs = 100
	dev, fg, _ := directPort(t, newRecorder(nil))
	for range runs + 2 {
		fg.rx(0).post(vhostusertest.Buf{WriteLen: 1526})
	}
	w := &frameWriter{}
	m := directMsg(200, 9)
	if a := testing.AllocsPerRun(runs, func() {
		if dev.DeliverRX(0, w, m) != vhostuser.RXDelivered {
			t.Fatal("not delivered")
		}
	}); a != 0 {
		t.Errorf("DeliverRX: %v allocations per frame", a)
	}
}

// TestDeliverRXToAShrunkGuest: the receiving frontend truncates its
// memfd; a writer on another goroutine (no fault handling of its own)
// delivering to it is not harmed: DeliverRX reports RXFailed (or, had
// the receiver's own poller met the fault first, RXUnavailable), the
// receiver is dropped, the process goes on.
func TestDeliverRXToAShrunkGuest(t *testing.T) {
	rec := newRecorder(nil)
	dev := newNetDevice(t, 1, rec)
	f, wait := serveDevice(t, dev)
	fg := newFakeGuest(t, 1)
	f.startQEMU(fg, linuxFeatures)
	errFDs := f.setErrFDs(fg)
	fg.rx(0).post(vhostusertest.Buf{WriteLen: 1526})
	fd := fg.g.DupFD(t)
	if err := unix.Ftruncate(fd, 0); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	done := make(chan vhostuser.RXResult)
	go func() { done <- dev.DeliverRX(0, &frameWriter{}, directMsg(64, 1)) }()
	if r := <-done; r == vhostuser.RXDelivered {
		t.Fatal("delivered into truncated memory")
	}
	expectDropped(t, dev, wait, vhostuser.ErrMemoryFault, "guest memory", errFDs)
	servedAgain(t, dev, rec)
}

// validWriter is a frameWriter that records what DeliverRX told it.
type validWriter struct {
	frameWriter
	dataValid bool
}

func (w *validWriter) WriteRX(buf []byte, m vhostuser.RXMessage) int {
	w.dataValid = m.DataValid
	return w.frameWriter.WriteRX(buf, m)
}

// TestDeliverRXMarksDataValid: to a guest that negotiated
// VIRTIO_NET_F_GUEST_CSUM a direct frame goes marked
// VIRTIO_NET_HDR_F_DATA_VALID, and its writer is told so (it may leave
// the UDP checksum out); a guest without the feature gets an unmarked
// header and a writer told to checksum.
func TestDeliverRXMarksDataValid(t *testing.T) {
	for _, tc := range []struct {
		name  string
		feats vhostuser.Features
		valid bool
	}{
		{"GUEST_CSUM", linuxFeatures | vhostuser.Bit(vhostuser.NetFGuestCsum), true},
		{"no GUEST_CSUM", linuxFeatures, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := newNetDevice(t, 1, newRecorder(nil))
			f, _ := serveDevice(t, dev)
			fg := newFakeGuest(t, 1)
			if acked := f.startQEMU(fg, tc.feats); acked.Has(vhostuser.NetFGuestCsum) != tc.valid {
				t.Fatalf("acked %#x: GUEST_CSUM not as asked (is it offered?)", uint64(acked))
			}
			rx := fg.rx(0)
			_, addrs := rx.post(vhostusertest.Buf{WriteLen: 1526})
			w := &validWriter{}
			if r := dev.DeliverRX(0, w, directMsg(100, 1)); r != vhostuser.RXDelivered {
				t.Fatalf("DeliverRX = %v, want RXDelivered", r)
			}
			_, n := rx.waitUsed()
			hdr, _ := rxFrame(fg, addrs[0], n)
			want := byte(0)
			if tc.valid {
				want = 2 // VIRTIO_NET_HDR_F_DATA_VALID
			}
			if hdr[0] != want || w.dataValid != tc.valid {
				t.Errorf("header flags %#x, writer told DataValid %v; want %#x, %v", hdr[0], w.dataValid, want, tc.valid)
			}
			if numBuffers(hdr) != 1 || !bytes.Equal(hdr[1:10], make([]byte, 9)) {
				t.Errorf("virtio-net header % x", hdr)
			}
		})
	}
}
