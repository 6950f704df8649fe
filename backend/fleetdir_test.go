package backend

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/fleet"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/plugins/udp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
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
// to another while a third watches the fleet directory: the sink's
// channel moves from the source's entry to the destination's in ONE etcd
// revision that changes both keys (the destination's transaction at
// commit), and at every revision of the store exactly one of the two
// entries lists it — checked on the store's revisions, from a watch of
// the prefix, not on samples. A put of the source's entry after the move
// (a new sink on another channel, while the commit still forwards) does
// not bring the channel back; afterwards the observer's peer table has it
// on the destination only.
func TestMigratedSinkMovesInEtcd(t *testing.T) {
	e := testutil.StartEtcd(t, nil, "127.0.0.1")
	fo := func() *fleet.Options {
		return &fleet.Options{Endpoints: []string{e.Endpoint}, Prefix: "/mig", TTL: 2 * time.Second, MinInterval: time.Millisecond}
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
			// The grace is long: the test ends it by cancelling the commit.
			Migration: MigrationOptions{Key: testMigrationKey, Listen: "127.0.0.1:0", ForwardGrace: time.Hour, HandoffTimeout: time.Minute}})
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

	// The store's own record: every revision of the two keys.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	srcKey, dstKey := "/mig/nodes/1", "/mig/nodes/2"
	get, err := cli.Get(ctx, "/mig/nodes/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	type state struct{ src, dst fleet.Node }
	var cur state
	decode := func(v []byte) fleet.Node {
		n, err := fleet.ParseNode(v)
		if err != nil {
			t.Errorf("a bad entry in the store: %v: %q", err, v)
		}
		return n
	}
	for _, kv := range get.Kvs {
		switch string(kv.Key) {
		case srcKey:
			cur.src = decode(kv.Value)
		case dstKey:
			cur.dst = decode(kv.Value)
		}
	}
	has := func(n fleet.Node, c uint32) bool { return slices.Contains(n.Channels, c) }
	if !has(cur.src, 5) || has(cur.dst, 5) {
		t.Fatalf("before the move the store has source %+v destination %+v", cur.src, cur.dst)
	}
	type revision struct {
		rev            int64
		srcSet, dstSet bool
		state
	}
	revs := make(chan revision, 1024)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	go func() {
		defer close(revs)
		st := cur
		for wr := range cli.Watch(wctx, "/mig/nodes/", clientv3.WithPrefix(), clientv3.WithRev(get.Header.Revision+1)) {
			var r *revision
			for _, ev := range wr.Events {
				if r != nil && ev.Kv.ModRevision != r.rev {
					revs <- *r
					r = nil
				}
				if r == nil {
					r = &revision{rev: ev.Kv.ModRevision}
				}
				var n fleet.Node
				if ev.Type == clientv3.EventTypePut {
					n, _ = fleet.ParseNode(ev.Kv.Value)
				}
				switch string(ev.Kv.Key) {
				case srcKey:
					st.src, r.srcSet = n, true
				case dstKey:
					st.dst, r.dstSet = n, true
				}
				r.state = st
			}
			if r != nil {
				revs <- *r
			}
		}
	}()
	var history []revision
	next := func(what string, ok func(revision) bool) revision {
		t.Helper()
		for {
			select {
			case r, open := <-revs:
				if !open {
					t.Fatalf("%s: the watch ended; revisions %+v", what, history)
				}
				history = append(history, r)
				if has(r.src, 5) == has(r.dst, 5) {
					t.Errorf("revision %d: channel 5 on the source %v, on the destination %v (both or neither)", r.rev, has(r.src, 5), has(r.dst, 5))
				}
				if ok(r) {
					return r
				}
			case <-ctx.Done():
				t.Fatalf("%s: not within a minute; revisions %+v", what, history)
			}
		}
	}

	if _, err := src.MigrateOut(ctx, "vm", dst.MigrationAddr().String(), ""); err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithCancel(ctx)
	committed := make(chan error, 1)
	go func() { _, err := src.MigrateCommit(cctx, "vm"); committed <- err }()
	move := next("the sink moves in the store", func(r revision) bool { return has(r.dst, 5) })
	if !move.srcSet || !move.dstSet || has(move.src, 5) {
		t.Errorf("the move's revision %d: source key written %v, destination key written %v, source lists 5 %v; want both written in one revision",
			move.rev, move.srcSet, move.dstSet, has(move.src, 5))
	}
	// The source puts its entry again while the commit still forwards: a
	// sink on channel 6. Channel 5 must not come back with it.
	hs := src.rt.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
	hst, _ := hs.CreateStream(StreamOptions{})
	if _, err := hs.CreateSink(hst.ID, 6); err != nil {
		t.Fatal(err)
	}
	next("the source's put with channel 6", func(r revision) bool { return r.srcSet && has(r.src, 6) })
	select {
	case err := <-committed:
		t.Fatalf("the commit ended before the source's put (%v): the test did not check a put during the grace", err)
	default:
	}
	ccancel() // ends the grace
	if err := <-committed; err != nil {
		t.Fatal(err)
	}
	migWait(t, "the observer sees the sink on the destination only", func() bool { return !lists(1) && lists(2) })
	// Flush the watch: one more revision of the source's key.
	if _, err := hs.CreateSink(hst.ID, 7); err != nil {
		t.Fatal(err)
	}
	next("the source's put with channel 7", func(r revision) bool { return r.srcSet && has(r.src, 7) })
	wcancel()
	for r := range revs {
		history = append(history, r)
	}
	t.Logf("%d revisions of the two entries from the hand-off on; the move at revision %d", len(history), move.rev)
	if h := dst.rt.remote.registry.Load().Health(); h.Moves != 1 {
		t.Errorf("destination registry: %d moves, want 1 (%+v)", h.Moves, h)
	}
}

// TestCommitBody: the commit frame's move round-trips; an empty body asks
// for none; malformed ones are refused with errBadCommitBody.
func TestCommitBody(t *testing.T) {
	b := commitBody(7, []uint32{1, 5, 1 << 31})
	node, lv, ask, err := parseCommitBody(b)
	if err != nil || !ask || node != 7 || !slices.Equal(lv, []uint32{1, 5, 1 << 31}) {
		t.Fatalf("round trip: %d %v %v %v", node, lv, ask, err)
	}
	if _, _, ask, err := parseCommitBody(nil); ask || err != nil {
		t.Errorf("empty body: ask %v err %v", ask, err)
	}
	bad := map[string][]byte{
		"version 2":      append([]byte{2}, b[1:]...),
		"short":          b[:8],
		"one byte short": b[:len(b)-1],
		"one byte more":  append(slices.Clone(b), 0),
		"not ascending":  commitBody(7, []uint32{5, 5}),
		"huge count":     {1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff},
	}
	for name, body := range bad {
		if _, _, _, err := parseCommitBody(body); !errors.Is(err, errBadCommitBody) {
			t.Errorf("%s: err %v, want errBadCommitBody", name, err)
		}
	}
}

// FuzzCommitBody: any body parses or is refused, never crashes; what
// parses encodes back to itself.
func FuzzCommitBody(f *testing.F) {
	f.Add([]byte{})
	f.Add(commitBody(1, nil))
	f.Add(commitBody(3, []uint32{5, 6, 9}))
	f.Fuzz(func(t *testing.T, b []byte) {
		node, lv, ask, err := parseCommitBody(b)
		if err != nil {
			if !errors.Is(err, errBadCommitBody) {
				t.Fatalf("error %v does not wrap errBadCommitBody", err)
			}
			return
		}
		if !ask {
			if len(b) != 0 {
				t.Fatalf("%x: no move asked from a non-empty body", b)
			}
			return
		}
		if got := commitBody(node, lv); !bytes.Equal(got, b) {
			t.Fatalf("%x parsed to node %d %v, which encodes as %x", b, node, lv, got)
		}
	})
}

// TestMigrationMoveFallsBack: a destination without etcd cannot write the
// move: the source's entry keeps the sink's channel through the forward
// grace (its Leaving never saw a move) and drops it when its sessions
// close at commit, and the destination's import and commit work as
// without a fleet directory.
func TestMigrationMoveFallsBack(t *testing.T) {
	e := testutil.StartEtcd(t, nil, "127.0.0.1")
	daemon := func(node uint32, etcd bool) *Daemon {
		dir := t.TempDir()
		dp, err := udp.New(udp.Options{Listen: netip.MustParseAddrPort("127.0.0.1:0")})
		if err != nil {
			t.Fatal(err)
		}
		ro := RemoteOptions{Datapath: dp}
		if etcd {
			ro.Etcd = &fleet.Options{Endpoints: []string{e.Endpoint}, Prefix: "/fb", TTL: 2 * time.Second, MinInterval: time.Millisecond}
		}
		d, err := NewDaemon(DaemonOptions{ControlSocket: filepath.Join(dir, "control.sock"),
			Ports:     []PortOptions{{Name: "vm", Socket: filepath.Join(dir, "vm.sock")}},
			Runtime:   RuntimeOptions{NodeID: node, SharedChannels: []uint32{5}, Remote: ro},
			Migration: MigrationOptions{Key: testMigrationKey, Listen: "127.0.0.1:0", ForwardGrace: 100 * time.Millisecond, HandoffTimeout: time.Minute}})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	src, dst := daemon(1, true), daemon(2, false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	srcLists := func() bool {
		r, err := cli.Get(ctx, "/fb/nodes/1")
		if err != nil || len(r.Kvs) != 1 {
			return false
		}
		n, err := fleet.ParseNode(r.Kvs[0].Value)
		return err == nil && slices.Contains(n.Channels, 5)
	}
	ps := src.port("vm")
	guestState(t, src.rt, ps, guestCaller(t, ps, netip.MustParseAddrPort("169.254.77.2:40000")), 0, 0)
	migWait(t, "the source's entry lists the sink", srcLists)
	if _, err := src.MigrateOut(ctx, "vm", dst.MigrationAddr().String(), ""); err != nil {
		t.Fatal(err)
	}
	if !srcLists() {
		t.Error("the source's entry dropped the sink at the hand-off")
	}
	if _, err := src.MigrateCommit(ctx, "vm"); err != nil {
		t.Fatal(err)
	}
	migWait(t, "the source's entry drops the sink after the commit", func() bool { return !srcLists() })
	if got := dst.rt.remoteChannels(); !slices.Contains(got, 5) {
		t.Errorf("the destination's channels %v after the commit", got)
	}
}
