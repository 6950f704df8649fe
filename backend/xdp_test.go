package backend

import (
	"context"
	"net/netip"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/plugins/udp"
	xdpplug "github.com/veloce-io/veloce/plugins/xdp"
)

// openXDP opens an AF_XDP plugin on iface inside ns (the kernel has addr
// on it) and closes it when the test ends, checking that the program goes
// with it.
func openXDP(t *testing.T, ns *testutil.Netns, iface string, opts xdpplug.Options) *xdpplug.Plugin {
	t.Helper()
	opts.Interface = iface
	if opts.Port == 0 {
		opts.Port = 7078
	}
	var p *xdpplug.Plugin
	if err := ns.Do(func() (err error) { p, err = xdpplug.New(opts); return err }); err != nil {
		t.Fatalf("AF_XDP on %s: %v", iface, err)
	}
	t.Cleanup(func() {
		p.Close()
		if ns.XDPAttached(t, iface) {
			t.Errorf("an XDP program is left on %s after Close", iface)
		}
	})
	return p
}

// orderSnapshot is what an orderCheck found so far.
type orderSnapshot struct {
	problems []string
	sources  int
}

// snapshot reads the check's findings under its lock.
func (o *orderCheck) snapshot() orderSnapshot {
	o.mu.Lock()
	defer o.mu.Unlock()
	return orderSnapshot{problems: slices.Clone(o.problems), sources: len(o.last)}
}

// xdpWindow bounds the messages in flight between an emitter and its
// sinks in these tests, as an application's flow control would: a veth
// whose end has a native XDP program receives through a NAPI ring of 256
// frames (VETH_RING_SIZE), which a sender with more in flight overruns
// whenever the receiving softirq is scheduled late (two cores shared by
// every test here); the veth drops the rest, as a NIC overrun would.
const xdpWindow = 192

// emitWindow emits count messages from each of srcs on rt with at most
// xdpWindow of them not yet delivered, then waits for the last.
func emitWindow(t *testing.T, ctx context.Context, rt *Runtime, srcs []*Source, count int, check *orderCheck) {
	t.Helper()
	payload := make([]byte, 256)
	for i := 0; i < count; i++ {
		for _, s := range srcs {
			rt.Emit(s, payload)
		}
		for uint64(len(srcs)*(i+1))-check.got.Load() > xdpWindow {
			if ctx.Err() != nil {
				t.Fatalf("stuck after %d messages; remote: %+v", check.got.Load(), rt.Remote())
			}
			runtime.Gosched()
		}
	}
	for check.got.Load() < uint64(len(srcs)*count) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
}

// xdpPair makes two hosts joined by a veth the kernels address
// 10.95.N.1/24 and 10.95.N.2/24 (resolving each other by ARP), each with
// an AF_XDP plugin on its end.
func xdpPair(t *testing.T, n string) (a, b *testutil.Netns, xa, xb *xdpplug.Plugin) {
	a, b = testutil.NewNetns(t), testutil.NewNetns(t)
	va, vb := testutil.BareVeth(t, a, b)
	a.AddAddr(t, va, "10.95."+n+".1/24")
	b.AddAddr(t, vb, "10.95."+n+".2/24")
	return a, b, openXDP(t, a, va, xdpplug.Options{}), openXDP(t, b, vb, xdpplug.Options{})
}

// TestXDPDaemonsExchangeMillionMessages: two runtimes on two hosts (the
// two ends of a veth), each with an AF_XDP datapath on its end. A stream
// asking for acceleration with frugal resource use gets XDP, with no
// warning; a million messages from two sources arrive once and in order.
func TestXDPDaemonsExchangeMillionMessages(t *testing.T) {
	testutil.Integration(t)
	_, _, xa, xb := xdpPair(t, "0")
	rtA := NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Accelerated: []Datapath{xa},
		Peers: []netip.AddrPort{xb.LocalAddr()}, DirectoryInterval: 100 * time.Millisecond}})
	rtB := NewRuntime(RuntimeOptions{NodeID: 2, Remote: RemoteOptions{Accelerated: []Datapath{xb},
		Peers: []netip.AddrPort{xa.LocalAddr()}, DirectoryInterval: 100 * time.Millisecond}})
	ctx := runRuntimes(t, rtA, rtB)

	check := &orderCheck{last: map[uint64]uint64{}}
	sb := rtB.OpenSession(check, netip.AddrPort{})
	stb, _ := sb.CreateStream(StreamOptions{Acceleration: true, Frugal: true})
	if _, err := sb.CreateSink(stb.ID, 5); err != nil {
		t.Fatal(err)
	}
	waitDirectory(t, ctx, rtA, 5)

	const perSource = 500000 // one million in all
	sa := rtA.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
	sta, _ := sa.CreateStream(StreamOptions{Acceleration: true, Frugal: true})
	if sta.Datapath != DatapathXDP || sta.Warning != "" {
		t.Fatalf("frugal stream asking for acceleration got %q (warning %q), want xdp", sta.Datapath, sta.Warning)
	}
	var srcs []*Source
	for range 2 {
		s, _ := sa.CreateSource(sta.ID, 5)
		srcs = append(srcs, s)
	}
	start := time.Now()
	emitWindow(t, ctx, rtA, srcs, perSource, check)
	elapsed := time.Since(start)
	t.Logf("%d messages in %v (%.0f msg/s); A: %+v; B: %+v", check.got.Load(), elapsed.Round(time.Millisecond),
		float64(check.got.Load())/elapsed.Seconds(), xa.Stats(), xb.Stats())
	if check.got.Load() != 2*perSource || len(check.snapshot().problems) > 0 || check.snapshot().sources != 2 {
		t.Fatalf("received %d of %d from %d sources; problems: %v", check.got.Load(), 2*perSource, check.snapshot().sources, check.snapshot().problems)
	}
	if s := xa.Stats(); s.TxPackets < 2*perSource || s.Mode != "copy" {
		t.Errorf("A's AF_XDP socket sent %d datagrams (mode %q), want at least %d in copy mode", s.TxPackets, s.Mode, 2*perSource)
	}
	if s := xb.Stats(); s.RxPackets < 2*perSource {
		t.Errorf("B's AF_XDP socket received %d datagrams, fewer than the %d messages", s.RxPackets, 2*perSource)
	}
}

// TestXDPKernelAnswersPingAndARPDuringStream: an XDP daemon and a
// kernel-UDP daemon on the two ends of a veth carry a stream each way (the
// same wire); while it runs, the kernel on the XDP host still answers ARP
// (the kernel-UDP host forgets the XDP host's MAC and must ask again) and
// ping on the interface the program is attached to.
func TestXDPKernelAnswersPingAndARPDuringStream(t *testing.T) {
	testutil.Integration(t)
	a, b := testutil.NewNetns(t), testutil.NewNetns(t)
	va, vb := testutil.BareVeth(t, a, b)
	a.AddAddr(t, va, "10.95.1.1/24")
	b.AddAddr(t, vb, "10.95.1.2/24")
	testutil.NoTxChecksum(t, b, vb) // the XDP side checks UDP checksums
	xa := openXDP(t, a, va, xdpplug.Options{})
	var ub *udp.Plugin
	if err := b.Do(func() (err error) {
		ub, err = udp.New(udp.Options{Listen: netip.MustParseAddrPort("10.95.1.2:7078")})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	rtA := NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Accelerated: []Datapath{xa},
		Peers: []netip.AddrPort{ub.LocalAddr()}, DirectoryInterval: 100 * time.Millisecond}})
	rtB := NewRuntime(RuntimeOptions{NodeID: 2, Remote: RemoteOptions{Datapath: ub,
		Peers: []netip.AddrPort{xa.LocalAddr()}, DirectoryInterval: 100 * time.Millisecond}})
	ctx := runRuntimes(t, rtA, rtB)

	// A background stream from the XDP host runs until the ping is done,
	// so the kernel answers while XDP carries traffic.
	bg := &orderCheck{last: map[uint64]uint64{}}
	bgSink := rtB.OpenSession(bg, netip.AddrPort{})
	bgSt, _ := bgSink.CreateStream(StreamOptions{Acceleration: true, Frugal: true})
	if _, err := bgSink.CreateSink(bgSt.ID, 23); err != nil {
		t.Fatal(err)
	}
	waitDirectory(t, ctx, rtA, 23)
	bgSo := rtA.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
	bgSrcSt, _ := bgSo.CreateStream(StreamOptions{Acceleration: true, Frugal: true})
	bgSrc, _ := bgSo.CreateSource(bgSrcSt.ID, 23)
	var bgStop atomic.Bool
	var bgSent atomic.Uint64
	bgDone := make(chan struct{})
	go func() {
		defer close(bgDone)
		payload := make([]byte, 100)
		for !bgStop.Load() && ctx.Err() == nil {
			rtA.Emit(bgSrc, payload)
			bgSent.Add(1)
			for int64(bgSent.Load())-int64(bg.got.Load()) > xdpWindow/4 && ctx.Err() == nil {
				time.Sleep(100 * time.Microsecond)
			}
		}
	}()
	// Ping and ARP from B while the streams run.
	pinged := make(chan string, 1)
	var duringPing [2]uint64 // background deliveries when the ping started and ended
	go func() {
		for bg.got.Load() == 0 && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		duringPing[0] = bg.got.Load()
		h := b.Netlink(t)
		if l, err := h.LinkByName(vb); err == nil {
			ns, _ := h.NeighList(l.Attrs().Index, unix.AF_INET)
			for i := range ns {
				h.NeighDel(&ns[i])
			}
		}
		h.Close()
		out, _ := exec.Command("ip", "netns", "exec", b.Name, "busybox", "ping", "-c", "5", "-i", "0.2", "-W", "2", "10.95.1.1").CombinedOutput()
		duringPing[1] = bg.got.Load()
		pinged <- string(out)
	}()
	const count = 100000
	for _, dir := range []struct {
		name     string
		from, to *Runtime
		channel  uint32
	}{{"xdp to kernel", rtA, rtB, 21}, {"kernel to xdp", rtB, rtA, 22}} {
		t.Run(dir.name, func(t *testing.T) {
			check := &orderCheck{last: map[uint64]uint64{}}
			sk := dir.to.OpenSession(check, netip.AddrPort{})
			st, _ := sk.CreateStream(StreamOptions{Acceleration: true, Frugal: true})
			if _, err := sk.CreateSink(st.ID, dir.channel); err != nil {
				t.Fatal(err)
			}
			waitDirectory(t, ctx, dir.from, dir.channel)
			so := dir.from.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
			sst, _ := so.CreateStream(StreamOptions{Acceleration: true, Frugal: true})
			src, _ := so.CreateSource(sst.ID, dir.channel)
			emitWindow(t, ctx, dir.from, []*Source{src}, count, check)
			if check.got.Load() != count || len(check.snapshot().problems) > 0 {
				t.Fatalf("received %d of %d; problems: %v; xdp %+v", check.got.Load(), count, check.snapshot().problems, xa.Stats())
			}
		})
	}
	out := <-pinged
	bgStop.Store(true)
	<-bgDone
	for bg.got.Load() < bgSent.Load() && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if snap := bg.snapshot(); bg.got.Load() != bgSent.Load() || len(snap.problems) > 0 || duringPing[1] <= duringPing[0] {
		t.Errorf("background stream: %d of %d delivered (%d to %d during the ping); problems: %v", bg.got.Load(), bgSent.Load(),
			duringPing[0], duringPing[1], snap.problems)
	}
	t.Logf("background stream: %d messages, %d of them during the ping", bg.got.Load(), duringPing[1]-duringPing[0])
	if !strings.Contains(out, " 0% packet loss") && !strings.Contains(out, " 20% packet loss") {
		t.Errorf("ping to the XDP interface's address during the stream:\n%s", out)
	}
	h := b.Netlink(t)
	defer h.Close()
	l, _ := h.LinkByName(vb)
	ns, _ := h.NeighList(l.Attrs().Index, unix.AF_INET)
	relearned := false
	for _, n := range ns {
		relearned = relearned || (n.IP.String() == "10.95.1.1" && n.HardwareAddr != nil && n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE) != 0)
	}
	if !relearned {
		t.Errorf("the kernel-UDP host did not learn the XDP host's MAC again by ARP: %+v", ns)
	}
	s := xa.Stats()
	t.Logf("ping: %s; xdp: %+v", out, s)
	if s.TxPackets < count || s.RxPackets < count {
		t.Errorf("the XDP side moved %d out / %d in, want at least %d each way", s.TxPackets, s.RxPackets, count)
	}
}

// TestXDPInteropsWithKernelUDPAndDPDK: three hosts on one bridge (a
// switch namespace): an XDP daemon, a kernel-UDP daemon and a DPDK daemon
// (net_af_packet, its own userspace IPv4). One accelerated stream on the
// XDP daemon has a source whose messages reach sinks on both other
// daemons, and the other two send on one channel to a sink on the XDP
// daemon: every message once and in order, on one wire.
func TestXDPInteropsWithKernelUDPAndDPDK(t *testing.T) {
	requireDPDK(t)
	sw := testutil.NewNetns(t)
	a, b, c := testutil.NewNetns(t), testutil.NewNetns(t), testutil.NewNetns(t)
	va, swa := testutil.BareVeth(t, a, sw)
	vb, swb := testutil.BareVeth(t, b, sw)
	vc, swc := testutil.BareVeth(t, c, sw)
	h := sw.Netlink(t)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	for _, end := range []string{swa, swb, swc} {
		l, err := h.LinkByName(end)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetMaster(l, br); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	h.Close()
	a.AddAddr(t, va, "10.95.2.1/24")
	b.AddAddr(t, vb, "10.95.2.2/24")
	testutil.NoTxChecksum(t, b, vb) // the XDP and DPDK sides check UDP checksums
	xa := openXDP(t, a, va, xdpplug.Options{})
	var ub *udp.Plugin
	if err := b.Do(func() (err error) {
		ub, err = udp.New(udp.Options{Listen: netip.MustParseAddrPort("10.95.2.2:7078")})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	dc := openDPDK(t, c, vc, "10.95.2.3/24")
	all := []netip.AddrPort{xa.LocalAddr(), ub.LocalAddr(), dc.LocalAddr()}
	others := func(self netip.AddrPort) (ps []netip.AddrPort) {
		for _, p := range all {
			if p != self {
				ps = append(ps, p)
			}
		}
		return ps
	}
	rtA := NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Accelerated: []Datapath{xa},
		Peers: others(xa.LocalAddr()), DirectoryInterval: 100 * time.Millisecond}})
	rtB := NewRuntime(RuntimeOptions{NodeID: 2, Remote: RemoteOptions{Datapath: ub,
		Peers: others(ub.LocalAddr()), DirectoryInterval: 100 * time.Millisecond}})
	rtC := NewRuntime(RuntimeOptions{NodeID: 3, Remote: RemoteOptions{Accelerated: []Datapath{dc},
		Peers: others(dc.LocalAddr()), DirectoryInterval: 100 * time.Millisecond}})
	ctx := runRuntimes(t, rtA, rtB, rtC)

	const count = 50000
	waitPeers := func(rt *Runtime, channel uint32, n int) {
		t.Helper()
		for {
			k := 0
			for _, p := range rt.remote.peerList() {
				for _, ch := range *p.channels.Load() {
					if ch == channel {
						k++
					}
				}
			}
			if k >= n {
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("%d of %d peers known to sink channel %d; remote: %+v", k, n, channel, rt.Remote())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	t.Run("xdp to kernel and dpdk", func(t *testing.T) {
		checkB, checkC := &orderCheck{last: map[uint64]uint64{}}, &orderCheck{last: map[uint64]uint64{}}
		for _, s := range []struct {
			rt    *Runtime
			check *orderCheck
		}{{rtB, checkB}, {rtC, checkC}} {
			sess := s.rt.OpenSession(s.check, netip.AddrPort{})
			st, _ := sess.CreateStream(StreamOptions{Acceleration: true, Frugal: true})
			if _, err := sess.CreateSink(st.ID, 31); err != nil {
				t.Fatal(err)
			}
		}
		waitPeers(rtA, 31, 2)
		so := rtA.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
		st, _ := so.CreateStream(StreamOptions{Acceleration: true, Frugal: true})
		if st.Datapath != DatapathXDP || st.Warning != "" {
			t.Fatalf("stream got %q (warning %q), want xdp", st.Datapath, st.Warning)
		}
		src, _ := so.CreateSource(st.ID, 31)
		// Pace on the slower of the two sinks.
		both := &orderCheck{last: map[uint64]uint64{}}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for ctx.Err() == nil {
				both.got.Store(min(checkB.got.Load(), checkC.got.Load()))
				if both.got.Load() >= count {
					return
				}
				time.Sleep(time.Millisecond)
			}
		}()
		emitWindow(t, ctx, rtA, []*Source{src}, count, both)
		<-done
		for name, ch := range map[string]*orderCheck{"kernel-UDP": checkB, "DPDK": checkC} {
			if ch.got.Load() != count || len(ch.snapshot().problems) > 0 {
				t.Errorf("the %s daemon received %d of %d; problems: %v", name, ch.got.Load(), count, ch.snapshot().problems)
			}
		}
	})
	t.Run("kernel and dpdk to xdp", func(t *testing.T) {
		check := &orderCheck{last: map[uint64]uint64{}}
		sk := rtA.OpenSession(check, netip.AddrPort{})
		st, _ := sk.CreateStream(StreamOptions{Acceleration: true, Frugal: true})
		if _, err := sk.CreateSink(st.ID, 32); err != nil {
			t.Fatal(err)
		}
		var srcs []*Source
		for _, rt := range []*Runtime{rtB, rtC} {
			waitPeers(rt, 32, 1)
			so := rt.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
			sst, _ := so.CreateStream(StreamOptions{Acceleration: true, Frugal: true})
			src, _ := so.CreateSource(sst.ID, 32)
			srcs = append(srcs, src)
		}
		// One emitter per daemon, both paced on what A has received of
		// what the two sent.
		errs := make(chan string, 2)
		var sent atomic.Uint64
		for i, rt := range []*Runtime{rtB, rtC} {
			go func() {
				payload := make([]byte, 300)
				for n := 0; n < count; n++ {
					rt.Emit(srcs[i], payload)
					sent.Add(1)
					for int64(sent.Load())-int64(check.got.Load()) > xdpWindow {
						if ctx.Err() != nil {
							errs <- "stuck"
							return
						}
						time.Sleep(50 * time.Microsecond)
					}
				}
				errs <- ""
			}()
		}
		for range 2 {
			if e := <-errs; e != "" {
				t.Fatalf("%s after %d messages; A %+v", e, check.got.Load(), xa.Stats())
			}
		}
		for check.got.Load() < 2*count && ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
		}
		if check.got.Load() != 2*count || len(check.snapshot().problems) > 0 || check.snapshot().sources != 2 {
			t.Fatalf("the XDP daemon received %d of %d from %d sources; problems: %v; xdp %+v", check.got.Load(), 2*count, check.snapshot().sources, check.snapshot().problems, xa.Stats())
		}
	})
	t.Logf("xdp: %+v", xa.Stats())
	t.Logf("dpdk: %+v", dc.Stats())
}
