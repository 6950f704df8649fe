package vhostuser_test

// Helpers for the device-level tests (net_test.go, netpoll_test.go,
// server_test.go, ch_replay_test.go): a fake guest with one split ring per
// virtqueue and its kick/call eventfds, a frontend that speaks for it, and
// a FrameHandler that records what the guest sent.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
	"golang.org/x/sys/unix"
)

const (
	qSize      = 256     // queue size used by the device tests
	ringStride = 0x4000  // guest memory per ring (desc+avail+used of 256 entries fit)
	dataStride = 0x40000 // buffer space per virtqueue
	netHdrLen  = 12      // struct virtio_net_hdr with num_buffers (VERSION_1)
	waitFor    = 5 * time.Second
)

// Feature sets a Linux guest behind QEMU 7.2 acks from what NetDevice
// offers (QEMU adds VHOST_USER_F_PROTOCOL_FEATURES itself).
var (
	linuxFeatures = vhostuser.Bit(vhostuser.FVersion1) | vhostuser.Bit(vhostuser.FProtocolFeatures) |
		vhostuser.Bit(vhostuser.FRingIndirectDesc) | vhostuser.Bit(vhostuser.FRingEventIdx) |
		vhostuser.Bit(vhostuser.NetFMrgRxbuf) | vhostuser.Bit(vhostuser.NetFMTU) |
		vhostuser.Bit(vhostuser.NetFStatus) | vhostuser.Bit(vhostuser.NetFGuestAnnounce)
	qemuProtocol = vhostuser.Bit(vhostuser.ProtocolFMQ) | vhostuser.Bit(vhostuser.ProtocolFLogShmfd) |
		vhostuser.Bit(vhostuser.ProtocolFRARP) | vhostuser.Bit(vhostuser.ProtocolFReplyAck) |
		vhostuser.Bit(vhostuser.ProtocolFNetMTU) | vhostuser.Bit(vhostuser.ProtocolFConfigureMemSlots) |
		vhostuser.Bit(vhostuser.ProtocolFStatus)
)

// vq is one virtqueue of the fake guest: the driver side of its ring and
// the test's ends of its kick and call eventfds.
type vq struct {
	t        testing.TB
	index    uint32
	drv      *vhostusertest.Driver
	kick     int    // the driver writes it
	call     int    // the device writes it
	consumed uint16 // used entries the driver has taken
	eventIdx bool   // VIRTIO_F_RING_EVENT_IDX negotiated
}

// fakeGuest is guest RAM holding 2*pairs virtqueues (RX even, TX odd).
type fakeGuest struct {
	t   testing.TB
	g   *vhostusertest.Guest
	vqs []*vq
}

func newFakeGuest(t testing.TB, pairs int) *fakeGuest {
	t.Helper()
	g := vhostusertest.NewGuest(t, guestGPA, guestUser, guestSize)
	fg := &fakeGuest{t: t, g: g}
	for i := 0; i < 2*pairs; i++ {
		data := uint64(dataGPA + i*dataStride)
		q := &vq{
			t:     t,
			index: uint32(i),
			drv:   vhostusertest.NewDriver(g, uint64(ringGPA+i*ringStride), qSize, data, data+dataStride),
			kick:  newEventfd(t),
			call:  newEventfd(t),
		}
		fg.vqs = append(fg.vqs, q)
	}
	return fg
}

func (fg *fakeGuest) rx(qp int) *vq { return fg.vqs[2*qp] }
func (fg *fakeGuest) tx(qp int) *vq { return fg.vqs[2*qp+1] }

// notify kicks the device unless it asked not to be (virtio 1.1, 2.6.10.1
// and 2.6.7.2 from the driver's side); old is avail->idx before the
// driver's latest additions.
func (q *vq) notify(old uint16) {
	idx := q.drv.AvailIdx()
	if q.eventIdx {
		if ev := q.drv.AvailEvent(); uint16(idx-ev-1) >= uint16(idx-old) {
			return
		}
	} else if q.drv.UsedFlags()&vhostuser.UsedFNoNotify != 0 {
		return
	}
	writeEventfd(q.t, q.kick)
}

// post adds a chain and kicks as a driver would.
func (q *vq) post(bufs ...vhostusertest.Buf) (uint16, []uint64) {
	old := q.drv.AvailIdx()
	head, addrs := q.drv.AddChain(bufs...)
	q.notify(old)
	return head, addrs
}

// waitUsed returns the next used element, sleeping on the call eventfd
// like a driver with interrupts enabled. Like Linux's virtqueue_enable_cb
// after a NAPI poll, it re-arms used_event at the entry it expects next,
// so the device's next publication is signalled. It fails the test after
// waitFor.
func (q *vq) waitUsed() (id, length uint32) {
	q.t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		q.drv.SetUsedEvent(q.consumed)
		if id, n, ok := q.drv.Used(); ok {
			q.consumed++
			q.drv.SetUsedEvent(q.consumed)
			return id, n
		}
		left := time.Until(deadline)
		if left <= 0 {
			q.t.Fatalf("vring %d: no used buffer within %v (used->idx %d, consumed %d)", q.index, waitFor, q.drv.UsedIdx(), q.consumed)
		}
		waitEventfd(q.t, q.call, min(left, 100*time.Millisecond))
	}
}

// expectNoUsed checks that the device has not returned anything more.
func (q *vq) expectNoUsed() {
	q.t.Helper()
	if idx := q.drv.UsedIdx(); idx != q.consumed {
		q.t.Fatalf("vring %d: used->idx %d, want %d (nothing new)", q.index, idx, q.consumed)
	}
}

// waitCall waits for the device to signal the call eventfd.
func (q *vq) waitCall() {
	q.t.Helper()
	if !waitEventfd(q.t, q.call, waitFor) {
		q.t.Fatalf("vring %d: call eventfd not signalled within %v", q.index, waitFor)
	}
}

// newEventfd returns a non-blocking eventfd closed when the test ends.
func newEventfd(t testing.TB) int {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func writeEventfd(t testing.TB, fd int) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], 1)
	if _, err := unix.Write(fd, b[:]); err != nil {
		t.Fatalf("write eventfd: %v", err)
	}
}

// waitEventfd waits up to d for fd to be readable and drains it.
func waitEventfd(t testing.TB, fd int, d time.Duration) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(pfd, int(d.Milliseconds()))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("poll eventfd: %v", err)
		}
		if n == 0 {
			return false
		}
		var b [8]byte
		unix.Read(fd, b[:])
		return true
	}
}

// testFrontend speaks vhost-user for a fakeGuest.
type testFrontend struct {
	t  testing.TB
	fe *vhostusertest.Frontend
	// ack sets NEED_REPLY on every request without a reply of its own
	// and checks the REPLY_ACK status (rust-vmm after negotiation; QEMU
	// for a few requests).
	ack bool
}

var errServeStuck = errors.New("Serve did not return")

// serveDevice runs dev.Serve on one end of a socket pair and returns a
// frontend on the other, and a function that waits for Serve's result
// (idempotent). When the test ends the frontend hangs up and Serve is
// waited for.
func serveDevice(t testing.TB, dev *vhostuser.NetDevice) (*testFrontend, func() error) {
	t.Helper()
	be, fe := vhostusertest.NewPair(t)
	done := make(chan error, 1)
	go func() { done <- dev.Serve(be) }()
	var (
		once   sync.Once
		result error
	)
	wait := func() error {
		once.Do(func() {
			select {
			case result = <-done:
			case <-time.After(waitFor):
				result = errServeStuck
			}
		})
		return result
	}
	t.Cleanup(func() {
		fe.Conn.Close()
		if err := wait(); errors.Is(err, errServeStuck) {
			t.Errorf("Serve did not return after the frontend hung up")
		}
	})
	return &testFrontend{t: t, fe: fe}, wait
}

// send sends a request with flags and returns nothing.
func (f *testFrontend) send(req vhostuser.Request, flags uint32, payload []byte, fds ...int) {
	f.t.Helper()
	if err := f.fe.Send(req, flags, payload, fds...); err != nil {
		f.t.Fatalf("send %v: %v", req, err)
	}
}

// reply reads a reply to req.
func (f *testFrontend) reply(req vhostuser.Request) vhostusertest.Reply {
	f.t.Helper()
	f.fe.Conn.SetReadDeadline(time.Now().Add(waitFor))
	r, err := f.fe.ReadReply()
	if err != nil {
		f.t.Fatalf("reply to %v: %v", req, err)
	}
	if r.Header.Request != req {
		f.t.Fatalf("reply to %v came as %v", req, r.Header.Request)
	}
	for _, fd := range r.FDs {
		unix.Close(fd)
	}
	return r
}

// get sends a request that has a u64 reply and returns it.
func (f *testFrontend) get(req vhostuser.Request) uint64 {
	f.t.Helper()
	f.send(req, 0, nil)
	v, err := f.reply(req).U64()
	if err != nil {
		f.t.Fatal(err)
	}
	return v
}

// set sends a request without a reply body; with f.ack it asks for and
// checks a REPLY_ACK.
func (f *testFrontend) set(req vhostuser.Request, payload []byte, fds ...int) {
	f.t.Helper()
	if !f.ack {
		f.send(req, 0, payload, fds...)
		return
	}
	if st := f.setAck(req, payload, fds...); st != 0 {
		f.t.Fatalf("%v: REPLY_ACK status %d", req, st)
	}
}

// setAck sends a request with NEED_REPLY and returns the ack status.
func (f *testFrontend) setAck(req vhostuser.Request, payload []byte, fds ...int) uint64 {
	f.t.Helper()
	f.send(req, vhostuser.FlagNeedReply, payload, fds...)
	v, err := f.reply(req).U64()
	if err != nil {
		f.t.Fatal(err)
	}
	return v
}

// sync waits until the device has handled every earlier request (one
// request at a time, in order: a reply means the rest are done).
func (f *testFrontend) sync() { f.t.Helper(); f.get(vhostuser.GetFeatures) }

func (f *testFrontend) setU64(req vhostuser.Request, v uint64) { f.t.Helper(); f.set(req, u64(v)) }

func (f *testFrontend) vringState(req vhostuser.Request, index, num uint32) {
	f.t.Helper()
	f.set(req, vhostuser.AppendVringState(nil, vhostuser.VringState{Index: index, Num: num}))
}

// getVringBase stops a ring and returns its base.
func (f *testFrontend) getVringBase(index uint32) uint32 {
	f.t.Helper()
	f.send(vhostuser.GetVringBase, 0, vhostuser.AppendVringState(nil, vhostuser.VringState{Index: index}))
	r := f.reply(vhostuser.GetVringBase)
	if len(r.Payload) != 8 || binary.LittleEndian.Uint32(r.Payload) != index {
		f.t.Fatalf("GET_VRING_BASE reply %x", r.Payload)
	}
	return binary.LittleEndian.Uint32(r.Payload[4:])
}

// Ring set-up steps, to be sent in any order.
type vringStep int

const (
	stepNum vringStep = iota
	stepBase
	stepAddr
	stepKick
	stepCall
	stepEnable
)

// qemuOrder is QEMU 7.2's vhost_virtqueue_start order; it enables the
// rings afterwards (vhost_net_start).
var qemuOrder = []vringStep{stepNum, stepBase, stepAddr, stepKick, stepCall}

// setupVring sends one ring's configuration in the given order.
func (f *testFrontend) setupVring(q *vq, base uint16, logUsed bool, steps ...vringStep) {
	f.t.Helper()
	for _, s := range steps {
		switch s {
		case stepNum:
			f.vringState(vhostuser.SetVringNum, q.index, qSize)
		case stepBase:
			f.vringState(vhostuser.SetVringBase, q.index, uint32(base))
		case stepAddr:
			f.set(vhostuser.SetVringAddr, vhostuser.AppendVringAddr(nil, q.drv.Addr(q.index, logUsed)))
		case stepKick:
			f.set(vhostuser.SetVringKick, u64(uint64(q.index)), q.kick)
		case stepCall:
			f.set(vhostuser.SetVringCall, u64(uint64(q.index)), q.call)
		case stepEnable:
			f.vringState(vhostuser.SetVringEnable, q.index, 1)
		}
	}
}

// negotiate is vhost_user_backend_init plus vhost_dev_init and the
// features part of vhost_dev_start, as QEMU 7.2 does it: it returns the
// acked features.
func (f *testFrontend) negotiate(want vhostuser.Features, protocol vhostuser.Features) vhostuser.Features {
	f.t.Helper()
	offered := vhostuser.Features(f.get(vhostuser.GetFeatures))
	if !offered.Has(vhostuser.FProtocolFeatures) {
		f.t.Fatalf("device does not offer PROTOCOL_FEATURES: %#x", uint64(offered))
	}
	p := vhostuser.Features(f.get(vhostuser.GetProtocolFeatures)) & protocol
	f.setU64(vhostuser.SetProtocolFeatures, uint64(p))
	f.ack = p.Has(vhostuser.ProtocolFReplyAck)
	f.set(vhostuser.SetOwner, nil)
	acked := offered & want
	f.setU64(vhostuser.SetFeatures, uint64(acked))
	return acked
}

// setMemTable sends the guest's RAM as a one-region memory table.
func (f *testFrontend) setMemTable(g *vhostusertest.Guest) {
	f.t.Helper()
	fd := g.DupFD(f.t)
	defer unix.Close(fd)
	f.set(vhostuser.SetMemTable, vhostuser.AppendMemoryTable(nil, vhostuser.MemoryTable{Regions: []vhostuser.MemoryRegion{g.Region}}), fd)
}

// startQEMU brings up every queue pair of fg as QEMU 7.2 does, and
// returns the acked features.
func (f *testFrontend) startQEMU(fg *fakeGuest, want vhostuser.Features) vhostuser.Features {
	f.t.Helper()
	acked := f.negotiate(want, qemuProtocol)
	f.setMemTable(fg.g)
	for _, q := range fg.vqs {
		q.eventIdx = acked.Has(vhostuser.FRingEventIdx)
		f.setupVring(q, 0, false, qemuOrder...)
	}
	for _, q := range fg.vqs {
		f.setupVring(q, 0, false, stepEnable)
	}
	f.sync()
	return acked
}

// Frames.

var (
	guestMAC   = [6]byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	serviceMAC = [6]byte{0x02, 0x76, 0x65, 0x6c, 0x6f, 0x01}
)

// arpRequest is a 42-byte ARP who-has from the guest for the service
// address (169.254.77.1), tagged so that frames can be told apart.
func arpRequest(tag byte) []byte {
	b := make([]byte, 0, 42)
	b = append(b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	b = append(b, guestMAC[:]...)
	b = append(b, 0x08, 0x06)                   // ARP
	b = append(b, 0x00, 0x01, 0x08, 0x00, 6, 4) // Ethernet, IPv4
	b = append(b, 0x00, 0x01)                   // request
	b = append(b, guestMAC[:]...)
	b = append(b, 169, 254, 77, 2)
	b = append(b, 0, 0, 0, 0, 0, 0)
	b = append(b, 169, 254, 77, tag)
	return b
}

// arpReply writes into reply the answer to an ARP request and returns its
// length; it allocates nothing.
func arpReply(req, reply []byte) int {
	if len(req) < 42 || req[12] != 0x08 || req[13] != 0x06 {
		return 0
	}
	n := copy(reply, req[:42])
	copy(reply[0:6], req[6:12])
	copy(reply[6:12], serviceMAC[:])
	reply[21] = 2 // reply
	copy(reply[22:28], serviceMAC[:])
	copy(reply[28:32], req[38:42])
	copy(reply[32:38], req[22:28])
	copy(reply[38:42], req[28:32])
	return n
}

// txChain is a TX buffer as Linux's virtio-net builds it: the header
// (zeroed: no offloads) and the frame, in one descriptor or two.
func txChain(frame []byte, split bool) []vhostusertest.Buf {
	hdr := make([]byte, netHdrLen)
	if split {
		return []vhostusertest.Buf{{Data: hdr}, {Data: frame}}
	}
	return []vhostusertest.Buf{{Data: append(hdr, frame...)}}
}

// recorder is a FrameHandler that hands copies of the guest's frames to
// the test and answers with reply (nil: no answer).
type recorder struct {
	frames chan seenFrame
	reply  func(qp int, frame, reply []byte) int
}

type seenFrame struct {
	qp    int
	frame []byte
}

func newRecorder(reply func(qp int, frame, reply []byte) int) *recorder {
	return &recorder{frames: make(chan seenFrame, 1024), reply: reply}
}

func (r *recorder) HandleFrame(qp int, frame, reply []byte) int {
	select {
	case r.frames <- seenFrame{qp, bytes.Clone(frame)}:
	default:
		panic("recorder: test did not read the frames")
	}
	if r.reply == nil {
		return 0
	}
	return r.reply(qp, frame, reply)
}

// next returns the next frame the guest sent.
func (r *recorder) next(t testing.TB) seenFrame {
	t.Helper()
	select {
	case f := <-r.frames:
		return f
	case <-time.After(waitFor):
		t.Fatalf("no frame reached the handler within %v", waitFor)
		return seenFrame{}
	}
}

func (r *recorder) expectNone(t testing.TB) {
	t.Helper()
	select {
	case f := <-r.frames:
		t.Fatalf("unexpected frame on queue pair %d: %x", f.qp, f.frame)
	default:
	}
}

func newNetDevice(t testing.TB, pairs int, h vhostuser.FrameHandler) *vhostuser.NetDevice {
	t.Helper()
	d, err := vhostuser.NewNetDevice(vhostuser.NetOptions{QueuePairs: pairs, Handler: h})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// rxFrame reads what the device wrote into a posted RX buffer: the
// virtio-net header and the frame.
func rxFrame(fg *fakeGuest, addr uint64, length uint32) (hdr, frame []byte) {
	b := fg.g.Bytes(addr, uint64(length))
	return b[:netHdrLen], b[netHdrLen:]
}

// numBuffers decodes virtio_net_hdr.num_buffers.
func numBuffers(hdr []byte) uint16 { return binary.LittleEndian.Uint16(hdr[10:12]) }

// eventually polls cond (for state that has no event to wait on) every
// millisecond and fails the test after waitFor.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, waitFor)
		}
		time.Sleep(time.Millisecond)
	}
}
