package vhostuser_test

// Cloud Hypervisor cannot run here (no KVM), so these tests replay what
// its vhost-user-net frontend sends, from its source
// (cloud-hypervisor/cloud-hypervisor virtio-devices/src/vhost_user/net.rs,
// vu_common_ctrl.rs and mod.rs at ae44c297, with rust-vmm vhost 0.17's
// vhost/src/vhost_user/frontend.rs):
//
//   - Net::new: connect_vhost_user (client: connect, retrying every
//     100 ms for 60 s on ENOENT/ECONNREFUSED), SET_OWNER, GET_FEATURES,
//     then negotiate_features_vhost_user: acked = CH's features & the
//     backend's; GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES(MQ |
//     CONFIGURE_MEM_SLOTS | REPLY_ACK | INFLIGHT_SHMFD | LOG_SHMFD |
//     DEVICE_STATE | CONFIG & the backend's), after which rust-vmm sets
//     NEED_REPLY on every request; GET_QUEUE_NUM (MQ), refusing a backend
//     whose answer is below num_queues (2 per queue pair); GET_CONFIG only
//     with CONFIG.
//   - setup_vhost_user (activate): SET_FEATURES, SET_MEM_TABLE with every
//     region, SET_VRING_NUM for every queue, then per queue
//     SET_VRING_ADDR (flags 0), SET_VRING_BASE (the avail index),
//     SET_VRING_CALL, SET_VRING_KICK; then SET_VRING_ENABLE for all.
//   - memory hotplug: ADD_MEM_REG per new region (CONFIGURE_MEM_SLOTS).
//   - start_dirty_log: SET_LOG_BASE (a fresh sealed memfd of
//     last_ram_addr/0x8000+1 bytes; rust-vmm reads a 16-byte VhostUserLog
//     reply), SET_FEATURES | LOG_ALL, SET_VRING_ADDR with VHOST_VRING_F_LOG
//     and the used ring's guest address; dirty_log: a new SET_LOG_BASE
//     each round; stop_dirty_log: SET_VRING_ADDR without the flag,
//     SET_FEATURES without LOG_ALL.
//   - reconnect (EPOLLHUP on the socket): connect_vhost_user again, then
//     SET_OWNER, GET_FEATURES, SET_PROTOCOL_FEATURES with the saved value
//     (no GET_PROTOCOL_FEATURES) and setup_vhost_user; without IN_ORDER
//     the bases are the current avail indexes.

import (
	"encoding/binary"
	"errors"
	"net"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
	"golang.org/x/sys/unix"
)

// What Cloud Hypervisor offers a vhost-user-net backend (net.rs,
// DEFAULT_VIRTIO_FEATURES in mod.rs; no offloads configured).
var (
	chFeatures = vhostuser.Bit(vhostuser.NetFMrgRxbuf) | vhostuser.Bit(vhostuser.NetFCtrlVQ) |
		vhostuser.Bit(vhostuser.NetFGuestAnnounce) | vhostuser.Bit(vhostuser.NetFMAC) |
		vhostuser.Bit(vhostuser.NetFMTU) | vhostuser.Bit(vhostuser.NetFMQ) |
		vhostuser.Bit(vhostuser.FRingIndirectDesc) | vhostuser.Bit(vhostuser.FRingEventIdx) |
		vhostuser.Bit(vhostuser.FVersion1) | vhostuser.Bit(vhostuser.FInOrder) |
		vhostuser.Bit(vhostuser.FOrderPlatform) | vhostuser.Bit(vhostuser.FNotificationData) |
		vhostuser.Bit(vhostuser.FProtocolFeatures) | vhostuser.Bit(vhostuser.FLogAll)
	chProtocol = vhostuser.Bit(vhostuser.ProtocolFMQ) | vhostuser.Bit(vhostuser.ProtocolFConfigureMemSlots) |
		vhostuser.Bit(vhostuser.ProtocolFReplyAck) | vhostuser.Bit(vhostuser.ProtocolFInflightShmfd) |
		vhostuser.Bit(vhostuser.ProtocolFLogShmfd) | vhostuser.Bit(vhostuser.ProtocolFDeviceState) |
		vhostuser.Bit(vhostuser.ProtocolFConfig)
)

// chFrontend replays Cloud Hypervisor's side of one connection.
type chFrontend struct {
	*testFrontend
	fg        *fakeGuest
	regions   []*vhostusertest.Guest // every RAM region, boot RAM first
	numQueues int                    // virtqueues: 2 per queue pair
	acked     vhostuser.Features     // virtio features acked with the backend
	protocol  vhostuser.Features     // protocol features acked
	flags     uint32                 // rust-vmm hdr_flags: NEED_REPLY once negotiated
	inflight  *vhostuser.Inflight    // the inflight region's description, once fetched
	inflightF int                    // its fd (kept across reconnects, as CH does)
}

// request sends req with rust-vmm's header flags; for requests without a
// reply body it waits for the ack as wait_for_ack does.
func (c *chFrontend) request(req vhostuser.Request, payload []byte, fds ...int) {
	c.t.Helper()
	c.send(req, c.flags, payload, fds...)
	if !req.HasReply() && c.flags&vhostuser.FlagNeedReply != 0 && c.protocol.Has(vhostuser.ProtocolFReplyAck) {
		v, err := c.reply(req).U64()
		if err != nil || v != 0 {
			c.t.Fatalf("%v: ack %d, %v (rust-vmm: BackendInternalError)", req, v, err)
		}
	}
}

func (c *chFrontend) getU64(req vhostuser.Request) uint64 {
	c.t.Helper()
	c.send(req, c.flags, nil)
	v, err := c.reply(req).U64()
	if err != nil {
		c.t.Fatal(err)
	}
	return v
}

// connect is connect_vhost_user's tail and, on a first connection,
// negotiate_features_vhost_user; on a reconnection it replays
// set_protocol_features_vhost_user.
func (c *chFrontend) connect(reconnect bool) {
	c.t.Helper()
	c.flags = 0
	c.request(vhostuser.SetOwner, nil)
	backend := vhostuser.Features(c.getU64(vhostuser.GetFeatures))
	if !reconnect {
		c.acked = chFeatures & backend
		c.protocol = vhostuser.Features(c.getU64(vhostuser.GetProtocolFeatures)) & chProtocol
	}
	c.request(vhostuser.SetProtocolFeatures, u64(uint64(c.protocol)))
	if c.protocol.Has(vhostuser.ProtocolFReplyAck) {
		c.flags = vhostuser.FlagNeedReply
	}
	if !reconnect && c.protocol.Has(vhostuser.ProtocolFMQ) {
		if n := c.getU64(vhostuser.GetQueueNum); uint64(c.numQueues) > n {
			c.t.Fatalf("vhost-user-net requested too many queues (%d) since the backend only supports %d", c.numQueues, n)
		}
	}
}

// setup is setup_vhost_user.
func (c *chFrontend) setup() {
	c.t.Helper()
	c.request(vhostuser.SetFeatures, u64(uint64(c.acked)))
	var t vhostuser.MemoryTable
	var fds []int
	for _, g := range c.regions {
		t.Regions = append(t.Regions, g.Region)
		fd := g.DupFD(c.t)
		defer unix.Close(fd)
		fds = append(fds, fd)
	}
	c.request(vhostuser.SetMemTable, vhostuser.AppendMemoryTable(nil, t), fds...)
	// setup_vhost_user: inflight I/O tracking, when negotiated: the region
	// is fetched once and handed back on every (re)activation.
	if c.protocol.Has(vhostuser.ProtocolFInflightShmfd) {
		if c.inflight == nil {
			c.send(vhostuser.GetInflightFD, c.flags, vhostuser.AppendInflight(nil, vhostuser.Inflight{NumQueues: uint16(c.numQueues), QueueSize: qSize}))
			c.fe.Conn.SetReadDeadline(time.Now().Add(waitFor))
			r, err := c.fe.ReadReply()
			if err != nil || len(r.FDs) != 1 {
				c.t.Fatalf("GET_INFLIGHT_FD: %+v, %v", r, err)
			}
			in, err := (vhostuser.Message{Header: r.Header, Payload: r.Payload}).Inflight()
			if err != nil {
				c.t.Fatal(err)
			}
			c.inflight, c.inflightF = &in, r.FDs[0]
			fd := r.FDs[0]
			c.t.Cleanup(func() { unix.Close(fd) })
		}
		c.request(vhostuser.SetInflightFD, vhostuser.AppendInflight(nil, *c.inflight), c.inflightF)
	}
	for _, q := range c.fg.vqs {
		c.request(vhostuser.SetVringNum, vhostuser.AppendVringState(nil, vhostuser.VringState{Index: q.index, Num: qSize}))
	}
	for _, q := range c.fg.vqs {
		q.eventIdx = c.acked.Has(vhostuser.FRingEventIdx)
		a := q.drv.Addr(q.index, false)
		a.Log = 0 // log_addr: None
		c.request(vhostuser.SetVringAddr, vhostuser.AppendVringAddr(nil, a))
		c.request(vhostuser.SetVringBase, vhostuser.AppendVringState(nil, vhostuser.VringState{Index: q.index, Num: uint32(q.drv.AvailIdx())}))
		c.request(vhostuser.SetVringCall, u64(uint64(q.index)), q.call)
		c.request(vhostuser.SetVringKick, u64(uint64(q.index)), q.kick)
	}
	for _, q := range c.fg.vqs {
		c.request(vhostuser.SetVringEnable, vhostuser.AppendVringState(nil, vhostuser.VringState{Index: q.index, Num: 1}))
	}
}

// hotplug is add_memory_region.
func (c *chFrontend) hotplug(g *vhostusertest.Guest) {
	c.t.Helper()
	fd := g.DupFD(c.t)
	defer unix.Close(fd)
	c.request(vhostuser.AddMemReg, vhostuser.AppendMemRegion(nil, g.Region), fd)
	c.regions = append(c.regions, g)
}

// updateLogBase is update_log_base: a new log memfd sized as CH sizes it.
func (c *chFrontend) updateLogBase() *dirtyLog {
	c.t.Helper()
	var last uint64
	for _, g := range c.regions {
		last = max(last, g.Region.GuestAddr+g.Region.Size-1)
	}
	size := last/(vhostuser.LogPageSize*8) + 1
	fd, err := unix.MemfdCreate("vhost_user_dirty_log", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		c.t.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_GROW|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL); err != nil {
		c.t.Fatal(err)
	}
	b, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { unix.Munmap(b) })
	c.send(vhostuser.SetLogBase, c.flags, vhostuser.AppendLog(nil, vhostuser.Log{Size: size}), fd)
	// recv_reply::<VhostUserLog>: exactly 16 bytes, mmap_size non-zero.
	r := c.reply(vhostuser.SetLogBase)
	if len(r.Payload) != 16 || binary.LittleEndian.Uint64(r.Payload) == 0 {
		c.t.Fatalf("SET_LOG_BASE reply payload %x: rust-vmm wants a VhostUserLog", r.Payload)
	}
	return &dirtyLog{fd: fd, bitmap: b}
}

// setVringLogging is set_vring_logging.
func (c *chFrontend) setVringLogging(on bool) {
	c.t.Helper()
	for _, q := range c.fg.vqs {
		a := q.drv.Addr(q.index, on)
		if !on {
			a.Log = 0
		}
		c.request(vhostuser.SetVringAddr, vhostuser.AppendVringAddr(nil, a))
	}
}

// postRXAt posts a receive buffer at gpa (in any region).
func postRXAt(q *vq, desc uint16, gpa uint64, n uint32) {
	old := q.drv.AvailIdx()
	q.drv.SetDesc(desc, gpa, n, vhostuser.DescFWrite, 0)
	q.drv.Offer(desc)
	q.notify(old)
}

const (
	hotplugGPA  = 0x1_0000_0000 // hotplugged RAM, above 4 GiB
	hotplugUser = 0x7f10_0000_0000
	hotplugSize = 1 << 20
)

// TestCloudHypervisorNetFrontend replays a Cloud Hypervisor guest's life
// against a NetDevice with two queue pairs: negotiation (the device offers
// a subset of what CH asks for), activation with a two-region memory
// table, memory hotplug with ADD_MEM_REG and traffic into hotplugged RAM,
// REM_MEM_REG while the rings run, and a migration's dirty logging with
// the log memfd rotated every round.
func TestCloudHypervisorNetFrontend(t *testing.T) {
	rec := newRecorder(func(_ int, frame, reply []byte) int { return arpReply(frame, reply) })
	dev := newNetDevice(t, 2, rec)
	tf, wait := serveDevice(t, dev)
	fg := newFakeGuest(t, 2)
	// Boot RAM in two regions (below and above a hole), as CH's
	// GuestMemoryMmap holds them; the rings live in the first.
	low := fg.g
	high := vhostusertest.NewGuest(t, 0x8000_0000, 0x7f08_0000_0000, 1<<20)
	c := &chFrontend{testFrontend: tf, fg: fg, regions: []*vhostusertest.Guest{low, high}, numQueues: 4}

	c.connect(false)
	wantProto := vhostuser.Bit(vhostuser.ProtocolFMQ) | vhostuser.Bit(vhostuser.ProtocolFConfigureMemSlots) |
		vhostuser.Bit(vhostuser.ProtocolFReplyAck) | vhostuser.Bit(vhostuser.ProtocolFLogShmfd) | vhostuser.Bit(vhostuser.ProtocolFInflightShmfd)
	if c.protocol != wantProto {
		t.Errorf("acked protocol features %#x, want %#x (MQ, CONFIGURE_MEM_SLOTS, REPLY_ACK, LOG_SHMFD, INFLIGHT_SHMFD)", uint64(c.protocol), uint64(wantProto))
	}
	wantFeatures := chFeatures &^ (vhostuser.Bit(vhostuser.NetFCtrlVQ) | vhostuser.Bit(vhostuser.NetFMAC) |
		vhostuser.Bit(vhostuser.FInOrder) | vhostuser.Bit(vhostuser.FOrderPlatform) | vhostuser.Bit(vhostuser.FNotificationData))
	if c.acked != wantFeatures {
		t.Errorf("acked features %#x, want %#x", uint64(c.acked), uint64(wantFeatures))
	}
	// CH never sets LOG_ALL at activation; it is acked only while logging.
	c.acked &^= vhostuser.Bit(vhostuser.FLogAll)
	c.setup()
	if st := dev.State(); st.QueuePairs != 2 || st.MemoryRegions != 2 || st.ProtocolFeatures != wantProto {
		t.Fatalf("State after activation = %+v", st)
	}

	// exchange gets an ARP request through queue pair qp with the reply
	// in a buffer at rxGPA.
	desc := uint16(100)
	exchange := func(qp int, rxGPA uint64, tag byte) {
		t.Helper()
		desc++
		postRXAt(fg.rx(qp), desc, rxGPA, 1526)
		fg.tx(qp).post(txChain(arpRequest(tag), false)...)
		if got := rec.next(t); got.qp != qp || got.frame[41] != tag {
			t.Fatalf("handler got qp %d tag %d, want qp %d tag %d", got.qp, got.frame[41], qp, tag)
		}
		fg.tx(qp).waitUsed()
		if id, n := fg.rx(qp).waitUsed(); id != uint32(desc) || n != netHdrLen+42 {
			t.Fatalf("RX used head %d len %d", id, n)
		}
		if b := c.regionBytes(rxGPA+netHdrLen, 42); b[31] != tag {
			t.Fatalf("reply at %#x: %x", rxGPA, b)
		}
	}
	exchange(0, high.Region.GuestAddr+0x1000, 1)
	exchange(1, dataGPA+4*dataStride, 2)

	// Memory hotplug: two regions, then traffic into both.
	hot1 := vhostusertest.NewGuest(t, hotplugGPA, hotplugUser, hotplugSize)
	hot2 := vhostusertest.NewGuest(t, hotplugGPA+hotplugSize, hotplugUser+hotplugSize, hotplugSize)
	c.hotplug(hot1)
	c.hotplug(hot2)
	if n := dev.State().MemoryRegions; n != 4 {
		t.Fatalf("MemoryRegions = %d after two ADD_MEM_REG, want 4", n)
	}
	exchange(0, hot1.Region.GuestAddr+0x800, 3)
	exchange(1, hot2.Region.GuestAddr+0x800, 4)

	// REM_MEM_REG of a region the rings do not use, while they run (CH
	// does not unplug; QEMU does with CONFIGURE_MEM_SLOTS).
	c.request(vhostuser.RemMemReg, vhostuser.AppendMemRegion(nil, hot1.Region))
	c.regions = []*vhostusertest.Guest{low, high, hot2}
	if st := dev.State(); st.MemoryRegions != 3 || st.QueuePairs != 2 {
		t.Fatalf("State after REM_MEM_REG = %+v", st)
	}
	exchange(0, hot2.Region.GuestAddr+0x2000, 5)
	exchange(1, low.Region.GuestAddr+0x20_0000, 6)

	// Live migration: start_dirty_log, dirty_log rounds, stop_dirty_log.
	log := c.updateLogBase()
	c.request(vhostuser.SetFeatures, u64(uint64(c.acked|vhostuser.Bit(vhostuser.FLogAll))))
	c.setVringLogging(true)
	if !dev.State().Logging {
		t.Fatal("not logging after start_dirty_log")
	}
	for round := byte(0); round < 2; round++ {
		rxGPA := hot2.Region.GuestAddr + 0x4000 + uint64(round)*0x1000
		exchange(int(round), rxGPA, 10+round)
		for _, gpa := range []uint64{rxGPA, fg.rx(int(round)).drv.UsedGPA, fg.tx(int(round)).drv.UsedGPA} {
			if !log.marked(gpa) {
				t.Errorf("round %d: page of %#x not marked", round, gpa)
			}
		}
		// dirty_log: CH hands a new log and reads the old one.
		old := log
		log = c.updateLogBase()
		clear(old.bitmap)
		exchange(int(round), rxGPA, 20+round)
		if old.count() != 0 || !log.marked(rxGPA) {
			t.Errorf("round %d: writes after the log rotation went to the old log (%d bits) or not to the new one", round, old.count())
		}
	}
	c.setVringLogging(false)
	c.request(vhostuser.SetFeatures, u64(uint64(c.acked)))
	clear(log.bitmap)
	exchange(0, hot2.Region.GuestAddr+0x8000, 30)
	if n := log.count(); n != 0 || dev.State().Logging {
		t.Errorf("stop_dirty_log: %d pages marked afterwards, Logging %v", n, dev.State().Logging)
	}
	if s := dev.Stats(); s.Errors != 0 || s.Drops != 0 {
		t.Errorf("Stats = %+v", s)
	}
	c.fe.Conn.Close()
	if err := wait(); err != nil {
		t.Errorf("Serve = %v after CH hung up", err)
	}
}

// regionBytes reads guest memory in whichever region holds gpa.
func (c *chFrontend) regionBytes(gpa, n uint64) []byte {
	for _, g := range c.regions {
		if gpa >= g.Region.GuestAddr && gpa+n <= g.Region.GuestAddr+g.Region.Size {
			return g.Bytes(gpa, n)
		}
	}
	c.t.Fatalf("gpa %#x not in guest RAM", gpa)
	return nil
}

// chConnect is connect_vhost_user's client loop: connect every 100 ms
// while the socket is missing or refuses; anything else is fatal. It
// reports the first failed attempt on firstFail.
func chConnect(path string, firstFail chan<- struct{}) (*net.UnixConn, int, error) {
	const retry, timeout = 100 * time.Millisecond, 60 * time.Second
	start := time.Now()
	tick := time.NewTicker(retry)
	defer tick.Stop()
	for attempt := 1; ; attempt++ {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
		if err == nil {
			return c, attempt, nil
		}
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.EINTR) {
			return nil, attempt, err
		}
		if attempt == 1 && firstFail != nil {
			close(firstFail)
		}
		if time.Since(start) >= timeout {
			return nil, attempt, errors.New("timed out waiting for vhost-user connection")
		}
		<-tick.C
	}
}

// TestCloudHypervisorReconnectsAfterDaemonRestart replays CH's reconnect:
// the daemon (a listening Server) stops and starts again while the
// frontend retries every 100 ms; CH gets back in with its saved
// features, bases from the avail indexes, and traffic flows again.
func TestCloudHypervisorReconnectsAfterDaemonRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "veloce.sock")
	handler := func(_ int, frame, reply []byte) int { return arpReply(frame, reply) }
	rec := newRecorder(handler)
	stop := runServer(t, &vhostuser.Server{Path: path, Device: newNetDevice(t, 1, rec)})

	fg := newFakeGuest(t, 1)
	conn, _, err := chConnect(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &chFrontend{testFrontend: &testFrontend{t: t, fe: &vhostusertest.Frontend{Conn: conn}}, fg: fg, regions: []*vhostusertest.Guest{fg.g}, numQueues: 2}
	c.connect(false)
	c.acked &^= vhostuser.Bit(vhostuser.FLogAll)
	c.setup()
	exchangeARP(t, fg, rec, 1)
	// RX buffers the guest posted before the restart: CH's new base
	// (the avail index) skips them.
	fg.rx(0).post(vhostusertest.Buf{WriteLen: 1526})

	// The daemon restarts.
	began := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	conn.SetReadDeadline(time.Now().Add(waitFor))
	if n, err := conn.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("old connection: read %d, %v; want EOF (CH's EPOLLHUP)", n, err)
	}
	conn.Close()
	type result struct {
		c        *net.UnixConn
		attempts int
		err      error
	}
	firstFail := make(chan struct{})
	got := make(chan result, 1)
	go func() {
		c, n, err := chConnect(path, firstFail)
		got <- result{c, n, err}
	}()
	select {
	case <-firstFail: // the frontend is retrying against no daemon
	case r := <-got:
		t.Fatalf("connected (%v) while no daemon ran", r.err)
	case <-time.After(waitFor):
		t.Fatal("frontend made no attempt")
	}
	rec2 := newRecorder(handler)
	runServer(t, &vhostuser.Server{Path: path, Device: newNetDevice(t, 1, rec2)})
	var r result
	select {
	case r = <-got:
	case <-time.After(waitFor):
		t.Fatal("frontend did not get back in")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.c.Close() })
	c.testFrontend = &testFrontend{t: t, fe: &vhostusertest.Frontend{Conn: r.c}}
	c.connect(true)
	c.setup()
	exchangeARP(t, fg, rec2, 2)
	t.Logf("daemon restart: frontend back in after %d attempts; traffic flowing %v after the old daemon began stopping", r.attempts, time.Since(began))
}
