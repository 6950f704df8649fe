package backend

import (
	"errors"
	"net/netip"
	"testing"
)

// fakeEndpoint records deliveries; room bounds them (back-pressure).
type fakeEndpoint struct {
	name   string
	room   int
	got    []delivery
	closed []uint32
}

type delivery struct {
	sink        uint32
	source, seq uint64
	payload     string
}

func (f *fakeEndpoint) deliver(sk *Sink, source, seq uint64, payload []byte) bool {
	if len(f.got) >= f.room {
		return false
	}
	f.got = append(f.got, delivery{sk.ID, source, seq, string(payload)})
	return true
}
func (f *fakeEndpoint) String() string           { return f.name }
func (f *fakeEndpoint) sessionClosed(s *Session) { f.closed = append(f.closed, s.ID) }

func TestChannelsConnectSourcesToSinks(t *testing.T) {
	r := NewRuntime(RuntimeOptions{NodeID: 5})
	a, b := &fakeEndpoint{name: "a", room: 100}, &fakeEndpoint{name: "b", room: 100}
	sa := r.OpenSession(a, netip.AddrPort{})
	sb := r.OpenSession(b, netip.AddrPort{})
	sta, _ := sa.CreateStream(StreamOptions{})
	stb, _ := sb.CreateStream(StreamOptions{})
	src, err := sa.CreateSource(sta.ID, 1)
	if err != nil {
		t.Fatal(err)
	}
	k1, _ := sb.CreateSink(stb.ID, 1)
	k2, _ := sb.CreateSink(stb.ID, 1)
	kOther, _ := sa.CreateSink(sta.ID, 2)
	for _, p := range []string{"x", "y"} {
		if n := r.Emit(src, []byte(p)); n != 2 {
			t.Fatalf("emit reached %d sinks, want 2", n)
		}
	}
	want := []delivery{{k1.ID, 5<<32 | uint64(src.ID), 1, "x"}, {k2.ID, 5<<32 | uint64(src.ID), 1, "x"}, {k1.ID, 5<<32 | uint64(src.ID), 2, "y"}, {k2.ID, 5<<32 | uint64(src.ID), 2, "y"}}
	if len(b.got) != 4 {
		t.Fatalf("got %+v", b.got)
	}
	for i := range want {
		if b.got[i] != want[i] {
			t.Errorf("delivery %d: %+v, want %+v", i, b.got[i], want[i])
		}
	}
	if len(a.got) != 0 || kOther.delivered.Load() != 0 {
		t.Errorf("channel 2 got channel 1's messages")
	}
	// Closing b's session releases its sinks: emits reach nobody.
	sb.Close()
	if n := r.Emit(src, []byte("z")); n != 0 || len(b.closed) != 1 {
		t.Errorf("after close: %d sinks, closed %v", n, b.closed)
	}
	if _, err := sb.CreateStream(StreamOptions{}); !errors.Is(err, ErrClosed) {
		t.Errorf("stream on a closed session: %v", err)
	}
	if _, err := sa.CreateSink(999, 1); !errors.Is(err, ErrNotFound) {
		t.Errorf("sink on an unknown stream: %v", err)
	}
}

func TestBackPressureCountsDrops(t *testing.T) {
	r := NewRuntime(RuntimeOptions{})
	ep := &fakeEndpoint{room: 1}
	s := r.OpenSession(ep, netip.AddrPort{})
	st, _ := s.CreateStream(StreamOptions{})
	src, _ := s.CreateSource(st.ID, 3)
	sk, _ := s.CreateSink(st.ID, 3)
	r.Emit(src, []byte("1"))
	r.Emit(src, []byte("2"))
	if sk.delivered.Load() != 1 || sk.dropped.Load() != 1 {
		t.Fatalf("delivered %d dropped %d", sk.delivered.Load(), sk.dropped.Load())
	}
	info := r.Streams()
	if len(info) != 1 || info[0].Sinks[0].Dropped != 1 || info[0].Sources[0].Emitted != 2 {
		t.Fatalf("streams: %+v", info)
	}
}

func TestCloseStreamReleasesItsSourcesAndSinks(t *testing.T) {
	r := NewRuntime(RuntimeOptions{})
	ep := &fakeEndpoint{room: 10}
	s := r.OpenSession(ep, netip.AddrPort{})
	st, _ := s.CreateStream(StreamOptions{})
	src, _ := s.CreateSource(st.ID, 1)
	s.CreateSink(st.ID, 1)
	if err := s.CloseStream(st.ID); err != nil {
		t.Fatal(err)
	}
	if s.Source(src.ID) != nil || r.Emit(src, nil) != 0 || len(r.Streams()) != 0 {
		t.Fatal("stream's source or sink outlived it")
	}
}

func TestEmitDoesNotAllocate(t *testing.T) {
	r := NewRuntime(RuntimeOptions{})
	ep := &fakeEndpoint{room: 0} // refuses: measures the runtime alone
	s := r.OpenSession(ep, netip.AddrPort{})
	st, _ := s.CreateStream(StreamOptions{})
	src, _ := s.CreateSource(st.ID, 1)
	for i := 0; i < 8; i++ {
		s.CreateSink(st.ID, 1)
	}
	payload := make([]byte, 64)
	if a := testing.AllocsPerRun(1000, func() { r.Emit(src, payload); s.Source(src.ID) }); a != 0 {
		t.Fatalf("%v allocations per emit", a)
	}
}

// TestHeardSessionIsNotIdle: a session the datapath heard from (an Emit,
// a Credit: hear, no clock read) is dated by the next reaping round and
// kept; one silent since is released once its time is past the cutoff.
func TestHeardSessionIsNotIdle(t *testing.T) {
	rt := NewRuntime(RuntimeOptions{})
	s, err := rt.openSession(&fakeEndpoint{}, netip.AddrPort{}, HostTenant, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.lastSeen.Store(1) // heard from long ago
	s.hear()
	cutoff := monoNow()
	rt.reapIdle(cutoff)
	if _, err := s.CreateStream(StreamOptions{}); err != nil {
		t.Fatalf("a session heard from since the last round was reaped: %v", err)
	}
	if got := s.lastSeen.Load(); got < cutoff {
		t.Fatalf("lastSeen %d after the round, want at least the cutoff %d", got, cutoff)
	}
	rt.reapIdle(monoNow() + 1) // silent since: past the cutoff
	if _, err := s.CreateStream(StreamOptions{}); err == nil {
		t.Fatal("a session silent past the cutoff was not reaped")
	}
}

// TestNewSessionIsNotIdle: a session is heard from when it opens, so a
// reaping round that comes while it is still being set up (the host
// transport maps its region between opening it and its first reply)
// does not release it. The cutoff is that of a daemon up longer than its
// session timeout.
func TestNewSessionIsNotIdle(t *testing.T) {
	rt := NewRuntime(RuntimeOptions{})
	s, err := rt.openSession(&fakeEndpoint{}, netip.AddrPort{}, HostTenant, nil)
	if err != nil {
		t.Fatal(err)
	}
	rt.reapIdle(1)
	if _, err := s.CreateStream(StreamOptions{}); err != nil {
		t.Fatalf("a session just opened was reaped: %v", err)
	}
}
