package backend

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/wire"
	"github.com/veloce-io/veloce/plugins/udp"
)

// TestDirectoryDigests: a daemon sends its full directory (four fragments
// for 1,000 channels) on a change and, each interval, to a peer that never
// sent a digest; once the peer speaks digests, one digest per interval;
// a peer's Want gets the full directory once per quarter interval; a
// digest naming the generation held keeps the peer's directory current,
// one naming another asks for it. Real sockets: the peer is a UDP socket
// that reads what the daemon sends.
func TestDirectoryDigests(t *testing.T) {
	dp, err := udp.New(udp.Options{Listen: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	x, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	xa := x.LocalAddr().(*net.UDPAddr).AddrPort()
	// An hour's interval: the rate limits do not run out during the test.
	rt := NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Datapath: dp, Peers: []netip.AddrPort{xa}, DirectoryInterval: time.Hour}})
	rm := rt.remote
	s := rt.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
	st, _ := s.CreateStream(StreamOptions{})
	for c := range uint32(1000) {
		if _, err := s.CreateSink(st.ID, c+1); err != nil {
			t.Fatal(err)
		}
	}
	dps := rm.dps[0]
	buf := make([]byte, wire.HeaderLen+wire.MaxDirectoryLen+wire.AuthTrailerLen)
	rb := make([]byte, 65536)
	// round sends and returns what x got: full fragments and digests.
	round := func(tick bool) (full int, digests []wire.Digest) {
		t.Helper()
		before, _ := rm.directoryTraffic()
		rm.sendDirectory(dps, buf, nil, tick)
		after, _ := rm.directoryTraffic()
		for range after - before {
			x.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := x.Read(rb)
			if err != nil {
				t.Fatalf("x reads: %v", err)
			}
			h, payload, err := wire.Parse(rb[:n])
			if err != nil || h.Kind != wire.KindDirectory {
				t.Fatalf("x got %v %+v", err, h)
			}
			if wire.IsDigest(payload) {
				d, err := wire.ParseDigest(payload)
				if err != nil {
					t.Fatal(err)
				}
				digests = append(digests, d)
			} else {
				full++
			}
		}
		return full, digests
	}
	if f, d := round(true); f != 4 || len(d) != 1 || d[0].Total != 1000 || d[0].Want {
		t.Fatalf("first round: %d fragments, digests %+v; want 4 and one digest", f, d)
	}
	if f, d := round(true); f != 4 || len(d) != 1 {
		t.Fatalf("a peer that never sent a digest: %d fragments, %d digests a round; want 4 and 1", f, len(d))
	}
	if f, d := round(false); f != 0 || len(d) != 0 {
		t.Fatalf("no change, no tick: %d fragments, %d digests", f, len(d))
	}
	rx := rm.newReceiveState(0)
	p := rm.peerList()[0]
	send := func(payload []byte) {
		h := wire.Header{Kind: wire.KindDirectory, FragCount: 1, PayloadLen: uint16(len(payload))}
		b := make([]byte, wire.HeaderLen+len(payload))
		n, err := h.MarshalPacket(b, payload)
		if err != nil {
			t.Fatal(err)
		}
		rx.handle([]wire.Packet{{Addr: xa, Buf: b, N: n}})
	}
	digest := func(d wire.Digest) []byte {
		b := make([]byte, wire.DigestLen)
		d.Marshal(b)
		return b
	}
	// x speaks digests, of a directory this daemon does not hold: it asks.
	send(digest(wire.Digest{Node: 9, Generation: 3, Boot: 77}))
	if !p.digests.Load() || !p.wantTheirs.Load() {
		t.Fatalf("after x's first digest: digests %v wantTheirs %v", p.digests.Load(), p.wantTheirs.Load())
	}
	if f, d := round(false); f != 0 || len(d) != 1 || !d[0].Want {
		t.Fatalf("asking x: %d fragments, digests %+v; want one digest with Want", f, d)
	}
	if f, d := round(true); f != 0 || len(d) != 1 || d[0].Want {
		t.Fatalf("steady round: %d fragments, digests %+v; want one digest", f, d)
	}
	// x's full directory, then its digest of the same generation: current.
	dir := make([]byte, wire.MaxDirectoryLen)
	n, _ := (&wire.Directory{Node: 9, Generation: 3, Boot: 77, Channels: []uint32{4, 8}}).Marshal(dir)
	p.lastFull.Store(0) // its last full directory was long ago
	send(dir[:n])
	p.digests.Store(true) // the new boot id reset it; its digests set it again
	if f, _ := round(false); f != 4 {
		t.Fatalf("a peer seen with a new boot id gets the directory at once: %d fragments", f)
	}
	p.seen.Store(1)
	send(digest(wire.Digest{Node: 9, Generation: 3, Boot: 77, Total: 2}))
	if p.seen.Load() == 1 || p.wantTheirs.Load() {
		t.Fatalf("a digest of the generation held: seen %d, wantTheirs %v", p.seen.Load(), p.wantTheirs.Load())
	}
	// Its Want: the full directory, once per quarter interval.
	p.lastFull.Store(0)
	send(digest(wire.Digest{Node: 9, Generation: 3, Boot: 77, Total: 2, Want: true}))
	if f, d := round(false); f != 4 || len(d) != 0 {
		t.Fatalf("x's want: %d fragments, %d digests; want 4 and 0", f, len(d))
	}
	send(digest(wire.Digest{Node: 9, Generation: 3, Boot: 77, Total: 2, Want: true}))
	if f, _ := round(false); f != 0 {
		t.Fatalf("a second want within the quarter interval: %d fragments", f)
	}
	// A change goes to x at once, whole.
	if _, err := s.CreateSink(st.ID, 5000); err != nil {
		t.Fatal(err)
	}
	if f, d := round(false); f != 4 || len(d) != 0 {
		t.Fatalf("a change: %d fragments, %d digests", f, len(d))
	}
	// A bad digest is counted, not taken.
	bad := rm.malformed.Load()
	b := digest(wire.Digest{Node: 9})
	b[24] = 0x80
	send(b)
	if rm.malformed.Load() != bad+1 {
		t.Errorf("a malformed digest was not counted")
	}
}
