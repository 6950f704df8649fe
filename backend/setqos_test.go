package backend

import (
	"errors"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/plugins/udp"
)

// changeRecorder is an endpoint that records the StreamChanged events it
// is told of.
type changeRecorder struct {
	fakeEndpoint
	mu     sync.Mutex
	// events has the datapath of each event, in order.
	events []string // +checklocks:mu
}

func (c *changeRecorder) streamChanged(_ *Session, _ uint32, datapath, _ string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events = append(c.events, datapath)
}

func (c *changeRecorder) got() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.events...)
}

// TestSetStreamQoSRefuses: an unknown stream is not found; options the
// policy maps to a datapath the host lacks are refused; the same options
// change nothing; acceleration on a host without it falls back to UDP
// with CreateStream's warning, and the application is told.
func TestSetStreamQoSRefuses(t *testing.T) {
	rt := NewRuntime(RuntimeOptions{})
	ep := &changeRecorder{}
	s := rt.OpenSession(ep, netip.AddrPort{})
	st, _ := s.CreateStream(StreamOptions{})
	if _, err := rt.SetStreamQoS(999, StreamOptions{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown stream: %v, want ErrNotFound", err)
	}
	if info, err := rt.SetStreamQoS(st.ID, StreamOptions{}); err != nil || info.Datapath != DatapathUDP || len(ep.got()) != 0 {
		t.Errorf("same options: %+v, %v; events %v", info, err, ep.got())
	}
	info, err := rt.SetStreamQoS(st.ID, StreamOptions{Acceleration: true})
	if err != nil || info.Datapath != DatapathUDP || info.Warning == "" || !info.Options.Acceleration {
		t.Errorf("acceleration without an accelerated datapath: %+v, %v", info, err)
	}
	if ev := ep.got(); len(ev) != 1 || ev[0] != DatapathUDP {
		t.Errorf("events %v, want [udp]", ev)
	}
	rt2 := NewRuntime(RuntimeOptions{Policy: fixedPolicy("dpdk")})
	s2 := rt2.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
	st2, _ := s2.CreateStream(StreamOptions{})
	if _, err := rt2.SetStreamQoS(st2.ID, StreamOptions{Acceleration: true}); !errors.Is(err, ErrBadQoS) {
		t.Errorf("a datapath the host lacks: %v, want ErrBadQoS", err)
	}
}

type fixedPolicy string

func (p fixedPolicy) Choose(StreamOptions, []string) (string, string) { return string(p), "" }

// TestSetQoSUDPToDPDKToUDP (issue 13 item 4): two hosts, each with kernel
// UDP and DPDK (net_af_packet) under one address, on two veths (UDP on
// one, DPDK on the other: a host whose kernel and DPDK share an interface
// hears every datagram twice, and strict reverse-path filtering keeps the
// kernel from taking the DPDK link's datagrams). A reliable source
// streams about 10,000 messages/s while its stream moves UDP -> DPDK ->
// UDP: every message arrives once and in order, the DPDK datapath carried
// some of them, and the application was told of both moves.
func TestSetQoSUDPToDPDKToUDP(t *testing.T) {
	requireDPDK(t)
	a, b := testutil.NewNetns(t), testutil.NewNetns(t)
	testutil.Veth(t, a, "10.98.7.1/24", b, "10.98.7.2/24")
	va, vb := testutil.BareVeth(t, a, b)
	for _, ns := range []*testutil.Netns{a, b} {
		if err := ns.Do(func() error {
			return os.WriteFile("/proc/sys/net/ipv4/conf/all/rp_filter", []byte("1"), 0)
		}); err != nil {
			t.Fatal(err)
		}
	}
	dpA, dpB := openDPDK(t, a, va, "10.98.7.1/24"), openDPDK(t, b, vb, "10.98.7.2/24")
	openUDP := func(ns *testutil.Netns, addr string) *udp.Plugin {
		var p *udp.Plugin
		if err := ns.Do(func() (err error) {
			p, err = udp.New(udp.Options{Listen: netip.MustParseAddrPort(addr)})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return p
	}
	uA, uB := openUDP(a, "10.98.7.1:7078"), openUDP(b, "10.98.7.2:7078")
	opts := func(node uint32, u *udp.Plugin, d Datapath, peer string) RuntimeOptions {
		return RuntimeOptions{NodeID: node, Remote: RemoteOptions{Datapath: u, Accelerated: []Datapath{d},
			Peers: []netip.AddrPort{netip.MustParseAddrPort(peer)}, DirectoryInterval: 100 * time.Millisecond, DirectoryExpiry: time.Minute}}
	}
	rtA, rtB := NewRuntime(opts(1, uA, dpA, "10.98.7.2:7078")), NewRuntime(opts(2, uB, dpB, "10.98.7.1:7078"))
	ctx := runRuntimes(t, rtA, rtB)

	check := &orderCheck{last: map[uint64]uint64{}}
	sb := rtB.OpenSession(check, netip.AddrPort{})
	stb, _ := sb.CreateStream(StreamOptions{Reliable: true})
	sb.CreateSink(stb.ID, 9)
	waitDirectory(t, ctx, rtA, 9)
	ep := &changeRecorder{}
	sa := rtA.OpenSession(ep, netip.AddrPort{})
	sta, _ := sa.CreateStream(StreamOptions{Reliable: true})
	src, _ := sa.CreateSource(sta.ID, 9)

	// 10 messages a millisecond for 4 s; the emitter retries what was
	// refused (back-pressure during the moves), as guestlib's
	// applications do.
	const total = 40_000
	var emitted, refusals atomic.Uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		payload := make([]byte, 128)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for emitted.Load() < total && ctx.Err() == nil {
			<-tick.C
			for range 10 {
				for ctx.Err() == nil {
					if taken, _ := rtA.emit(src, payload); taken > 0 {
						break
					}
					refusals.Add(1)
					time.Sleep(50 * time.Microsecond)
				}
				emitted.Add(1)
			}
		}
	}()
	for _, step := range []struct {
		at   uint64
		opts StreamOptions
		want string
	}{{total / 4, StreamOptions{Acceleration: true, Reliable: true}, DatapathDPDK}, {total / 2, StreamOptions{Reliable: true}, DatapathUDP}} {
		for emitted.Load() < step.at && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		dpdkBefore := dpA.Stats().TxDatagrams
		info, err := rtA.SetStreamQoS(sta.ID, step.opts)
		if err != nil || info.Datapath != step.want {
			t.Fatalf("set-qos %+v: %+v, %v", step.opts, info, err)
		}
		t.Logf("at %d emitted: moved to %s (DPDK had sent %d)", emitted.Load(), info.Datapath, dpdkBefore)
	}
	<-done
	for check.got.Load() < total && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // a duplicate would show by now
	s := dpA.Stats()
	t.Logf("%d of %d received; %d refusals during the moves; DPDK sent %d datagrams; UDP remote %+v", check.got.Load(), total,
		refusals.Load(), s.TxDatagrams, rtA.Remote().Reliable)
	check.mu.Lock()
	defer check.mu.Unlock()
	if check.got.Load() != total || len(check.problems) > 0 {
		t.Fatalf("received %d of %d; problems: %v", check.got.Load(), total, check.problems)
	}
	if s.TxDatagrams < total/8 {
		t.Errorf("DPDK sent %d datagrams: the stream did not move there", s.TxDatagrams)
	}
	if ev := ep.got(); len(ev) != 2 || ev[0] != DatapathDPDK || ev[1] != DatapathUDP {
		t.Errorf("the application was told %v, want [dpdk udp]", ev)
	}
}
