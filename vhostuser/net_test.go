package vhostuser_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
	"golang.org/x/sys/unix"
)

// TestQEMUHandshakeThenARP brings a NetDevice up as QEMU 7.2 does for a
// Linux guest and checks the first exchange a guest makes: an ARP request
// on TX reaches the FrameHandler without its virtio-net header, and the
// handler's reply lands in a posted RX buffer behind a virtio_net_hdr
// with num_buffers 1, with the used rings updated and the RX call
// eventfd signalled.
func TestQEMUHandshakeThenARP(t *testing.T) {
	rec := newRecorder(func(_ int, frame, reply []byte) int { return arpReply(frame, reply) })
	dev := newNetDevice(t, 1, rec)
	f, _ := serveDevice(t, dev)
	fg := newFakeGuest(t, 1)

	// vhost_user_backend_init.
	offered := vhostuser.Features(f.get(vhostuser.GetFeatures))
	for _, bit := range []uint{vhostuser.FVersion1, vhostuser.FProtocolFeatures, vhostuser.NetFMrgRxbuf, vhostuser.FLogAll, vhostuser.FRingEventIdx, vhostuser.FRingIndirectDesc} {
		if !offered.Has(bit) {
			t.Errorf("GET_FEATURES %#x lacks bit %d", uint64(offered), bit)
		}
	}
	if offered.Has(vhostuser.NetFMQ) || offered.Has(vhostuser.NetFCsum) || offered.Has(vhostuser.NetFGuestTSO4) {
		t.Errorf("GET_FEATURES %#x offers MQ or offloads with one queue pair", uint64(offered))
	}
	// NEED_REPLY before REPLY_ACK is negotiated gets no ack: the next
	// reply on the socket is GET_PROTOCOL_FEATURES's own.
	f.send(vhostuser.SetOwner, vhostuser.FlagNeedReply, nil)
	proto := vhostuser.Features(f.get(vhostuser.GetProtocolFeatures))
	for _, bit := range []uint{vhostuser.ProtocolFMQ, vhostuser.ProtocolFLogShmfd, vhostuser.ProtocolFReplyAck, vhostuser.ProtocolFConfigureMemSlots} {
		if !proto.Has(bit) {
			t.Errorf("GET_PROTOCOL_FEATURES %#x lacks bit %d", uint64(proto), bit)
		}
	}
	f.setU64(vhostuser.SetProtocolFeatures, uint64(proto&qemuProtocol))
	f.ack = true // from now on every request asks for REPLY_ACK, which must be 0
	if n := f.get(vhostuser.GetQueueNum); n != 2 {
		t.Errorf("GET_QUEUE_NUM = %d, want 2 (virtqueues of one pair)", n)
	}
	if n := f.get(vhostuser.GetMaxMemSlots); n != vhostuser.MaxMemSlots {
		t.Errorf("GET_MAX_MEM_SLOTS = %d", n)
	}
	// vhost_dev_start.
	f.setU64(vhostuser.SetFeatures, uint64(linuxFeatures))
	f.setMemTable(fg.g)
	for _, q := range fg.vqs {
		q.eventIdx = true
		f.setupVring(q, 0, false, qemuOrder...)
	}
	for _, q := range fg.vqs {
		f.setupVring(q, 0, false, stepEnable)
	}
	st := dev.State()
	if !st.Connected || st.Features != linuxFeatures || st.QueuePairs != 1 || st.MemoryRegions != 1 || st.Logging {
		t.Fatalf("State after handshake = %+v", st)
	}

	rx, tx := fg.rx(0), fg.tx(0)
	rxHead, rxAddrs := rx.post(vhostusertest.Buf{WriteLen: 1526})
	for i, split := range []bool{false, true} {
		req := arpRequest(byte(1 + i))
		txHead, _ := tx.post(txChain(req, split)...)
		got := rec.next(t)
		if got.qp != 0 || !bytes.Equal(got.frame, req) {
			t.Fatalf("handler got qp %d frame %x, want %x", got.qp, got.frame, req)
		}
		if id, n := tx.waitUsed(); id != uint32(txHead) || n != 0 {
			t.Errorf("TX used = head %d len %d, want %d len 0", id, n, txHead)
		}
		rx.waitCall()
		id, n := rx.waitUsed()
		if id != uint32(rxHead) || n != netHdrLen+42 {
			t.Fatalf("RX used = head %d len %d, want %d len %d", id, n, rxHead, netHdrLen+42)
		}
		hdr, frame := rxFrame(fg, rxAddrs[0], n)
		if numBuffers(hdr) != 1 || !bytes.Equal(hdr[:10], make([]byte, 10)) {
			t.Errorf("virtio_net_hdr = %x, want zeros and num_buffers 1", hdr)
		}
		want := make([]byte, 64)
		want = want[:arpReply(req, want)]
		if !bytes.Equal(frame, want) {
			t.Errorf("RX frame %x, want %x", frame, want)
		}
		rxHead, rxAddrs = rx.post(vhostusertest.Buf{WriteLen: 1526})
	}
	s := dev.Stats()
	if s.GuestTXPackets != 2 || s.GuestTXBytes != 84 || s.GuestRXPackets != 2 || s.GuestRXBytes != 84 || s.Drops != 0 || s.Errors != 0 {
		t.Errorf("Stats = %+v", s)
	}
}

// TestMergeableRXBuffers follows virtio 1.1, 5.1.6.3.1/5.1.6.4: with
// VIRTIO_NET_F_MRG_RXBUF a frame larger than one buffer spans several and
// num_buffers says how many; without it a buffer too small for the frame
// drops the frame (the buffer goes back unused) and counts a drop. A frame
// that finds too few buffers waits in the RX backlog, its buffers put
// back untouched, until the driver posts more (rxbacklog.go).
func TestMergeableRXBuffers(t *testing.T) {
	const replyLen = 1400
	bigReply := func(_ int, frame, reply []byte) int {
		for i := range replyLen {
			reply[i] = byte(i)
		}
		copy(reply[0:6], frame[6:12])
		return replyLen
	}
	tests := []struct {
		name      string
		features  vhostuser.Features
		bufs      []uint32 // RX buffers posted before the frame
		later     []uint32 // RX buffers posted once the frame is backlogged
		wantLens  []uint32 // used lengths, one per buffer consumed
		wantDrops uint64
	}{
		{"MRG_RXBUF/three buffers", linuxFeatures, []uint32{512, 512, 512, 512}, nil, []uint32{512, 512, netHdrLen + replyLen - 1024}, 0},
		{"MRG_RXBUF/one big buffer", linuxFeatures, []uint32{2048}, nil, []uint32{netHdrLen + replyLen}, 0},
		{"MRG_RXBUF/not enough buffers until the driver posts one more", linuxFeatures, []uint32{512, 512}, []uint32{512}, []uint32{512, 512, netHdrLen + replyLen - 1024}, 0},
		{"MRG_RXBUF/no buffer until the driver posts one", linuxFeatures, nil, []uint32{2048}, []uint32{netHdrLen + replyLen}, 0},
		{"no MRG_RXBUF/too small", linuxFeatures &^ vhostuser.Bit(vhostuser.NetFMrgRxbuf), []uint32{512, 2048}, nil, []uint32{0}, 1},
		{"no MRG_RXBUF/fits", linuxFeatures &^ vhostuser.Bit(vhostuser.NetFMrgRxbuf), []uint32{2048}, nil, []uint32{netHdrLen + replyLen}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := newRecorder(bigReply)
			dev := newNetDevice(t, 1, rec)
			f, _ := serveDevice(t, dev)
			fg := newFakeGuest(t, 1)
			f.startQEMU(fg, tc.features)
			rx, tx := fg.rx(0), fg.tx(0)
			var heads []uint16
			var addrs []uint64
			for _, n := range tc.bufs {
				h, a := rx.post(vhostusertest.Buf{WriteLen: n})
				heads, addrs = append(heads, h), append(addrs, a[0])
			}
			tx.post(txChain(arpRequest(1), false)...)
			rec.next(t)
			tx.waitUsed()
			if len(tc.later) > 0 {
				f.sync()
				rx.expectNoUsed() // backlogged, nothing taken
				for _, n := range tc.later {
					h, a := rx.post(vhostusertest.Buf{WriteLen: n})
					heads, addrs = append(heads, h), append(addrs, a[0])
				}
			}
			var got []byte
			for i, want := range tc.wantLens {
				id, n := rx.waitUsed()
				if id != uint32(heads[i]) || n != want {
					t.Fatalf("RX used[%d] = head %d len %d, want head %d len %d", i, id, n, heads[i], want)
				}
				got = append(got, fg.g.Bytes(addrs[i], uint64(n))...)
			}
			f.sync() // the round is over: nothing more will be used
			rx.expectNoUsed()
			if s := dev.Stats(); s.Drops != tc.wantDrops {
				t.Errorf("Drops = %d, want %d", s.Drops, tc.wantDrops)
			}
			if tc.wantDrops > 0 {
				return
			}
			if nb := numBuffers(got); int(nb) != len(tc.wantLens) {
				t.Errorf("num_buffers = %d, want %d", nb, len(tc.wantLens))
			}
			want := make([]byte, replyLen)
			bigReply(0, arpRequest(1), want)
			if !bytes.Equal(got[netHdrLen:], want) {
				t.Errorf("frame across buffers differs from the reply")
			}
		})
	}
}

// TestQueuesEnabledInAnyOrder follows vhost-user.rst "Ring states" and
// "Multiple queue support": a ring starts once it has a size, addresses,
// a kick and is enabled, whatever order those came in (other backends'
// trackers have bugs where they do not), and two queue pairs run
// independently (disabling one leaves the other running).
func TestQueuesEnabledInAnyOrder(t *testing.T) {
	tests := []struct {
		name string
		// setup configures every ring of fg after the memory table.
		setup func(f *testFrontend, fg *fakeGuest)
		// featuresLast sends SET_FEATURES after the rings.
		featuresLast bool
	}{
		{name: "QEMU order", setup: func(f *testFrontend, fg *fakeGuest) {
			for _, q := range fg.vqs {
				f.setupVring(q, 0, false, qemuOrder...)
			}
			for _, q := range fg.vqs {
				f.setupVring(q, 0, false, stepEnable)
			}
		}},
		{name: "TX before RX", setup: func(f *testFrontend, fg *fakeGuest) {
			for qp := 1; qp >= 0; qp-- {
				f.setupVring(fg.tx(qp), 0, false, append(qemuOrder, stepEnable)...)
				f.setupVring(fg.rx(qp), 0, false, append(qemuOrder, stepEnable)...)
			}
		}},
		{name: "enable before kick", setup: func(f *testFrontend, fg *fakeGuest) {
			for _, q := range fg.vqs {
				f.setupVring(q, 0, false, stepEnable, stepNum, stepBase, stepAddr, stepCall, stepKick)
			}
		}},
		{name: "kick before addr", setup: func(f *testFrontend, fg *fakeGuest) {
			for _, q := range fg.vqs {
				f.setupVring(q, 0, false, stepKick, stepCall, stepEnable, stepNum, stepBase, stepAddr)
			}
		}},
		{name: "features after rings", featuresLast: true, setup: func(f *testFrontend, fg *fakeGuest) {
			for _, q := range fg.vqs {
				f.setupVring(q, 0, false, append(qemuOrder, stepEnable)...)
			}
		}},
	}
	features := linuxFeatures | vhostuser.Bit(vhostuser.NetFMQ)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := newRecorder(func(_ int, frame, reply []byte) int { return arpReply(frame, reply) })
			dev := newNetDevice(t, 2, rec)
			f, _ := serveDevice(t, dev)
			fg := newFakeGuest(t, 2)
			if n := f.get(vhostuser.GetQueueNum); n != 4 {
				t.Errorf("GET_QUEUE_NUM = %d, want 4", n)
			}
			offered := vhostuser.Features(f.get(vhostuser.GetFeatures))
			f.setU64(vhostuser.SetProtocolFeatures, uint64(qemuProtocol))
			f.ack = true
			f.set(vhostuser.SetOwner, nil)
			if !tc.featuresLast {
				f.setU64(vhostuser.SetFeatures, uint64(features&offered))
			}
			f.setMemTable(fg.g)
			tc.setup(f, fg)
			if tc.featuresLast {
				f.setU64(vhostuser.SetFeatures, uint64(features&offered))
			}
			for _, q := range fg.vqs {
				q.eventIdx = true
			}
			if st := dev.State(); st.QueuePairs != 2 {
				t.Fatalf("State().QueuePairs = %d, want 2", st.QueuePairs)
			}
			roundTrip := func(qp int, tag byte) {
				t.Helper()
				_, addrs := fg.rx(qp).post(vhostusertest.Buf{WriteLen: 1526})
				fg.tx(qp).post(txChain(arpRequest(tag), qp == 1)...)
				got := rec.next(t)
				if got.qp != qp || got.frame[41] != tag {
					t.Fatalf("handler got qp %d tag %d, want qp %d tag %d", got.qp, got.frame[41], qp, tag)
				}
				fg.tx(qp).waitUsed()
				_, n := fg.rx(qp).waitUsed()
				hdr, frame := rxFrame(fg, addrs[0], n)
				if numBuffers(hdr) != 1 || len(frame) != 42 || frame[31] != tag {
					t.Fatalf("qp %d: RX hdr %x frame %x", qp, hdr, frame)
				}
			}
			roundTrip(0, 10)
			roundTrip(1, 11)
			roundTrip(1, 12)
			roundTrip(0, 13)

			// Disable queue pair 0's TX ring: pair 1 goes on, pair 0's
			// frames wait until it is enabled again.
			f.vringState(vhostuser.SetVringEnable, fg.tx(0).index, 0)
			_, addrs := fg.rx(0).post(vhostusertest.Buf{WriteLen: 1526})
			fg.tx(0).post(txChain(arpRequest(20), false)...)
			roundTrip(1, 21)
			f.sync()
			fg.tx(0).expectNoUsed()
			fg.rx(0).expectNoUsed()
			f.vringState(vhostuser.SetVringEnable, fg.tx(0).index, 1)
			if got := rec.next(t); got.qp != 0 || got.frame[41] != 20 {
				t.Fatalf("after re-enable: handler got qp %d tag %d", got.qp, got.frame[41])
			}
			fg.tx(0).waitUsed()
			_, n := fg.rx(0).waitUsed()
			if _, frame := rxFrame(fg, addrs[0], n); frame[31] != 20 {
				t.Errorf("after re-enable: RX frame %x", frame)
			}
			rec.expectNone(t)
		})
	}
}

// TestGetVringBaseStopsAndResumes follows vhost-user.rst "Ring states":
// GET_VRING_BASE stops the ring and answers the next available index to
// process; SET_VRING_BASE with it and a new kick resume where the device
// stopped, without handing any frame to the handler twice.
func TestGetVringBaseStopsAndResumes(t *testing.T) {
	rec := newRecorder(nil)
	dev := newNetDevice(t, 1, rec)
	f, _ := serveDevice(t, dev)
	fg := newFakeGuest(t, 1)
	f.startQEMU(fg, linuxFeatures)
	tx := fg.tx(0)
	for tag := byte(1); tag <= 3; tag++ {
		tx.post(txChain(arpRequest(tag), false)...)
		if got := rec.next(t); got.frame[41] != tag {
			t.Fatalf("frame tag %d, want %d", got.frame[41], tag)
		}
		tx.waitUsed()
	}
	if base := f.getVringBase(tx.index); base != 3 {
		t.Errorf("GET_VRING_BASE(TX) = %d, want 3", base)
	}
	if base := f.getVringBase(fg.rx(0).index); base != 0 {
		t.Errorf("GET_VRING_BASE(RX) = %d, want 0", base)
	}
	if st := dev.State(); st.QueuePairs != 0 {
		t.Errorf("State().QueuePairs = %d after both rings stopped", st.QueuePairs)
	}
	// The stopped ring does not see a new frame, kick or not.
	tx.post(txChain(arpRequest(4), false)...)
	writeEventfd(t, tx.kick)
	f.sync()
	tx.expectNoUsed()
	rec.expectNone(t)

	// Restart as vhost_virtqueue_start does, with the base from above.
	f.setupVring(tx, 3, false, qemuOrder...)
	f.setupVring(fg.rx(0), 0, false, qemuOrder...)
	if got := rec.next(t); got.frame[41] != 4 {
		t.Fatalf("after restart: frame tag %d, want 4", got.frame[41])
	}
	tx.waitUsed()
	f.sync()
	rec.expectNone(t)
	tx.expectNoUsed()
	if base := f.getVringBase(tx.index); base != 4 {
		t.Errorf("GET_VRING_BASE(TX) = %d, want 4", base)
	}
	if s := dev.Stats(); s.GuestTXPackets != 4 {
		t.Errorf("GuestTXPackets = %d, want 4", s.GuestTXPackets)
	}
}

// dirtyLog is a frontend's migration log: a memfd and its bitmap.
type dirtyLog struct {
	fd     int
	bitmap []byte
}

func newDirtyLog(t *testing.T) *dirtyLog {
	t.Helper()
	size := (uint64(guestGPA+guestSize)/vhostuser.LogPageSize + 7) / 8
	fd := memfd(t, int64(size))
	t.Cleanup(func() { unix.Close(fd) })
	b, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return &dirtyLog{fd: fd, bitmap: b}
}

func (l *dirtyLog) marked(gpa uint64) bool {
	p := gpa / vhostuser.LogPageSize
	return l.bitmap[p/8]&(1<<(p%8)) != 0
}

func (l *dirtyLog) count() int {
	n := 0
	for _, b := range l.bitmap {
		for ; b != 0; b &= b - 1 {
			n++
		}
	}
	return n
}

// setLogBase sends SET_LOG_BASE and checks it is answered (a frontend
// blocks on the reply: migration hangs without it).
func (f *testFrontend) setLogBase(l *dirtyLog) {
	f.t.Helper()
	f.send(vhostuser.SetLogBase, 0, vhostuser.AppendLog(nil, vhostuser.Log{Size: uint64(len(l.bitmap))}), l.fd)
	r := f.reply(vhostuser.SetLogBase)
	// The reply echoes the log description: QEMU accepts any size,
	// rust-vmm (Cloud Hypervisor) reads exactly these 16 bytes.
	if len(r.Payload) != 16 || binary.LittleEndian.Uint64(r.Payload) != uint64(len(l.bitmap)) || binary.LittleEndian.Uint64(r.Payload[8:]) != 0 {
		f.t.Fatalf("SET_LOG_BASE reply payload %x, want the log description", r.Payload)
	}
}

// TestDirtyBitmapCheckedAfterRXDuringLogging follows vhost-user.rst
// "Migration" as QEMU drives it: SET_LOG_BASE is answered; with
// VHOST_F_LOG_ALL the RX buffer the device wrote and the used rings (with
// VHOST_VRING_F_LOG) are marked; a SET_FEATURES without LOG_ALL (failed or
// cancelled migration) stops the marking; a second round marks again.
func TestDirtyBitmapCheckedAfterRXDuringLogging(t *testing.T) {
	rec := newRecorder(func(_ int, frame, reply []byte) int { return arpReply(frame, reply) })
	dev := newNetDevice(t, 1, rec)
	f, _ := serveDevice(t, dev)
	fg := newFakeGuest(t, 1)
	acked := f.startQEMU(fg, linuxFeatures)
	rx, tx := fg.rx(0), fg.tx(0)
	log := newDirtyLog(t)

	// exchange sends one ARP request and returns the RX buffer's address.
	exchange := func(tag byte) uint64 {
		t.Helper()
		_, addrs := rx.post(vhostusertest.Buf{WriteLen: 1526})
		tx.post(txChain(arpRequest(tag), false)...)
		rec.next(t)
		tx.waitUsed()
		rx.waitUsed()
		return addrs[0]
	}
	// migrationLog is vhost_dev_set_log: features, then every ring's
	// addresses with or without VHOST_VRING_F_LOG.
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
		if st := dev.State(); st.Logging != on {
			t.Fatalf("State().Logging = %v, want %v", st.Logging, on)
		}
	}
	untouched := uint64(dataGPA + 2*dataStride + 0x10000)

	for round := 1; round <= 2; round++ {
		f.setLogBase(log)
		migrationLog(true)
		buf := exchange(byte(round))
		for _, c := range []struct {
			what string
			gpa  uint64
			want bool
		}{
			{"RX buffer", buf, true},
			{"RX used ring", rx.drv.UsedGPA, true},
			{"TX used ring", tx.drv.UsedGPA, true},
			{"memory nobody wrote", untouched, false},
		} {
			if got := log.marked(c.gpa); got != c.want {
				t.Errorf("round %d: %s (gpa %#x) marked = %v, want %v", round, c.what, c.gpa, got, c.want)
			}
		}
		// The migration fails: QEMU turns logging off. The frontend has
		// read and cleared the bitmap.
		migrationLog(false)
		clear(log.bitmap)
		exchange(byte(10 + round))
		f.sync()
		if n := log.count(); n != 0 {
			t.Errorf("round %d: %d pages marked with LOG_ALL off", round, n)
		}
	}
	if st := dev.State(); st.LogBaseReceived != 2 {
		t.Errorf("LogBaseReceived = %d, want 2", st.LogBaseReceived)
	}
}

// hostileMessage is a request the device must refuse by dropping the
// frontend.
type hostileMessage struct {
	name    string
	raw     []byte // sent as is
	fds     int    // eventfds to send along
	wantErr error
}

// TestHostileFrontendIsDropped checks that a frontend that sends what
// the device cannot accept is disconnected with an error, that every
// descriptor it handed over is closed, and that the device then serves
// the next frontend from scratch.
func TestHostileFrontendIsDropped(t *testing.T) {
	v := uint32(vhostuser.Version)
	hdr := func(req vhostuser.Request, flags uint32, payload []byte) []byte {
		return append(vhostuser.AppendHeader(nil, vhostuser.Header{Request: req, Flags: flags, Size: uint32(len(payload))}), payload...)
	}
	tests := []hostileMessage{
		{name: "unknown request", raw: hdr(99, v, nil), wantErr: vhostuser.ErrUnknownRequest},
		{name: "request the device does not implement", raw: hdr(vhostuser.GetConfig, v, vhostuser.AppendConfig(nil, vhostuser.Config{Data: make([]byte, 12)})), wantErr: vhostuser.ErrUnknownRequest},
		{name: "short payload", raw: hdr(vhostuser.SetVringNum, v, []byte{0, 0, 0, 0}), wantErr: vhostuser.ErrBadMessage},
		{name: "kick without fd", raw: hdr(vhostuser.SetVringKick, v, u64(1)), wantErr: vhostuser.ErrBadFDs},
		{name: "fds on SET_FEATURES", raw: hdr(vhostuser.SetFeatures, v, u64(0)), fds: 2, wantErr: vhostuser.ErrBadFDs},
		{name: "vring index out of range", raw: hdr(vhostuser.SetVringCall, v, u64(7)), fds: 1},
		{name: "features not offered", raw: hdr(vhostuser.SetFeatures, v, u64(1<<vhostuser.FInOrder))},
		{name: "cross-endian ring", raw: hdr(vhostuser.SetVringEndian, v, vhostuser.AppendVringState(nil, vhostuser.VringState{})), wantErr: nil},
		{name: "reply flag on a request", raw: hdr(vhostuser.GetFeatures, v|vhostuser.FlagReply, nil), wantErr: vhostuser.ErrBadMessage},
	}
	rec := newRecorder(func(_ int, frame, reply []byte) int { return arpReply(frame, reply) })
	dev := newNetDevice(t, 1, rec)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fg := newFakeGuest(t, 1)
			var extra []int
			for range tc.fds {
				extra = append(extra, newEventfd(t))
			}
			f, wait := serveDevice(t, dev)
			before := openFDs(t)
			f.startQEMU(fg, linuxFeatures)
			if err := f.fe.SendRaw(tc.raw, extra...); err != nil {
				t.Fatal(err)
			}
			err := wait()
			if err == nil || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) {
				t.Fatalf("Serve = %v, want an error matching %v", err, tc.wantErr)
			}
			if after := openFDs(t); after != before {
				t.Errorf("%d descriptors open before the handshake, %d after the device dropped the frontend", before, after)
			}
			if st := dev.State(); st.Connected || st.QueuePairs != 0 || st.MemoryRegions != 0 || st.Features != 0 {
				t.Errorf("State after drop = %+v", st)
			}
			// The next frontend starts clean and gets traffic through.
			f2, _ := serveDevice(t, dev)
			fg2 := newFakeGuest(t, 1)
			f2.startQEMU(fg2, linuxFeatures)
			fg2.rx(0).post(vhostusertest.Buf{WriteLen: 1526})
			fg2.tx(0).post(txChain(arpRequest(1), false)...)
			rec.next(t)
			fg2.rx(0).waitUsed()
		})
	}
}

// TestReplyAckReportsFailure follows vhost-user.rst "REPLY_ACK": a request
// with NEED_REPLY that fails is answered with a non-zero status (here a
// queue size that is not a power of two) before the device drops the
// frontend; the descriptors are closed.
func TestReplyAckReportsFailure(t *testing.T) {
	dev := newNetDevice(t, 1, newRecorder(nil))
	f, wait := serveDevice(t, dev)
	fg := newFakeGuest(t, 1)
	before := openFDs(t)
	f.startQEMU(fg, linuxFeatures)
	if !f.ack {
		t.Fatal("REPLY_ACK not negotiated")
	}
	for _, num := range []uint32{256, 128} {
		if st := f.setAck(vhostuser.SetVringNum, vhostuser.AppendVringState(nil, vhostuser.VringState{Index: 0, Num: num})); st != 0 {
			t.Fatalf("SET_VRING_NUM %d: status %d, want 0", num, st)
		}
	}
	if st := f.setAck(vhostuser.SetVringNum, vhostuser.AppendVringState(nil, vhostuser.VringState{Index: 0, Num: 100})); st == 0 {
		t.Fatal("SET_VRING_NUM 100: status 0, want failure")
	}
	if err := wait(); err == nil {
		t.Error("Serve returned nil after a failed request")
	}
	if after := openFDs(t); after != before {
		t.Errorf("%d descriptors before, %d after", before, after)
	}
}

// TestMalformedTXChainsAreCountedAndSkipped checks that chains the device
// cannot use (a buffer outside guest memory, a chain shorter than the
// virtio-net header, a TX chain with only device-writable buffers) are
// returned to the guest, counted in Stats().Errors, and do not stop the
// good frames around them.
func TestMalformedTXChainsAreCountedAndSkipped(t *testing.T) {
	rec := newRecorder(nil)
	dev := newNetDevice(t, 1, rec)
	f, _ := serveDevice(t, dev)
	fg := newFakeGuest(t, 1)
	f.startQEMU(fg, linuxFeatures)
	tx := fg.tx(0)
	good := func(tag byte) { tx.post(txChain(arpRequest(tag), false)...) }

	good(1)
	// A descriptor pointing past guest RAM.
	old := tx.drv.AvailIdx()
	head, _ := tx.drv.AddChain(vhostusertest.Buf{Data: make([]byte, 60)})
	tx.drv.SetDesc(head, outsideGP, 60, 0, 0)
	tx.notify(old)
	good(2)
	tx.post(vhostusertest.Buf{Data: make([]byte, 8)}) // shorter than the header
	tx.post(vhostusertest.Buf{WriteLen: 100})         // nothing to read
	good(3)

	for tag := byte(1); tag <= 3; tag++ {
		if got := rec.next(t); got.frame[41] != tag {
			t.Fatalf("handler got tag %d, want %d", got.frame[41], tag)
		}
	}
	for range 6 {
		if _, n := tx.waitUsed(); n != 0 {
			t.Errorf("TX chain returned with length %d", n)
		}
	}
	f.sync()
	rec.expectNone(t)
	if s := dev.Stats(); s.Errors != 3 || s.GuestTXPackets != 3 {
		t.Errorf("Stats = %+v, want 3 errors and 3 packets", s)
	}
}
