package rdma

// Tests that run inside the RDMA guest (TestRDMAInVM boots it and runs
// this package's test binary there with VELOCE_RDMA_GUEST=1). Elsewhere
// they skip: they are not missing a requirement, they belong to the VM.
// The topology (package rdmatest): veth0 10.77.0.1 with rxe0, veth1
// 10.77.0.2 (and 10.77.0.3) with rxe1, in one network namespace with
// policy routing, so that the two devices talk over the veth.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/wire"
	"github.com/veloce-io/veloce/plugins/rdma/rdmatest"
)

const (
	guestEnv  = "VELOCE_RDMA_GUEST"
	helperEnv = "VELOCE_RDMA_HELPER"
	countEnv  = "VELOCE_RDMA_COUNT"
)

var (
	addrA = netip.MustParsePrefix("10.77.0.1/24")
	addrB = netip.MustParsePrefix("10.77.0.2/24")
	// addrC is a second address on veth1, for a daemon without RDMA.
	addrC = netip.MustParsePrefix("10.77.0.3/24")

	setupOnce sync.Once
	setupErr  error
)

func inGuest(t *testing.T) {
	t.Helper()
	if os.Getenv(guestEnv) == "" {
		t.Skip("runs inside the RDMA guest (TestRDMAInVM)")
	}
	setupOnce.Do(func() { setupErr = guestSetup() })
	if setupErr != nil {
		t.Fatalf("guest set-up: %v", setupErr)
	}
}

// guestSetup makes the veth pair, the routing and the rxe devices.
func guestSetup() error {
	if os.Getenv(helperEnv) != "" {
		return nil // the parent did it
	}
	return rdmatest.Setup(rdmatest.Topology{A: addrA, B: addrB, Extra: []netip.Prefix{addrC}})
}

func newPlugin(t *testing.T, addr netip.Prefix, port uint16, mod func(*Options)) *Plugin {
	t.Helper()
	o := Options{Addr: addr, Port: port, CPU: -1}
	if mod != nil {
		mod(&o)
	}
	p, err := New(o)
	if err != nil {
		t.Fatalf("New(%v): %v", addr, err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// message writes a data message with sequence number seq and size bytes
// of payload into buf.
func message(buf []byte, seq uint64, size int) int {
	h := wire.Header{Kind: wire.KindData, FragCount: 1, Channel: 1, Source: wire.NewSourceID(1, 1), Seq: seq}
	for i := range size {
		buf[wire.HeaderLen+i] = byte(seq) + byte(i)
	}
	n, err := h.MarshalPacket(buf, buf[wire.HeaderLen:wire.HeaderLen+size])
	if err != nil {
		panic(err)
	}
	return n
}

// sender sends messages from..to-1 to dst, retrying what does not go;
// it returns when all went or stop closes.
func sendAll(t *testing.T, p *Plugin, dst netip.AddrPort, from, to uint64, size int, stop <-chan struct{}) (uint64, error) {
	const batch = 32
	pkts := make([]wire.Packet, batch)
	for i := range pkts {
		pkts[i] = wire.Packet{Addr: dst, Buf: make([]byte, wire.HeaderLen+size)}
	}
	seq := from
	for seq < to {
		select {
		case <-stop:
			return seq, nil
		default:
		}
		n := int(min(batch, to-seq))
		for i := range n {
			pkts[i].N = message(pkts[i].Buf, seq+uint64(i), size)
		}
		k, err := p.SendBatch(pkts[:n])
		seq += uint64(k)
		if err != nil {
			var pe *PeerError
			if !errors.As(err, &pe) || !errors.Is(err, ErrPeerDown) {
				return seq, err
			}
			time.Sleep(20 * time.Millisecond) // down: keep the message, try again
		} else if k == 0 {
			time.Sleep(50 * time.Microsecond)
		}
	}
	return seq, nil
}

// orderChecker checks that messages arrive once each, in order.
type orderChecker struct {
	first, next uint64
	got         atomic.Uint64
	bad         atomic.Pointer[string]
	started     bool
}

func (c *orderChecker) handle(pkts []wire.Packet) {
	for _, pk := range pkts {
		h, _, err := wire.Parse(pk.Bytes())
		if err != nil {
			s := fmt.Sprintf("message %d: %v", c.got.Load(), err)
			c.bad.CompareAndSwap(nil, &s)
			continue
		}
		if !c.started {
			c.started, c.first, c.next = true, h.Seq, h.Seq
		}
		if h.Seq != c.next {
			s := fmt.Sprintf("got seq %d, want %d (first %d)", h.Seq, c.next, c.first)
			c.bad.CompareAndSwap(nil, &s)
		}
		c.next = h.Seq + 1
		c.got.Add(1)
	}
}

func guestCount() int {
	if n, err := strconv.Atoi(os.Getenv(countEnv)); err == nil && n > 0 {
		return n
	}
	return 200000
}

// TestGuestStreamInOrder: N messages from one plugin to the other, each
// delivered once and in order.
func TestGuestStreamInOrder(t *testing.T) {
	inGuest(t)
	a := newPlugin(t, addrA, 7100, nil)
	b := newPlugin(t, addrB, 7100, nil)
	if a.Device() != "rxe0" || b.Device() != "rxe1" {
		t.Errorf("devices %s, %s; want rxe0, rxe1 (found from the netdevs)", a.Device(), b.Device())
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var chk orderChecker
	go b.Poll(ctx, chk.handle, nil)
	n := uint64(guestCount())
	start := time.Now()
	if sent, err := sendAll(t, a, b.LocalAddr(), 0, n, 64, nil); err != nil {
		t.Fatalf("sent %d: %v", sent, err)
	}
	for chk.got.Load() < n && chk.bad.Load() == nil {
		if time.Since(start) > 10*time.Minute { // a bound on a hang, not a timing assertion
			t.Fatalf("received %d of %d", chk.got.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	el := time.Since(start)
	if s := chk.bad.Load(); s != nil {
		t.Fatal(*s)
	}
	if chk.first != 0 || chk.next != n {
		t.Fatalf("received %d..%d, want 0..%d", chk.first, chk.next-1, n-1)
	}
	t.Logf("%d messages of 64 B in order over RDMA (rxe0 -> rxe1) in %v: %.0f msg/s (TCG)", n, el.Round(time.Millisecond), float64(n)/el.Seconds())
	t.Logf("sender %+v", a.Stats())
	t.Logf("receiver %+v", b.Stats())
}

// TestGuestNoAllocation: sending and receiving a batch allocates nothing.
func TestGuestNoAllocation(t *testing.T) {
	inGuest(t)
	a := newPlugin(t, addrA, 7200, nil)
	b := newPlugin(t, addrB, 7200, nil)
	if err := a.Probe(context.Background(), b.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	const batch = 32
	out := make([]wire.Packet, batch)
	in := make([]wire.Packet, batch)
	for i := range out {
		out[i] = wire.Packet{Addr: b.LocalAddr(), Buf: make([]byte, 256)}
		out[i].N = message(out[i].Buf, uint64(i), 100)
		in[i].Buf = make([]byte, 256)
	}
	var fail error
	round := func() {
		for done := 0; done < batch; {
			k, err := a.SendBatch(out[done:])
			if err != nil {
				fail = err
				return
			}
			done += k
		}
		for got := 0; got < batch; {
			k, err := b.RecvBatch(in[got:], time.Minute)
			if err != nil || k == 0 {
				fail = fmt.Errorf("received %d: %v", got, err)
				return
			}
			got += k
		}
	}
	round()
	allocs := testing.AllocsPerRun(100, round)
	if fail != nil {
		t.Fatal(fail)
	}
	if allocs != 0 {
		t.Fatalf("%v allocations per batch of %d sent and received, want 0", allocs, batch)
	}
}

// TestGuestFallback: a peer off the RDMA subnet, or on it without an
// RDMA plugin, is not reached: the runtime sends to it over another
// datapath.
func TestGuestFallback(t *testing.T) {
	inGuest(t)
	a := newPlugin(t, addrA, 7300, nil)
	if a.Reaches(netip.MustParseAddr("192.0.2.1")) {
		t.Error("reaches an address off the subnet")
	}
	noRDMA := netip.MustParseAddrPort("10.77.0.2:7399") // nobody listens there
	if !a.Reaches(noRDMA.Addr()) {
		t.Error("does not reach an untried peer on the subnet")
	}
	err := a.Probe(context.Background(), noRDMA)
	if !errors.Is(err, ErrPeerDown) {
		t.Fatalf("Probe of a peer without RDMA: %v, want ErrPeerDown", err)
	}
	if a.Reaches(noRDMA.Addr()) {
		t.Error("still reaches a peer that has no RDMA plugin")
	}
	pkts := []wire.Packet{{Addr: noRDMA, Buf: make([]byte, 128)}}
	pkts[0].N = message(pkts[0].Buf, 0, 10)
	if _, err := a.SendBatch(pkts); !errors.Is(err, ErrPeerDown) {
		t.Errorf("SendBatch to it: %v, want ErrPeerDown", err)
	}
	off := []wire.Packet{{Addr: netip.MustParseAddrPort("192.0.2.1:7000"), Buf: pkts[0].Buf, N: pkts[0].N}}
	if _, err := a.SendBatch(off); !errors.Is(err, ErrNotReachable) {
		t.Errorf("SendBatch off the subnet: %v, want ErrNotReachable", err)
	}
}

// TestGuestHelperReceiver is the peer TestGuestPeerRestart kills: a
// receiver in its own process that reports its progress on stdout.
func TestGuestHelperReceiver(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("helper process of TestGuestPeerRestart")
	}
	inGuest(t)
	b := newPlugin(t, addrB, 7400, nil)
	var chk orderChecker
	fmt.Println("helper: ready")
	last := uint64(0)
	go b.Poll(context.Background(), chk.handle, nil)
	for {
		time.Sleep(10 * time.Millisecond)
		if s := chk.bad.Load(); s != nil {
			fmt.Println("helper: bad", *s)
			os.Exit(1)
		}
		if g := chk.got.Load(); g/500 != last/500 {
			last = g
			fmt.Printf("helper: got %d first %d\n", g, chk.first)
		}
	}
}

// TestGuestPeerRestart: the receiving peer is killed (its queue pair
// vanishes; the sender's fails with retries exceeded) and restarted: the
// sender reconnects and the stream resumes, in order.
func TestGuestPeerRestart(t *testing.T) {
	inGuest(t)
	a := newPlugin(t, addrA, 7400, nil)
	dst := netip.AddrPortFrom(addrB.Addr(), 7400)
	start := func() (*exec.Cmd, chan string) {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestGuestHelperReceiver$", "-test.v")
		cmd.Env = append(os.Environ(), helperEnv+"=1")
		out, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 100)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if strings.HasPrefix(sc.Text(), "helper:") {
					select {
					case lines <- sc.Text():
					default:
					}
				}
			}
			close(lines)
		}()
		return cmd, lines
	}
	waitGot := func(lines chan string, want uint64) uint64 {
		deadline := time.After(3 * time.Minute) // a bound on a hang
		tick := time.NewTicker(15 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				t.Logf("waiting; sender %+v", a.Stats())
			case l, ok := <-lines:
				if !ok {
					t.Fatal("helper exited")
				}
				if strings.Contains(l, "bad") {
					t.Fatal(l)
				}
				var got, first uint64
				if _, err := fmt.Sscanf(l, "helper: got %d first %d", &got, &first); err == nil && got >= want {
					t.Logf("%s", l)
					return first
				}
			case <-deadline:
				t.Fatalf("helper did not get %d messages", want)
			}
		}
	}
	b1, lines1 := start()
	stop := make(chan struct{})
	var sent atomic.Uint64
	sendDone := make(chan error, 1)
	go func() {
		for s := uint64(0); ; s += 64 {
			n, err := sendAll(t, a, dst, s, s+64, 64, stop)
			sent.Store(n)
			if err != nil || n < s+64 {
				sendDone <- err
				return
			}
		}
	}()
	defer func() { close(stop); <-sendDone }()
	first1 := waitGot(lines1, 2000)
	b1.Process.Kill()
	b1.Wait()
	killedAt := sent.Load()
	t.Logf("killed the peer after %d messages sent (its stream began at %d)", killedAt, first1)
	b2, lines2 := start()
	defer func() { b2.Process.Kill(); b2.Wait() }()
	first2 := waitGot(lines2, 2000)
	if first2 <= first1 {
		t.Fatalf("restarted peer's stream began at %d, before the first's %d", first2, first1)
	}
	st := a.Stats()
	t.Logf("resumed at %d; sender %+v", first2, st)
	if st.Connects < 2 {
		t.Errorf("%d connections made, want a reconnection", st.Connects)
	}
}
