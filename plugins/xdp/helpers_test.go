package xdp

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/internal/pkt"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/internal/wire"
	"github.com/veloce-io/veloce/plugins/udp"
)

// host is one of the test's hosts: a namespace with one veth end.
type host struct {
	*testutil.Netns
	dev string
}

// link returns the namespace's one non-loopback link.
func (h *host) link(t testing.TB) netlink.Link {
	t.Helper()
	nh, err := handleIn(h.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	links, err := nh.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.Attrs().Name != "lo" {
			return l
		}
	}
	t.Fatalf("no veth in %s", h.Name)
	return nil
}

func handleIn(ns string) (*netlink.Handle, error) {
	n, err := vnetns.GetFromName(ns)
	if err != nil {
		return nil, err
	}
	defer n.Close()
	return netlink.NewHandleAt(n)
}

// vethHosts makes two namespaces linked by a veth addressed 10.99.0.1/24
// and 10.99.0.2/24. permanent adds permanent neighbour entries both ways
// (testutil.Veth); without it the kernels resolve each other by ARP.
func vethHosts(t *testing.T, permanent bool) (a, b *host) {
	t.Helper()
	a, b = &host{Netns: testutil.NewNetns(t)}, &host{Netns: testutil.NewNetns(t)}
	if permanent {
		testutil.Veth(t, a.Netns, "10.99.0.1/24", b.Netns, "10.99.0.2/24")
		a.dev, b.dev = a.link(t).Attrs().Name, b.link(t).Attrs().Name
	} else {
		a.dev, b.dev = testutil.BareVeth(t, a.Netns, b.Netns)
		a.AddAddr(t, a.dev, "10.99.0.1/24")
		b.AddAddr(t, b.dev, "10.99.0.2/24")
	}
	return a, b
}

// newXDP opens a Plugin on the host's veth end and closes it when the
// test ends.
func (h *host) newXDP(t *testing.T, opts Options) *Plugin {
	t.Helper()
	opts.Interface = h.dev
	var p *Plugin
	if err := h.Do(func() (err error) { p, err = New(opts); return err }); err != nil {
		t.Fatalf("New on %s in %s: %v", h.dev, h.Name, err)
	}
	t.Logf("%s: xdp on %s: attach %s, %s mode", h.Name, h.dev, p.Stats().Attach, p.Stats().Mode)
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

// newUDP opens a kernel-UDP plugin in the host's namespace.
func (h *host) newUDP(t *testing.T, listen string) *udp.Plugin {
	t.Helper()
	var p *udp.Plugin
	if err := h.Do(func() (err error) {
		p, err = udp.New(udp.Options{Listen: netip.MustParseAddrPort(listen)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// xdpAttached reports whether the host's veth has an XDP program.
func (h *host) xdpAttached(t testing.TB) bool {
	t.Helper()
	x := h.link(t).Attrs().Xdp
	return x != nil && (x.Attached || x.ProgId != 0)
}

// datapath is what the exchange needs of a plugin.
type datapath interface {
	SendBatch(pkts []wire.Packet) (int, error)
	RecvBatch(pkts []wire.Packet, timeout time.Duration) (int, error)
	LocalAddr() netip.AddrPort
}

// fillMessage writes a data message of total size n into b: header for
// (src, seq) and payload bytes derived from both, so checkMessage can
// verify it.
func fillMessage(b []byte, src wire.SourceID, seq uint64, n int) int {
	h := wire.Header{Kind: wire.KindData, FragCount: 1, Channel: 7, Source: src, Seq: seq}
	payload := b[wire.HeaderLen:n]
	for i := range payload {
		payload[i] = byte(uint64(i) + seq*31 + uint64(src))
	}
	m, err := h.MarshalPacket(b, payload)
	if err != nil || m != n {
		panic(fmt.Sprintf("MarshalPacket = %d, %v", m, err))
	}
	return m
}

// checkMessage parses a datagram made by fillMessage.
func checkMessage(b []byte) (wire.Header, error) {
	h, payload, err := wire.Parse(b)
	if err != nil {
		return h, fmt.Errorf("parse %d bytes: %w", len(b), err)
	}
	for i, c := range payload {
		if want := byte(uint64(i) + h.Seq*31 + uint64(h.Source)); c != want {
			return h, fmt.Errorf("source %#x seq %d: payload byte %d is %#x, want %#x", uint64(h.Source), h.Seq, i, c, want)
		}
	}
	return h, nil
}

// flow is one source's messages from one node to another, with a window
// of unacknowledged messages (the receiver acknowledges cumulatively with
// wire KindAck), so that no queue on the way overflows: a gap, a
// duplicate or a reordering fails the test.
type flow struct {
	src      wire.SourceID
	from, to *node
	total    uint64
	acked    atomic.Uint64 // messages acknowledged (receiver's count)
	received uint64        // messages received in order (receiver's)
	ackSig   chan struct{}
}

// node is one end of an exchange. sendMu serialises SendBatch for
// plugins that allow one sender at a time (kernel UDP).
type node struct {
	name   string
	dp     datapath
	sendMu sync.Mutex
}

func (n *node) send(pkts []wire.Packet, stop *atomic.Bool) error {
	for off := 0; off < len(pkts); {
		n.sendMu.Lock()
		k, err := n.dp.SendBatch(pkts[off:])
		n.sendMu.Unlock()
		if err != nil {
			return fmt.Errorf("%s: send: %w", n.name, err)
		}
		if off += k; off < len(pkts) {
			if stop.Load() {
				return errors.New("stopped")
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
	return nil
}

const (
	window = 256 // below netdev_max_backlog (1000) and the RX ring (2048)
	batch  = 32
)

// exchange runs flows between nodes until every message is acknowledged.
// Every node receives on a goroutine of its own with RecvBatch, unless
// receive names a function that runs its receive loop instead (Poll).
func exchange(t *testing.T, flows []*flow, sizes func(seq uint64) int) {
	t.Helper()
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	fail := func(err error) {
		if err != nil {
			stop.Store(true)
			errs <- err
		}
	}
	nodes := map[*node]bool{}
	for _, f := range flows {
		f.ackSig = make(chan struct{}, 1)
		nodes[f.from], nodes[f.to] = true, true
	}
	allAcked := func() bool {
		for _, f := range flows {
			if f.acked.Load() != f.total {
				return false
			}
		}
		return true
	}
	for n := range nodes {
		wg.Add(1)
		go func() { defer wg.Done(); fail(receiver(n, flows, allAcked, &stop)) }()
	}
	for _, f := range flows {
		wg.Add(1)
		go func() { defer wg.Done(); fail(sender(f, sizes, &stop)) }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func sender(f *flow, sizes func(uint64) int, stop *atomic.Bool) error {
	tx := make([]wire.Packet, batch)
	for i := range tx {
		tx[i] = wire.Packet{Addr: f.to.dp.LocalAddr(), Buf: make([]byte, 1400)}
	}
	var seq uint64
	for seq < f.total {
		stalled := time.Now()
		for seq-f.acked.Load()+batch > window {
			select {
			case <-f.ackSig:
			case <-time.After(100 * time.Millisecond):
				if stop.Load() {
					return nil
				}
				if time.Since(stalled) > 20*time.Second {
					return fmt.Errorf("%s -> %s source %d: no acknowledgement for 20s at %d sent, %d acked", f.from.name, f.to.name, f.src.Local(), seq, f.acked.Load())
				}
			}
		}
		k := min(uint64(batch), f.total-seq)
		for i := range k {
			tx[i].N = fillMessage(tx[i].Buf, f.src, seq+i, sizes(seq+i))
		}
		if err := f.from.send(tx[:k], stop); err != nil {
			if stop.Load() {
				return nil
			}
			return err
		}
		seq += k
	}
	return nil
}

// receiver receives at n until every flow is acknowledged: it checks and
// acknowledges the data of flows to n and records acknowledgements of
// flows from n.
func receiver(n *node, flows []*flow, allAcked func() bool, stop *atomic.Bool) error {
	rx := make([]wire.Packet, batch)
	for i := range rx {
		rx[i].Buf = make([]byte, 2048)
	}
	bySrc := map[wire.SourceID]*flow{}
	for _, f := range flows {
		bySrc[f.src] = f
	}
	ackBuf := make([]byte, len(flows)*wire.HeaderLen)
	var acks []wire.Packet
	idle := 0
	for !allAcked() && !stop.Load() {
		k, err := n.dp.RecvBatch(rx, 50*time.Millisecond)
		if err != nil {
			return fmt.Errorf("%s: receive: %w", n.name, err)
		}
		if k == 0 {
			if idle++; idle > 400 {
				return fmt.Errorf("%s: nothing received for 20s", n.name)
			}
		} else {
			idle = 0
		}
		touched := k == 0 // resend every ack when idle: the last may be lost
		for _, p := range rx[:k] {
			h, err := checkMessage(p.Bytes())
			if err != nil {
				return fmt.Errorf("%s: %w", n.name, err)
			}
			f := bySrc[h.Source]
			if f == nil {
				return fmt.Errorf("%s: message from unknown source %#x", n.name, uint64(h.Source))
			}
			switch h.Kind {
			case wire.KindAck:
				if f.from != n {
					return fmt.Errorf("%s: ack for a flow it does not send", n.name)
				}
				if h.Seq > f.acked.Load() {
					f.acked.Store(h.Seq)
					select {
					case f.ackSig <- struct{}{}:
					default:
					}
				}
			case wire.KindData:
				if f.to != n || p.Addr != f.from.dp.LocalAddr() {
					return fmt.Errorf("%s: data for source %d from %v", n.name, f.src.Local(), p.Addr)
				}
				if h.Seq != f.received {
					return fmt.Errorf("%s: source %d: got seq %d, want %d: lost, duplicated or reordered", n.name, f.src.Local(), h.Seq, f.received)
				}
				f.received++
				touched = true
			}
		}
		if !touched {
			continue
		}
		acks = acks[:0]
		for i, f := range flows {
			if f.to != n || f.received == 0 {
				continue
			}
			h := wire.Header{Kind: wire.KindAck, FragCount: 1, Channel: 7, Source: f.src, Seq: f.received}
			b := ackBuf[i*wire.HeaderLen : (i+1)*wire.HeaderLen]
			if _, err := h.Marshal(b); err != nil {
				return err
			}
			acks = append(acks, wire.Packet{Addr: f.from.dp.LocalAddr(), Buf: b, N: wire.HeaderLen})
		}
		if err := n.send(acks, stop); err != nil && !stop.Load() {
			return err
		}
	}
	return nil
}

// threadCPU returns the CPU time thread tid of this process has used.
func threadCPU(t testing.TB, tid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/stat", tid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name (which is in parentheses): state is
	// field 3, utime 14, stime 15.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// ping sends ICMP echo requests from inside ns to dst on a raw socket
// and returns how many were answered.
func ping(t testing.TB, ns *testutil.Netns, dst netip.Addr, count int) int {
	t.Helper()
	answered := 0
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		if err != nil {
			return fmt.Errorf("open raw ICMP socket: %w", err)
		}
		defer unix.Close(fd)
		tv := unix.NsecToTimeval(int64(500 * time.Millisecond))
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		to := &unix.SockaddrInet4{Addr: dst.As4()}
		req, buf := make([]byte, 64), make([]byte, 1500)
		const id = 0x7e1
		for seq := 1; seq <= count; seq++ {
			n, err := pkt.PutICMPv4Echo(req, pkt.ICMPEchoRequest, id, uint16(seq), []byte("veloce xdp ping"))
			if err != nil {
				return err
			}
			if err := unix.Sendto(fd, req[:n], 0, to); err != nil {
				return fmt.Errorf("send echo request: %w", err)
			}
			deadline := time.Now().Add(time.Second)
			for time.Now().Before(deadline) {
				m, _, err := unix.Recvfrom(fd, buf, 0)
				if err != nil {
					break
				}
				ihl := int(buf[0]&0xf) * 4
				if m >= ihl+8 && buf[ihl] == byte(pkt.ICMPEchoReply) && int(buf[ihl+4])<<8|int(buf[ihl+5]) == id && int(buf[ihl+6])<<8|int(buf[ihl+7]) == seq {
					answered++
					break
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return answered
}
