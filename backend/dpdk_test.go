package backend

import (
	"context"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/images/guestinit"
	"github.com/veloce-io/veloce/internal/testutil"
	dpdkplug "github.com/veloce-io/veloce/plugins/dpdk"
	"github.com/veloce-io/veloce/plugins/udp"
	"github.com/veloce-io/veloce/vmtest"
)

// requireDPDK needs a build with DPDK (make test builds with -tags dpdk).
func requireDPDK(t *testing.T) {
	t.Helper()
	testutil.RequiresRoot(t)
	testutil.Require(t, dpdkplug.Available(), "needs DPDK: build with -tags dpdk and cgo")
}

// openDPDK opens a DPDK plugin on iface (net_af_packet) inside ns.
func openDPDK(t *testing.T, ns *testutil.Netns, iface, addr string) *dpdkplug.Plugin {
	t.Helper()
	var p *dpdkplug.Plugin
	if err := ns.Do(func() (err error) {
		p, err = dpdkplug.New(dpdkplug.Options{Device: "net_af_packet_" + iface + ",iface=" + iface,
			Addr: netip.MustParsePrefix(addr), Port: 7078, CPU: -1})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return p
}

// runRuntimes runs runtimes until the test ends.
func runRuntimes(t *testing.T, rts ...*Runtime) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	var wg sync.WaitGroup
	for _, rt := range rts {
		wg.Add(1)
		go func() { defer wg.Done(); rt.Run(ctx) }()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	return ctx
}

// waitDirectory waits until rt's peers know of channel.
func waitDirectory(t *testing.T, ctx context.Context, rt *Runtime, channel uint32) {
	t.Helper()
	for !slices.Contains(*rt.remote.peerList()[0].channels.Load(), channel) {
		if ctx.Err() != nil {
			t.Fatalf("the source side never learned of the sink on channel %d; remote: %+v", channel, rt.Remote())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// emitPaced emits count messages from each of srcs on rt, keeping the
// queue to the wire and the receiver's lag bounded, as an application with
// flow control would.
func emitPaced(t *testing.T, ctx context.Context, rt *Runtime, srcs []*Source, count int, check *orderCheck) {
	t.Helper()
	payload := make([]byte, 256)
	for i := 0; i < count; i++ {
		for _, s := range srcs {
			rt.Emit(s, payload)
		}
		for queued(rt) > 1024 || uint64(len(srcs)*(i+1))-check.got.Load() > 4096 {
			if ctx.Err() != nil {
				t.Fatalf("stuck after %d messages; remote: %+v", check.got.Load(), rt.Remote())
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
	for check.got.Load() < uint64(len(srcs)*count) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
}

func queued(rt *Runtime) int {
	n := 0
	for _, st := range rt.remote.dps {
		n += st.ready.Len()
	}
	return n
}

// TestDPDKDaemonsExchangeMillionMessages: two runtimes on two hosts
// (namespaces joined by a veth), each with a DPDK port (net_af_packet) on
// its end and no kernel address. Streams asking for acceleration get DPDK;
// a million messages from two sources arrive once and in order.
func TestDPDKDaemonsExchangeMillionMessages(t *testing.T) {
	requireDPDK(t)
	a, b := testutil.NewNetns(t), testutil.NewNetns(t)
	va, vb := testutil.BareVeth(t, a, b)
	dpA, dpB := openDPDK(t, a, va, "10.98.0.1/24"), openDPDK(t, b, vb, "10.98.0.2/24")
	rtA := NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Accelerated: []Datapath{dpA},
		Peers: []netip.AddrPort{dpB.LocalAddr()}, DirectoryInterval: 100 * time.Millisecond}})
	rtB := NewRuntime(RuntimeOptions{NodeID: 2, Remote: RemoteOptions{Accelerated: []Datapath{dpB},
		Peers: []netip.AddrPort{dpA.LocalAddr()}, DirectoryInterval: 100 * time.Millisecond}})
	ctx := runRuntimes(t, rtA, rtB)

	check := &orderCheck{last: map[uint64]uint64{}}
	sb := rtB.OpenSession(check, netip.AddrPort{})
	stb, _ := sb.CreateStream(StreamOptions{Acceleration: true})
	if _, err := sb.CreateSink(stb.ID, 5); err != nil {
		t.Fatal(err)
	}
	waitDirectory(t, ctx, rtA, 5)

	const perSource = 500000 // one million in all
	sa := rtA.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
	sta, _ := sa.CreateStream(StreamOptions{Acceleration: true})
	if sta.Datapath != DatapathDPDK || sta.Warning != "" {
		t.Fatalf("stream asking for acceleration got %q (warning %q), want dpdk", sta.Datapath, sta.Warning)
	}
	var srcs []*Source
	for range 2 {
		s, _ := sa.CreateSource(sta.ID, 5)
		srcs = append(srcs, s)
	}
	start := time.Now()
	emitPaced(t, ctx, rtA, srcs, perSource, check)
	elapsed := time.Since(start)
	t.Logf("%d messages in %v (%.0f msg/s); A: %+v; B: %+v", check.got.Load(), elapsed.Round(time.Millisecond),
		float64(check.got.Load())/elapsed.Seconds(), dpA.Stats(), dpB.Stats())
	if check.got.Load() != 2*perSource || len(check.problems) > 0 || len(check.last) != 2 {
		t.Fatalf("received %d of %d from %d sources; problems: %v", check.got.Load(), 2*perSource, len(check.last), check.problems)
	}
	if s := dpA.Stats(); s.TxDatagrams < 2*perSource {
		t.Errorf("A's DPDK port sent %d datagrams, fewer than the %d messages", s.TxDatagrams, 2*perSource)
	}
}

// TestDPDKInteropsWithKernelUDP: a DPDK daemon (userspace IPv4 on its veth
// end) and a kernel-UDP daemon (the kernel's address on the other end)
// carry one channel each way: the same wire, ARP answered by the userspace
// stack, every message once and in order.
func TestDPDKInteropsWithKernelUDP(t *testing.T) {
	requireDPDK(t)
	a, b := testutil.NewNetns(t), testutil.NewNetns(t)
	va, vb := testutil.BareVeth(t, a, b)
	b.AddAddr(t, vb, "10.98.1.2/24")
	testutil.NoTxChecksum(t, b, vb)
	dpA := openDPDK(t, a, va, "10.98.1.1/24")
	var dpB *udp.Plugin
	if err := b.Do(func() (err error) {
		dpB, err = udp.New(udp.Options{Listen: netip.MustParseAddrPort("10.98.1.2:7078")})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	rtA := NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Accelerated: []Datapath{dpA},
		Peers: []netip.AddrPort{dpB.LocalAddr()}, DirectoryInterval: 100 * time.Millisecond}})
	rtB := NewRuntime(RuntimeOptions{NodeID: 2, Remote: RemoteOptions{Datapath: dpB,
		Peers: []netip.AddrPort{dpA.LocalAddr()}, DirectoryInterval: 100 * time.Millisecond}})
	ctx := runRuntimes(t, rtA, rtB)

	const count = 50000
	for _, dir := range []struct {
		name     string
		from, to *Runtime
		channel  uint32
	}{{"dpdk to kernel", rtA, rtB, 11}, {"kernel to dpdk", rtB, rtA, 12}} {
		t.Run(dir.name, func(t *testing.T) {
			check := &orderCheck{last: map[uint64]uint64{}}
			sk := dir.to.OpenSession(check, netip.AddrPort{})
			st, _ := sk.CreateStream(StreamOptions{Acceleration: true})
			if _, err := sk.CreateSink(st.ID, dir.channel); err != nil {
				t.Fatal(err)
			}
			waitDirectory(t, ctx, dir.from, dir.channel)
			so := dir.from.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
			sst, _ := so.CreateStream(StreamOptions{Acceleration: true})
			src, _ := so.CreateSource(sst.ID, dir.channel)
			emitPaced(t, ctx, dir.from, []*Source{src}, count, check)
			if check.got.Load() != count || len(check.problems) > 0 {
				t.Fatalf("received %d of %d; problems: %v; A %+v", check.got.Load(), count, check.problems, dpA.Stats())
			}
		})
	}
	s := dpA.Stats()
	t.Logf("DPDK side: %+v", s)
	// Resolution went one way or the other: the kernel learns the DPDK
	// side from the DPDK side's request (and then never asks), or asks.
	if s.ARPRequests+s.ARPReplies == 0 || s.Neighbours != 1 {
		t.Errorf("no ARP exchange with the kernel: %+v", s)
	}
	if s.TxDatagrams < count || s.RxDatagrams < count {
		t.Errorf("DPDK side moved %d out / %d in, want at least %d each way", s.TxDatagrams, s.RxDatagrams, count)
	}
	// The userspace stack answers ping like a host.
	out, err := exec.Command("ip", "netns", "exec", b.Name, "busybox", "ping", "-c", "3", "-W", "2", "10.98.1.1").CombinedOutput()
	if err != nil || !strings.Contains(string(out), " 0% packet loss") {
		t.Errorf("ping to the DPDK address: %v\n%s", err, out)
	}
	if _, echo := dpA.Host().Replies(); echo < 3 {
		t.Errorf("the userspace stack answered %d echo requests, want 3", echo)
	}
}

// TestDPDKUnreachablePeerFallsBackToUDP: a peer the DPDK port cannot reach
// (not on its link) gets an accelerated stream's messages over the default
// kernel-UDP datapath instead.
func TestDPDKUnreachablePeerFallsBackToUDP(t *testing.T) {
	requireDPDK(t)
	a, b := testutil.NewNetns(t), testutil.NewNetns(t)
	va, _ := testutil.BareVeth(t, a, b)
	dpA := openDPDK(t, a, va, "10.98.2.1/24")
	var kA, kB *udp.Plugin
	if err := a.Do(func() (err error) {
		kA, err = udp.New(udp.Options{Listen: netip.MustParseAddrPort("127.0.0.1:7101")})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := a.Do(func() (err error) {
		kB, err = udp.New(udp.Options{Listen: netip.MustParseAddrPort("127.0.0.1:7102")})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	rtA := NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Datapath: kA, Accelerated: []Datapath{dpA},
		Peers: []netip.AddrPort{kB.LocalAddr()}, DirectoryInterval: 100 * time.Millisecond}})
	rtB := NewRuntime(RuntimeOptions{NodeID: 2, Remote: RemoteOptions{Datapath: kB,
		Peers: []netip.AddrPort{kA.LocalAddr()}, DirectoryInterval: 100 * time.Millisecond}})
	ctx := runRuntimes(t, rtA, rtB)
	check := &orderCheck{last: map[uint64]uint64{}}
	sk := rtB.OpenSession(check, netip.AddrPort{})
	st, _ := sk.CreateStream(StreamOptions{})
	sk.CreateSink(st.ID, 3)
	waitDirectory(t, ctx, rtA, 3)
	so := rtA.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
	sst, _ := so.CreateStream(StreamOptions{Acceleration: true})
	if sst.Datapath != DatapathDPDK {
		t.Fatalf("stream got %q, want dpdk", sst.Datapath)
	}
	src, _ := so.CreateSource(sst.ID, 3)
	emitPaced(t, ctx, rtA, []*Source{src}, 1000, check)
	if check.got.Load() != 1000 || len(check.problems) > 0 {
		t.Fatalf("received %d of 1000: %v", check.got.Load(), check.problems)
	}
	info := rtA.Remote()
	if len(info.Datapaths) != 2 || len(info.Datapaths[1].Peers) != 0 || info.Datapaths[0].Peers[0] != kB.LocalAddr().String() {
		t.Errorf("remote info: %+v", info)
	}
	if s := dpA.Stats(); s.TxDatagrams != 0 {
		t.Errorf("DPDK sent %d datagrams to a peer it does not reach", s.TxDatagrams)
	}
}

// TestVMMessagesLeaveThroughDPDK: an application in a VM asks for
// acceleration; its daemon's stream goes to the DPDK port (net_af_packet on
// a veth, no kernel address) and the messages reach a sink on a daemon on
// another host, all of them, in order.
func TestVMMessagesLeaveThroughDPDK(t *testing.T) {
	requireDPDK(t)
	a, b := testutil.NewNetns(t), testutil.NewNetns(t)
	va, vb := testutil.BareVeth(t, a, b)
	dpA, dpB := openDPDK(t, a, va, "10.98.3.1/24"), openDPDK(t, b, vb, "10.98.3.2/24")
	dir := t.TempDir()
	sock := dir + "/src.sock"
	dA, err := NewDaemon(DaemonOptions{ControlSocket: dir + "/control.sock", AppSocket: "",
		Ports: []PortOptions{{Name: "src", Socket: sock}},
		Runtime: RuntimeOptions{NodeID: 1, SharedChannels: []uint32{9}, // peers reach shared channels (tenants.go)
			Remote: RemoteOptions{Accelerated: []Datapath{dpA}, Peers: []netip.AddrPort{dpB.LocalAddr()}, DirectoryInterval: 200 * time.Millisecond}}})
	if err != nil {
		t.Fatal(err)
	}
	rtB := NewRuntime(RuntimeOptions{NodeID: 2, Remote: RemoteOptions{Accelerated: []Datapath{dpB},
		Peers: []netip.AddrPort{dpA.LocalAddr()}, DirectoryInterval: 200 * time.Millisecond}})
	ctx := runRuntimes(t, rtB)
	if err := dA.Start(ctx); err != nil { // sock listens
		t.Fatal(err)
	}
	t.Cleanup(func() { dA.Close() })

	check := &orderCheck{last: map[uint64]uint64{}}
	sb := rtB.OpenSession(check, netip.AddrPort{})
	stb, _ := sb.CreateStream(StreamOptions{Acceleration: true})
	if _, err := sb.CreateSink(stb.ID, 9); err != nil {
		t.Fatal(err)
	}
	waitDirectory(t, ctx, dA.rt, 9)

	const count = 2000
	kernel, initramfs := perfImage(t)
	source := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, NICs: []vmtest.NIC{{Socket: sock}},
		Guest: &guestinit.Config{Net: []guestinit.NetConfig{{Name: "eth0", DHCP: true}},
			Run: []string{"/bin/veloce-perf", "source", "--accel", "--channel", "9", "--count", itoaU(count), "--size", "700", "--rate", "1000"}}})
	r, err := source.Wait(ctx)
	if err != nil || r.Err() != nil {
		t.Fatalf("source: %v %v\n%s", err, r.Err(), r.Output)
	}
	s := lastSummary(t, r.Output)
	if s.Datapath != DatapathDPDK || s.Warning != "" {
		t.Errorf("the guest's stream got datapath %q (warning %q), want dpdk", s.Datapath, s.Warning)
	}
	for check.got.Load() < count && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("sink got %d; DPDK out: %+v", check.got.Load(), dpA.Stats())
	if check.got.Load() != count || len(check.problems) > 0 || len(check.last) != 1 {
		t.Fatalf("sink received %d of %d from %d sources: %v", check.got.Load(), count, len(check.last), check.problems)
	}
	if st := dpA.Stats(); st.TxDatagrams < count {
		t.Errorf("the DPDK port sent %d datagrams, fewer than the VM's %d messages", st.TxDatagrams, count)
	}
}

// TestDPDKThreadPollsTheSessions: on a daemon whose datapath runs its own
// polling thread (DPDK), that thread drains the polling sessions' rings
// too: in a ping-pong between polling applications on two DPDK daemons
// each session is polled by its daemon's DPDK thread (none by the
// process's polling thread), which does not pause while they poll.
func TestDPDKThreadPollsTheSessions(t *testing.T) {
	requireDPDK(t)
	a, b := testutil.NewNetns(t), testutil.NewNetns(t)
	va, vb := testutil.BareVeth(t, a, b)
	dpA, dpB := openDPDK(t, a, va, "10.98.3.1/24"), openDPDK(t, b, vb, "10.98.3.2/24")
	dA, dB, sockA, sockB := appDaemons(t, dpA, dpB, true)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := newUDPPing(t, ctx, openApp(t, sockA), openApp(t, sockB), dA.rt, dB.rt, 70, guestlib.StreamOptions{Acceleration: true, Poll: true})
	p.Run(t, ctx, 20)
	for _, d := range []*Daemon{dA, dB} {
		if n := len(d.rt.remote.host.list()); n != 1 {
			t.Fatalf("the DPDK thread polls %d sessions, want 1", n)
		}
	}
	sleeps := dpA.Stats().Sleeps + dpB.Stats().Sleeps
	p.Run(t, ctx, 2000)
	if s := dpA.Stats().Sleeps + dpB.Stats().Sleeps; s != sleeps {
		t.Errorf("the DPDK threads paused %d times while sessions polled", s-sleeps)
	}
	for _, c := range pollThread.list() {
		for _, d := range []*Daemon{dA, dB} {
			if c.apps.rt == d.rt {
				t.Errorf("the process's polling thread polls a session of a DPDK daemon, whose DPDK thread should")
			}
		}
	}
	for _, st := range p.Streams {
		if err := st.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []*Daemon{dA, dB} {
		deadline := time.Now().Add(10 * time.Second)
		for len(d.rt.remote.host.list()) != 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond) // the thread hands the ring back at its next round
		}
		if n := len(d.rt.remote.host.list()); n != 0 {
			t.Errorf("the DPDK thread still polls %d sessions after their polling streams closed", n)
		}
	}
}
