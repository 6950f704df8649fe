package backend

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/guestproto"
)

// guestCalls are the control requests a test guest sends.
type guestCalls func(*guestproto.Message) guestproto.Result

func (call guestCalls) open() guestproto.Result {
	return call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession}})
}

func (call guestCalls) stream(sess uint32) uint32 {
	return call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateStream, Session: sess}}).ID
}

func (call guestCalls) create(typ guestproto.Type, sess, stream, channel uint32) guestproto.Result {
	return call(&guestproto.Message{Header: guestproto.Header{Type: typ, Session: sess}, Stream: stream, Channel: channel})
}

// endpointStream opens a session with one stream on a test guest's port
// and a source or sink on channel.
func endpointOn(t *testing.T, call guestCalls, typ guestproto.Type, channel uint32) (sess, id uint32) {
	t.Helper()
	sess = call.open().ID
	r := call.create(typ, sess, call.stream(sess), channel)
	if r.Status != guestproto.StatusOK {
		t.Fatalf("%v on channel %d: %v %s", typ, channel, r.Status, r.Message)
	}
	return sess, r.ID
}

// emitN emits n messages from a guest's source and drains the port's
// outbox after each (its guest consumes everything).
func emitN(t *testing.T, p *Port, guest netip.AddrPort, sess, src uint32, n int) {
	t.Helper()
	emit, reply, frame := make([]byte, 256), make([]byte, 4096), make([]byte, 4096)
	for i := range n {
		m, _ := guestproto.PutEmit(emit, sess, src, uint64(i+1), []byte("tenant message"))
		if rn := p.handleGuest(guest, emit[:m], reply); rn != 0 {
			t.Fatalf("emit %d answered", i)
		}
		for p.FillRX(0, frame) > 0 {
		}
	}
}

func sinkDelivered(rt *Runtime, sink uint32) (delivered uint64, found bool) {
	for _, st := range rt.Streams() {
		for _, sk := range st.Sinks {
			if sk.ID == sink {
				return sk.Delivered, true
			}
		}
	}
	return 0, false
}

// TestTenantsDoNotSeeEachOthersChannels: two ports are two tenants; a
// sink of tenant "snoop" on channel 7 gets none of tenant "owner"'s
// messages on its channel 7, while owner's own sink gets all of them. On
// a channel the operator shares, the same two meet.
func TestTenantsDoNotSeeEachOthersChannels(t *testing.T) {
	rt := NewRuntime(RuntimeOptions{SharedChannels: []uint32{9}})
	ga, gb := netip.MustParseAddrPort("169.254.77.2:41000"), netip.MustParseAddrPort("169.254.77.2:41001")
	owner, callOwner := guestPortOn(t, rt, PortOptions{Name: "owner"}, ga)
	_, callSnoop := guestPortOn(t, rt, PortOptions{Name: "snoop"}, gb)

	sess, src := endpointOn(t, callOwner, guestproto.CreateSource, 7)
	_, own := endpointOn(t, callOwner, guestproto.CreateSink, 7)
	_, snoop := endpointOn(t, callSnoop, guestproto.CreateSink, 7)
	const n = 100
	emitN(t, owner, ga, sess, src, n)
	if got, _ := sinkDelivered(rt, own); got != n {
		t.Errorf("owner's sink got %d of %d", got, n)
	}
	if got, ok := sinkDelivered(rt, snoop); got != 0 || !ok {
		t.Errorf("another tenant's sink on the same channel id got %d messages (found %v)", got, ok)
	}
	for _, st := range rt.Streams() {
		if st.Tenant != "owner" && st.Tenant != "snoop" {
			t.Errorf("stream %d of tenant %q", st.Stream, st.Tenant)
		}
	}

	// Channel 9 is shared: both tenants' sinks get the source's messages.
	ssess, ssrc := endpointOn(t, callOwner, guestproto.CreateSource, 9)
	_, ownShared := endpointOn(t, callOwner, guestproto.CreateSink, 9)
	_, snoopShared := endpointOn(t, callSnoop, guestproto.CreateSink, 9)
	emitN(t, owner, ga, ssess, ssrc, n)
	for _, sk := range []uint32{ownShared, snoopShared} {
		if got, _ := sinkDelivered(rt, sk); got != n {
			t.Errorf("shared channel: sink %d got %d of %d", sk, got, n)
		}
	}
}

// TestPortsOfOneTenantShareChannels: two ports given the same tenant are
// one namespace.
func TestPortsOfOneTenantShareChannels(t *testing.T) {
	rt := NewRuntime(RuntimeOptions{})
	ga, gb := netip.MustParseAddrPort("169.254.77.2:41002"), netip.MustParseAddrPort("169.254.77.2:41003")
	a, callA := guestPortOn(t, rt, PortOptions{Name: "a", Tenant: "blue"}, ga)
	_, callB := guestPortOn(t, rt, PortOptions{Name: "b", Tenant: "blue"}, gb)
	sess, src := endpointOn(t, callA, guestproto.CreateSource, 7)
	_, sk := endpointOn(t, callB, guestproto.CreateSink, 7)
	emitN(t, a, ga, sess, src, 10)
	if got, _ := sinkDelivered(rt, sk); got != 10 {
		t.Errorf("sink of the same tenant on another port got %d of 10", got)
	}
}

// TestRemoteMessagesReachOnlyTheHostTenantAndSharedChannels: a peer's
// message carries no tenant: it reaches the operator tenant's channel
// and the shared ones, never a VM tenant's; the hook for a tenant-tagged
// wire header reaches that tenant's.
func TestRemoteMessagesReachOnlyTheHostTenantAndSharedChannels(t *testing.T) {
	rt := NewRuntime(RuntimeOptions{SharedChannels: []uint32{9}})
	guest := netip.MustParseAddrPort("169.254.77.2:41004")
	_, call := guestPortOn(t, rt, PortOptions{Name: "vm"}, guest)
	_, vmSink := endpointOn(t, call, guestproto.CreateSink, 7)
	_, vmShared := endpointOn(t, call, guestproto.CreateSink, 9)
	host := rt.OpenSession(&fakeEndpoint{room: 100}, netip.AddrPort{})
	st, _ := host.CreateStream(StreamOptions{})
	hostSink, _ := host.CreateSink(st.ID, 7)

	if d, _ := rt.deliverLocal(7, 1, 1, []byte("x")); d != 1 {
		t.Errorf("untagged peer message on channel 7 reached %d sinks, want the host tenant's only", d)
	}
	if d, _ := rt.deliverLocal(9, 1, 2, []byte("x")); d != 1 {
		t.Errorf("untagged peer message on shared channel 9 reached %d sinks, want 1", d)
	}
	if d, _ := rt.deliverRemote(TenantIDOf("vm"), 7, 1, 3, []byte("x")); d != 1 {
		t.Errorf("tenant-tagged message reached %d sinks, want the vm tenant's", d)
	}
	if got, _ := sinkDelivered(rt, vmSink); got != 1 {
		t.Errorf("vm sink got %d, want only the tagged message", got)
	}
	if got, _ := sinkDelivered(rt, vmShared); got != 1 {
		t.Errorf("vm shared sink got %d", got)
	}
	if got := hostSink.delivered.Load(); got != 1 {
		t.Errorf("host sink got %d", got)
	}
	if got := rt.remoteChannels(); len(got) != 2 || got[0] != 7 || got[1] != 9 {
		t.Errorf("directory lists %v, want [7 9] (the host tenant's 7, shared 9; not the vm's 7 twice)", got)
	}
}

// TestTenantIDCollisionIsDenied: a second tenant name with an id already
// taken is refused, not merged.
func TestTenantIDCollisionIsDenied(t *testing.T) {
	rt := NewRuntime(RuntimeOptions{})
	rt.mu.Lock()
	rt.tenants[TenantIDOf("mallory")] = "alice" // as if alice hashed to mallory's id
	rt.mu.Unlock()
	_, err := rt.openSession(&fakeEndpoint{}, netip.AddrPort{}, "mallory", nil)
	if !errors.Is(err, ErrTenantCollision) {
		t.Fatalf("open: %v", err)
	}
	if r := errorResult(err); r.Status != guestproto.StatusDenied {
		t.Errorf("status %v", r.Status)
	}
}

// TestSessionFloodHitsLimitAndSparesOtherPorts: a guest opening sessions
// without end gets MaxSessions of them, then StatusLimit naming
// "sessions", each refusal counted in the port's limit_refusals; a
// guest on another port streams all the while and loses nothing. The
// control requests run on the flooding port's poller under the runtime's
// lock; the other port's datapath takes no lock, so the flood costs it
// CPU at most (logged, not asserted: timings here are meaningless).
func TestSessionFloodHitsLimitAndSparesOtherPorts(t *testing.T) {
	rt := NewRuntime(RuntimeOptions{})
	gf, gs := netip.MustParseAddrPort("169.254.77.2:41005"), netip.MustParseAddrPort("169.254.77.2:41006")
	flood, callFlood := guestPortOn(t, rt, PortOptions{Name: "flood", Limits: Limits{MaxSessions: 50, ControlRate: -1}}, gf)
	streamer, callStream := guestPortOn(t, rt, PortOptions{Name: "stream"}, gs)
	sess, src := endpointOn(t, callStream, guestproto.CreateSource, 1)
	_, sink := endpointOn(t, callStream, guestproto.CreateSink, 1)

	const messages = 20000
	streamAlone := func() time.Duration {
		start := time.Now()
		emitN(t, streamer, gs, sess, src, messages)
		return time.Since(start)
	}
	alone := streamAlone()

	var refused, opened int
	var wg sync.WaitGroup
	wg.Add(1)
	stop := make(chan struct{})
	go func() { // the flooding port's poller
		defer wg.Done()
		reply := make([]byte, 4096)
		var b [64]byte
		n, _ := guestproto.PutRequest(b[:], &guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession}})
		for i := 0; ; i++ {
			select {
			case <-stop:
				// Flood on until the limit has been hit a few times,
				// however little the scheduler ran this goroutine
				// while the other port streamed.
				if refused >= 10 {
					return
				}
			default:
			}
			rn := flood.handleGuest(gf, b[:n], reply)
			var m guestproto.Message
			if guestproto.Parse(reply[DatagramHeaderLen:rn], &m) != nil {
				t.Error("bad reply")
				return
			}
			switch m.Result.Status {
			case guestproto.StatusOK:
				opened++
			case guestproto.StatusLimit:
				if string(m.Result.Plugin) != guestproto.LimitSessions {
					t.Errorf("limit %q", m.Result.Plugin)
				}
				refused++
			default:
				t.Errorf("status %v %s", m.Result.Status, m.Result.Message)
			}
		}
	}()
	during := streamAlone()
	close(stop)
	wg.Wait()
	t.Logf("%d messages on the other port: %v alone, %v during the flood (%d sessions opened, %d refused)", messages, alone, during, opened, refused)
	if got, _ := sinkDelivered(rt, sink); got != 2*messages {
		t.Errorf("the other port's sink got %d of %d", got, 2*messages)
	}
	if opened != 50 {
		t.Errorf("%d sessions opened, want MaxSessions 50", opened)
	}
	info := flood.Info()
	if info.Sessions != 50 || info.LimitRefusals[guestproto.LimitSessions] != uint64(refused) || refused == 0 {
		t.Errorf("port info: %d sessions, refusals %v; the guest saw %d", info.Sessions, info.LimitRefusals, refused)
	}
	if r := streamer.Info().LimitRefusals; len(r) != 0 {
		t.Errorf("the other port counts refusals %v", r)
	}
	// Closing a session frees its place.
	if r := callFlood(&guestproto.Message{Header: guestproto.Header{Type: guestproto.CloseSession, Session: firstSession(flood)}}); r.Status != guestproto.StatusOK {
		t.Fatalf("close: %v", r.Status)
	}
	if r := guestCalls(callFlood).open(); r.Status != guestproto.StatusOK {
		t.Errorf("open after a close: %v %s", r.Status, r.Message)
	}
}

func firstSession(p *Port) uint32 {
	for id := range p.sessions.All() {
		return id
	}
	return 0
}

// TestLimitsOnStreamsSourcesSinks: each kind is refused past its limit,
// with the limit's name, and released when closed.
func TestLimitsOnStreamsSourcesSinks(t *testing.T) {
	guest := netip.MustParseAddrPort("169.254.77.2:41007")
	p, call := guestPortOn(t, NewRuntime(RuntimeOptions{}), PortOptions{Name: "vm", Limits: Limits{MaxStreams: 2, MaxSources: 1, MaxSinks: 1}}, guest)
	c := guestCalls(call)
	sess := c.open().ID
	st := c.stream(sess)
	c.stream(sess)
	if r := call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateStream, Session: sess}}); r.Status != guestproto.StatusLimit || string(r.Plugin) != "streams" {
		t.Errorf("third stream: %v %q %s", r.Status, r.Plugin, r.Message)
	}
	for _, typ := range []guestproto.Type{guestproto.CreateSource, guestproto.CreateSink} {
		if r := c.create(typ, sess, st, 1); r.Status != guestproto.StatusOK {
			t.Fatalf("%v: %v", typ, r.Status)
		}
		if r := c.create(typ, sess, st, 2); r.Status != guestproto.StatusLimit {
			t.Errorf("second %v: %v", typ, r.Status)
		}
	}
	// Closing the stream releases it, its source and its sink.
	if r := call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.CloseStream, Session: sess}, ID: st}); r.Status != guestproto.StatusOK {
		t.Fatal(r.Status)
	}
	st = c.stream(sess)
	for _, typ := range []guestproto.Type{guestproto.CreateSource, guestproto.CreateSink} {
		if r := c.create(typ, sess, st, 3); r.Status != guestproto.StatusOK {
			t.Errorf("%v after the close: %v %s", typ, r.Status, r.Message)
		}
	}
	want := map[string]uint64{"streams": 1, "sources": 1, "sinks": 1}
	if got := p.Info().LimitRefusals; len(got) != 3 || got["streams"] != 1 || got["sources"] != 1 || got["sinks"] != 1 {
		t.Errorf("refusals %v, want %v", got, want)
	}
	// The session's close gives everything back.
	call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.CloseSession, Session: sess}})
	for k := range numLimitsHeld {
		if n := p.acct.held[k].Load(); n != 0 {
			t.Errorf("%s still held: %d", limitNames[k], n)
		}
	}
}

// TestControlRateLimit: past its burst, a port's control requests are
// refused ("control-rate") until the bucket refills; pings never are,
// and a refused request is not cached (resent later, it runs). The
// clock is the test's.
func TestControlRateLimit(t *testing.T) {
	guest := netip.MustParseAddrPort("169.254.77.2:41008")
	p, _ := guestPortOn(t, NewRuntime(RuntimeOptions{}), PortOptions{Name: "vm", Limits: Limits{ControlRate: 10, ControlBurst: 5}}, guest)
	now := time.Now().UnixNano()
	open := func(req uint32, at int64) guestproto.Result {
		return p.control(&guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession, RequestID: req}}, guest, at)
	}
	for i := range uint32(5) {
		if r := open(i+1, now); r.Status != guestproto.StatusOK {
			t.Fatalf("request %d within the burst: %v", i, r.Status)
		}
	}
	r := open(6, now)
	if r.Status != guestproto.StatusLimit || string(r.Plugin) != guestproto.LimitControlRate {
		t.Fatalf("past the burst: %v %q", r.Status, r.Plugin)
	}
	sess := open(1, now).ID // a resend of a request that ran is still answered from the cache
	if r := p.control(&guestproto.Message{Header: guestproto.Header{Type: guestproto.Ping, Session: sess}}, guest, now); r.Status != guestproto.StatusOK {
		t.Errorf("ping refused: %v", r.Status)
	}
	// 100 ms later one token is back: the resent request 6 runs.
	if r := open(6, now+int64(100*time.Millisecond)); r.Status != guestproto.StatusOK {
		t.Errorf("resent after the refill: %v %s", r.Status, r.Message)
	}
	if n := p.Info().LimitRefusals[guestproto.LimitControlRate]; n != 1 {
		t.Errorf("control-rate refusals %d", n)
	}
}

// TestHostSourceSeesBackPressure: a host application's source emitting
// into a sink that never consumes: once the sink's pool is empty its
// emits are refused, and the application's Outcome says so
// (ErrNoBuffers) for exactly as many tokens as velocectl streams counts
// the source "full".
func TestHostSourceSeesBackPressure(t *testing.T) {
	d, sock := hostDaemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sinkS, srcS := openApp(t, sock), openApp(t, sock)
	sst, _ := sinkS.CreateStream(ctx, guestlib.StreamOptions{})
	if _, err := sst.CreateSink(ctx, 5, guestlib.SinkOptions{Queue: 1 << 16}); err != nil {
		t.Fatal(err)
	}
	st, _ := srcS.CreateStream(ctx, guestlib.StreamOptions{})
	src, err := st.CreateSource(ctx, 5)
	if err != nil {
		t.Fatal(err)
	}
	const n = 3000 // within guestlib.OutcomeWindow
	tokens := make([]guestlib.Token, 0, n)
	for i := range n {
		b, err := src.GetBufferContext(ctx, 64)
		if err != nil {
			t.Fatal(err)
		}
		pattern(b.Data, uint64(i))
		tok, err := src.Emit(b)
		if err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, tok)
	}
	full := func() uint64 {
		for _, s := range d.Streams() {
			if s.Session == srcS.ID() && len(s.Sources) == 1 {
				return s.Sources[0].Full
			}
		}
		return 0
	}
	refused := func() (n uint64) {
		for _, tok := range tokens {
			if errors.Is(src.Outcome(tok), guestlib.ErrNoBuffers) {
				n++
			}
		}
		return n
	}
	eventually(t, "every emit counted", func() bool {
		s := sinkInfo(d, sinkS.ID())
		return len(s) == 1 && s[0].Delivered+s[0].Dropped == n
	})
	if full() != n-hostRXSlots {
		t.Errorf("source full %d, want %d (the sink holds %d)", full(), n-hostRXSlots, hostRXSlots)
	}
	// Outcomes travel on the socket, after the counts: wait for them.
	for deadline := time.Now().Add(10 * time.Second); refused() != full() && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if r, f := refused(), full(); r != f || r == 0 {
		t.Errorf("%d outcomes ErrNoBuffers, source full %d", r, f)
	}
	for _, c := range d.HostApps().Clients {
		if c.Unsent != 0 {
			t.Errorf("client %s: %d unsent replies", c.Name, c.Unsent)
		}
	}
}

// TestHostAppsHitSessionLimitWithErrLimit: host applications of one
// tenant share its account: past MaxSessions, guestlib's Open fails with
// ErrLimit naming "sessions", and the tenant's counters show it.
func TestHostAppsHitSessionLimitWithErrLimit(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "app.sock")
	d, _ := startDaemonWith(t, func(o *DaemonOptions) { o.AppSocket = sock; o.Limits.MaxSessions = 2 })
	openApp(t, sock)
	openApp(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := guestlib.Open(ctx, guestlib.Options{Socket: sock})
	var re *guestlib.RequestError
	if !errors.Is(err, guestlib.ErrLimit) || !errors.As(err, &re) || re.Limit != guestproto.LimitSessions {
		t.Fatalf("third session: %v", err)
	}
	t.Logf("the application sees: %v", err)
	info := d.HostApps()
	if len(info.Tenants) != 1 || info.Tenants[0].Name != HostTenant || info.Tenants[0].Sessions != 2 || info.Tenants[0].LimitRefusals["sessions"] != 1 {
		t.Errorf("tenants %+v", info.Tenants)
	}
}

// lineCounter counts the lines written to it.
type lineCounter struct {
	mu sync.Mutex
	n  int // +checklocks:mu
}

func (c *lineCounter) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n += bytes.Count(b, []byte("\n"))
	return len(b), nil
}

// TestTenThousandSessionsDoNotFloodTheLog: a guest opening 10,000
// sessions (past its limit of 256) and closing them writes a handful of
// lines at the INFO level, not two per session: opens and closes are
// DEBUG, limit refusals a rate-limited WARN.
func TestTenThousandSessionsDoNotFloodTheLog(t *testing.T) {
	lines := &lineCounter{}
	log := slog.New(slog.NewTextHandler(lines, &slog.HandlerOptions{Level: slog.LevelInfo}))
	rt := NewRuntime(RuntimeOptions{Logger: log})
	_, call := guestPortOn(t, rt, PortOptions{Name: "vm", Logger: log, Limits: Limits{ControlRate: -1}}, netip.MustParseAddrPort("169.254.77.2:41009"))
	var open []uint32
	for range 10000 {
		if r := guestCalls(call).open(); r.Status == guestproto.StatusOK {
			open = append(open, r.ID)
		}
	}
	for _, s := range open {
		call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.CloseSession, Session: s}})
	}
	if len(open) != DefaultLimits.MaxSessions || lines.n > limitLogBurst+1 {
		t.Errorf("%d sessions opened, %d log lines", len(open), lines.n)
	}
}
