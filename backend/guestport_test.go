package backend

import (
	"net/netip"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/veloce-io/veloce/internal/guestproto"
)

// newGuestPort returns a port with a runtime, driven as its poller would
// drive it with a guest at guest, and call, which sends a control request
// and returns the reply's result.
func newGuestPort(t *testing.T, guest netip.AddrPort) (*Port, *Runtime, func(*guestproto.Message) guestproto.Result) {
	t.Helper()
	rt := NewRuntime(RuntimeOptions{})
	p, call := guestPortOn(t, rt, PortOptions{Name: "vm"}, guest)
	return p, rt, call
}

// noLimits lifts every limit.
var noLimits = Limits{MaxSessions: -1, MaxStreams: -1, MaxSources: -1, MaxSinks: -1, ControlRate: -1}

// guestPortOn is newGuestPort for a port with opts on rt.
func guestPortOn(t *testing.T, rt *Runtime, opts PortOptions, guest netip.AddrPort) (*Port, func(*guestproto.Message) guestproto.Result) {
	t.Helper()
	opts.Runtime = rt
	opts.Socket = filepath.Join(t.TempDir(), opts.Name+".sock")
	p, err := NewPort(opts)
	if err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 4096)
	call := func(m *guestproto.Message) guestproto.Result {
		t.Helper()
		var b [64]byte
		n, err := guestproto.PutRequest(b[:], m)
		if err != nil {
			t.Fatal(err)
		}
		rn := p.handleGuest(guest, b[:n], reply)
		if rn == 0 {
			t.Fatalf("no reply to %v", m.Type)
		}
		var r guestproto.Message
		if err := guestproto.Parse(reply[DatagramHeaderLen:rn], &r); err != nil {
			t.Fatal(err)
		}
		return r.Result
	}
	return p, call
}

// loopbackStream opens a session with a stream that has a source and a
// sink on channel 1, and returns the session and source ids.
func loopbackStream(call func(*guestproto.Message) guestproto.Result) (sess, src uint32) {
	sess = call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession}}).ID
	st := call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateStream, Session: sess}}).ID
	src = call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateSource, Session: sess}, Stream: st, Channel: 1}).ID
	call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateSink, Session: sess}, Stream: st, Channel: 1})
	return sess, src
}

// TestGuestEmitPathDoesNotAllocate drives a port's virtio transport as
// its poller does: a guest's Emit datagram (after the link peer) goes
// through the runtime to a sink of the same port, whose Deliver frame is
// then taken for the RX ring. None of it allocates.
func TestGuestEmitPathDoesNotAllocate(t *testing.T) {
	guest := netip.MustParseAddrPort("169.254.77.2:40000")
	p, _, call := newGuestPort(t, guest)
	reply := make([]byte, 4096)
	sess, src := loopbackStream(call)

	emit := make([]byte, 1500)
	n, _ := guestproto.PutEmit(emit, sess, src, 1, make([]byte, 512))
	frame := make([]byte, 65536)
	if a := testing.AllocsPerRun(1000, func() {
		if p.handleGuest(guest, emit[:n], reply) != 0 {
			t.Fatal("emit answered")
		}
		if p.FillRX(0, frame) == 0 {
			t.Fatal("no Deliver queued")
		}
	}); a != 0 {
		t.Fatalf("%v allocations per message", a)
	}
	if p.malformed.Load() != 0 {
		t.Fatalf("%d malformed", p.malformed.Load())
	}
}

// TestResentRequestsRunOnce: guestlib resends a request whose reply was
// lost with the same request id; the port answers it from its replay
// cache, so the session gets one source, not two, and a resent close is
// not answered "not found".
func TestResentRequestsRunOnce(t *testing.T) {
	_, rt, call := newGuestPort(t, netip.MustParseAddrPort("169.254.77.2:40001"))
	open := &guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession, RequestID: 1}}
	sess := call(open).ID
	if again := call(open).ID; again != sess {
		t.Fatalf("resent OpenSession opened session %d after %d", again, sess)
	}
	st := call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateStream, RequestID: 2, Session: sess}}).ID
	create := &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateSource, RequestID: 3, Session: sess}, Stream: st, Channel: 1}
	src := call(create).ID
	if again := call(create).ID; again != src {
		t.Fatalf("resent CreateSource made source %d after %d", again, src)
	}
	// A new request (new id) makes a new source.
	create.RequestID = 4
	if other := call(create).ID; other == src {
		t.Fatal("a new request was answered from the cache")
	}
	if n := len(rt.Streams()[0].Sources); n != 2 {
		t.Fatalf("%d sources, want 2", n)
	}
	closeSrc := &guestproto.Message{Header: guestproto.Header{Type: guestproto.CloseSource, RequestID: 5, Session: sess}, ID: src}
	if r := call(closeSrc); r.Status != guestproto.StatusOK {
		t.Fatalf("close: %v", r.Status)
	}
	if r := call(closeSrc); r.Status != guestproto.StatusOK {
		t.Fatalf("resent close: %v %s", r.Status, r.Message)
	}
	rt.mu.Lock()
	n := len(rt.sessions)
	rt.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d sessions, want 1", n)
	}
}

// TestBackPressureReachesTheSource: when a sink's queue is full, the
// guest's emit is answered with an Outcome of StatusNoBuffers (guestlib's
// ErrNoBuffers for that token), and velocectl streams counts it.
func TestBackPressureReachesTheSource(t *testing.T) {
	guest := netip.MustParseAddrPort("169.254.77.2:40002")
	p, rt, call := newGuestPort(t, guest)
	reply := make([]byte, 4096)
	sess, src := loopbackStream(call)

	emit := make([]byte, 1500)
	for token := uint64(1); token <= outboxSlots; token++ {
		n, _ := guestproto.PutEmit(emit, sess, src, token, make([]byte, 64))
		if rn := p.handleGuest(guest, emit[:n], reply); rn != 0 {
			t.Fatalf("emit %d answered while the queue had room", token)
		}
	}
	n, _ := guestproto.PutEmit(emit, sess, src, 9999, make([]byte, 64))
	rn := p.handleGuest(guest, emit[:n], reply)
	if rn == 0 {
		t.Fatal("no outcome for a message that found the sink's queue full")
	}
	var m guestproto.Message
	if err := guestproto.Parse(reply[DatagramHeaderLen:rn], &m); err != nil {
		t.Fatal(err)
	}
	if m.Type != guestproto.Outcome || m.Status != guestproto.StatusNoBuffers || m.Token != 9999 || m.ID != src {
		t.Fatalf("outcome %+v", m)
	}
	if s := rt.Streams()[0].Sources[0]; s.Full != 1 || s.Emitted != outboxSlots+1 {
		t.Errorf("source info %+v", s)
	}
}

// TestSessionOpenCostDoesNotGrowWithSessions: what a guest's session
// costs the daemon to open, use and close — OpenSession, CreateStream, a
// sink on a channel of its own, CloseSession, through the port's control
// path — allocates about as much with 10,000 sessions open (each with a
// sink on a channel of its own) as with 10: the tables the datapath reads
// without a lock (the port's sessions, the channels) change in O(log n)
// (internal/cow), where copying them whole cost in proportion to the
// sessions. No timing is measured: allocations and bytes are counted.
func TestSessionOpenCostDoesNotGrowWithSessions(t *testing.T) {
	cost := func(sessions int) (allocs float64, bytes uint64) {
		_, call := guestPortOn(t, NewRuntime(RuntimeOptions{}), PortOptions{Name: "vm", Limits: noLimits}, netip.MustParseAddrPort("169.254.77.2:40003"))
		ch := uint32(1)
		session := func() uint32 {
			sess := call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession}}).ID
			st := call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateStream, Session: sess}}).ID
			if r := call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateSink, Session: sess}, Stream: st, Channel: ch}); r.Status != guestproto.StatusOK {
				t.Fatalf("create sink: %v %s", r.Status, r.Message)
			}
			ch++
			return sess
		}
		for range sessions {
			session()
		}
		op := func() {
			sess := session()
			if r := call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.CloseSession, Session: sess}}); r.Status != guestproto.StatusOK {
				t.Fatalf("close session: %v", r.Status)
			}
		}
		return testing.AllocsPerRun(300, op), bytesPerRun(300, op)
	}
	smallA, smallB := cost(10)
	bigA, bigB := cost(10000)
	t.Logf("open, stream, sink, close: %v allocations, %d bytes with 10 sessions; %v, %d with 10,000", smallA, smallB, bigA, bigB)
	// A few trie levels more (internal/cow's TestStoreCostIsLogarithmic);
	// copying two tables of 10,000 entries would add hundreds of
	// allocations and over half a MiB.
	if bigA > smallA+40 || bigB > smallB+16<<10 {
		t.Errorf("with 10,000 sessions: %v allocations, %d bytes per session; with 10: %v, %d", bigA, bigB, smallA, smallB)
	}
}

// bytesPerRun is testing.AllocsPerRun for bytes: the average heap bytes
// f allocates per call.
func bytesPerRun(runs int, f func()) uint64 {
	f() // warm up
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&after)
	return (after.TotalAlloc - before.TotalAlloc) / uint64(runs)
}

// TestCreditBoundsWhatIsInFlight: once a guest sends a sink's Credit,
// the port keeps at most its room of the sink's deliveries past the last
// index the guest read, numbers them 1, 2, ... (wrapping), and counts
// what the credit held back; a Credit of an earlier numbering (seen ahead
// of what the sink sent) leaves everything sent in flight; Credits from
// another address or for another session's sink change nothing. None of
// it allocates.
func TestCreditBoundsWhatIsInFlight(t *testing.T) {
	guest := netip.MustParseAddrPort("169.254.77.2:40003")
	p, rt, call := newGuestPort(t, guest)
	reply := make([]byte, 4096)
	sess, src := loopbackStream(call)
	sk := rt.Streams()[0].Sinks[0].ID
	emit := make([]byte, 1500)
	frame := make([]byte, 65536)
	credit := func(from netip.AddrPort, session, sink, seen, room uint32) {
		t.Helper()
		b := make([]byte, guestproto.CreditLen)
		guestproto.PutCredit(b, session, sink, seen, room)
		if p.handleGuest(from, b, reply) != 0 {
			t.Fatal("a credit was answered")
		}
	}
	// send emits n messages and returns the delivery indexes the guest
	// gets.
	send := func(n int) (got []uint32) {
		t.Helper()
		for i := 0; i < n; i++ {
			en, _ := guestproto.PutEmit(emit, sess, src, uint64(i+1), make([]byte, 64))
			p.handleGuest(guest, emit[:en], reply)
		}
		for {
			fn := p.FillRX(0, frame)
			if fn == 0 {
				return got
			}
			var m guestproto.Message
			if err := guestproto.Parse(frame[DatagramHeaderLen:fn], &m); err != nil || m.Type != guestproto.Deliver {
				t.Fatalf("frame: %v %+v", err, m)
			}
			got = append(got, m.RequestID)
		}
	}
	want := func(got []uint32, from, n uint32) {
		t.Helper()
		if len(got) != int(n) {
			t.Fatalf("%d deliveries %v, want %d from %d", len(got), got, n, from)
		}
		for i, idx := range got {
			if idx != from+uint32(i) {
				t.Fatalf("indexes %v, want %d from %d", got, n, from)
			}
		}
	}
	// No credit yet (a client that never sends one): unnumbered, and as
	// many as the outbox holds.
	if got := send(3); len(got) != 3 || got[0] != 0 || got[2] != 0 {
		t.Fatalf("before any credit: indexes %v, want three 0s", got)
	}
	credit(guest, sess, sk, 0, 8)
	want(send(20), 1, 8)
	waits := func() uint64 { return rt.Streams()[0].Sinks[0].CreditWaits }
	if w := waits(); w != 12 {
		t.Errorf("credit waits %d, want 12", w)
	}
	// The guest read 5 of the 8: 3 in flight, room for 5 more.
	credit(guest, sess, sk, 5, 8)
	want(send(20), 9, 5)
	// A credit from another address, or for a sink the session does not
	// have, changes nothing: still 8 in flight past 5.
	credit(netip.MustParseAddrPort("169.254.77.9:40003"), sess, sk, 13, 100)
	credit(guest, sess, sk+1000, 13, 100)
	want(send(1), 0, 0)
	if m := p.malformed.Load(); m != 1 {
		t.Errorf("malformed %d, want 1 (the credit from another address)", m)
	}
	// Wrapping: the numbering goes on past 2^32.
	// Wrapping: the numbering goes on past 2^32, skipping 0 (which
	// says "unnumbered"). The sink's index is set as after 2^32 - 2
	// deliveries.
	p.sessions.Get(sess).sink(sk).index.Store(1<<32 - 2)
	credit(guest, sess, sk, 1<<32-2, 4)
	if got := send(10); len(got) != 3 || got[0] != 1<<32-1 || got[1] != 1 || got[2] != 2 {
		t.Fatalf("across the wrap: indexes %v, want 4294967295 1 2", got)
	}
	// A seen ahead of the numbering (an earlier daemon's, after a
	// migration): everything sent since counts as in flight.
	p.sessions.Get(sess).sink(sk).index.Store(3)
	credit(guest, sess, sk, 1000, 5)
	want(send(10), 4, 2)

	credit(guest, sess, sk, 5, 1<<20)
	c := make([]byte, guestproto.CreditLen)
	guestproto.PutCredit(c, sess, sk, 5, 1<<20)
	en, _ := guestproto.PutEmit(emit, sess, src, 1, make([]byte, 64))
	if a := testing.AllocsPerRun(1000, func() {
		p.handleGuest(guest, c, reply)
		p.handleGuest(guest, emit[:en], reply)
		p.FillRX(0, frame)
	}); a != 0 {
		t.Fatalf("%v allocations per credit and message", a)
	}
}
