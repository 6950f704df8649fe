package vhostuser_test

import (
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
)

// TestShortRXRingBacklogsAndDeliversInOrder forces the path issue 10
// lost ping replies on: a burst of TX frames whose replies find the
// guest's RX ring short. The replies that fit go at once; the rest wait
// in the RX backlog (none dropped, nothing taken from the ring for them)
// and go, in order, at the next poll round after the driver posts
// buffers, logged in the dirty log like any other write. Only a full
// backlog drops, and counts it.
func TestShortRXRingBacklogsAndDeliversInOrder(t *testing.T) {
	const burst = 40
	g := vhostusertest.NewGuest(t, guestGPA, guestUser, guestSize)
	mem := g.Memory(t)
	rxDrv := vhostusertest.NewDriver(g, ringGPA, qSize, dataGPA, dataGPA+dataStride)
	txDrv := vhostusertest.NewDriver(g, ringGPA+ringStride, qSize, dataGPA+dataStride, dataGPA+2*dataStride)
	pages := uint64(guestGPA+guestSize) / vhostuser.LogPageSize
	log, bitmap := newLog(t, (pages+7)/8, 0)
	ring := func(d *vhostusertest.Driver, index uint32) *vhostuser.SplitRing {
		r, err := vhostuser.NewSplitRing(mem, vhostuser.SplitRingOptions{
			Size: qSize, Addr: d.Addr(index, true), EventIdx: true, IndirectDesc: true, Log: log,
		})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	dev := newNetDevice(t, 1, &arpResponder{})
	tp := vhostuser.NewTestPoller(dev, 0, linuxFeatures|vhostuser.Bit(vhostuser.FLogAll), ring(rxDrv, 0), ring(txDrv, 1), newEventfd(t), newEventfd(t))
	t.Cleanup(tp.Close)

	// TX descriptor i holds the ARP request tagged i+1; RX descriptor i
	// is a 512-byte buffer at a page of its own.
	for i := range uint16(burst) {
		gpa := dataGPA + dataStride + uint64(i)*128
		txDrv.SetDesc(i, gpa, netHdrLen+42, 0, 0)
		copy(g.Bytes(gpa+netHdrLen, 42), arpRequest(byte(i+1)))
	}
	rxGPA := func(i uint16) uint64 { return dataGPA + uint64(i)*vhostuser.LogPageSize }
	for i := range uint16(burst) {
		rxDrv.SetDesc(i, rxGPA(i), 512, vhostuser.DescFWrite, 0)
	}
	// tagOf returns the tag of the ARP reply in RX buffer id (the sender
	// address of the reply is the target of the request).
	tagOf := func(id uint32) byte { return g.Bytes(rxGPA(uint16(id))+netHdrLen+31, 1)[0] }

	// The guest has posted 3 RX buffers; the burst brings 40 requests.
	for i := range uint16(3) {
		rxDrv.Offer(i)
	}
	for i := range uint16(burst) {
		txDrv.Offer(i)
	}
	if n := tp.Round(); n != burst {
		t.Fatalf("round took %d TX frames, want %d", n, burst)
	}
	next := byte(1)
	expect := func(n int) {
		t.Helper()
		for range n {
			id, length, ok := rxDrv.Used()
			if !ok {
				t.Fatalf("reply %d missing", next)
			}
			if length != netHdrLen+42 || tagOf(id) != next {
				t.Fatalf("RX used: buffer %d length %d tag %d, want length %d tag %d", id, length, tagOf(id), netHdrLen+42, next)
			}
			next++
		}
		if _, _, ok := rxDrv.Used(); ok {
			t.Fatalf("more RX used entries than the %d expected", n)
		}
	}
	expect(3)
	if got := tp.Backlogged(); got != burst-3 {
		t.Fatalf("backlog holds %d frames, want %d", got, burst-3)
	}
	if !tp.WaitsForRX() {
		t.Error("with frames backlogged the poller would not ask for RX kicks")
	}
	if s := dev.Stats(); s.Drops != 0 || s.GuestRXPackets != 3 {
		t.Fatalf("after the burst: Stats = %+v, want 3 delivered, no drop", s)
	}

	// The frontend read and cleared the log; the driver posts 10 buffers,
	// then the rest: each round drains what fits, oldest first.
	clear(bitmap)
	for i := uint16(3); i < 13; i++ {
		rxDrv.Offer(i)
	}
	if n := tp.Round(); n != 10 {
		t.Fatalf("round after 10 buffers moved %d frames", n)
	}
	expect(10)
	for i := uint16(3); i < 13; i++ {
		if !log.IsMarked(rxGPA(i)) {
			t.Errorf("backlogged frame written to RX buffer %d (gpa %#x) not marked dirty", i, rxGPA(i))
		}
	}
	if !log.IsMarked(rxDrv.UsedGPA) {
		t.Error("RX used ring not marked dirty for backlogged frames")
	}
	for i := uint16(13); i < burst; i++ {
		rxDrv.Offer(i)
	}
	tp.Round()
	expect(burst - 13)
	if tp.Backlogged() != 0 || tp.WaitsForRX() {
		t.Errorf("backlog not empty (%d) or still waiting for RX", tp.Backlogged())
	}
	if s := dev.Stats(); s.Drops != 0 || s.GuestRXPackets != burst {
		t.Errorf("Stats = %+v, want %d delivered, no drop", s, burst)
	}

	// A full backlog drops what does not fit, and counts it.
	frame := arpRequest(0)
	for range vhostuser.RXBacklogFrames + 2 {
		tp.Deliver(frame)
	}
	if s := dev.Stats(); s.Drops != 2 || tp.Backlogged() != vhostuser.RXBacklogFrames {
		t.Errorf("over capacity: Drops = %d, backlog %d; want 2 and %d", s.Drops, tp.Backlogged(), vhostuser.RXBacklogFrames)
	}
}

// TestBackloggedDeliveryDoesNotAllocate: a frame that finds no RX buffer
// is backlogged, and delivered at the next round once the driver posts
// one, without allocating.
func TestBackloggedDeliveryDoesNotAllocate(t *testing.T) {
	g := vhostusertest.NewGuest(t, guestGPA, guestUser, guestSize)
	mem := g.Memory(t)
	rxDrv := vhostusertest.NewDriver(g, ringGPA, qSize, dataGPA, dataGPA+dataStride)
	pages := uint64(guestGPA+guestSize) / vhostuser.LogPageSize
	log, _ := newLog(t, (pages+7)/8, 0)
	rx, err := vhostuser.NewSplitRing(mem, vhostuser.SplitRingOptions{Size: qSize, Addr: rxDrv.Addr(0, true), EventIdx: true, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	dev := newNetDevice(t, 1, &arpResponder{})
	tp := vhostuser.NewTestPoller(dev, 0, linuxFeatures|vhostuser.Bit(vhostuser.FLogAll), rx, nil, newEventfd(t), -1)
	t.Cleanup(tp.Close)
	rxDrv.SetDesc(0, dataGPA, 512, vhostuser.DescFWrite, 0)
	rxDrv.SetDesc(1, dataGPA+512, 512, vhostuser.DescFWrite, 0)
	rxDrv.SetDesc(2, dataGPA+1024, 512, vhostuser.DescFWrite, 0)
	small, big := arpRequest(9), make([]byte, 1000)
	allocs := testing.AllocsPerRun(500, func() {
		tp.Deliver(small) // no buffer: backlogged
		tp.Deliver(big)   // behind it
		if tp.Backlogged() != 2 {
			t.Fatalf("backlog %d, want 2", tp.Backlogged())
		}
		rxDrv.Offer(0)
		rxDrv.Offer(1)
		rxDrv.Offer(2) // big spans two merged buffers
		if n := tp.Round(); n != 2 {
			t.Fatalf("round moved %d frames, want 2", n)
		}
		for range 3 {
			if _, _, ok := rxDrv.Used(); !ok {
				t.Fatal("used entry missing")
			}
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per backlogged frame pair, want 0", allocs)
	}
	if s := dev.Stats(); s.Drops != 0 {
		t.Errorf("Drops = %d", s.Drops)
	}
}

// TestMigrationLoggingSwitchesInPlace follows QEMU's migration start and
// end (vhost_migration_log: SET_LOG_BASE, SET_FEATURES with LOG_ALL, every
// ring's SET_VRING_ADDR with VHOST_VRING_F_LOG; a log resize sends
// SET_LOG_BASE again): the queue pair's poller keeps running through all
// of it instead of being stopped and restarted, writes go to the newest
// log only, and a reply that found no RX buffer while the poller slept
// waits in the backlog and goes, logged, when the driver posts a buffer
// and kicks.
func TestMigrationLoggingSwitchesInPlace(t *testing.T) {
	rec := newRecorder(func(_ int, frame, reply []byte) int { return arpReply(frame, reply) })
	dev := newNetDevice(t, 1, rec)
	f, _ := serveDevice(t, dev)
	fg := newFakeGuest(t, 1)
	acked := f.startQEMU(fg, linuxFeatures)
	rx, tx := fg.rx(0), fg.tx(0)
	poller := dev.PollerHandle(0)
	if poller == nil {
		t.Fatal("no poller after start")
	}
	samePoller := func(when string) {
		t.Helper()
		if dev.PollerHandle(0) != poller {
			t.Fatalf("%s: the queue pair's poller was restarted", when)
		}
	}
	migrationLog := func(on bool) {
		t.Helper()
		feat := acked
		if on {
			feat |= vhostuser.Bit(vhostuser.FLogAll)
		}
		f.setU64(vhostuser.SetFeatures, uint64(feat))
		for _, q := range fg.vqs {
			f.setupVring(q, 0, on, stepAddr)
		}
		f.sync()
	}

	first, second := newDirtyLog(t), newDirtyLog(t)
	f.setLogBase(first)
	samePoller("SET_LOG_BASE")
	migrationLog(true)
	samePoller("SET_FEATURES(LOG_ALL) and SET_VRING_ADDR(LOG)")
	f.setLogBase(second) // QEMU grew the log
	samePoller("a second SET_LOG_BASE")

	// A request while the RX ring is empty: the reply is backlogged.
	sleeps := dev.PollerSleeps(0)
	tx.post(txChain(arpRequest(7), false)...)
	rec.next(t)
	tx.waitUsed()
	f.sync()
	rx.expectNoUsed()
	// Let the poller go to sleep after the request: it must have asked
	// for RX kicks, or the buffer posted next is never seen.
	eventually(t, "poller sleeps", func() bool { return dev.PollerSleeps(0) > sleeps })
	clear(second.bitmap)
	_, addrs := rx.post(vhostusertest.Buf{WriteLen: 1526})
	id, n := rx.waitUsed()
	if n != netHdrLen+42 {
		t.Fatalf("RX used: head %d length %d, want the %d-byte reply", id, n, netHdrLen+42)
	}
	if got := fg.g.Bytes(addrs[0]+netHdrLen+31, 1)[0]; got != 7 {
		t.Errorf("reply tag %d, want 7", got)
	}
	if !second.marked(addrs[0]) || !second.marked(rx.drv.UsedGPA) {
		t.Error("the backlogged reply's buffer or the used ring is not marked in the current log")
	}
	if first.count() != 0 {
		// first was written only before the resize: nothing since.
		t.Logf("first log: %d pages marked before it was replaced", first.count())
	}
	clear(first.bitmap)
	_, addrs = rx.post(vhostusertest.Buf{WriteLen: 1526})
	tx.post(txChain(arpRequest(8), false)...)
	rec.next(t)
	tx.waitUsed()
	rx.waitUsed()
	if first.count() != 0 || !second.marked(addrs[0]) {
		t.Errorf("after the resize: %d pages marked in the replaced log; new log marks the buffer: %v", first.count(), second.marked(addrs[0]))
	}

	migrationLog(false) // completed, failed or cancelled: logging stops
	samePoller("SET_FEATURES without LOG_ALL")
	clear(second.bitmap)
	rx.post(vhostusertest.Buf{WriteLen: 1526})
	tx.post(txChain(arpRequest(9), false)...)
	rec.next(t)
	tx.waitUsed()
	rx.waitUsed()
	if c := second.count(); c != 0 {
		t.Errorf("%d pages marked after logging was switched off", c)
	}
	if st := dev.State(); st.Logging {
		t.Error("State().Logging still on")
	}
	if s := dev.Stats(); s.Drops != 0 {
		t.Errorf("Drops = %d", s.Drops)
	}
}

// TestSwitchoverLeavesTXFramesForTheDestination follows QEMU's device
// stop at a migration's switchover (vhost_dev_stop: GET_VRING_BASE for
// RX, then for TX). Between the two, the TX ring must not be worked
// alone: a ping taken then would be answered into an RX ring that no
// longer runs, and lost. Left on the ring, it is counted out of the TX
// base the frontend hands to the destination, which answers it.
func TestSwitchoverLeavesTXFramesForTheDestination(t *testing.T) {
	rec := newRecorder(func(_ int, frame, reply []byte) int { return arpReply(frame, reply) })
	dev := newNetDevice(t, 1, rec)
	f, _ := serveDevice(t, dev)
	fg := newFakeGuest(t, 1)
	f.startQEMU(fg, linuxFeatures)
	rx, tx := fg.rx(0), fg.tx(0)
	rx.post(vhostusertest.Buf{WriteLen: 1526})
	tx.post(txChain(arpRequest(1), false)...)
	rec.next(t)
	tx.waitUsed()
	rx.waitUsed()

	if base := f.getVringBase(rx.index); base != 1 {
		t.Fatalf("GET_VRING_BASE(RX) = %d, want 1", base)
	}
	if dev.PollerHandle(0) != nil || dev.State().QueuePairs != 0 {
		t.Fatal("with RX stopped, the queue pair still runs its TX ring")
	}
	// The guest's vCPU had queued one more request before it stopped.
	tx.post(txChain(arpRequest(2), false)...)
	writeEventfd(t, tx.kick)
	f.sync()
	rec.expectNone(t)
	tx.expectNoUsed()
	if base := f.getVringBase(tx.index); base != 1 {
		t.Errorf("GET_VRING_BASE(TX) = %d, want 1: the second request stays for the destination", base)
	}
	if s := dev.Stats(); s.Drops != 0 || s.GuestTXPackets != 1 {
		t.Errorf("Stats = %+v, want one frame taken and none dropped", s)
	}
}
