package backend

import (
	"context"
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
	for !slices.Contains(*rtA.remote.peers[0].channels.Load(), 5) {
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
	rx := &receiveState{rm: rm, chans: make([]uint32, 0, wire.MaxDirectoryChannels), pending: map[netip.AddrPort]*directoryParts{}}
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
	channels := func() []uint32 { return *rm.peers[0].channels.Load() }

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
