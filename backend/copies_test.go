package backend

import (
	"bytes"
	"context"
	"encoding/binary"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/guestproto"
	"github.com/veloce-io/veloce/internal/pkt"
	"github.com/veloce-io/veloce/vhostuser"
	vt "github.com/veloce-io/veloce/vhostuser/vhostusertest"
	"golang.org/x/sys/unix"
)

// The copies a message takes on its way into a VM: the README's "Copies
// on each path" rows for VM sinks, counted at every memmove site (the
// port's copyCount, the devices' NetStats.Copies).

// copyGuest is the guest address sessions of these tests come from.
var copyGuest = netip.MustParseAddrPort("169.254.77.2:40000")

// vmCall runs one control request of copyGuest on a running port, as its
// poller would (the reply is returned, not put on the ring).
func vmCall(t testing.TB, p *Port, m *guestproto.Message) guestproto.Result {
	t.Helper()
	var b [64]byte
	n, err := guestproto.PutRequest(b[:], m)
	if err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 4096)
	rn := p.handleGuest(copyGuest, b[:n], reply)
	if rn == 0 {
		t.Fatalf("no reply to %v", m.Type)
	}
	var r guestproto.Message
	if err := guestproto.Parse(reply[DatagramHeaderLen:rn], &r); err != nil {
		t.Fatal(err)
	}
	if r.Result.Status != guestproto.StatusOK {
		t.Fatalf("%v: status %v: %s", m.Type, r.Result.Status, r.Result.Message)
	}
	return r.Result
}

// vmSink opens a session, a stream and a sink on channel on p, for
// copyGuest, and returns the sink's id.
func vmSink(t testing.TB, p *Port, channel uint32) uint32 {
	t.Helper()
	sess := vmCall(t, p, &guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession}}).ID
	st := vmCall(t, p, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateStream, Session: sess}}).ID
	return vmCall(t, p, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateSink, Session: sess}, Stream: st, Channel: channel}).ID
}

// attach connects a well-behaved frontend to p with rxBufs RX buffers
// posted, and waits for the port's announcement (a gratuitous ARP, which
// the device copies onto the ring like any reply).
func attach(t *testing.T, p *Port, rxBufs int) *vt.NetPeer { return attachRing(t, p, rxBufs, false) }

// attachRing is attach, with packed virtqueues when packed is set.
func attachRing(t *testing.T, p *Port, rxBufs int, packed bool) *vt.NetPeer {
	t.Helper()
	g, err := vt.NewNetPeer(t, p.opts.Socket, vt.NetPeerOptions{Size: 4 << 20, Packed: packed})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.PostRX(rxBufs); err != nil {
		t.Fatal(err)
	}
	if _, err := g.RecvRX(5 * time.Second); err != nil {
		t.Fatalf("announcement: %v", err)
	}
	return g
}

// copiesOf is every copy the ports and their devices counted.
func copiesOf(ps ...*Port) uint64 {
	var n uint64
	for _, p := range ps {
		n += p.copyCount() + p.dev.Stats().Copies
	}
	return n
}

// recvDeliveries takes n frames off g's RX ring and checks each is a
// Deliver for sink whose payload is want(i).
func recvDeliveries(t *testing.T, g *vt.NetPeer, sink uint32, n int, want func(i int) []byte) {
	t.Helper()
	for i := 0; i < n; i++ {
		f, err := g.RecvRX(5 * time.Second)
		if err != nil {
			t.Fatalf("delivery %d: %v", i, err)
		}
		var m guestproto.Message
		if len(f) < DatagramHeaderLen || guestproto.Parse(f[DatagramHeaderLen:], &m) != nil || m.Type != guestproto.Deliver || m.ID != sink {
			t.Fatalf("frame %d is not a Deliver for sink %d: % x", i, sink, f)
		}
		if !bytes.Equal(m.Payload, want(i)) {
			t.Fatalf("delivery %d: payload % x, want % x", i, m.Payload, want(i))
		}
	}
}

func copyPayload(i int) []byte {
	b := bytes.Repeat([]byte{byte(i)}, 200)
	binary.LittleEndian.PutUint32(b, uint32(i))
	return b
}

// TestVMToVMIsOneCopy: guest 1 emits N messages on its TX ring, guest 2's
// sink gets them on its RX ring; each is copied once in all, from guest
// 1's TX buffer into guest 2's RX buffer (it was three: into guest 2's
// outbox, out of it, onto the ring).
func TestVMToVMIsOneCopy(t *testing.T) {
	for _, packed := range []bool{false, true} {
		name := "split"
		if packed {
			name = "packed"
		}
		t.Run(name, func(t *testing.T) { vmToVMCopies(t, packed) })
	}
}

func vmToVMCopies(t *testing.T, packed bool) {
	const n = 64
	rt := NewRuntime(RuntimeOptions{})
	p1 := startPort(t, PortOptions{Name: "vm1", Runtime: rt, Tenant: "t", Limits: noLimits})
	p2 := startPort(t, PortOptions{Name: "vm2", Runtime: rt, Tenant: "t", Limits: noLimits})
	g1 := attachRing(t, p1, 4, packed)
	g2 := attachRing(t, p2, n+4, packed)
	sink := vmSink(t, p2, 7)
	sess := vmCall(t, p1, &guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession}}).ID
	st := vmCall(t, p1, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateStream, Session: sess}}).ID
	src := vmCall(t, p1, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateSource, Session: sess}, Stream: st, Channel: 7}).ID

	before := copiesOf(p1, p2)
	emit := make([]byte, 2048)
	for i := 0; i < n; i++ {
		l, err := guestproto.PutEmit(emit, sess, src, uint64(i), copyPayload(i))
		if err != nil {
			t.Fatal(err)
		}
		frame := udpFrame(pkt.MAC(DefaultServiceMAC), tGuestIP, tServiceIP, copyGuest.Port(), DefaultServicePort, emit[:l])
		g1.AddTX(append(make([]byte, vt.NetHeaderLen), frame...))
	}
	if err := g1.KickTX(); err != nil {
		t.Fatal(err)
	}
	recvDeliveries(t, g2, sink, n, copyPayload)
	if err := g1.SettleTX(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if got := copiesOf(p1, p2) - before; got != n {
		t.Errorf("%d messages VM to VM took %d copies, want %d (one each)", n, got, n)
	}
	if q := p2.out.ready.Len(); q != 0 {
		t.Errorf("%d frames left in the receiver's outbox", q)
	}
}

// TestHostAppToVMIsOneCopy: a host application emits N messages from its
// TX slots to a VM's sink; each is copied once, from the slot into the
// guest's RX buffer.
func TestHostAppToVMIsOneCopy(t *testing.T) {
	const n = 64
	sock := t.TempDir() + "/app.sock"
	d, _ := startDaemonWith(t, func(o *DaemonOptions) {
		o.AppSocket = sock
		o.Ports[0].Tenant = HostTenant // the root application's tenant
		o.Ports[0].Limits = noLimits
	}, "vm")
	d.admin.mu.Lock()
	p := d.ports[0]
	d.admin.mu.Unlock()
	g := attach(t, p, n+4)
	sink := vmSink(t, p, 9)

	app := openApp(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := app.CreateStream(ctx, guestlib.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	src, err := st.CreateSource(ctx, 9)
	if err != nil {
		t.Fatal(err)
	}
	before := copiesOf(p)
	for i := 0; i < n; i++ {
		b, err := src.GetBufferContext(ctx, 200)
		if err != nil {
			t.Fatal(err)
		}
		copy(b.Data, copyPayload(i)) // the application writing its slot
		if _, err := src.Emit(b); err != nil {
			t.Fatal(err)
		}
	}
	recvDeliveries(t, g, sink, n, copyPayload)
	if got := copiesOf(p) - before; got != n {
		t.Errorf("%d messages host app to VM took %d copies, want %d (one each)", n, got, n)
	}
}

// TestVMToVMDirectPathDoesNotAllocate: an Emit from guest 1 (as its
// poller hands it over) written straight into guest 2's RX buffer
// allocates nothing.
func TestVMToVMDirectPathDoesNotAllocate(t *testing.T) {
	const runs = 100
	rt := NewRuntime(RuntimeOptions{})
	p1 := startPort(t, PortOptions{Name: "vm1", Runtime: rt, Tenant: "t", Limits: noLimits})
	p2 := startPort(t, PortOptions{Name: "vm2", Runtime: rt, Tenant: "t", Limits: noLimits})
	attach(t, p2, runs+8)
	vmSink(t, p2, 7)
	sess := vmCall(t, p1, &guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession}}).ID
	st := vmCall(t, p1, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateStream, Session: sess}}).ID
	src := vmCall(t, p1, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateSource, Session: sess}, Stream: st, Channel: 7}).ID
	emit := make([]byte, 2048)
	l, _ := guestproto.PutEmit(emit, sess, src, 1, copyPayload(1))
	reply := make([]byte, 4096)
	before := p2.copyCount()
	if a := testing.AllocsPerRun(runs, func() {
		if p1.handleGuest(copyGuest, emit[:l], reply) != 0 {
			t.Fatal("emit refused")
		}
	}); a != 0 {
		t.Errorf("direct VM to VM delivery: %v allocations per message", a)
	}
	if got := p2.copyCount() - before; got != runs+1 || p2.out.ready.Len() != 0 {
		t.Errorf("%d copies for %d messages, %d in the outbox: not all went straight to the RX ring", got, runs+1, p2.out.ready.Len())
	}
}

// TestVMToShrunkVMHarmsOnlyTheReceiver: guest 2 truncates its memory
// while guest 1 emits to its sink. The writes into guest 2's RX buffers
// happen on guest 1's poller; the fault there drops guest 2 alone: guest
// 1 is answered on, and its port keeps running.
func TestVMToShrunkVMHarmsOnlyTheReceiver(t *testing.T) {
	rt := NewRuntime(RuntimeOptions{})
	p1 := startPort(t, PortOptions{Name: "vm1", Runtime: rt, Tenant: "t", Limits: noLimits})
	p2 := startPort(t, PortOptions{Name: "vm2", Runtime: rt, Tenant: "t", Limits: noLimits})
	g1 := attach(t, p1, 4)
	g2 := attach(t, p2, 64)
	vmSink(t, p2, 7)
	sess := vmCall(t, p1, &guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession}}).ID
	st := vmCall(t, p1, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateStream, Session: sess}}).ID
	src := vmCall(t, p1, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateSource, Session: sess}, Stream: st, Channel: 7}).ID

	fd := g2.G.DupFD(t)
	if err := unix.Ftruncate(fd, 0); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	emit := make([]byte, 2048)
	for i := 0; i < 16; i++ {
		l, _ := guestproto.PutEmit(emit, sess, src, uint64(i), copyPayload(i))
		g1.AddTX(append(make([]byte, vt.NetHeaderLen), udpFrame(pkt.MAC(DefaultServiceMAC), tGuestIP, tServiceIP, copyGuest.Port(), DefaultServicePort, emit[:l])...))
	}
	if err := g1.KickTX(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "guest 2 dropped", func() bool { return p2.Info().State == "failed" || p2.Info().State == "waiting" })
	if err := g1.ARP(5 * time.Second); err != nil {
		t.Fatalf("guest 1 after guest 2's fault: %v", err)
	}
	t.Logf("guest 2 dropped for: %s", p2.Info().LastError) // on guest 1's poller (direct RX) or its own, whichever touched it first
	if s := p1.Info().State; s != "running" {
		t.Errorf("guest 1's port %s, want running", s)
	}
}

// BenchmarkVMToVMDirect is the daemon's work for one V2V message: guest
// 1's Emit frame through the link peer and the runtime, written into
// guest 2's RX buffer (what veloce-bench v2v's poller does per message).
func BenchmarkVMToVMDirect(b *testing.B) { vmToVMDirect(b, 0) }

// BenchmarkVMToVMDirectDataValid is BenchmarkVMToVMDirect to a guest
// that negotiated VIRTIO_NET_F_GUEST_CSUM (veloce-bench v2v's guests, a
// Linux guest under QEMU): its frames go marked DATA_VALID, unsummed.
func BenchmarkVMToVMDirectDataValid(b *testing.B) {
	vmToVMDirect(b, vhostuser.Bit(vhostuser.FVersion1)|vhostuser.Bit(vhostuser.FProtocolFeatures)|
		vhostuser.Bit(vhostuser.FRingIndirectDesc)|vhostuser.Bit(vhostuser.NetFGuestCsum))
}

// vmToVMDirect is the V2V benchmarks' body; feats are guest 2's features
// (0: vhostusertest's default).
func vmToVMDirect(b *testing.B, feats vhostuser.Features) {
	rt := NewRuntime(RuntimeOptions{})
	p1 := startPortTB(b, PortOptions{Name: "vm1", Runtime: rt, Tenant: "t", Limits: noLimits})
	p2 := startPortTB(b, PortOptions{Name: "vm2", Runtime: rt, Tenant: "t", Limits: noLimits})
	g2, err := vt.NewNetPeer(b, p2.opts.Socket, vt.NetPeerOptions{Size: 4 << 20, Features: feats})
	if err != nil {
		b.Fatal(err)
	}
	const batch = 128
	g2.RepostRX(1)
	vt.Kick(g2.Kick[0])
	for p2.Info().State != "running" || p2.dev.Stats().GuestRXPackets == 0 { // the announcement
		time.Sleep(time.Millisecond)
	}
	vmSink(b, p2, 7)
	sess := vmCall(b, p1, &guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession}}).ID
	st := vmCall(b, p1, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateStream, Session: sess}}).ID
	src := vmCall(b, p1, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateSource, Session: sess}, Stream: st, Channel: 7}).ID
	emit := make([]byte, 2048)
	l, _ := guestproto.PutEmit(emit, sess, src, 1, make([]byte, 64))
	frame := udpFrame(pkt.MAC(DefaultServiceMAC), tGuestIP, tServiceIP, copyGuest.Port(), DefaultServicePort, emit[:l])
	reply := make([]byte, 65536)
	g2.RX.SetAvailFlags(vhostuser.AvailFNoInterrupt) // a polling guest (DPDK's virtio PMD): no call per frame
	g2.RepostRX(batch)
	before := p2.copyCount()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i > 0 && i%batch == 0 {
			b.StopTimer()
			g2.RepostRX(batch)
			b.StartTimer()
		}
		if p1.HandleFrame(0, frame, reply) != 0 {
			b.Fatal("emit refused")
		}
	}
	b.StopTimer()
	if got := p2.copyCount() - before; got != uint64(b.N) || p2.out.ready.Len() != 0 {
		b.Fatalf("%d direct copies for %d messages (%d in the outbox)", got, b.N, p2.out.ready.Len())
	}
}

// startPortTB is devstate_test.go's startPort for a benchmark.
func startPortTB(tb testing.TB, opts PortOptions) *Port {
	tb.Helper()
	opts.Socket = filepath.Join(tb.TempDir(), opts.Name+".sock")
	p, err := NewPort(opts)
	if err != nil {
		tb.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// Large messages (DeliverFrag frames) into a VM: each frame is written
// straight into the guest's RX buffer while it has one posted and
// nothing waits ahead, the outbox taking the rest.

// largeFrags is how many frames a message of largeCopySize bytes takes.
const (
	largeCopySize = 39*guestproto.FragSize + 123
	largeFrags    = 40
)

// vmLargeSink is vmSink for a session whose guestlib takes large
// messages (LargeDeliveries, up to 1 MiB); it returns the session and the
// sink.
func vmLargeSink(t testing.TB, p *Port, channel uint32) (uint32, uint32) {
	t.Helper()
	sess := vmCall(t, p, &guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession}}).ID
	vmCall(t, p, &guestproto.Message{Header: guestproto.Header{Type: guestproto.LargeDeliveries, Session: sess}, ID: 1 << 20})
	st := vmCall(t, p, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateStream, Session: sess}}).ID
	return sess, vmCall(t, p, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateSink, Session: sess}, Stream: st, Channel: channel}).ID
}

// recvLarge takes the DeliverFrag frames of n messages for sink off g's
// RX ring, as guestlib joins them (in order, one message at a time, each
// frame of its message's source and sequence number), and checks that
// message i is want(i).
func recvLarge(t *testing.T, g *vt.NetPeer, sink uint32, n int, want func(i int) []byte) {
	t.Helper()
	for i := 0; i < n; i++ {
		var got []byte
		var source, seq uint64
		for fi, fc := 0, 1; fi < fc; fi++ {
			f, err := g.RecvRX(5 * time.Second)
			if err != nil {
				t.Fatalf("message %d, frame %d: %v", i, fi, err)
			}
			var m guestproto.Message
			if len(f) < DatagramHeaderLen || guestproto.Parse(f[DatagramHeaderLen:], &m) != nil || m.Type != guestproto.DeliverFrag || m.ID != sink {
				t.Fatalf("message %d, frame %d is not a DeliverFrag for sink %d: % x", i, fi, sink, f[:min(len(f), 80)])
			}
			if fi == 0 {
				fc, source, seq = int(m.FragCount), m.Source, m.Seq
			}
			if int(m.FragIndex) != fi || int(m.FragCount) != fc || m.Source != source || m.Seq != seq {
				t.Fatalf("message %d: frame %d/%d of %d/%d, source %d seq %d (want %d %d)", i, m.FragIndex, m.FragCount, fi, fc, m.Source, m.Seq, source, seq)
			}
			got = append(got, m.Payload...)
		}
		if !bytes.Equal(got, want(i)) {
			t.Fatalf("message %d: %d bytes, not the %d sent", i, len(got), len(want(i)))
		}
	}
}

func largeCopyPayload(i int) []byte { return bigMessage(uint64(i+1), largeCopySize) }

// TestHostAppToVMLargeIsOneCopyPerFrame: a host application emits N
// messages of 40 frames each to a VM's sink whose guest has RX buffers
// for all of them posted; every frame is copied once, from the
// application's slot run into the guest's RX buffer (it was three
// through the outbox: PutDeliverFrag into a slot, FillRX, the poller's
// copy onto the ring).
func TestHostAppToVMLargeIsOneCopyPerFrame(t *testing.T) {
	const n = 4
	sock := t.TempDir() + "/app.sock"
	d, _ := startDaemonWith(t, func(o *DaemonOptions) {
		o.AppSocket = sock
		o.Ports[0].Tenant = HostTenant
		o.Ports[0].Limits = noLimits
	}, "vm")
	d.admin.mu.Lock()
	p := d.ports[0]
	d.admin.mu.Unlock()
	g := attach(t, p, n*largeFrags+4)
	_, sink := vmLargeSink(t, p, 9)

	app := openApp(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := app.CreateStream(ctx, guestlib.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	src, err := st.CreateSource(ctx, 9)
	if err != nil {
		t.Fatal(err)
	}
	before, devBefore := copiesOf(p), p.dev.Stats().Copies
	for i := 0; i < n; i++ {
		b, err := src.GetBufferContext(ctx, largeCopySize)
		if err != nil {
			t.Fatal(err)
		}
		copy(b.Data, largeCopyPayload(i))
		if _, err := src.Emit(b); err != nil {
			t.Fatal(err)
		}
	}
	recvLarge(t, g, sink, n, largeCopyPayload)
	if got := copiesOf(p) - before; got != n*largeFrags {
		t.Errorf("%d messages of %d frames host app to VM took %d copies, want %d (one a frame)", n, largeFrags, got, n*largeFrags)
	}
	if dc := p.dev.Stats().Copies - devBefore; dc != 0 {
		t.Errorf("the device copied %d frames onto the ring: they went through the outbox", dc)
	}
	if got := p.Info().LargeSent; got != n {
		t.Errorf("port info: %d large messages sent, want %d", got, n)
	}
}

// TestVMToVMLargeIsTwoCopiesPerFrame: guest 1 emits N messages of 40
// EmitFrag frames on its TX ring to guest 2's sink: each frame is copied
// twice, into the sender's port's reassembly buffer and from there into
// guest 2's RX buffer (it was four: the reassembly and the outbox's three).
func TestVMToVMLargeIsTwoCopiesPerFrame(t *testing.T) {
	for _, packed := range []bool{false, true} {
		name := "split"
		if packed {
			name = "packed"
		}
		t.Run(name, func(t *testing.T) { vmToVMLargeCopies(t, packed) })
	}
}

// vmLargePair is two ports on one runtime: guest 2 has a large sink on
// channel 7 with rxBufs RX buffers posted, guest 1 a source on it.
type vmLargePair struct {
	p1, p2          *Port
	g1, g2          *vt.NetPeer
	sess, src, sink uint32
	sinkSess        uint32
}

func newVMLargePair(t *testing.T, rxBufs int, packed bool) *vmLargePair {
	t.Helper()
	rt := NewRuntime(RuntimeOptions{})
	v := &vmLargePair{}
	v.p1 = startPort(t, PortOptions{Name: "vm1", Runtime: rt, Tenant: "t", Limits: noLimits})
	v.p2 = startPort(t, PortOptions{Name: "vm2", Runtime: rt, Tenant: "t", Limits: noLimits})
	v.g1 = attachRing(t, v.p1, 4, packed)
	v.g2 = attachRing(t, v.p2, rxBufs, packed)
	v.sinkSess, v.sink = vmLargeSink(t, v.p2, 7)
	v.sess = vmCall(t, v.p1, &guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession}}).ID
	st := vmCall(t, v.p1, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateStream, Session: v.sess}}).ID
	v.src = vmCall(t, v.p1, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateSource, Session: v.sess}, Stream: st, Channel: 7}).ID
	return v
}

// emit hands guest 1's EmitFrag frames of payload to its port as its
// poller would, on the test's goroutine.
func (v *vmLargePair) emit(t *testing.T, token uint64, payload []byte) {
	t.Helper()
	reply := make([]byte, 4096)
	for _, f := range guestFrags(v.sess, v.src, token, payload) {
		if n := v.p1.handleGuest(copyGuest, f, reply); n != 0 {
			t.Fatalf("fragment answered: %v", outcomeOf(t, reply, n))
		}
	}
}

func vmToVMLargeCopies(t *testing.T, packed bool) {
	const n = 4
	v := newVMLargePair(t, n*largeFrags+4, packed)
	before, devBefore := copiesOf(v.p1, v.p2), v.p2.dev.Stats().Copies
	for i := 0; i < n; i++ {
		for _, f := range guestFrags(v.sess, v.src, uint64(i), largeCopyPayload(i)) {
			frame := udpFrame(pkt.MAC(DefaultServiceMAC), tGuestIP, tServiceIP, copyGuest.Port(), DefaultServicePort, f)
			v.g1.AddTX(append(make([]byte, vt.NetHeaderLen), frame...))
		}
		if err := v.g1.KickTX(); err != nil {
			t.Fatal(err)
		}
		if err := v.g1.SettleTX(5 * time.Second); err != nil { // the ring holds one message's frames at a time
			t.Fatal(err)
		}
	}
	recvLarge(t, v.g2, v.sink, n, largeCopyPayload)
	if got := copiesOf(v.p1, v.p2) - before; got != 2*n*largeFrags {
		t.Errorf("%d messages of %d frames VM to VM took %d copies, want %d (two a frame)", n, largeFrags, got, 2*n*largeFrags)
	}
	if dc := v.p2.dev.Stats().Copies - devBefore; dc != 0 {
		t.Errorf("the receiver's device copied %d frames onto the ring: they went through the outbox", dc)
	}
	if q := v.p2.out.ready.Len(); q != 0 {
		t.Errorf("%d frames left in the receiver's outbox", q)
	}
}

// TestVMToVMLargeFallsBackToOutbox: guest 2 has fewer RX buffers posted
// than a message has frames. The first frames go into them, the rest
// into the outbox (three copies each), nothing lost; a one-frame message
// emitted next, and the next large one, wait behind them, and guest 2
// gets everything in order once it posts more buffers.
func TestVMToVMLargeFallsBackToOutbox(t *testing.T) {
	const posted = 9
	v := newVMLargePair(t, posted+1, false) // and one for the announcement
	before, all := v.p2.copyCount(), copiesOf(v.p2)
	v.emit(t, 1, largeCopyPayload(0))
	if got, q := v.p2.copyCount()-before, v.p2.out.ready.Len(); got != largeFrags || q != largeFrags-posted {
		t.Fatalf("after one message: %d copies and %d frames in the outbox, want %d and %d", got, q, largeFrags, largeFrags-posted)
	}
	reply := make([]byte, 4096)
	l, _ := guestproto.PutEmit(reply, v.sess, v.src, 2, copyPayload(1))
	if n := v.p1.handleGuest(copyGuest, append([]byte(nil), reply[:l]...), reply); n != 0 {
		t.Fatalf("emit answered: %v", outcomeOf(t, reply, n))
	}
	v.emit(t, 3, largeCopyPayload(1))
	if err := v.g2.PostRX(2*largeFrags + 8); err != nil {
		t.Fatal(err)
	}
	recvLarge(t, v.g2, v.sink, 1, largeCopyPayload)
	recvDeliveries(t, v.g2, v.sink, 1, func(int) []byte { return copyPayload(1) })
	recvLarge(t, v.g2, v.sink, 1, func(int) []byte { return largeCopyPayload(1) })
	// Direct: posted frames, one copy each; the rest, the one-frame
	// message and the second large message through the outbox, three each.
	want := uint64(posted + 3*(largeFrags-posted) + 3 + 3*largeFrags)
	if got := copiesOf(v.p2) - all; got != want {
		t.Errorf("receiver's copies %d, want %d", got, want)
	}
}

// TestVMLargeAllOrNone: a large message the sink's credit cannot take
// whole, or the outbox could not hold whole, gets none of its frames
// onto the guest's ring, however many RX buffers it posted.
func TestVMLargeAllOrNone(t *testing.T) {
	v := newVMLargePair(t, 2*largeFrags+8, false)
	sk := v.p2.sessions.Get(v.sinkSess).sink(v.sink)
	reply := make([]byte, 4096)
	// A credit of one frame short of the message.
	l, _ := guestproto.PutCredit(reply, v.sinkSess, v.sink, 0, largeFrags-1)
	v.p2.handleGuest(copyGuest, append([]byte(nil), reply[:l]...), reply)
	before, rx := v.p2.copyCount(), v.p2.dev.Stats().GuestRXPackets
	if v.p2.deliver(sk, 1, 1, largeCopyPayload(0)) {
		t.Fatal("a message over the sink's credit was delivered")
	}
	if sk.creditWaits.Load() != 1 {
		t.Errorf("credit waits %d, want 1", sk.creditWaits.Load())
	}
	// Room for it, but the outbox could not take it whole.
	l, _ = guestproto.PutCredit(reply, v.sinkSess, v.sink, 0, 4*largeFrags)
	v.p2.handleGuest(copyGuest, append([]byte(nil), reply[:l]...), reply)
	var held []uint32
	for v.p2.out.slots.Free() >= largeFrags {
		id, _ := v.p2.out.slots.Get()
		held = append(held, id)
	}
	if v.p2.deliver(sk, 1, 1, largeCopyPayload(0)) {
		t.Fatal("a message the outbox could not hold was delivered")
	}
	if got, n := v.p2.copyCount()-before, v.p2.dev.Stats().GuestRXPackets-rx; got != 0 || n != 0 {
		t.Errorf("refused messages: %d copies, %d frames on the ring, want none", got, n)
	}
	for _, id := range held {
		v.p2.out.slots.Put(id)
	}
	if !v.p2.deliver(sk, 1, 1, largeCopyPayload(0)) {
		t.Fatal("a message with room was refused")
	}
	recvLarge(t, v.g2, v.sink, 1, largeCopyPayload)
	if i := sk.index.Load(); i != largeFrags {
		t.Errorf("sink's delivery index %d, want %d: refused messages took none", i, largeFrags)
	}
}

// TestVMLargeDirectPathDoesNotAllocate: a large message written straight
// into a guest's RX buffers, from a host application's slot (Port.deliver)
// or from the reassembly of guest 1's EmitFrag frames, allocates nothing.
func TestVMLargeDirectPathDoesNotAllocate(t *testing.T) {
	const runs, frags = 20, 3
	v := newVMLargePair(t, 2*(runs+1)*frags+8, false)
	sk := v.p2.sessions.Get(v.sinkSess).sink(v.sink)
	payload := bigMessage(1, 2*guestproto.FragSize+99)
	before := v.p2.copyCount()
	if a := testing.AllocsPerRun(runs, func() {
		if !v.p2.deliver(sk, 1, 1, payload) {
			t.Fatal("refused")
		}
	}); a != 0 {
		t.Errorf("direct large delivery: %v allocations per message", a)
	}
	frames := guestFrags(v.sess, v.src, 0, payload)
	reply := make([]byte, 4096)
	token := uint64(0)
	if a := testing.AllocsPerRun(runs, func() {
		token++
		for _, f := range frames {
			binary.LittleEndian.PutUint64(f[guestproto.HeaderLen+4:], token)
			if v.p1.handleGuest(copyGuest, f, reply) != 0 {
				t.Fatal("a fragment answered")
			}
		}
	}); a != 0 {
		t.Errorf("direct large VM to VM delivery: %v allocations per message", a)
	}
	if got, q := v.p2.copyCount()-before, v.p2.out.ready.Len(); got != 2*(runs+1)*frags || q != 0 {
		t.Errorf("%d copies for %d frames, %d in the outbox: not all went straight to the RX ring", got, 2*(runs+1)*frags, q)
	}
}

// BenchmarkVMLargeDeliver is the daemon's work for one message of 40
// frames to a VM's sink (Port.deliver, as from a host application's slot
// run): direct, every frame written into the guest's RX buffers; outbox,
// none posted, every frame built in an outbox slot and taken out of it by
// FillRX (two of the outbox path's three copies: the poller's copy onto
// the ring is not in it).
func BenchmarkVMLargeDeliver(b *testing.B) {
	for _, direct := range []bool{true, false} {
		name := "outbox"
		if direct {
			name = "direct"
		}
		b.Run(name, func(b *testing.B) { benchLargeDeliver(b, direct) })
	}
}

func benchLargeDeliver(b *testing.B, direct bool) {
	rt := NewRuntime(RuntimeOptions{})
	p := startPortTB(b, PortOptions{Name: "vm", Runtime: rt, Tenant: "t", Limits: noLimits})
	g, err := vt.NewNetPeer(b, p.opts.Socket, vt.NetPeerOptions{Size: 4 << 20})
	if err != nil {
		b.Fatal(err)
	}
	g.RepostRX(1)
	vt.Kick(g.Kick[0])
	for p.Info().State != "running" || p.dev.Stats().GuestRXPackets == 0 { // the announcement
		time.Sleep(time.Millisecond)
	}
	sess, sinkID := vmLargeSink(b, p, 7)
	sk := p.sessions.Get(sess).sink(sinkID)
	g.RX.SetAvailFlags(vhostuser.AvailFNoInterrupt)
	g.RepostRX(0)
	payload := largeCopyPayload(0)
	frame := make([]byte, 65536)
	before := p.copyCount()
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if direct {
			b.StopTimer()
			g.RepostRX(largeFrags)
			b.StartTimer()
		}
		if !p.deliver(sk, 1, uint64(i), payload) {
			b.Fatal("refused")
		}
		if !direct {
			for p.FillRX(0, frame) > 0 {
			}
		}
	}
	b.StopTimer()
	want := uint64(b.N) * largeFrags
	if !direct {
		want *= 2
	}
	if got := p.copyCount() - before; got != want {
		b.Fatalf("%d copies for %d messages, want %d", got, b.N, want)
	}
}
