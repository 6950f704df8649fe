package backend

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/guestproto"
)

// guestFrags returns the EmitFrag frames of payload, as guestlib in a VM
// sends them.
func guestFrags(sess, src uint32, token uint64, payload []byte) [][]byte {
	count := (len(payload) + guestproto.FragSize - 1) / guestproto.FragSize
	frames := make([][]byte, count)
	for i := range frames {
		b := make([]byte, guestproto.EmitFragOverhead+guestproto.FragSize)
		part := payload[i*guestproto.FragSize : min((i+1)*guestproto.FragSize, len(payload))]
		n, err := guestproto.PutEmitFrag(b, sess, src, token, uint16(i), uint16(count), part)
		if err != nil {
			panic(err)
		}
		frames[i] = b[:n]
	}
	return frames
}

// outcomeOf parses an Outcome reply frame of n bytes.
func outcomeOf(t *testing.T, reply []byte, n int) guestproto.Status {
	t.Helper()
	if n == 0 {
		return guestproto.StatusOK
	}
	var m guestproto.Message
	if err := guestproto.Parse(reply[DatagramHeaderLen:n], &m); err != nil || m.Type != guestproto.Outcome {
		t.Fatalf("reply %x: %v", reply[:n], err)
	}
	return m.Status
}

// TestGuestLargeEmitsReassembled (issue 13, item 5, from a VM): a guest
// that sends messages of up to 1 MiB as EmitFrag frames, out of order and
// with duplicates, to its port; the port reassembles them and a host
// application's sink gets each whole, in order, byte for byte. The
// OpenSession reply tells the guest the daemon's limit; a message over it
// is refused (one Outcome), as are fragments for an unknown source.
func TestGuestLargeEmitsReassembled(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "app.sock")
	d, _ := startDaemonWith(t, func(o *DaemonOptions) { o.AppSocket = sock })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	app := openApp(t, sock)
	ast, _ := app.CreateStream(ctx, guestlib.StreamOptions{})
	sink, err := ast.CreateSink(ctx, 31, guestlib.SinkOptions{Queue: 64})
	if err != nil {
		t.Fatal(err)
	}

	guest := netip.MustParseAddrPort("169.254.77.2:40100")
	p, call := guestPortOn(t, d.rt, PortOptions{Name: "vm", Tenant: HostTenant}, guest)
	var openReply guestproto.Message
	{
		var b [64]byte
		n, _ := guestproto.PutRequest(b[:], &guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession, RequestID: 9}})
		reply := make([]byte, 4096)
		rn := p.handleGuest(guest, b[:n], reply)
		if err := guestproto.Parse(reply[DatagramHeaderLen:rn], &openReply); err != nil {
			t.Fatal(err)
		}
	}
	if max, ok := guestproto.ParseMaxMessage(openReply.Result.Plugin); !ok || max != DefaultMaxMessage {
		t.Fatalf("open reply's largest message %d (%v), want %d", max, ok, DefaultMaxMessage)
	}
	sess := openReply.Result.ID
	st := call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateStream, Session: sess}}).ID
	src := call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateSource, Session: sess}, Stream: st, Channel: 31}).ID

	reply := make([]byte, 4096)
	rng := rand.New(rand.NewPCG(1, 2))
	sizes := []int{DefaultMaxMessage, guestlib.MaxMessage + 1, 2*guestproto.FragSize + 1, DefaultMaxMessage - 1, 100000}
	for i, size := range sizes {
		seq := uint64(i + 1)
		frames := guestFrags(sess, src, seq, bigMessage(seq, size))
		order := rng.Perm(len(frames))
		order = append(order, order[0], order[len(order)/2]) // duplicates, after the message completed
		for _, k := range order {
			if st := outcomeOf(t, reply, p.handleGuest(guest, frames[k], reply)); st != guestproto.StatusOK {
				t.Fatalf("message %d: fragment %d answered %d", seq, k, st)
			}
		}
		m, err := sink.Consume(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m.Seq != seq || !bytes.Equal(m.Data, bigMessage(seq, size)) {
			t.Fatalf("message %d: seq %d, %d bytes (want %d)", seq, m.Seq, len(m.Data), size)
		}
		m.Release()
	}
	// Over the limit: a message of more fragments than the limit takes is
	// refused at its first fragment; one of as many, but more bytes, at
	// its last; the fragments between are not answered.
	frames := guestFrags(sess, src, 98, make([]byte, 2*DefaultMaxMessage))
	if st := outcomeOf(t, reply, p.handleGuest(guest, frames[0], reply)); st != guestproto.StatusTooLarge {
		t.Errorf("first fragment of a message of too many fragments: status %d", st)
	}
	if st := outcomeOf(t, reply, p.handleGuest(guest, frames[1], reply)); st != guestproto.StatusOK {
		t.Errorf("second fragment of a message over the limit: status %d, want no outcome", st)
	}
	frames = guestFrags(sess, src, 99, make([]byte, DefaultMaxMessage+1))
	if st := outcomeOf(t, reply, p.handleGuest(guest, frames[len(frames)-1], reply)); st != guestproto.StatusTooLarge {
		t.Errorf("last fragment of a message one byte over the limit: status %d", st)
	}
	// An unknown source.
	frames = guestFrags(sess, 4242, 1, make([]byte, 3000))
	if st := outcomeOf(t, reply, p.handleGuest(guest, frames[0], reply)); st != guestproto.StatusNotFound {
		t.Errorf("fragment for an unknown source: status %d", st)
	}
	if s := p.large.stats(); s.Complete != uint64(len(sizes)) || s.Duplicates != 2*uint64(len(sizes)) || s.TooLarge == 0 {
		t.Errorf("reassembly counters %+v", s)
	}
	if _, ok := sink.TryConsume(); ok {
		t.Error("a message more than sent")
	}
}

// TestGuestLargeEmitPathAllocatesNothing: past the reassembly buffers'
// first use, a guest's large message costs no allocation on its way
// through the port and the runtime.
func TestGuestLargeEmitPathAllocatesNothing(t *testing.T) {
	guest := netip.MustParseAddrPort("169.254.77.2:40101")
	rt := NewRuntime(RuntimeOptions{})
	p, call := guestPortOn(t, rt, PortOptions{Name: "vm", Tenant: HostTenant}, guest)
	sess := call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession}}).ID
	st := call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateStream, Session: sess}}).ID
	src := call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateSource, Session: sess}, Stream: st, Channel: 5}).ID
	check := &orderCheck{last: map[uint64]uint64{}}
	rs := rt.OpenSession(check, netip.AddrPort{})
	rst, _ := rs.CreateStream(StreamOptions{})
	rs.CreateSink(rst.ID, 5)
	reply := make([]byte, 4096)
	token := uint64(0)
	payload := bigMessage(1, 64<<10)
	frames := guestFrags(sess, src, 0, payload)
	step := func() {
		token++
		for _, f := range frames {
			// The token: bytes 4..11 of the body.
			for i := range 8 {
				f[guestproto.HeaderLen+4+i] = byte(token >> (8 * i))
			}
			if p.handleGuest(guest, f, reply) != 0 {
				t.Fatal("a fragment answered")
			}
		}
	}
	for range 10 {
		step()
	}
	if a := testing.AllocsPerRun(100, step); a != 0 {
		t.Errorf("%.2f allocations per large message", a)
	}
	if check.got.Load() != 111 { // AllocsPerRun runs step once more
		t.Errorf("%d messages delivered, want 111", check.got.Load())
	}
}

// servePortOnUDP feeds the datagrams a UDP socket on loopback receives
// to p as its poller feeds a guest's (the link's frames aside), and sends
// the answers back: guestlib's virtio transport, over loopback instead of
// a VM's link.
func servePortOnUDP(t *testing.T, p *Port) netip.AddrPort {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadBuffer(16 << 20)
	t.Cleanup(func() { c.Close() })
	go func() {
		buf, reply := make([]byte, 65536), make([]byte, 4096)
		for {
			n, src, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if rn := p.handleGuest(src, buf[:n], reply); rn > 0 {
				c.WriteToUDPAddrPort(reply[DatagramHeaderLen:rn], src)
			}
		}
	}()
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// TestGuestlibVirtioEmitsLargeMessages: guestlib's virtio transport (the
// VM's side) learns the daemon's limit at open and sends messages of up
// to 1 MiB as fragments; the port reassembles them for a host
// application's sink: every message whole, in order, byte for byte.
// (Over loopback UDP instead of a VM's link; the VM test is
// TestVMSendsLargeMessagesToHostProcess.)
func TestGuestlibVirtioEmitsLargeMessages(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "app.sock")
	d, _ := startDaemonWith(t, func(o *DaemonOptions) { o.AppSocket = sock })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	app := openApp(t, sock)
	ast, _ := app.CreateStream(ctx, guestlib.StreamOptions{})
	sink, err := ast.CreateSink(ctx, 32, guestlib.SinkOptions{Queue: 64})
	if err != nil {
		t.Fatal(err)
	}
	p, _ := guestPortOn(t, d.rt, PortOptions{Name: "vm", Tenant: HostTenant}, netip.AddrPort{})
	vm, err := guestlib.Open(ctx, guestlib.Options{Service: servePortOnUDP(t, p)})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if vm.MaxMessage() != DefaultMaxMessage {
		t.Fatalf("virtio session's largest message %d, want %d", vm.MaxMessage(), DefaultMaxMessage)
	}
	vst, err := vm.CreateStream(ctx, guestlib.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	src, err := vst.CreateSource(ctx, 32)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.GetBuffer(DefaultMaxMessage + 1); !errors.Is(err, guestlib.ErrTooLarge) {
		t.Errorf("GetBuffer over the limit: %v", err)
	}
	sizes := []int{DefaultMaxMessage, guestlib.MaxMessage + 1, 100, 3*guestproto.FragSize + 7, DefaultMaxMessage - 3}
	for i, size := range sizes {
		seq := uint64(i + 1)
		b, err := src.GetBuffer(size)
		if err != nil {
			t.Fatal(err)
		}
		fillBig(b.Data, seq)
		if _, err := src.Emit(b); err != nil {
			t.Fatal(err)
		}
		m, err := sink.Consume(ctx)
		if err != nil {
			t.Fatalf("message %d: %v (port reassembly %+v)", seq, err, p.large.stats())
		}
		if m.Seq != seq || !bytes.Equal(m.Data, bigMessage(seq, size)) {
			t.Fatalf("message %d: seq %d, %d bytes (want %d)", seq, m.Seq, len(m.Data), size)
		}
		m.Release()
	}
	// Cut to a frame, a large buffer goes as one Emit.
	b, _ := src.GetBuffer(DefaultMaxMessage)
	b.Truncate(copy(b.Data, "short"))
	src.Emit(b)
	if m, err := sink.Consume(ctx); err != nil || string(m.Data) != "short" {
		t.Fatalf("a truncated large buffer: %v", err)
	}
}
