package backend

import (
	"context"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/fleet"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/plugins/udp"
)

// TestPeersFromEtcd: two runtimes without static peers, in the
// authenticated mode, learn each other and their sinks' channels from a
// real etcd: messages flow, the peers show source etcd, and a runtime
// that stops leaves the other's peer table at once (its lease revoked).
func TestPeersFromEtcd(t *testing.T) {
	e := testutil.StartEtcd(t, nil, "127.0.0.1")
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i*7 + 1)
	}
	start := func(ctx context.Context, node uint32) (*Runtime, chan struct{}) {
		dp, err := udp.New(udp.Options{Listen: netip.MustParseAddrPort("127.0.0.1:0"), RecvBuffer: 16 << 20, SendBuffer: 16 << 20})
		if err != nil {
			t.Fatal(err)
		}
		rt := NewRuntime(RuntimeOptions{NodeID: node, Remote: RemoteOptions{Datapath: dp, Key: key,
			Etcd: &fleet.Options{Endpoints: []string{e.Endpoint}, Prefix: "/t", TTL: 2 * time.Second}}})
		done := make(chan struct{})
		go func() { defer close(done); rt.Run(ctx) }()
		return rt, done
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rtA, doneA := start(ctx, 1)
	defer func() { cancel(); <-doneA }()
	ctxB, cancelB := context.WithCancel(ctx)
	rtB, doneB := start(ctxB, 2)
	defer func() { cancelB(); <-doneB }()

	check := &orderCheck{last: map[uint64]uint64{}}
	sb := rtB.OpenSession(check, netip.AddrPort{})
	stb, _ := sb.CreateStream(StreamOptions{})
	if _, err := sb.CreateSink(stb.ID, 5); err != nil {
		t.Fatal(err)
	}
	wait := func(what string, ok func() bool) {
		t.Helper()
		for !ok() {
			if ctx.Err() != nil {
				t.Fatalf("%s: not within a minute; A: %+v\nB: %+v", what, rtA.Remote(), rtB.Remote())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	wait("A learns B's sink from etcd", func() bool {
		ps := rtA.Remote().Peers
		return len(ps) == 1 && ps[0].Source == DirectoryEtcd && slices.Equal(ps[0].Channels, []uint32{5}) && ps[0].Node == 2
	})
	// B takes A's datagrams once it has A's entry too (before, they are
	// dropped as from an unknown peer).
	wait("B learns A from etcd", func() bool { ps := rtB.Remote().Peers; return len(ps) == 1 && ps[0].Node == 1 })
	sa := rtA.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
	sta, _ := sa.CreateStream(StreamOptions{})
	src, _ := sa.CreateSource(sta.ID, 5)
	const n = 1000
	for range n {
		rtA.Emit(src, make([]byte, 64))
		for rtA.remote.dps[0].ready.Len() > 256 {
			time.Sleep(50 * time.Microsecond)
		}
	}
	wait("B receives", func() bool { return check.got.Load() == n })
	info := rtA.Remote()
	if d := info.Directory; !slices.Equal(d.Sources, []string{DirectoryEtcd}) || d.Etcd == nil || !d.Etcd.Connected ||
		d.Etcd.Revision == 0 || d.Etcd.Nodes != 1 || d.Etcd.Key != "/t/nodes/1" {
		t.Errorf("directory info %+v etcd %+v", d, d.Etcd)
	}
	if rb := rtB.Remote(); rb.BadAuth != 0 || rb.UnknownPeer != 0 || !rb.Authenticated {
		t.Errorf("B dropped datagrams: %+v", rb)
	}
	cancelB()
	<-doneB
	wait("B leaves A's peers", func() bool { return len(rtA.Remote().Peers) == 0 })
}

// TestEtcdEntryWinsOverStaticPeer: for an address that is both a --peer
// and in etcd, etcd's channels and boot id are the peer's (a new boot id
// is a restart); when the entry goes the peer stays, static, and waits
// for its directory datagrams again.
func TestEtcdEntryWinsOverStaticPeer(t *testing.T) {
	dp, err := udp.New(udp.Options{Listen: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	x := netip.MustParseAddrPort("127.0.0.1:9")
	rt := NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Datapath: dp, Peers: []netip.AddrPort{x}}})
	rm := rt.remote
	p := rm.peerList()[0]
	// A directory datagram said channel 1.
	one := []uint32{1}
	p.channels.Store(&one)
	p.seen.Store(time.Now().UnixNano())
	rm.fleetEvent(fleet.Event{Kind: fleet.Added, Node: fleet.Node{ID: 7, Boot: "a", Addrs: []netip.AddrPort{x}, Channels: []uint32{2, 3}}})
	pi := rt.Remote().Peers
	if len(pi) != 1 || pi[0].Source != DirectoryEtcd || !slices.Equal(pi[0].Channels, []uint32{2, 3}) || pi[0].Node != 7 || pi[0].Boot != "a" {
		t.Fatalf("after the etcd entry: %+v", pi)
	}
	if rm.peerList()[0] != p {
		t.Error("the peer's state was not kept")
	}
	if got := rt.Remote().Directory.Sources; !slices.Equal(got, []string{DirectoryStatic}) {
		t.Errorf("sources %v (no registry: etcd not configured)", got)
	}
	rm.fleetEvent(fleet.Event{Kind: fleet.Updated, Node: fleet.Node{ID: 7, Boot: "b", Addrs: []netip.AddrPort{x}, Channels: []uint32{4}}})
	if pi := rt.Remote().Peers[0]; pi.Restarts != 1 || pi.Boot != "b" || !slices.Equal(pi.Channels, []uint32{4}) {
		t.Errorf("after a new boot id: %+v", pi)
	}
	// Not expired for want of datagrams: etcd's lease decides.
	rm.expire(time.Now().Add(time.Hour).UnixNano())
	if pi := rt.Remote().Peers[0]; pi.State != PeerUp || len(pi.Channels) != 1 {
		t.Errorf("an etcd peer expired: %+v", pi)
	}
	rm.fleetEvent(fleet.Event{Kind: fleet.Removed, Node: fleet.Node{ID: 7}})
	if pi := rt.Remote().Peers; len(pi) != 1 || pi[0].Source != DirectoryStatic || len(pi[0].Channels) != 0 || pi[0].State != PeerWaiting {
		t.Errorf("after the entry went: %+v", pi)
	}
	// An etcd-only peer goes at once.
	y := netip.MustParseAddrPort("127.0.0.1:10")
	rm.fleetEvent(fleet.Event{Kind: fleet.Added, Node: fleet.Node{ID: 8, Boot: "c", Addrs: []netip.AddrPort{y}, Channels: []uint32{9}}})
	if len(rt.Remote().Peers) != 2 {
		t.Fatalf("peers %+v", rt.Remote().Peers)
	}
	rm.fleetEvent(fleet.Event{Kind: fleet.Removed, Node: fleet.Node{ID: 8}})
	if pi := rt.Remote().Peers; len(pi) != 1 || pi[0].Addr != x.String() {
		t.Errorf("after node 8 left: %+v", pi)
	}
	// A daemon restarted with another node id while its old key lives on:
	// the later written entry wins.
	rm.fleetEvent(fleet.Event{Kind: fleet.Added, Revision: 10, Node: fleet.Node{ID: 20, Boot: "d", Addrs: []netip.AddrPort{y}, Channels: []uint32{1}}})
	rm.fleetEvent(fleet.Event{Kind: fleet.Added, Revision: 12, Node: fleet.Node{ID: 3, Boot: "e", Addrs: []netip.AddrPort{y}, Channels: []uint32{2}}})
	for _, pi := range rt.Remote().Peers {
		if pi.Addr == y.String() && (pi.Node != 3 || pi.Boot != "e" || !slices.Equal(pi.Channels, []uint32{2})) {
			t.Errorf("two entries for %s: %+v, want node 3's, the later", y, pi)
		}
	}
}

// TestMigratedSinkMovesInEtcd: a VM port's sink migrates from one daemon
// to another while a third watches the fleet directory in etcd: it sees
// the sink's channel on the destination before it leaves the source (the
// destination imports it at hand-off, the source drops it at commit), so
// at no sampled moment does neither list it; afterwards only the
// destination does.
func TestMigratedSinkMovesInEtcd(t *testing.T) {
	e := testutil.StartEtcd(t, nil, "127.0.0.1")
	fo := func() *fleet.Options {
		return &fleet.Options{Endpoints: []string{e.Endpoint}, Prefix: "/mig", TTL: 2 * time.Second}
	}
	udpDP := func() *udp.Plugin {
		dp, err := udp.New(udp.Options{Listen: netip.MustParseAddrPort("127.0.0.1:0")})
		if err != nil {
			t.Fatal(err)
		}
		return dp
	}
	daemon := func(node uint32) *Daemon {
		dir := t.TempDir()
		d, err := NewDaemon(DaemonOptions{ControlSocket: filepath.Join(dir, "control.sock"),
			Ports: []PortOptions{{Name: "vm", Socket: filepath.Join(dir, "vm.sock")}},
			Runtime: RuntimeOptions{NodeID: node, SharedChannels: []uint32{5},
				Remote: RemoteOptions{Datapath: udpDP(), Etcd: fo()}},
			Migration: MigrationOptions{Key: testMigrationKey, Listen: "127.0.0.1:0", ForwardGrace: 200 * time.Millisecond, HandoffTimeout: time.Minute}})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	src, dst := daemon(1), daemon(2)
	obs := NewRuntime(RuntimeOptions{NodeID: 3, Remote: RemoteOptions{Datapath: udpDP(), Etcd: fo()}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	obs.Start(ctx)
	defer obs.Close()
	ps := src.port("vm")
	guestState(t, src.rt, ps, guestCaller(t, ps, netip.MustParseAddrPort("169.254.77.2:40000")), 0, 0)
	lists := func(node uint32) bool {
		for _, p := range obs.Remote().Peers {
			if p.Node == node && slices.Contains(p.Channels, 5) {
				return true
			}
		}
		return false
	}
	migWait(t, "the observer sees the sink on the source", func() bool { return lists(1) && !lists(2) })
	var samples, neither int
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			default:
			}
			samples++
			if !lists(1) && !lists(2) {
				neither++
			}
			time.Sleep(time.Millisecond)
		}
	}()
	if _, err := src.MigrateOut(ctx, "vm", dst.MigrationAddr().String(), ""); err != nil {
		t.Fatal(err)
	}
	migWait(t, "the observer sees the sink on the destination", func() bool { return lists(2) })
	if _, err := src.MigrateCommit(ctx, "vm"); err != nil {
		t.Fatal(err)
	}
	migWait(t, "the observer sees the sink leave the source", func() bool { return !lists(1) && lists(2) })
	close(stop)
	<-sampled
	t.Logf("%d samples of the observer's directory during the move, %d with neither daemon listing the sink", samples, neither)
	if neither > 0 {
		t.Errorf("%d of %d samples: neither daemon listed the migrating sink", neither, samples)
	}
}
