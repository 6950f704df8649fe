package backend

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/fleet"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/plugins/udp"
)

// BenchmarkSinkReachesSource is the time from a CreateSink on one runtime
// until a source's runtime on another host (loopback here) would send to
// it — its peer table lists the channel — with the directory in etcd (a
// real one, puts not coalesced: MinInterval 1ns, so each op is one put
// and one watch event; with the default 250ms a change within 250ms of
// the previous put waits for the rest of it) and with static peers
// (directory datagrams, sent at once on a change). Each op adds a
// channel; etcd-B/op is the value bytes B wrote for it.
func BenchmarkSinkReachesSource(b *testing.B) {
	for _, mode := range []string{"static", "etcd"} {
		b.Run(mode, func(b *testing.B) {
			var e *testutil.Etcd
			if mode == "etcd" {
				e = testutil.StartEtcd(b, nil, "127.0.0.1")
			}
			open := func() *udp.Plugin {
				dp, err := udp.New(udp.Options{Listen: netip.MustParseAddrPort("127.0.0.1:0")})
				if err != nil {
					b.Fatal(err)
				}
				return dp
			}
			dpA, dpB := open(), open()
			optsA := RemoteOptions{Datapath: dpA}
			optsB := RemoteOptions{Datapath: dpB}
			if e != nil {
				fo := fleet.Options{Endpoints: []string{e.Endpoint}, Prefix: "/bench", MinInterval: time.Nanosecond}
				foA, foB := fo, fo
				optsA.Etcd, optsB.Etcd = &foA, &foB
			} else {
				optsA.Peers, optsB.Peers = []netip.AddrPort{dpB.LocalAddr()}, []netip.AddrPort{dpA.LocalAddr()}
			}
			rtA := NewRuntime(RuntimeOptions{NodeID: 1, Remote: optsA})
			rtB := NewRuntime(RuntimeOptions{NodeID: 2, Remote: optsB})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			rtA.Start(ctx)
			rtB.Start(ctx)
			defer rtA.Close()
			defer rtB.Close()
			sb := rtB.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
			stb, _ := sb.CreateStream(StreamOptions{})
			seen := func(ch uint32) bool {
				for _, p := range rtA.remote.peerList() {
					if p.wants(ch) {
						return true
					}
				}
				return false
			}
			// Warm up: the peers know each other.
			if _, err := sb.CreateSink(stb.ID, 1); err != nil {
				b.Fatal(err)
			}
			deadline := time.Now().Add(30 * time.Second)
			for !seen(1) {
				if time.Now().After(deadline) {
					b.Fatal("the peers never met")
				}
				time.Sleep(time.Millisecond)
			}
			var before uint64
			if reg := rtB.remote.registry.Load(); reg != nil {
				before = reg.Health().PutBytes
			}
			b.ResetTimer()
			for i := range b.N {
				ch := uint32(1000 + i)
				if _, err := sb.CreateSink(stb.ID, ch); err != nil {
					b.Fatal(err)
				}
				for !seen(ch) {
					if time.Now().After(deadline.Add(time.Minute)) {
						b.Fatalf("channel %d never reached the source side", ch)
					}
					time.Sleep(20 * time.Microsecond)
				}
			}
			b.StopTimer()
			if reg := rtB.remote.registry.Load(); reg != nil {
				b.ReportMetric(float64(reg.Health().PutBytes-before)/float64(b.N), "etcd-B/op")
			}
		})
	}
}
