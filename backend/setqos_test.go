package backend

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/guestproto"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/plugins/udp"
)

// changeRecorder is an endpoint that records the StreamChanged events it
// is told of.
type changeRecorder struct {
	fakeEndpoint
	mu sync.Mutex
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
// kernel from taking the DPDK link's datagrams: without it the
// best-effort stream below got 10,002 of 8,000, its DPDK part twice). On host A a daemon's host
// application (guestlib) streams reliably, about 10,000 messages/s, while
// the operator moves its stream UDP -> DPDK -> UDP through the control
// socket (velocectl streams set-qos): every message arrives at host B once
// and in order, the DPDK datapath carried some of them, and the
// application got both events.
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
	sock := filepath.Join(t.TempDir(), "app.sock")
	d, _ := startDaemonWith(t, func(o *DaemonOptions) {
		o.AppSocket = sock
		o.Runtime = opts(1, uA, dpA, "10.98.7.2:7078")
	})
	rtB := NewRuntime(opts(2, uB, dpB, "10.98.7.1:7078"))
	ctx := runRuntimes(t, rtB)

	check := &orderCheck{last: map[uint64]uint64{}}
	sb := rtB.OpenSession(check, netip.AddrPort{})
	stb, _ := sb.CreateStream(StreamOptions{Reliable: true})
	sb.CreateSink(stb.ID, 9)
	be := &orderCheck{last: map[uint64]uint64{}} // a best-effort stream moves too
	sbe := rtB.OpenSession(be, netip.AddrPort{})
	stbe, _ := sbe.CreateStream(StreamOptions{})
	sbe.CreateSink(stbe.ID, 10)
	waitChannel(t, ctx, d.rt, 9)
	waitChannel(t, ctx, d.rt, 10)
	app := openApp(t, sock)
	st, err := app.CreateStream(ctx, guestlib.StreamOptions{Reliable: true})
	if err != nil || st.Datapath != DatapathUDP {
		t.Fatalf("create stream: %v, %+v", err, st)
	}
	src, err := st.CreateSource(ctx, 9)
	if err != nil {
		t.Fatal(err)
	}
	st2, _ := app.CreateStream(ctx, guestlib.StreamOptions{})
	src2, err := st2.CreateSource(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}

	// 10 reliable and 2 best-effort messages a millisecond for 4 s.
	const total, totalBE = 40_000, 8_000
	var emitted atomic.Uint64
	done := make(chan error, 1)
	go func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for emitted.Load() < total {
			<-tick.C
			for i := range 10 {
				buf, err := src.GetBufferContext(ctx, 128)
				if err == nil {
					_, err = src.Emit(buf)
				}
				if err == nil && i < 2 {
					if buf, err = src2.GetBufferContext(ctx, 128); err == nil {
						_, err = src2.Emit(buf)
					}
				}
				if err != nil {
					done <- err
					return
				}
				emitted.Add(1)
			}
		}
		done <- nil
	}()
	ctl := control.NewClient(d.opts.ControlSocket)
	for _, step := range []struct {
		at    uint64
		accel bool
		want  string
	}{{total / 4, true, DatapathDPDK}, {total / 2, false, DatapathUDP}} {
		for emitted.Load() < step.at && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		for _, x := range []*guestlib.Stream{st, st2} {
			info, err := ctl.SetStreamQoS(ctx, x.ID(), control.StreamOptions{Acceleration: step.accel, Reliable: x == st})
			if err != nil || info.Datapath != step.want {
				t.Fatalf("set-qos stream %d: %+v, %v", x.ID(), info, err)
			}
			t.Logf("at %d emitted: stream %d moved to %s (DPDK had sent %d datagrams)", emitted.Load(), x.ID(), info.Datapath,
				dpA.Stats().TxDatagrams)
			select {
			case ev := <-x.Events():
				if ev.Datapath != step.want {
					t.Errorf("the application was told %+v, want %s", ev, step.want)
				}
			case <-ctx.Done():
				t.Fatal("the application was not told")
			}
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("emit: %v", err)
	}
	for (check.got.Load() < total || be.got.Load() < totalBE) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // a duplicate would show by now
	s := dpA.Stats()
	t.Logf("reliable %d of %d received, best-effort %d of %d; DPDK sent %d datagrams; reliable %+v", check.got.Load(), total,
		be.got.Load(), totalBE, s.TxDatagrams, d.rt.Remote().Reliable)
	be.mu.Lock()
	if be.got.Load() != totalBE || len(be.problems) > 0 {
		t.Errorf("best-effort: received %d of %d; problems: %v", be.got.Load(), totalBE, be.problems)
	}
	be.mu.Unlock()
	check.mu.Lock()
	defer check.mu.Unlock()
	if check.got.Load() != total || len(check.problems) > 0 {
		t.Fatalf("received %d of %d; problems: %v", check.got.Load(), total, check.problems)
	}
	if s.TxDatagrams < total/8 {
		t.Errorf("DPDK sent %d datagrams: the stream did not move there", s.TxDatagrams)
	}
	if cur := st.Current(); cur.Datapath != DatapathUDP {
		t.Errorf("Current: %+v", cur)
	}
}

// TestGuestToldOfQoSChange drives a VM port's virtio transport as its
// poller does: an emit while the stream is paused for a move is refused
// (Outcome NoBuffers) without taking a sequence number, and after the
// move the guest's session gets a StreamChanged frame on its RX ring.
func TestGuestToldOfQoSChange(t *testing.T) {
	guest := netip.MustParseAddrPort("169.254.77.2:40009")
	p, rt, call := newGuestPort(t, guest)
	reply, frame, emit := make([]byte, 4096), make([]byte, 65536), make([]byte, 1500)
	sess, src := loopbackStream(call)
	info := rt.Streams()[0]
	st := p.sessions.Get(sess).Source(src).Stream

	st.gate.pause(time.Now().Add(time.Second))
	en, _ := guestproto.PutEmit(emit, sess, src, 7, []byte("paused"))
	rn := p.handleGuest(guest, emit[:en], reply)
	var m guestproto.Message
	if rn == 0 || guestproto.Parse(reply[DatagramHeaderLen:rn], &m) != nil || m.Type != guestproto.Outcome || m.Status != guestproto.StatusNoBuffers || m.Token != 7 {
		t.Fatalf("emit while paused: %d bytes, %+v", rn, m)
	}
	st.gate.resume()
	if _, err := rt.SetStreamQoS(info.Stream, StreamOptions{Acceleration: true}); err != nil {
		t.Fatal(err)
	}
	en, _ = guestproto.PutEmit(emit, sess, src, 8, []byte("moved"))
	p.handleGuest(guest, emit[:en], reply)
	var got []guestproto.Message
	for {
		fn := p.FillRX(0, frame)
		if fn == 0 {
			break
		}
		if err := guestproto.Parse(frame[DatagramHeaderLen:fn], &m); err != nil {
			t.Fatal(err)
		}
		m.Result.Plugin, m.Result.Message, m.Payload = clone(m.Result.Plugin), clone(m.Result.Message), clone(m.Payload)
		got = append(got, m)
	}
	if len(got) != 2 || got[0].Type != guestproto.StreamChanged || got[0].Session != sess || got[0].ID != info.Stream ||
		string(got[0].Result.Plugin) != DatapathUDP || !strings.Contains(string(got[0].Result.Message), "acceleration requested") {
		t.Fatalf("frames after the move: %+v", got)
	}
	if got[1].Type != guestproto.Deliver || got[1].Seq != 1 || string(got[1].Payload) != "moved" {
		t.Errorf("the refused emit took a sequence number, or the next was lost: %+v", got[1])
	}
}

type acceptAll struct{}

func (acceptAll) deliver(*Sink, uint64, uint64, []byte) bool { return true }
func (acceptAll) String() string                             { return "bench" }
func (acceptAll) sessionClosed(*Session)                     {}

// BenchmarkEmitLocalSink is the cheapest emit: one local sink that takes
// everything. The QoS gate (two atomic adds) is part of it.
func BenchmarkEmitLocalSink(b *testing.B) {
	rt := NewRuntime(RuntimeOptions{})
	s := rt.OpenSession(acceptAll{}, netip.AddrPort{})
	st, _ := s.CreateStream(StreamOptions{})
	s.CreateSink(st.ID, 1)
	src, _ := s.CreateSource(st.ID, 1)
	p := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		rt.Emit(src, p)
	}
}
