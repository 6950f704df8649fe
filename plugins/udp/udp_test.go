package udp

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/internal/wire"
)

// sizes are the datagram sizes of a 32-packet batch: the bare header, small
// and MTU-sized messages, and datagrams far beyond an Ethernet MTU.
func batchSizes() []int {
	s := []int{wire.HeaderLen, wire.HeaderLen + 1, 64, 100, 512, 1400, 1472, 1500, 4000, 9000, 32000, 65000}
	for len(s) < 32 {
		s = append(s, wire.HeaderLen+len(s)*97)
	}
	return s
}

func TestBatchOverLoopback(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(addr, func(t *testing.T) {
			a := newPlugin(t, addr, Options{})
			b := newPlugin(t, addr, Options{})
			sizes := batchSizes()
			src := wire.NewSourceID(1, 1)
			pkts := make([]wire.Packet, len(sizes))
			want := make([][]byte, len(sizes))
			for i, n := range sizes {
				buf := make([]byte, n+10) // capacity beyond N: only Buf[:N] goes out
				pkts[i] = wire.Packet{Addr: b.LocalAddr(), Buf: buf, N: fillMessage(t, buf, src, uint64(i), n)}
				want[i] = buf[:n]
			}
			n, err := a.SendBatch(pkts)
			if n != len(pkts) || err != nil {
				t.Fatalf("SendBatch = %d, %v", n, err)
			}
			got := recvAll(t, b, len(pkts))
			for i, r := range got {
				if r.Addr != a.LocalAddr() {
					t.Errorf("datagram %d from %v, want %v", i, r.Addr, a.LocalAddr())
				}
				if !bytes.Equal(r.Buf[:r.N], want[i]) {
					t.Errorf("datagram %d: %d bytes differ from the %d sent", i, r.N, len(want[i]))
				}
				if h, err := checkMessage(r.Buf[:r.N]); err != nil || h.Seq != uint64(i) {
					t.Errorf("datagram %d: seq %d, %v", i, h.Seq, err)
				}
			}
			var total uint64
			for _, n := range sizes {
				total += uint64(n)
			}
			if s := a.Stats(); s.PacketsSent != 32 || s.BytesSent != total || s.SendErrors != 0 {
				t.Errorf("sender stats %+v, want 32 packets, %d bytes", s, total)
			}
			if s := b.Stats(); s.PacketsReceived != 32 || s.BytesReceived != total || s.RecvTruncated != 0 {
				t.Errorf("receiver stats %+v, want 32 packets, %d bytes", s, total)
			}
		})
	}
}

// A batch larger than BatchSize goes out in several system calls, and
// RecvBatch returns at most BatchSize at a time.
func TestBatchLargerThanBatchSize(t *testing.T) {
	a := newPlugin(t, "127.0.0.1:0", Options{BatchSize: 4})
	b := newPlugin(t, "127.0.0.1:0", Options{BatchSize: 4})
	pkts := make([]wire.Packet, 10)
	for i := range pkts {
		buf := make([]byte, 100)
		pkts[i] = wire.Packet{Addr: b.LocalAddr(), Buf: buf, N: fillMessage(t, buf, 1, uint64(i), 100)}
	}
	if n, err := a.SendBatch(pkts); n != 10 || err != nil {
		t.Fatalf("SendBatch = %d, %v", n, err)
	}
	rx := make([]wire.Packet, 10)
	for i := range rx {
		rx[i].Buf = make([]byte, 200)
	}
	var seqs []uint64
	for len(seqs) < 10 {
		n, err := b.RecvBatch(rx, time.Second)
		if err != nil || n == 0 || n > 4 {
			t.Fatalf("RecvBatch = %d, %v after %d", n, err, len(seqs))
		}
		for _, r := range rx[:n] {
			h, err := checkMessage(r.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			seqs = append(seqs, h.Seq)
		}
	}
	for i, s := range seqs {
		if s != uint64(i) {
			t.Fatalf("sequence %v", seqs)
		}
	}
}

// An IPv6 socket bound to [::] also carries IPv4, and reports IPv4 peers
// as plain IPv4 addresses.
func TestDualStack(t *testing.T) {
	v6 := newPlugin(t, "[::]:0", Options{})
	v4 := newPlugin(t, "127.0.0.1:0", Options{})
	to6 := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), v6.LocalAddr().Port())
	buf := make([]byte, 64)
	pkt := []wire.Packet{{Addr: to6, Buf: buf, N: fillMessage(t, buf, 2, 0, 64)}}
	if n, err := v4.SendBatch(pkt); n != 1 || err != nil {
		t.Fatalf("SendBatch v4 -> [::] = %d, %v", n, err)
	}
	got := recvAll(t, v6, 1)
	if got[0].Addr != v4.LocalAddr() {
		t.Fatalf("sender %v, want %v", got[0].Addr, v4.LocalAddr())
	}
	// And back, to the IPv4 address as received.
	pkt[0].Addr = got[0].Addr
	if n, err := v6.SendBatch(pkt); n != 1 || err != nil {
		t.Fatalf("SendBatch [::] -> v4 = %d, %v", n, err)
	}
	if got := recvAll(t, v4, 1); got[0].Addr.Port() != v6.LocalAddr().Port() || !got[0].Addr.Addr().Is4() {
		t.Fatalf("reply from %v", got[0].Addr)
	}
}

// A bad packet in the middle of a batch stops it there: the packets before
// it are sent, SendBatch returns their count and why the next one failed,
// and the caller can go on after it.
func TestPartialSendOnBadPacket(t *testing.T) {
	a := newPlugin(t, "127.0.0.1:0", Options{BatchSize: 4})
	b := newPlugin(t, "127.0.0.1:0", Options{})
	for _, tc := range []struct {
		name  string
		at    int
		spoil func(p *wire.Packet)
		want  func(error) bool
	}{
		{"IPv6 destination on IPv4 socket", 2, func(p *wire.Packet) { p.Addr = netip.MustParseAddrPort("[::1]:9") }, is(ErrAddress)},
		{"zero address", 0, func(p *wire.Packet) { p.Addr = netip.AddrPort{} }, is(ErrAddress)},
		{"zoned address", 5, func(p *wire.Packet) { p.Addr = netip.MustParseAddrPort("[fe80::1%lo]:9") }, is(ErrAddress)},
		{"N beyond Buf", 3, func(p *wire.Packet) { p.N = len(p.Buf) + 1 }, is(ErrLength)},
		{"negative N", 6, func(p *wire.Packet) { p.N = -1 }, is(ErrLength)},
		{"datagram too large", 5, func(p *wire.Packet) { p.Buf = make([]byte, 70000); p.N = 70000 }, is(unix.EMSGSIZE)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := a.Stats().SendErrors
			pkts := make([]wire.Packet, 8)
			for i := range pkts {
				buf := make([]byte, 64)
				pkts[i] = wire.Packet{Addr: b.LocalAddr(), Buf: buf, N: fillMessage(t, buf, 3, uint64(i), 64)}
			}
			tc.spoil(&pkts[tc.at])
			n, err := a.SendBatch(pkts)
			if n != tc.at || !tc.want(err) {
				t.Fatalf("SendBatch = %d, %v; want %d and the error", n, err, tc.at)
			}
			if a.Stats().SendErrors != before+1 {
				t.Errorf("SendErrors %d, want %d", a.Stats().SendErrors, before+1)
			}
			m, err := a.SendBatch(pkts[n+1:])
			if m != len(pkts)-n-1 || err != nil {
				t.Fatalf("SendBatch of the rest = %d, %v", m, err)
			}
			got := recvAll(t, b, len(pkts)-1)
			for i, r := range got {
				wantSeq := uint64(i)
				if i >= tc.at {
					wantSeq++
				}
				if h, err := checkMessage(r.Bytes()); err != nil || h.Seq != wantSeq {
					t.Fatalf("datagram %d: seq %d, %v; want %d", i, h.Seq, err, wantSeq)
				}
			}
		})
	}
}

func is(target error) func(error) bool {
	return func(err error) bool { return errors.Is(err, target) }
}

func TestEmptyBatches(t *testing.T) {
	p := newPlugin(t, "127.0.0.1:0", Options{})
	if n, err := p.SendBatch(nil); n != 0 || err != nil {
		t.Errorf("SendBatch(nil) = %d, %v", n, err)
	}
	if n, err := p.RecvBatch(nil, -1); n != 0 || err != nil {
		t.Errorf("RecvBatch(nil, -1) = %d, %v", n, err)
	}
}

// No timing assertions: only that an empty socket yields 0, nil.
func TestRecvTimeout(t *testing.T) {
	p := newPlugin(t, "127.0.0.1:0", Options{})
	pkts := []wire.Packet{{Buf: make([]byte, 2048)}}
	for _, timeout := range []time.Duration{0, time.Nanosecond, time.Millisecond, 20 * time.Millisecond} {
		if n, err := p.RecvBatch(pkts, timeout); n != 0 || err != nil {
			t.Errorf("RecvBatch(timeout %v) = %d, %v, want 0, nil", timeout, n, err)
		}
	}
}

// A datagram that arrives while RecvBatch waits ends the wait.
func TestRecvWaitsForDatagram(t *testing.T) {
	a := newPlugin(t, "127.0.0.1:0", Options{})
	b := newPlugin(t, "127.0.0.1:0", Options{})
	done := make(chan error, 1)
	go func() {
		pkts := []wire.Packet{{Buf: make([]byte, 2048)}}
		n, err := b.RecvBatch(pkts, -1)
		if err == nil && n != 1 {
			err = errors.New("no datagram")
		}
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // let it block (not required for correctness)
	buf := make([]byte, 64)
	if n, err := a.SendBatch([]wire.Packet{{Addr: b.LocalAddr(), Buf: buf, N: fillMessage(t, buf, 1, 1, 64)}}); n != 1 || err != nil {
		t.Fatalf("SendBatch = %d, %v", n, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("RecvBatch: %v", err)
	}
}

// Close wakes a receiver blocked without a timeout; afterwards every call
// returns ErrClosed and Close is a no-op.
func TestCloseWakesReceiver(t *testing.T) {
	p, err := New(Options{Listen: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := p.RecvBatch([]wire.Packet{{Buf: make([]byte, 2048)}}, -1)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // let it block (not required for correctness)
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-done; err != ErrClosed {
		t.Fatalf("blocked RecvBatch returned %v, want ErrClosed", err)
	}
	if n, err := p.RecvBatch([]wire.Packet{{Buf: make([]byte, 1)}}, 0); n != 0 || err != ErrClosed {
		t.Errorf("RecvBatch after Close = %d, %v", n, err)
	}
	if n, err := p.SendBatch([]wire.Packet{{Addr: p.LocalAddr()}}); n != 0 || err != ErrClosed {
		t.Errorf("SendBatch after Close = %d, %v", n, err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	_ = p.Stats()
}

// A datagram longer than the buffer offered is cut to it, counted, and
// rejected by wire.Parse.
func TestTruncatedReceive(t *testing.T) {
	a := newPlugin(t, "127.0.0.1:0", Options{})
	b := newPlugin(t, "127.0.0.1:0", Options{})
	buf := make([]byte, 500)
	if n, err := a.SendBatch([]wire.Packet{{Addr: b.LocalAddr(), Buf: buf, N: fillMessage(t, buf, 1, 1, 500)}}); n != 1 || err != nil {
		t.Fatalf("SendBatch = %d, %v", n, err)
	}
	rx := []wire.Packet{{Buf: make([]byte, 100)}}
	n, err := b.RecvBatch(rx, 5*time.Second)
	if n != 1 || err != nil {
		t.Fatalf("RecvBatch = %d, %v", n, err)
	}
	if rx[0].N != 100 {
		t.Errorf("N = %d, want 100", rx[0].N)
	}
	if _, _, err := wire.Parse(rx[0].Bytes()); err != wire.ErrTruncated {
		t.Errorf("Parse of truncated datagram: %v", err)
	}
	if s := b.Stats(); s.RecvTruncated != 1 || s.PacketsReceived != 1 {
		t.Errorf("stats %+v", s)
	}
}

func TestNewOptions(t *testing.T) {
	taken := newPlugin(t, "127.0.0.1:0", Options{})
	for _, tc := range []struct {
		name string
		opts Options
		want error
	}{
		{"no listen address", Options{}, nil},
		{"zoned", Options{Listen: netip.MustParseAddrPort("[fe80::1%lo]:0")}, nil},
		{"batch too large", Options{Listen: netip.MustParseAddrPort("127.0.0.1:0"), BatchSize: MaxBatchSize + 1}, nil},
		{"negative batch", Options{Listen: netip.MustParseAddrPort("127.0.0.1:0"), BatchSize: -1}, nil},
		{"address in use", Options{Listen: taken.LocalAddr()}, unix.EADDRINUSE},
		{"address not local", Options{Listen: netip.MustParseAddrPort("192.0.2.1:0")}, unix.EADDRNOTAVAIL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(tc.opts)
			if err == nil {
				p.Close()
				t.Fatal("New succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("New: %v, want %v", err, tc.want)
			}
		})
	}
}

func TestDefaultsAndNames(t *testing.T) {
	p := newPlugin(t, "127.0.0.1:0", Options{RecvBuffer: -1, SendBuffer: 1 << 16})
	if p.Name() != "udp" {
		t.Errorf("Name = %q", p.Name())
	}
	if p.batch != DefaultBatchSize {
		t.Errorf("batch %d", p.batch)
	}
	if l := p.LocalAddr(); !l.Addr().Is4() || l.Port() == 0 {
		t.Errorf("LocalAddr = %v", l)
	}
	// A v4-mapped listen address makes an IPv4 socket.
	m := newPlugin(t, "[::ffff:127.0.0.1]:0", Options{})
	if m.v6 || !m.LocalAddr().Addr().Is4() {
		t.Errorf("mapped listen: v6 %v, local %v", m.v6, m.LocalAddr())
	}
	for e := ErrClosed; e <= ErrLength; e++ {
		if e.Error() == "udp: unknown error" {
			t.Errorf("error %d has no text", e)
		}
	}
}

// A Plugin dropped without Close does not leak its descriptors.
func TestDroppedPluginClosesSocket(t *testing.T) {
	p, err := New(Options{Listen: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	addr := p.LocalAddr()
	p = nil
	// The port is free again once the cleanup has closed the socket.
	for i := 0; ; i++ {
		runtime.GC()
		q, err := New(Options{Listen: addr})
		if err == nil {
			q.Close()
			return
		}
		if !errors.Is(err, unix.EADDRINUSE) || i == 100 {
			t.Fatalf("port of a dropped plugin still bound after %d collections: %v", i, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A wait without a timeout after one with a timeout that ran out waits for
// the datagram: the earlier read deadline does not linger.
func TestRecvWaitAfterTimeout(t *testing.T) {
	a := newPlugin(t, "127.0.0.1:0", Options{})
	b := newPlugin(t, "127.0.0.1:0", Options{})
	pkts := []wire.Packet{{Buf: make([]byte, 2048)}}
	if n, err := b.RecvBatch(pkts, time.Millisecond); n != 0 || err != nil {
		t.Fatalf("timed RecvBatch = %d, %v", n, err)
	}
	done := make(chan error, 1)
	go func() {
		n, err := b.RecvBatch(pkts, -1)
		if err == nil && n != 1 {
			err = errors.New("returned without a datagram")
		}
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // past the old deadline (not required for correctness)
	buf := make([]byte, 64)
	if n, err := a.SendBatch([]wire.Packet{{Addr: b.LocalAddr(), Buf: buf, N: fillMessage(t, buf, 1, 1, 64)}}); n != 1 || err != nil {
		t.Fatalf("SendBatch = %d, %v", n, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("RecvBatch: %v", err)
	}
}

// Close also wakes a receiver waiting with a (long) timeout.
func TestCloseWakesTimedReceiver(t *testing.T) {
	p, err := New(Options{Listen: netip.MustParseAddrPort("[::1]:0")})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := p.RecvBatch([]wire.Packet{{Buf: make([]byte, 2048)}}, time.Hour)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // let it block (not required for correctness)
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-done; err != ErrClosed {
		t.Fatalf("blocked RecvBatch returned %v, want ErrClosed", err)
	}
}

func TestReaches(t *testing.T) {
	p, err := New(Options{Listen: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if !p.Reaches(netip.MustParseAddr("127.0.0.5")) {
		t.Error("a loopback socket does not reach 127.0.0.5")
	}
	// A socket bound to loopback cannot send off the host: the kernel
	// refuses the route (the documentation prefix is never used).
	if p.Reaches(netip.MustParseAddr("192.0.2.1")) {
		t.Error("a loopback socket reaches 192.0.2.1")
	}
	if p.Reaches(netip.MustParseAddr("2001:db8::1")) {
		t.Error("an IPv4 socket reaches an IPv6 address")
	}
}

// InterruptRecv ends a RecvBatch that waits, without a timeout or with
// one, as if its time ran out (0, nil), and leaves no trace: the next
// wait without a timeout waits for its datagram, and an InterruptRecv
// while no one waits does not cut a later wait short either.
func TestInterruptRecv(t *testing.T) {
	a := newPlugin(t, "127.0.0.1:0", Options{})
	b := newPlugin(t, "127.0.0.1:0", Options{})
	pkts := []wire.Packet{{Buf: make([]byte, 2048)}}
	for _, timeout := range []time.Duration{-1, time.Hour} {
		done := make(chan error, 1)
		go func() {
			n, err := b.RecvBatch(pkts, timeout)
			if err == nil && n != 0 {
				err = fmt.Errorf("%d datagrams, none sent", n)
			}
			done <- err
		}()
		// Interrupt until the receiver returns: an interrupt that lands
		// before it waits is not required to end the wait.
		for ended := false; !ended; {
			b.InterruptRecv()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("interrupted RecvBatch(%v): %v", timeout, err)
				}
				ended = true
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	b.InterruptRecv() // no one waits
	buf := make([]byte, 64)
	for i := range 3 {
		done := make(chan error, 1)
		go func() {
			n, err := b.RecvBatch(pkts, -1)
			if err == nil && n != 1 {
				err = fmt.Errorf("RecvBatch returned %d datagrams without waiting for the one sent", n)
			}
			done <- err
		}()
		time.Sleep(10 * time.Millisecond) // let it block (not required for the check)
		if n, err := a.SendBatch([]wire.Packet{{Addr: b.LocalAddr(), Buf: buf, N: fillMessage(t, buf, 1, uint64(i), 64)}}); n != 1 || err != nil {
			t.Fatalf("SendBatch = %d, %v", n, err)
		}
		if err := <-done; err != nil {
			t.Fatalf("RecvBatch %d after the interrupts: %v", i, err)
		}
	}
}
