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
