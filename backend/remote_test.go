package backend

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veloce-io/veloce/images/guestinit"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/internal/wire"
	"github.com/veloce-io/veloce/plugins/udp"
	"github.com/veloce-io/veloce/vmtest"
)

// orderCheck is an endpoint that counts deliveries and checks that every
// source's sequence numbers arrive without gaps or repeats.
type orderCheck struct {
	mu       sync.Mutex
	last     map[uint64]uint64 // +checklocks:mu
	got      atomic.Uint64
	problems []string // +checklocks:mu
}

func (o *orderCheck) deliver(_ *Sink, source, seq uint64, payload []byte) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if want := o.last[source] + 1; seq != want && len(o.problems) < 10 {
		o.problems = append(o.problems, "source "+itoa64(source)+": seq "+itoa64(seq)+", want "+itoa64(want))
	}
	o.last[source] = seq
	o.got.Add(1)
	return true
}
func (o *orderCheck) String() string         { return "test" }
func (o *orderCheck) sessionClosed(*Session) {}

func itoa64(v uint64) string {
	b := []byte{}
	for {
		b = append([]byte{byte('0' + v%10)}, b...)
		v /= 10
		if v == 0 {
			return string(b)
		}
	}
}

// TestTwoDaemonsInNamespacesExchangeMessages: two runtimes on two hosts
// (network namespaces joined by a veth) with the kernel-UDP datapath. The
// sink side tells the source side which channel it has sinks for; then
// every one of a million messages from two sources arrives once and in
// order per source.
func TestTwoDaemonsInNamespacesExchangeMessages(t *testing.T) {
	a, b := testutil.NewNetns(t), testutil.NewNetns(t)
	testutil.Veth(t, a, "10.99.0.1/24", b, "10.99.0.2/24")
	open := func(ns *testutil.Netns, listen string) *udp.Plugin {
		var p *udp.Plugin
		if err := ns.Do(func() (err error) {
			p, err = udp.New(udp.Options{Listen: netip.MustParseAddrPort(listen), RecvBuffer: 16 << 20, SendBuffer: 16 << 20})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return p
	}
	dpA, dpB := open(a, "10.99.0.1:7078"), open(b, "10.99.0.2:7078")
	rtA := NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Datapath: dpA, Peers: []netip.AddrPort{dpB.LocalAddr()}, DirectoryInterval: 100 * time.Millisecond}})
	rtB := NewRuntime(RuntimeOptions{NodeID: 2, Remote: RemoteOptions{Datapath: dpB, Peers: []netip.AddrPort{dpA.LocalAddr()}, DirectoryInterval: 100 * time.Millisecond}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for _, rt := range []*Runtime{rtA, rtB} {
		wg.Add(1)
		go func() { defer wg.Done(); rt.Run(ctx) }()
	}
	defer func() { cancel(); wg.Wait() }()

	check := &orderCheck{last: map[uint64]uint64{}}
	sb := rtB.OpenSession(check, netip.AddrPort{})
	stb, _ := sb.CreateStream(StreamOptions{})
	if _, err := sb.CreateSink(stb.ID, 5); err != nil {
		t.Fatal(err)
	}
	for !slices.Contains(*rtA.remote.peerList()[0].channels.Load(), 5) {
		if ctx.Err() != nil {
			t.Fatal("the source side never learned of the sink")
		}
		time.Sleep(10 * time.Millisecond)
	}

	const perSource = 500000 // one million in all
	sa := rtA.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
	sta, _ := sa.CreateStream(StreamOptions{})
	var srcs []*Source
	for range 2 {
		s, _ := sa.CreateSource(sta.ID, 5)
		srcs = append(srcs, s)
	}
	payload := make([]byte, 256)
	start := time.Now()
	for i := 0; i < perSource; i++ {
		for _, s := range srcs {
			rtA.Emit(s, payload)
		}
		// Flow control as an application would: keep the queue to the
		// wire and the receiver's lag bounded.
		for rtA.remote.dps[0].ready.Len() > 1024 || uint64(2*(i+1))-check.got.Load() > 4096 {
			if ctx.Err() != nil {
				t.Fatalf("stuck after %d messages", check.got.Load())
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
	for check.got.Load() < 2*perSource && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	elapsed := time.Since(start)
	t.Logf("%d messages in %v (%.0f msg/s); A sent %d, dropped %d; B received %d, malformed %d",
		check.got.Load(), elapsed.Round(time.Millisecond), float64(check.got.Load())/elapsed.Seconds(),
		rtA.remote.sent.Load(), rtA.remote.dropped.Load(), rtB.remote.received.Load(), rtB.remote.malformed.Load())
	if check.got.Load() != 2*perSource || len(check.problems) > 0 || len(check.last) != 2 {
		t.Fatalf("received %d of %d from %d sources; problems: %v", check.got.Load(), 2*perSource, len(check.last), check.problems)
	}
}

// TestVMStreamsToVMOnAnotherHost is the whole path between hosts: an
// application in a VM on one daemon emits, the daemon sends over the
// kernel-UDP datapath across a veth to a daemon in another network
// namespace (another host), whose VM's application sinks every message in
// order.
func TestVMStreamsToVMOnAnotherHost(t *testing.T) {
	testutil.RequiresRoot(t)
	a, b := testutil.NewNetns(t), testutil.NewNetns(t)
	testutil.Veth(t, a, "10.99.1.1/24", b, "10.99.1.2/24")
	start := func(ns *testutil.Netns, listen, peer string, node uint32, name string) (*Daemon, string) {
		var dp *udp.Plugin
		if err := ns.Do(func() (err error) {
			dp, err = udp.New(udp.Options{Listen: netip.MustParseAddrPort(listen)})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		sock := dir + "/" + name + ".sock"
		d, err := NewDaemon(DaemonOptions{ControlSocket: dir + "/control.sock",
			Ports: []PortOptions{{Name: name, Socket: sock}},
			Runtime: RuntimeOptions{NodeID: node, SharedChannels: []uint32{9}, Remote: RemoteOptions{Datapath: dp,
				Peers: []netip.AddrPort{netip.MustParseAddrPort(peer)}, DirectoryInterval: 200 * time.Millisecond}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Start(context.Background()); err != nil { // sock listens
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d, sock
	}
	_, sockA := start(a, "10.99.1.1:7078", "10.99.1.2:7078", 1, "src")
	dB, sockB := start(b, "10.99.1.2:7078", "10.99.1.1:7078", 2, "sink")

	const count = 2000
	kernel, initramfs := perfImage(t)
	net := []guestinit.NetConfig{{Name: "eth0", DHCP: true}}
	sink := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, NICs: []vmtest.NIC{{Socket: sockB}},
		Guest: &guestinit.Config{Net: net, Run: []string{"/bin/veloce-perf", "sink", "--channel", "9", "--count", itoaU(count), "--timeout", "3m"}}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := sink.WaitConsole(ctx, "ready"); err != nil {
		t.Fatal(err)
	}
	if st := dB.Streams(); len(st) != 1 || st[0].Endpoint != "vm:sink" || len(st[0].Sinks) != 1 {
		t.Errorf("streams on the sink's daemon: %+v", st)
	}
	source := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, NICs: []vmtest.NIC{{Socket: sockA}},
		Guest: &guestinit.Config{Net: net, Run: []string{"/bin/veloce-perf", "source", "--channel", "9", "--count", itoaU(count), "--size", "500", "--rate", "1000"}}})
	if r, err := source.Wait(ctx); err != nil || r.Err() != nil {
		t.Fatalf("source: %v %v\n%s", err, r.Err(), r.Output)
	}
	r, err := sink.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Err(); err != nil {
		t.Fatalf("sink: %v\n%s", err, r.Output)
	}
	s := lastSummary(t, r.Output)
	t.Logf("sink on the other host: %+v", s)
	if s.Messages != count || s.Gaps != 0 || s.OutOfOrder != 0 || s.Sources != 1 {
		t.Errorf("sink summary %+v", s)
	}
}

// TestDirectoryFragments: a peer's directory in fragments is taken in
// order only; a fragment out of order starts over, counted; a spoofed
// fragment count cannot make the receiver collect without bound.
func TestDirectoryFragments(t *testing.T) {
	dp, err := udp.New(udp.Options{Listen: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	peerAddr := netip.MustParseAddrPort("127.0.0.1:9")
	rt := NewRuntime(RuntimeOptions{Remote: RemoteOptions{Datapath: dp, Peers: []netip.AddrPort{peerAddr}}})
	rm := rt.remote
	rx := rm.newReceiveState(0)
	frag := func(gen uint64, index, count uint16, chans ...uint32) wire.Packet {
		buf := make([]byte, wire.HeaderLen+wire.MaxDirectoryLen)
		n, err := (&wire.Directory{Node: 7, Generation: gen, Channels: chans}).Marshal(buf[wire.HeaderLen:])
		if err != nil {
			t.Fatal(err)
		}
		h := wire.Header{Kind: wire.KindDirectory, FragIndex: index, FragCount: count, PayloadLen: uint16(n), Seq: gen}
		m, err := h.MarshalPacket(buf, buf[wire.HeaderLen:wire.HeaderLen+n])
		if err != nil {
			t.Fatal(err)
		}
		return wire.Packet{Addr: peerAddr, Buf: buf, N: m}
	}
	channels := func() []uint32 { return *rm.peerList()[0].channels.Load() }

	rx.handle([]wire.Packet{frag(1, 0, 2, 1, 5), frag(1, 1, 2, 3)})
	if got := channels(); !slices.Equal(got, []uint32{1, 3, 5}) {
		t.Fatalf("two fragments in order: %v", got)
	}
	bad := rm.malformed.Load()
	rx.handle([]wire.Packet{frag(2, 1, 2, 9)})
	if got := channels(); !slices.Equal(got, []uint32{1, 3, 5}) || rm.malformed.Load() != bad+1 {
		t.Fatalf("a lone second fragment changed the directory to %v (malformed %d)", got, rm.malformed.Load())
	}
	// 65535 fragments announced: collecting stops at the bound.
	var pkts []wire.Packet
	for i := range uint16(maxDirectoryChannels/wire.MaxDirectoryChannels + 2) {
		chunk := make([]uint32, wire.MaxDirectoryChannels)
		for j := range chunk {
			chunk[j] = uint32(i)*wire.MaxDirectoryChannels + uint32(j)
		}
		pkts = append(pkts, frag(3, i, 65535, chunk...))
	}
	rx.handle(pkts)
	if p := rx.pending[peerAddr]; p != nil && len(p.chans) > maxDirectoryChannels {
		t.Fatalf("collected %d channels", len(p.chans))
	}
	if rm.malformed.Load() <= bad+1 {
		t.Error("an oversized directory was not counted")
	}
}

// testFleetKey is a fleet key for tests; otherFleetKey another fleet's.
var (
	testFleetKey  = []byte("\x8f\x1e\x03\xa7\x5c\x92\x44\xd0\x6b\x17\xee\x39\xc5\x70\x2a\xb8\x0d\x61\xf4\x9e\x33\xca\x58\x86\x1b\xe2\x47\x7d\xa0\x15\xbb\x69")
	otherFleetKey = []byte("\x11\x2e\x13\xb7\x6c\xa2\x54\xe0\x7b\x27\xfe\x49\xd5\x80\x3a\xc8\x1d\x71\x04\xae\x43\xda\x68\x96\x2b\xf2\x57\x8d\xb0\x25\xcb\x79")
)

// openUDP opens a kernel-UDP datapath in ns (nil: this namespace).
func openUDP(t *testing.T, ns *testutil.Netns, listen string) *udp.Plugin {
	t.Helper()
	var p *udp.Plugin
	open := func() (err error) {
		p, err = udp.New(udp.Options{Listen: netip.MustParseAddrPort(listen), RecvBuffer: 16 << 20, SendBuffer: 16 << 20})
		return err
	}
	var err error
	if ns != nil {
		err = ns.Do(open)
	} else {
		err = open()
	}
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// socketIn opens a plain UDP socket in ns bound to addr: a host that is
// not a peer.
func socketIn(t *testing.T, ns *testutil.Netns, addr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := ns.Do(func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dataDatagram is a data message on channel from source, sealed with key
// when key is not nil.
func dataDatagram(t *testing.T, key []byte, channel uint32, source wire.SourceID, seq uint64) []byte {
	t.Helper()
	buf := make([]byte, 256)
	h := wire.Header{Kind: wire.KindData, FragCount: 1, Channel: channel, Source: source, Seq: seq}
	n, err := h.MarshalPacket(buf, []byte("injected"))
	if err != nil {
		t.Fatal(err)
	}
	if key != nil {
		if n, err = wire.NewSealer(key, 42).Seal(buf, n, uint64(time.Now().UnixNano())); err != nil {
			t.Fatal(err)
		}
	}
	return buf[:n]
}

// waitFor polls cond until it holds; ctx's deadline is the safety net,
// not an assertion on time.
func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool, info func() any) {
	t.Helper()
	for !cond() {
		if ctx.Err() != nil {
			t.Fatalf("%s: never happened; %+v", what, info())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDataFromNonPeersIsDroppedAndCounted: on a host with two daemons'
// worth of traffic, datagrams that claim the peer's node and channel but
// come from addresses not in the peer set — another port of the peer's
// own address, and a second address on the peer's host — never reach the
// sink; each is counted as from an unknown peer, and the legitimate
// stream arrives whole and in order.
func TestDataFromNonPeersIsDroppedAndCounted(t *testing.T) {
	a, b := testutil.NewNetns(t), testutil.NewNetns(t)
	testutil.Veth(t, a, "10.99.5.1/24", b, "10.99.5.2/24")
	a.AddAddr(t, "lo", "10.99.5.3/32") // not /24: that would route the subnet to lo
	dpA, dpB := openUDP(t, a, "10.99.5.1:7078"), openUDP(t, b, "10.99.5.2:7078")
	rtA := NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Datapath: dpA, Peers: []netip.AddrPort{dpB.LocalAddr()}, DirectoryInterval: 100 * time.Millisecond}})
	rtB := NewRuntime(RuntimeOptions{NodeID: 2, Remote: RemoteOptions{Datapath: dpB, Peers: []netip.AddrPort{dpA.LocalAddr()}, DirectoryInterval: 100 * time.Millisecond}})
	ctx := runRuntimes(t, rtA, rtB)
	check := &orderCheck{last: map[uint64]uint64{}}
	sb := rtB.OpenSession(check, netip.AddrPort{})
	stb, _ := sb.CreateStream(StreamOptions{})
	sb.CreateSink(stb.ID, 5)
	waitDirectory(t, ctx, rtA, 5)

	spoofers := []*net.UDPConn{socketIn(t, a, "10.99.5.1:7079"), socketIn(t, a, "10.99.5.3:7078")}
	sa := rtA.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
	sta, _ := sa.CreateStream(StreamOptions{})
	src, _ := sa.CreateSource(sta.ID, 5)
	const count, every = 10000, 100
	payload := make([]byte, 200)
	to := net.UDPAddrFromAddrPort(dpB.LocalAddr())
	for i := range count {
		rtA.Emit(src, payload)
		if i%every == 0 {
			for _, c := range spoofers {
				// Node 1's source, a sequence number ahead of the real one.
				if _, err := c.WriteToUDP(dataDatagram(t, nil, 5, wire.SourceID(src.Global), uint64(i+2)), to); err != nil {
					t.Fatal(err)
				}
			}
		}
		for queued(rtA) > 1024 || uint64(i+1)-check.got.Load() > 4096 {
			if ctx.Err() != nil {
				t.Fatalf("stuck after %d messages; %+v", check.got.Load(), rtB.Remote())
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
	spoofed := uint64(len(spoofers) * count / every)
	waitFor(t, ctx, "every message and every spoof accounted for", func() bool {
		return check.got.Load() == count && rtB.Remote().UnknownPeer == spoofed
	}, func() any { return rtB.Remote() })
	check.mu.Lock()
	defer check.mu.Unlock()
	if len(check.problems) > 0 || len(check.last) != 1 || check.last[src.Global] != count {
		t.Fatalf("sink saw %v (problems %v)", check.last, check.problems)
	}
	if info := rtB.Remote(); info.Received != count || info.BadAuth+info.Malformed+info.Stale != 0 {
		t.Fatalf("remote info %+v", info)
	}
}

// TestAuthenticatedDaemonsExchangeMessages: two daemons with the fleet key
// exchange 100,000 messages, all authenticated, in order; a third daemon
// in the peer set with another fleet's key cannot make itself known nor
// inject data (counted as bad auth), and neither can an unauthenticated
// datagram from a peer's address.
func TestAuthenticatedDaemonsExchangeMessages(t *testing.T) {
	a, b := testutil.NewNetns(t), testutil.NewNetns(t)
	testutil.Veth(t, a, "10.99.6.1/24", b, "10.99.6.2/24")
	dpA, dpB, dpC := openUDP(t, a, "10.99.6.1:7078"), openUDP(t, b, "10.99.6.2:7078"), openUDP(t, a, "10.99.6.1:7079")
	iv := 100 * time.Millisecond
	rtA := NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Datapath: dpA, Key: testFleetKey, Peers: []netip.AddrPort{dpB.LocalAddr()}, DirectoryInterval: iv}})
	rtB := NewRuntime(RuntimeOptions{NodeID: 2, Remote: RemoteOptions{Datapath: dpB, Key: testFleetKey, Peers: []netip.AddrPort{dpA.LocalAddr(), dpC.LocalAddr()}, DirectoryInterval: iv}})
	rtC := NewRuntime(RuntimeOptions{NodeID: 3, Remote: RemoteOptions{Datapath: dpC, Key: otherFleetKey, Peers: []netip.AddrPort{dpB.LocalAddr()}, DirectoryInterval: iv}})
	ctx := runRuntimes(t, rtA, rtB)
	check := &orderCheck{last: map[uint64]uint64{}}
	sb := rtB.OpenSession(check, netip.AddrPort{})
	stb, _ := sb.CreateStream(StreamOptions{})
	sb.CreateSink(stb.ID, 5)
	waitDirectory(t, ctx, rtA, 5)

	sa := rtA.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
	sta, _ := sa.CreateStream(StreamOptions{})
	src, _ := sa.CreateSource(sta.ID, 5)
	// The wrong-key daemon injects data through its own datapath (before
	// it runs: a datapath has one sender), and so does a sender without a
	// key from the same address.
	injected := []wire.Packet{
		{Addr: dpB.LocalAddr(), Buf: dataDatagram(t, otherFleetKey, 5, wire.NewSourceID(3, 1), 1)},
		{Addr: dpB.LocalAddr(), Buf: dataDatagram(t, nil, 5, wire.NewSourceID(3, 2), 1)},
	}
	for i := range injected {
		injected[i].N = len(injected[i].Buf)
	}
	if _, err := dpC.SendBatch(injected); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "the injections refused", func() bool { return rtB.Remote().Peers[1].BadAuth == 2 }, func() any { return rtB.Remote() })
	if err := rtC.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rtC.Close() })
	emitPaced(t, ctx, rtA, []*Source{src}, 100000, check)
	waitFor(t, ctx, "C's directories refused", func() bool { return rtB.Remote().Peers[1].BadAuth >= 4 }, func() any { return rtB.Remote() })

	check.mu.Lock()
	defer check.mu.Unlock()
	if check.got.Load() != 100000 || len(check.problems) > 0 || len(check.last) != 1 {
		t.Fatalf("received %d of 100000 from %d sources: %v", check.got.Load(), len(check.last), check.problems)
	}
	info := rtB.Remote()
	pa, pc := info.Peers[0], info.Peers[1]
	if !info.Authenticated || pa.State != PeerUp || pa.BadAuth != 0 || pa.Stale != 0 || info.Received != 100000 {
		t.Errorf("B's view of A: %+v (remote %+v)", pa, info)
	}
	if pc.State != PeerWaiting || len(pc.Channels) != 0 || pc.Node != 0 {
		t.Errorf("the wrong-key daemon was taken as a peer: %+v", pc)
	}
	if len(*rtC.remote.peerList()[0].channels.Load()) != 0 || rtC.Remote().BadAuth == 0 {
		t.Errorf("the wrong-key daemon learned B's directory: %+v", rtC.Remote())
	}
}

// capture reads datagrams on c until one is a directory (from a daemon
// with key) whose channel list satisfies want; it returns that datagram.
func capture(t *testing.T, ctx context.Context, c *net.UDPConn, key []byte, want func([]uint32) bool) []byte {
	t.Helper()
	o := wire.NewOpener(key)
	buf := make([]byte, 65536)
	for ctx.Err() == nil {
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			continue
		}
		h, payload, _, err := o.Open(buf[:n])
		if err != nil || h.Kind != wire.KindDirectory {
			continue
		}
		if d, err := wire.ParseDirectory(payload, make([]uint32, 0, wire.MaxDirectoryChannels)); err == nil && want(d.Channels) {
			return slices.Clone(buf[:n])
		}
	}
	t.Fatal("no such directory captured")
	return nil
}

// TestReplayedDirectoryIsDropped: an on-path host captures a daemon's
// authenticated directories and plays them back to another daemon (from
// an address in its peer set). Each is taken once; played again, or an
// old one after a newer one, it is dropped and counted stale, so a sink
// that closed cannot be brought back into the stream by a replay.
func TestReplayedDirectoryIsDropped(t *testing.T) {
	tap, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()
	tapAddr := tap.LocalAddr().(*net.UDPAddr).AddrPort()
	dpA, dpB := openUDP(t, nil, "127.0.0.1:0"), openUDP(t, nil, "127.0.0.1:0")
	iv := 50 * time.Millisecond
	rtA := NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Datapath: dpA, Key: testFleetKey, Peers: []netip.AddrPort{tapAddr}, DirectoryInterval: iv}})
	rtB := NewRuntime(RuntimeOptions{NodeID: 2, Remote: RemoteOptions{Datapath: dpB, Key: testFleetKey, Peers: []netip.AddrPort{tapAddr}, DirectoryInterval: time.Hour}})
	ctx := runRuntimes(t, rtA, rtB)
	sa := rtA.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
	st, _ := sa.CreateStream(StreamOptions{})
	sk, _ := sa.CreateSink(st.ID, 5)
	with5 := capture(t, ctx, tap, testFleetKey, func(c []uint32) bool { return slices.Equal(c, []uint32{5}) })
	sa.CloseSink(sk.ID)
	without := capture(t, ctx, tap, testFleetKey, func(c []uint32) bool { return len(c) == 0 })

	to := net.UDPAddrFromAddrPort(dpB.LocalAddr())
	peer := func() PeerInfo { return rtB.Remote().Peers[0] }
	send := func(b []byte) {
		if _, err := tap.WriteToUDP(b, to); err != nil {
			t.Fatal(err)
		}
	}
	send(with5)
	waitFor(t, ctx, "the captured directory taken once", func() bool { return slices.Equal(peer().Channels, []uint32{5}) }, func() any { return peer() })
	send(with5)
	waitFor(t, ctx, "the same datagram again counted", func() bool { return peer().Stale == 1 }, func() any { return peer() })
	send(without)
	waitFor(t, ctx, "the newer directory taken", func() bool { return len(peer().Channels) == 0 }, func() any { return peer() })
	send(with5)
	waitFor(t, ctx, "the old directory after the new counted", func() bool { return peer().Stale == 2 }, func() any { return peer() })
	if p := peer(); len(p.Channels) != 0 || p.BadAuth != 0 || p.Malformed != 0 || rtB.Remote().Stale != 2 {
		t.Fatalf("after the replays: %+v", p)
	}
}

// TestRestartedPeerIsTakenAtOnce: a daemon far into its generations stops
// and a new one starts with the same node id and address. Its first
// directory replaces the old run's at once (a new boot id), although its
// generation is far below the old one's, and the peer's sources reach its
// sinks; with and without the fleet key (the new run's authentication
// counters start above the old run's).
func TestRestartedPeerIsTakenAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  []byte
	}{{"plain", nil}, {"authenticated", testFleetKey}} {
		t.Run(tc.name, func(t *testing.T) {
			iv := 50 * time.Millisecond
			dpB := openUDP(t, nil, "127.0.0.1:0")
			dpA1 := openUDP(t, nil, "127.0.0.1:0")
			addrA := dpA1.LocalAddr()
			rtB := NewRuntime(RuntimeOptions{NodeID: 2, Remote: RemoteOptions{Datapath: dpB, Key: tc.key, Peers: []netip.AddrPort{addrA}, DirectoryInterval: iv}})
			ctx := runRuntimes(t, rtB)
			rtA1 := NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Datapath: dpA1, Key: tc.key, Peers: []netip.AddrPort{dpB.LocalAddr()}, DirectoryInterval: iv}})
			const oldGen = 1 << 40
			rtA1.remote.generation.Store(oldGen)
			s1 := rtA1.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
			st1, _ := s1.CreateStream(StreamOptions{})
			s1.CreateSink(st1.ID, 7)
			if err := rtA1.Start(ctx); err != nil {
				t.Fatal(err)
			}
			waitDirectory(t, ctx, rtB, 7)
			p := rtB.remote.peerList()[0]
			rtA1.Close()

			dpA2 := openUDP(t, nil, addrA.String())
			rtA2 := NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Datapath: dpA2, Key: tc.key, Peers: []netip.AddrPort{dpB.LocalAddr()}, DirectoryInterval: iv}})
			check := &orderCheck{last: map[uint64]uint64{}}
			s2 := rtA2.OpenSession(check, netip.AddrPort{})
			st2, _ := s2.CreateStream(StreamOptions{})
			s2.CreateSink(st2.ID, 8)
			if err := rtA2.Start(ctx); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { rtA2.Close() })
			waitDirectory(t, ctx, rtB, 8)
			if gen := p.gen.Load(); gen >= oldGen || p.restarts.Load() != 1 || p.boot.Load() != rtA2.remote.boot {
				t.Fatalf("B took the new run at generation %d, restarts %d", gen, p.restarts.Load())
			}
			if got := *p.channels.Load(); !slices.Equal(got, []uint32{8}) {
				t.Fatalf("B's directory of the restarted peer: %v", got)
			}
			so := rtB.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
			sst, _ := so.CreateStream(StreamOptions{})
			src, _ := so.CreateSource(sst.ID, 8)
			emitPaced(t, ctx, rtB, []*Source{src}, 100, check)
			if check.got.Load() != 100 {
				t.Fatalf("the restarted peer's sink got %d of 100", check.got.Load())
			}
			if info := rtB.Remote(); info.Stale != 0 || info.BadAuth != 0 {
				t.Fatalf("B dropped the restarted peer's datagrams: %+v", info)
			}
		})
	}
}

// TestSilentPeerGoesStale: a peer that stops sending directories is marked
// stale after the expiry and its channels are dropped, so sources stop
// sending to it; its next directory brings it back.
func TestSilentPeerGoesStale(t *testing.T) {
	iv := 50 * time.Millisecond
	dpA, dpB := openUDP(t, nil, "127.0.0.1:0"), openUDP(t, nil, "127.0.0.1:0")
	addrA := dpA.LocalAddr()
	rtB := NewRuntime(RuntimeOptions{NodeID: 2, Remote: RemoteOptions{Datapath: dpB, Peers: []netip.AddrPort{addrA}, DirectoryInterval: iv, DirectoryExpiry: 3 * iv}})
	ctx := runRuntimes(t, rtB)
	rtA := NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Datapath: dpA, Peers: []netip.AddrPort{dpB.LocalAddr()}, DirectoryInterval: iv}})
	sa := rtA.OpenSession(&fakeEndpoint{room: 1 << 20}, netip.AddrPort{})
	st, _ := sa.CreateStream(StreamOptions{})
	sa.CreateSink(st.ID, 3)
	if err := rtA.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitDirectory(t, ctx, rtB, 3)
	so := rtB.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
	sst, _ := so.CreateStream(StreamOptions{})
	src, _ := so.CreateSource(sst.ID, 3)
	if taken, _ := rtB.emit(src, []byte("x")); taken != 1 || rtB.Remote().Peers[0].State != PeerUp {
		t.Fatalf("before: taken %d, %+v", taken, rtB.Remote().Peers[0])
	}
	rtA.Close()
	waitFor(t, ctx, "the silent peer stale", func() bool {
		p := rtB.Remote().Peers[0]
		return p.State == PeerStale && len(p.Channels) == 0
	}, func() any { return rtB.Remote() })
	if taken, _ := rtB.emit(src, []byte("x")); taken != 0 || rtB.Remote().Expired != 1 {
		t.Fatalf("after expiry: taken %d, %+v", taken, rtB.Remote())
	}

	rtA2 := NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Datapath: openUDP(t, nil, addrA.String()), Peers: []netip.AddrPort{dpB.LocalAddr()}, DirectoryInterval: iv}})
	s2 := rtA2.OpenSession(&fakeEndpoint{room: 1 << 20}, netip.AddrPort{})
	st2, _ := s2.CreateStream(StreamOptions{})
	s2.CreateSink(st2.ID, 3)
	if err := rtA2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rtA2.Close() })
	waitDirectory(t, ctx, rtB, 3)
	if p := rtB.Remote().Peers[0]; p.State != PeerUp {
		t.Fatalf("back: %+v", p)
	}
}

// countEndpoint counts deliveries without allocating.
type countEndpoint struct{ n atomic.Uint64 }

func (c *countEndpoint) deliver(*Sink, uint64, uint64, []byte) bool { c.n.Add(1); return true }
func (c *countEndpoint) String() string                             { return "count" }
func (c *countEndpoint) sessionClosed(*Session)                     {}

// steppedPair makes runtime A (node 1, on dpA) with a source on channel
// 5 and runtime B (node 2, on dpB) with a counting sink on it, A knowing
// of B's sink already; neither runs: a test steps the datagrams through
// by hand. key is the fleet key (nil: none).
func steppedPair(dpA, dpB Datapath, key []byte) (rtA, rtB *Runtime, src *Source, sink *countEndpoint) {
	rtA = NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Datapath: dpA, Key: key, Peers: []netip.AddrPort{dpB.LocalAddr()}}})
	rtB = NewRuntime(RuntimeOptions{NodeID: 2, Remote: RemoteOptions{Datapath: dpB, Key: key, Peers: []netip.AddrPort{dpA.LocalAddr()}}})
	chans := []uint32{5}
	rtA.remote.peerList()[0].channels.Store(&chans)
	sink = &countEndpoint{}
	sb := rtB.OpenSession(sink, netip.AddrPort{})
	stb, _ := sb.CreateStream(StreamOptions{})
	sb.CreateSink(stb.ID, 5)
	sa := rtA.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
	sta, _ := sa.CreateStream(StreamOptions{})
	src, _ = sa.CreateSource(sta.ID, 5)
	return rtA, rtB, src, sink
}

// The authenticated path does not allocate per message: emit, seal on the
// sender, open, replay check and delivery on the receiver.
func TestAuthenticatedPathDoesNotAllocate(t *testing.T) {
	dpA, dpB := openUDP(t, nil, "127.0.0.1:0"), openUDP(t, nil, "127.0.0.1:0")
	defer dpA.Close()
	defer dpB.Close()
	rtA, rtB, src, sink := steppedPair(dpA, dpB, testFleetKey)
	seal, rx, st := rtA.remote.newSealer(), rtB.remote.newReceiveState(0), rtA.remote.dps[0]
	pkts := make([]wire.Packet, 1)
	payload := make([]byte, 256)
	allocs := testing.AllocsPerRun(1000, func() {
		rtA.Emit(src, payload)
		id, ok := st.ready.Pop()
		if !ok {
			return
		}
		pkts[0] = rtA.remote.packet(id)
		rtA.remote.seal(seal, &pkts[0])
		pkts[0].Addr = dpA.LocalAddr() // as the receiving socket reports the sender
		rx.handle(pkts)
		rtA.remote.slots.Put(id)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per message, want 0", allocs)
	}
	if info := rtB.Remote(); sink.n.Load() != 1001 || info.BadAuth+info.Stale+info.Malformed != 0 {
		t.Fatalf("delivered %d of 1001; %+v", sink.n.Load(), info)
	}
}
