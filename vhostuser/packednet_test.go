package vhostuser_test

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
	"golang.org/x/sys/unix"
)

// waitPackedUsed waits for the driver's next used descriptor.
func waitPackedUsed(t *testing.T, d *vhostusertest.PackedDriver) (uint16, uint32) {
	t.Helper()
	for deadline := time.Now().Add(waitFor); ; time.Sleep(time.Millisecond) {
		if id, l, ok := d.Used(); ok {
			return id, l
		}
		if time.Now().After(deadline) {
			t.Fatalf("no used descriptor within %v", waitFor)
		}
	}
}

// TestPackedDeviceStopsAndResumes negotiates RING_PACKED as QEMU does
// (packed=on), runs an ARP exchange over packed TX and RX rings, stops
// them with GET_VRING_BASE (positions and wrap counters in both halves,
// as QEMU reads them) and resumes from those bases; GET_INFLIGHT_FD
// hands out a region laid out for packed queues.
func TestPackedDeviceStopsAndResumes(t *testing.T) {
	rec := newRecorder(func(_ int, frame, reply []byte) int { return arpReply(frame, reply) })
	dev := newNetDevice(t, 1, rec)
	f, _ := serveDevice(t, dev)
	g := vhostusertest.NewGuest(t, guestGPA, guestUser, guestSize)
	const size = 8 // small: the exchange below wraps both rings
	rx := vhostusertest.NewPackedDriver(g, ringGPA, size, dataGPA, dataGPA+dataStride)
	tx := vhostusertest.NewPackedDriver(g, ringGPA+ringStride, size, dataGPA+dataStride, dataGPA+2*dataStride)
	acked := f.negotiate(linuxFeatures|vhostuser.Bit(vhostuser.FRingPacked), qemuProtocol)
	if !acked.Has(vhostuser.FRingPacked) {
		t.Fatalf("RING_PACKED not offered: %#x", uint64(acked))
	}
	f.setMemTable(g)
	kicks := [2]int{newEventfd(t), newEventfd(t)}
	calls := [2]int{newEventfd(t), newEventfd(t)}
	start := func(index uint32, d *vhostusertest.PackedDriver, base uint32) {
		f.vringState(vhostuser.SetVringNum, index, size)
		f.vringState(vhostuser.SetVringBase, index, base)
		f.set(vhostuser.SetVringAddr, vhostuser.AppendVringAddr(nil, d.Addr(index, false)))
		f.set(vhostuser.SetVringKick, u64(uint64(index)), kicks[index])
		f.set(vhostuser.SetVringCall, u64(uint64(index)), calls[index])
		f.vringState(vhostuser.SetVringEnable, index, 1)
	}
	// QEMU's first SET_VRING_BASE of a packed ring: index 0, wrap 1, in
	// both halves.
	start(0, rx, rx.Base()|rx.Base()<<16)
	start(1, tx, tx.Base()|tx.Base()<<16)
	f.sync()
	exchange := func(tag byte) {
		t.Helper()
		rx.ResetData(dataGPA)
		tx.ResetData(dataGPA + dataStride)
		rxID, addrs := rx.AddChain(vhostusertest.Buf{WriteLen: 1526})
		tx.AddChain(txChain(arpRequest(tag), tag%2 == 0)...)
		writeEventfd(t, kicks[1])
		if got := rec.next(t); got.frame[41] != tag {
			t.Fatalf("frame tag %d, want %d", got.frame[41], tag)
		}
		waitPackedUsed(t, tx)
		id, l := waitPackedUsed(t, rx)
		if id != rxID || l != netHdrLen+42 {
			t.Fatalf("RX used (%d, %d), want (%d, %d)", id, l, rxID, netHdrLen+42)
		}
		reply := g.Bytes(addrs[0]+netHdrLen, 42)
		if reply[21] != 2 { // ARP opcode 2: a reply
			t.Fatalf("RX frame is not an ARP reply: %x", reply)
		}
	}
	for tag := byte(1); tag <= 2*size+3; tag++ {
		exchange(tag)
	}
	wantTX := tx.Base() | tx.Base()<<16
	if base := f.getVringBase(1); base != wantTX {
		t.Errorf("GET_VRING_BASE(TX) = %#x, want %#x", base, wantTX)
	}
	wantRX := rx.Base() | rx.Base()<<16
	if base := f.getVringBase(0); base != wantRX {
		t.Errorf("GET_VRING_BASE(RX) = %#x, want %#x", base, wantRX)
	}
	// Stopped: a posted frame is not taken.
	tx.AddChain(txChain(arpRequest(100), false)...)
	writeEventfd(t, kicks[1])
	f.sync()
	rec.expectNone(t)
	// Resume from the bases: the frame waiting is taken, the exchange
	// goes on.
	start(1, tx, wantTX)
	start(0, rx, wantRX)
	if got := rec.next(t); got.frame[41] != 100 {
		t.Fatalf("after restart: frame tag %d, want 100", got.frame[41])
	}
	waitPackedUsed(t, tx)
	exchange(101)

	// GET_INFLIGHT_FD on a packed device: a region laid out for packed
	// queues; the rings restart on it where they were, and go on.
	f.send(vhostuser.GetInflightFD, 0, vhostuser.AppendInflight(nil, vhostuser.Inflight{NumQueues: 2, QueueSize: size}))
	r := f.reply(vhostuser.GetInflightFD)
	if len(r.Payload) < 8 || binary.LittleEndian.Uint64(r.Payload) != 2*vhostuser.InflightQueueSizePacked(size) || len(r.FDs) != 1 {
		t.Fatalf("GET_INFLIGHT_FD on a packed device: payload %x, %d fds", r.Payload, len(r.FDs))
	}
	exchange(102)
	if s := dev.Stats(); s.Errors != 0 {
		t.Errorf("device errors %d", s.Errors)
	}
}

// TestPackedDatapathDoesNotAllocate is TestDatapathDoesNotAllocate over
// packed rings: a TX frame answered on RX, and a frame spanning three
// merged RX buffers, allocate nothing.
func TestPackedDatapathDoesNotAllocate(t *testing.T) {
	g := vhostusertest.NewGuest(t, guestGPA, guestUser, guestSize)
	mem := g.Memory(t)
	rxDrv := vhostusertest.NewPackedDriver(g, ringGPA, qSize, dataGPA, dataGPA+dataStride)
	txDrv := vhostusertest.NewPackedDriver(g, ringGPA+ringStride, qSize, dataGPA+dataStride, dataGPA+2*dataStride)
	pages := uint64(guestGPA+guestSize) / vhostuser.LogPageSize
	log, _ := newLog(t, (pages+7)/8, 0)
	ring := func(d *vhostusertest.PackedDriver, index uint32) *vhostuser.PackedRing {
		r, err := vhostuser.NewPackedRing(mem, vhostuser.PackedRingOptions{
			Size: qSize, Addr: d.Addr(index, true), Base: d.Base(), EventIdx: true, IndirectDesc: true, Log: log,
		})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	h := &arpResponder{genLen: 900}
	dev := newNetDevice(t, 1, h)
	features := linuxFeatures | vhostuser.Bit(vhostuser.FLogAll) | vhostuser.Bit(vhostuser.FRingPacked)
	tp := vhostuser.NewTestPollerQueues(dev, 0, features, ring(rxDrv, 0), ring(txDrv, 1), newEventfd(t), newEventfd(t))
	t.Cleanup(tp.Close)
	txBuf := uint64(dataGPA + dataStride)
	copy(g.Bytes(txBuf+netHdrLen, 42), arpRequest(1))
	rxBuf := func(i uint64) vhostusertest.PackedDesc {
		return vhostusertest.PackedDesc{Addr: dataGPA + i*512, Len: 512, ID: uint16(i), Flags: vhostuser.DescFWrite}
	}
	reclaim := func(d *vhostusertest.PackedDriver, want int) {
		for i := range want {
			if _, _, ok := d.Used(); !ok {
				t.Fatalf("used descriptor %d of %d missing", i, want)
			}
		}
		if _, _, ok := d.Used(); ok {
			t.Fatal("unexpected used descriptor")
		}
	}
	big := bytes.Repeat([]byte{0xab}, 1400)
	tests := []struct {
		name  string
		round func()
	}{
		{"processTX with a reply", func() {
			rxDrv.AddRaw(rxBuf(0))
			txDrv.AddRaw(vhostusertest.PackedDesc{Addr: txBuf, Len: netHdrLen + 42})
			if n := tp.ProcessTX(); n != 1 {
				t.Fatalf("ProcessTX = %d", n)
			}
			reclaim(txDrv, 1)
			reclaim(rxDrv, 1)
		}},
		{"deliver over merged buffers", func() {
			rxDrv.AddRaw(rxBuf(1))
			rxDrv.AddRaw(rxBuf(2))
			rxDrv.AddRaw(rxBuf(3))
			tp.Deliver(big)
			reclaim(rxDrv, 3)
		}},
		{"processRX from an RXSource", func() {
			h.pending.Store(1)
			rxDrv.AddRaw(rxBuf(1))
			rxDrv.AddRaw(rxBuf(2))
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
	if !log.IsMarked(dataGPA) || !log.IsMarked(rxDrv.DescGPA) {
		t.Error("RX writes were not logged")
	}
}

// TestPlaceShortAfterMalformedBuffer: a frame spanning merged RX buffers
// meets a malformed buffer after a good one, and then an empty ring. The
// malformed buffer goes back once (length 0); the good one cannot be put
// back behind it, so it goes back empty too, and the frame waits in the
// backlog for the next buffers, where it lands whole.
func TestPlaceShortAfterMalformedBuffer(t *testing.T) {
	for _, packed := range []bool{false, true} {
		g := vhostusertest.NewGuest(t, guestGPA, guestUser, guestSize)
		mem := g.Memory(t)
		dev := newNetDevice(t, 1, newRecorder(nil))
		type used struct {
			id uint16
			n  uint32
		}
		var (
			post  func(bufs ...vhostusertest.Buf) uint16
			bad   func() uint16
			usedQ func() (used, bool)
			q     vhostuser.Queue
		)
		features := linuxFeatures
		if packed {
			d := vhostusertest.NewPackedDriver(g, ringGPA, 16, dataGPA, dataGPA+dataStride)
			r, err := vhostuser.NewPackedRing(mem, vhostuser.PackedRingOptions{Size: 16, Addr: d.Addr(0, false), Base: d.Base()})
			if err != nil {
				t.Fatal(err)
			}
			q, features = r, features|vhostuser.Bit(vhostuser.FRingPacked)
			post = func(bufs ...vhostusertest.Buf) uint16 { id, _ := d.AddChain(bufs...); return id }
			bad = func() uint16 {
				d.AddRaw(vhostusertest.PackedDesc{Addr: dataGPA, ID: 9, Flags: vhostuser.DescFWrite})
				return 9
			}
			usedQ = func() (used, bool) { id, n, ok := d.Used(); return used{id, n}, ok }
		} else {
			d := vhostusertest.NewDriver(g, ringGPA, 16, dataGPA, dataGPA+dataStride)
			r, err := vhostuser.NewSplitRing(mem, vhostuser.SplitRingOptions{Size: 16, Addr: d.Addr(0, false)})
			if err != nil {
				t.Fatal(err)
			}
			q = r
			post = func(bufs ...vhostusertest.Buf) uint16 { id, _ := d.AddChain(bufs...); return id }
			bad = func() uint16 {
				d.SetDesc(9, dataGPA, 0, vhostuser.DescFWrite, 0)
				d.Offer(9)
				return 9
			}
			usedQ = func() (used, bool) { id, n, ok := d.Used(); return used{uint16(id), n}, ok }
		}
		tp := vhostuser.NewTestPollerQueues(dev, 0, features, q, nil, -1, -1)
		a := post(vhostusertest.Buf{WriteLen: 512})
		b := bad()
		frame := bytes.Repeat([]byte{0x5a}, 1000)
		tp.Deliver(frame)
		var got []used
		for u, ok := usedQ(); ok; u, ok = usedQ() {
			got = append(got, u)
		}
		if want := []used{{b, 0}, {a, 0}}; len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
			t.Fatalf("packed %v: used %v, want %v", packed, got, want)
		}
		if tp.Backlogged() != 1 {
			t.Fatalf("packed %v: %d frames backlogged, want 1", packed, tp.Backlogged())
		}
		c := post(vhostusertest.Buf{WriteLen: 2048})
		tp.Round()
		if u, ok := usedQ(); !ok || u != (used{c, netHdrLen + 1000}) {
			t.Fatalf("packed %v: after new buffers used %v %v, want %d with %d bytes", packed, u, ok, c, netHdrLen+1000)
		}
		if u, ok := usedQ(); ok {
			t.Fatalf("packed %v: extra used entry %v", packed, u)
		}
		tp.Close()
	}
}

// TestPackedInflightRegionSurvivesReconnect: a packed device hands out an
// inflight region; the frontend loses the backend after the rings have
// wrapped, reconnects, hands the region back and sets the rings up with
// the only base it knows, the first one (a packed ring's positions are
// nowhere in guest memory). The rings resume where the region says, and
// the exchange goes on: the RX buffers posted before the disconnection
// are used, none twice. A region whose header was scribbled on is
// refused, and the connection goes on without it.
func TestPackedInflightRegionSurvivesReconnect(t *testing.T) {
	rec := newRecorder(func(_ int, frame, reply []byte) int { return arpReply(frame, reply) })
	dev := newNetDevice(t, 1, rec)
	g := vhostusertest.NewGuest(t, guestGPA, guestUser, guestSize)
	const size = 8
	rx := vhostusertest.NewPackedDriver(g, ringGPA, size, dataGPA, dataGPA+dataStride)
	tx := vhostusertest.NewPackedDriver(g, ringGPA+ringStride, size, dataGPA+dataStride, dataGPA+2*dataStride)
	protocol := qemuProtocol | vhostuser.Bit(vhostuser.ProtocolFInflightShmfd)
	kicks := [2]int{newEventfd(t), newEventfd(t)}
	calls := [2]int{newEventfd(t), newEventfd(t)}
	firstRX, firstTX := rx.Base()|rx.Base()<<16, tx.Base()|tx.Base()<<16
	connect := func(inflight *vhostuser.Inflight, fd int) (*testFrontend, func() error) {
		return packedConnect(t, dev, g, [2]*vhostusertest.PackedDriver{rx, tx}, [2]uint32{firstRX, firstTX}, kicks, calls, inflight, fd)
	}
	// The RX buffers the exchanges use: posted ahead, two at a time.
	var rxPosted []uint16
	postRX := func() {
		rx.ResetData(dataGPA + uint64(len(rxPosted)%4)*2048)
		id, _ := rx.AddChain(vhostusertest.Buf{WriteLen: 1526})
		rxPosted = append(rxPosted, id)
	}
	exchange := func(tag byte) {
		t.Helper()
		postRX()
		tx.ResetData(dataGPA + dataStride)
		tx.AddChain(txChain(arpRequest(tag), tag%2 == 0)...)
		writeEventfd(t, kicks[1])
		if got := rec.next(t); got.frame[41] != tag {
			t.Fatalf("frame tag %d, want %d", got.frame[41], tag)
		}
		waitPackedUsed(t, tx)
		want := rxPosted[0]
		rxPosted = rxPosted[1:]
		if id, l := waitPackedUsed(t, rx); id != want || l != netHdrLen+42 {
			t.Fatalf("RX used (%d, %d), want (%d, %d)", id, l, want, netHdrLen+42)
		}
	}

	f, wait := connect(nil, -1)
	f.send(vhostuser.GetInflightFD, 0, vhostuser.AppendInflight(nil, vhostuser.Inflight{NumQueues: 2, QueueSize: size}))
	f.fe.Conn.SetReadDeadline(time.Now().Add(waitFor))
	r, err := f.fe.ReadReply()
	if err != nil || r.Header.Request != vhostuser.GetInflightFD || len(r.FDs) != 1 {
		t.Fatalf("GET_INFLIGHT_FD reply %+v, %v", r, err)
	}
	in, err := (vhostuser.Message{Header: r.Header, Payload: r.Payload}).Inflight()
	if err != nil || in.MmapSize != 2*vhostuser.InflightQueueSizePacked(size) {
		t.Fatalf("inflight description %+v, %v", in, err)
	}
	fd := r.FDs[0]
	defer unix.Close(fd)
	postRX() // one RX buffer ahead: posted, not taken, when the backend goes
	for tag := byte(1); tag <= size+3; tag++ {
		exchange(tag)
	}
	f.fe.Conn.Close() // the backend is gone: no GET_VRING_BASE
	wait()

	// A region with a scribbled header is refused; the device goes on
	// for the next frontend.
	bad, err := unix.Mmap(fd, 0, int(in.MmapSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(bad)
	saved := binary.LittleEndian.Uint16(bad[8:])
	binary.LittleEndian.PutUint16(bad[8:], 9) // version 9
	f2, wait2 := serveDevice(t, dev)
	f2.negotiate(linuxFeatures|vhostuser.Bit(vhostuser.FRingPacked), protocol)
	if st := f2.setAck(vhostuser.SetInflightFD, vhostuser.AppendInflight(nil, in), fd); st == 0 {
		t.Fatal("SET_INFLIGHT_FD with a corrupt region acknowledged")
	}
	f2.fe.Conn.Close()
	wait2()
	binary.LittleEndian.PutUint16(bad[8:], saved)

	f3, _ := connect(&in, fd)
	for tag := byte(20); tag <= 20+size+3; tag++ {
		exchange(tag)
	}
	rec.expectNone(t)
	if s := dev.Stats(); s.Errors != 0 {
		t.Errorf("device errors %d", s.Errors)
	}
	_ = f3
}

// packedConnect serves dev to a new frontend that negotiates packed rings
// and inflight tracking, hands over inflight (with fd) when set, and sets
// up the two rings with bases.
func packedConnect(t *testing.T, dev *vhostuser.NetDevice, g *vhostusertest.Guest, drv [2]*vhostusertest.PackedDriver, bases [2]uint32, kicks, calls [2]int, inflight *vhostuser.Inflight, fd int) (*testFrontend, func() error) {
	t.Helper()
	f, wait := serveDevice(t, dev)
	protocol := qemuProtocol | vhostuser.Bit(vhostuser.ProtocolFInflightShmfd)
	if acked := f.negotiate(linuxFeatures|vhostuser.Bit(vhostuser.FRingPacked), protocol); !acked.Has(vhostuser.FRingPacked) {
		t.Fatalf("RING_PACKED not acked: %#x", uint64(acked))
	}
	if inflight != nil {
		f.set(vhostuser.SetInflightFD, vhostuser.AppendInflight(nil, *inflight), fd)
	}
	f.setMemTable(g)
	for index, d := range drv {
		i := uint32(index)
		f.vringState(vhostuser.SetVringNum, i, uint32(d.Size))
		f.vringState(vhostuser.SetVringBase, i, bases[index])
		f.set(vhostuser.SetVringAddr, vhostuser.AppendVringAddr(nil, d.Addr(i, false)))
		f.set(vhostuser.SetVringKick, u64(uint64(i)), kicks[index])
		f.set(vhostuser.SetVringCall, u64(uint64(i)), calls[index])
		f.vringState(vhostuser.SetVringEnable, i, 1)
	}
	f.sync()
	return f, wait
}

// TestPackedFrontendTruncatesInflightRegion: a frontend hands over its
// own memfd as the inflight region of a packed device and truncates it
// while the rings run. The daemon does not fault: the next chain it takes
// touches the region, that frontend is dropped (ErrMemoryFault, naming
// the inflight region), and the next frontend is served.
func TestPackedFrontendTruncatesInflightRegion(t *testing.T) {
	rec := newRecorder(nil)
	dev := newNetDevice(t, 1, rec)
	g := vhostusertest.NewGuest(t, guestGPA, guestUser, guestSize)
	const size = 8
	rx := vhostusertest.NewPackedDriver(g, ringGPA, size, dataGPA, dataGPA+dataStride)
	tx := vhostusertest.NewPackedDriver(g, ringGPA+ringStride, size, dataGPA+dataStride, dataGPA+2*dataStride)
	in := vhostuser.Inflight{MmapSize: 2 * vhostuser.InflightQueueSizePacked(size), NumQueues: 2, QueueSize: size}
	fd, err := unix.MemfdCreate("hostile-inflight", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, int64(in.MmapSize)); err != nil {
		t.Fatal(err)
	}
	kicks := [2]int{newEventfd(t), newEventfd(t)}
	calls := [2]int{newEventfd(t), newEventfd(t)}
	_, wait := packedConnect(t, dev, g, [2]*vhostusertest.PackedDriver{rx, tx}, [2]uint32{rx.Base(), tx.Base()}, kicks, calls, &in, fd)
	tx.AddChain(txChain(arpRequest(1), false)...)
	writeEventfd(t, kicks[1])
	if got := rec.next(t); got.frame[41] != 1 {
		t.Fatalf("frame tag %d", got.frame[41])
	}
	waitPackedUsed(t, tx)
	if err := unix.Ftruncate(fd, 0); err != nil {
		t.Fatal(err)
	}
	tx.AddChain(txChain(arpRequest(2), false)...)
	writeEventfd(t, kicks[1])
	expectDropped(t, dev, wait, vhostuser.ErrMemoryFault, "inflight region", nil)
	servedAgain(t, dev, rec)
}
