package backend

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"net/netip"
	"reflect"
	"testing"

	"github.com/veloce-io/veloce/internal/guestproto"
	"github.com/veloce-io/veloce/migration"
)

var testMigrationKey = []byte("0123456789abcdef0123456789abcdef-migration")

// guestState gives a port a guest application: a session with a stream,
// a source on channel 6 and a sink on channel 5, and queues msgs
// messages for the sink from a host source on rt (channel 5 must be
// shared). It returns the host source.
func guestState(t *testing.T, rt *Runtime, p *Port, call func(*guestproto.Message) guestproto.Result, emitted, msgs int) (guestSrc, hostSrc *Source) {
	t.Helper()
	sess := call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession, RequestID: 1}}).ID
	st := call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateStream, Session: sess, RequestID: 2},
		Options: guestproto.StreamOptions{Reliable: 1}}).ID
	srcID := call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateSource, Session: sess, RequestID: 3}, Stream: st, Channel: 6}).ID
	if r := call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateSink, Session: sess, RequestID: 4}, Stream: st, Channel: 5}); r.Status != 0 {
		t.Fatalf("create sink: %+v", r)
	}
	guestSrc = p.sessions.Get(sess).Source(srcID)
	for range emitted {
		rt.Emit(guestSrc, []byte("from the guest"))
	}
	host := rt.OpenSession(&fakeEndpoint{name: "host", room: 1 << 20}, netip.AddrPort{})
	hst, _ := host.CreateStream(StreamOptions{})
	hostSrc, err := host.CreateSource(hst.ID, 5)
	if err != nil {
		t.Fatal(err)
	}
	for i := range msgs {
		if rt.Emit(hostSrc, []byte{byte(i), 'm'}) != 1 {
			t.Fatalf("message %d reached no sink", i)
		}
	}
	return guestSrc, hostSrc
}

// drainOutbox takes every Deliver frame the port holds for its guest.
func drainOutbox(t *testing.T, p *Port) []guestproto.Message {
	t.Helper()
	var out []guestproto.Message
	buf := make([]byte, 4096)
	for {
		n := p.FillRX(0, buf)
		if n == 0 {
			return out
		}
		var m guestproto.Message
		if err := guestproto.Parse(buf[DatagramHeaderLen:n], &m); err != nil || m.Type != guestproto.Deliver {
			t.Fatalf("outbox frame: %v %v", m.Type, err)
		}
		m.Payload = append([]byte(nil), m.Payload...)
		out = append(out, m)
	}
}

// TestSnapshotExportImportKeepsStreams: a port's state, exported,
// encoded, decoded and imported into a port on another runtime, is the
// same state — sessions, streams, sources with their global ids and
// sequence numbers, sinks with their queued messages in order, the
// replay cache — in the port's tenant and charged to its account.
func TestSnapshotExportImportKeepsStreams(t *testing.T) {
	guest := netip.MustParseAddrPort("169.254.77.2:40000")
	rtA := NewRuntime(RuntimeOptions{NodeID: 7, SharedChannels: []uint32{5}})
	pa, callA := guestPortOn(t, rtA, PortOptions{Name: "vm"}, guest)
	guestSrc, _ := guestState(t, rtA, pa, callA, 3, 10)

	b, err := pa.ExportSnapshot(testMigrationKey)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot: %d bytes", len(b))
	if got := len(drainOutbox(t, pa)); got != 10 {
		t.Fatalf("export took frames from the outbox: %d left, want 10", got)
	}

	rtB := NewRuntime(RuntimeOptions{NodeID: 9, SharedChannels: []uint32{5}})
	pb, callB := guestPortOn(t, rtB, PortOptions{Name: "vm"}, guest)
	if err := pb.ImportSnapshot(b, testMigrationKey); err != nil {
		t.Fatal(err)
	}
	sa, sb := rtA.Streams(), rtB.Streams()
	if len(sb) != 1 || sb[0].Tenant != "vm" || sb[0].Endpoint != "vm:vm" || !sb[0].Options.Reliable {
		t.Fatalf("imported streams: %+v", sb)
	}
	if sa[0].Session != sb[0].Session || sa[0].Stream != sb[0].Stream ||
		!reflect.DeepEqual(sa[0].Sources, sb[0].Sources) || sa[0].Sinks[0].ID != sb[0].Sinks[0].ID {
		t.Errorf("streams differ:\n source %+v\n dest   %+v", sa, sb)
	}
	if h := &pb.acct.held; h[limitSessions].Load() != 1 || h[limitStreams].Load() != 1 || h[limitSources].Load() != 1 || h[limitSinks].Load() != 1 {
		t.Errorf("destination account holds %v %v %v %v", h[0].Load(), h[1].Load(), h[2].Load(), h[3].Load())
	}
	// The queued messages, in order.
	got := drainOutbox(t, pb)
	if len(got) != 10 {
		t.Fatalf("%d queued messages imported, want 10", len(got))
	}
	for i, m := range got {
		if m.Seq != uint64(i+1) || m.Payload[0] != byte(i) || m.Session != sb[0].Session {
			t.Errorf("message %d: seq %d payload %v session %d", i, m.Seq, m.Payload, m.Session)
		}
	}
	// The source goes on where it stopped, under the same global id.
	so := pb.sessions.Get(sb[0].Session).Source(guestSrc.ID)
	if so == nil || so.Global != guestSrc.Global || so.seq.Load() != 3 {
		t.Fatalf("imported source %+v, want global %#x at seq 3", so, guestSrc.Global)
	}
	// A resent request is answered from the replay cache, not run again.
	again := callB(&guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession, RequestID: 1}})
	if again.ID != sb[0].Session || len(rtB.Streams()) != 1 || pb.sessions.Len() != 1 {
		t.Errorf("resent OpenSession answered %+v (sessions %d): not from the replay cache", again, pb.sessions.Len())
	}
	// New ids on the destination do not collide with imported ones.
	s2 := callB(&guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession, RequestID: 9}}).ID
	if s2 <= sb[0].Sinks[0].ID {
		t.Errorf("new session id %d not above the imported ids", s2)
	}
}

// TestSnapshotImportRejectedWhole: corrupt, truncated, wrong-version,
// unsigned and wrongly signed snapshots, and snapshots that do not fit
// the port, are refused with an error that says which, and the
// destination is left exactly as it was.
func TestSnapshotImportRejectedWhole(t *testing.T) {
	guest := netip.MustParseAddrPort("169.254.77.2:40000")
	rtA := NewRuntime(RuntimeOptions{NodeID: 7, SharedChannels: []uint32{5}})
	pa, callA := guestPortOn(t, rtA, PortOptions{Name: "vm"}, guest)
	guestState(t, rtA, pa, callA, 1, 4)
	good, err := pa.ExportSnapshot(testMigrationKey)
	if err != nil {
		t.Fatal(err)
	}
	unsigned, _ := pa.ExportSnapshot(nil)
	snap, _ := pa.Export()

	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := []struct {
		name string
		b    []byte
		key  []byte
		want error
	}{
		{"corrupt", mutate(func(b []byte) []byte { b[40] ^= 0xff; return b }), testMigrationKey, migration.ErrCorrupt},
		{"truncated", good[:len(good)-50], testMigrationKey, migration.ErrTruncated},
		{"wrong version", mutate(func(b []byte) []byte { b[4] = 9; return b }), testMigrationKey, migration.ErrCorrupt}, // the CRC covers the version
		{"unsigned", unsigned, testMigrationKey, migration.ErrUnauthenticated},
		{"other key", good, []byte("another key of the required length, 32+ bytes"), migration.ErrUnauthenticated},
	}
	// A wrong version with its checksum and HMAC made right: only the
	// version is wrong.
	if v, err := resign(good, 2); err == nil {
		cases = append(cases, struct {
			name string
			b    []byte
			key  []byte
			want error
		}{"wrong version, intact", v, testMigrationKey, migration.ErrVersion})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rtB := NewRuntime(RuntimeOptions{NodeID: 9, SharedChannels: []uint32{5}})
			pb, _ := guestPortOn(t, rtB, PortOptions{Name: "vm"}, guest)
			err := pb.ImportSnapshot(c.b, c.key)
			if !errors.Is(err, c.want) {
				t.Fatalf("import = %v, want %v", err, c.want)
			}
			t.Log(err)
			assertUntouched(t, rtB, pb)
		})
	}

	mismatch := []struct {
		name string
		opts PortOptions
		prep func(rt *Runtime, p *Port, call func(*guestproto.Message) guestproto.Result)
		want error
	}{
		{"busy port", PortOptions{Name: "vm"}, func(rt *Runtime, p *Port, call func(*guestproto.Message) guestproto.Result) {
			call(&guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession}})
		}, ErrPortBusy},
		{"other guest address", PortOptions{Name: "vm", Link: LinkPeerOptions{GuestIP: netip.MustParsePrefix("169.254.77.3/24")}}, nil, ErrSnapshotMismatch},
		{"session id in use", PortOptions{Name: "vm"}, func(rt *Runtime, p *Port, _ func(*guestproto.Message) guestproto.Result) {
			rt.OpenSession(&fakeEndpoint{name: "other"}, netip.AddrPort{}) // takes id 1, the guest's
		}, ErrSnapshotMismatch},
		{"over the port's limits", PortOptions{Name: "vm"}, func(_ *Runtime, p *Port, _ func(*guestproto.Message) guestproto.Result) {
			p.acct.limits.MaxSinks = 0 // Limits cannot say 0 (it is "the default")
		}, ErrSnapshotMismatch},
	}
	for _, c := range mismatch {
		t.Run(c.name, func(t *testing.T) {
			rtB := NewRuntime(RuntimeOptions{NodeID: 9, SharedChannels: []uint32{5}})
			pb, call := guestPortOn(t, rtB, c.opts, guest)
			want := c.want
			if c.prep != nil {
				c.prep(rtB, pb, call)
			}
			before := rtB.Streams()
			sessions := pb.sessions.Len()
			err := pb.Import(snap)
			if !errors.Is(err, want) {
				t.Fatalf("import = %v, want %v", err, want)
			}
			t.Log(err)
			if !reflect.DeepEqual(before, rtB.Streams()) || pb.sessions.Len() != sessions || pb.out.ready.Len() != 0 {
				t.Errorf("destination changed by a refused import")
			}
		})
	}
}

// resign rewrites a signed snapshot's version and makes its CRC and HMAC
// right again (migration/doc.go, "Format").
func resign(b []byte, version uint16) ([]byte, error) {
	out := append([]byte(nil), b...)
	out[4], out[5] = byte(version), byte(version>>8)
	end := len(out) - 4 - sha256.Size
	binary.LittleEndian.PutUint32(out[end:], crc32.Checksum(out[:end], crc32.MakeTable(crc32.Castagnoli)))
	m := hmac.New(sha256.New, testMigrationKey)
	m.Write(out[:end+4])
	copy(out[end+4:], m.Sum(nil))
	return out, nil
}

func assertUntouched(t *testing.T, rt *Runtime, p *Port) {
	t.Helper()
	if s := rt.Streams(); len(s) != 0 {
		t.Errorf("destination has streams: %+v", s)
	}
	if p.sessions.Len() != 0 || p.out.ready.Len() != 0 || p.peer.Learned() != nil {
		t.Errorf("destination port changed: %d sessions, %d frames, mac %v", p.sessions.Len(), p.out.ready.Len(), p.peer.Learned())
	}
	for k := range limitControlRate {
		if n := p.acct.held[k].Load(); n != 0 {
			t.Errorf("account holds %d of %s", n, limitNames[k])
		}
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.nextID != 0 || len(rt.sessions) != 0 {
		t.Errorf("runtime changed: next id %d, %d sessions", rt.nextID, len(rt.sessions))
	}
}
