package backend

import (
	"context"
	"fmt"
	"net"
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

// BenchmarkDirectoryTraffic is what the channel directory costs a daemon
// (A) with a number of channels and peers, on real loopback sockets.
//
// static-digest: the peers are runtimes that speak digests; after they
// converge, each op is one DirectoryInterval (50ms here) of steady state,
// and msgs/interval and dir-B/interval are A's directory datagrams and
// their bytes per interval of wall time (at the default interval of 1s,
// per second). static-legacy: the peers
// are sockets that never send a digest (daemons of an older release), so
// A sends them the whole directory every interval, as every daemon did
// before digests. etcd: each op is one channel change on A (one put,
// MinInterval 1ns); put-B/op is the value A writes, watch-B/op what each
// watching peer reads for it (one peer measured: the store sends the
// same event to each of them).
func BenchmarkDirectoryTraffic(b *testing.B) {
	const interval = 50 * time.Millisecond
	open := func(b *testing.B) *udp.Plugin {
		dp, err := udp.New(udp.Options{Listen: netip.MustParseAddrPort("127.0.0.1:0")})
		if err != nil {
			b.Fatal(err)
		}
		return dp
	}
	sinks := func(b *testing.B, rt *Runtime, n int) (*Session, *Stream) {
		s := rt.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
		st, _ := s.CreateStream(StreamOptions{})
		for c := range uint32(n) {
			if _, err := s.CreateSink(st.ID, c+1); err != nil {
				b.Fatal(err)
			}
		}
		return s, st
	}
	for _, nch := range []int{100, 1000, 10000} {
		for _, npeers := range []int{1, 10, 100} {
			for _, mode := range []string{"static-digest", "static-legacy"} {
				b.Run(fmt.Sprintf("%s/channels=%d/peers=%d", mode, nch, npeers), func(b *testing.B) {
					ctx, cancel := context.WithCancel(context.Background())
					defer cancel()
					dpA := open(b)
					var addrs []netip.AddrPort
					var peers []*Runtime
					for range npeers {
						if mode == "static-legacy" {
							c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
							if err != nil {
								b.Fatal(err)
							}
							defer c.Close()
							addrs = append(addrs, c.LocalAddr().(*net.UDPAddr).AddrPort())
							continue
						}
						dp := open(b)
						rt := NewRuntime(RuntimeOptions{NodeID: uint32(100 + len(peers)), Remote: RemoteOptions{Datapath: dp,
							Peers: []netip.AddrPort{dpA.LocalAddr()}, DirectoryInterval: interval}})
						rt.Start(ctx)
						defer rt.Close()
						peers = append(peers, rt)
						addrs = append(addrs, dp.LocalAddr())
					}
					rtA := NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Datapath: dpA, Peers: addrs, DirectoryInterval: interval}})
					sinks(b, rtA, nch)
					rtA.Start(ctx)
					defer rtA.Close()
					deadline := time.Now().Add(time.Minute)
					converged := func() bool {
						for _, rt := range peers {
							ps := rt.remote.peerList()
							if len(ps) != 1 || len(*ps[0].channels.Load()) != nch {
								return false
							}
						}
						for _, p := range rtA.remote.peerList() {
							if mode == "static-digest" && !p.digests.Load() {
								return false
							}
						}
						return true
					}
					for !converged() {
						if time.Now().After(deadline) {
							b.Fatal("the peers did not converge within a minute")
						}
						time.Sleep(5 * time.Millisecond)
					}
					time.Sleep(2 * interval) // the convergence's full directories are out
					m0, b0 := rtA.remote.directoryTraffic()
					start := time.Now()
					b.ResetTimer()
					time.Sleep(time.Duration(b.N) * interval)
					b.StopTimer()
					m1, b1 := rtA.remote.directoryTraffic()
					// Per interval of wall time (a loaded machine sleeps
					// longer than asked).
					intervals := float64(time.Since(start)) / float64(interval)
					b.ReportMetric(float64(m1-m0)/intervals, "msgs/interval")
					b.ReportMetric(float64(b1-b0)/intervals, "dir-B/interval")
					if !converged() {
						b.Error("a peer lost A's directory in steady state")
					}
				})
			}
		}
		b.Run(fmt.Sprintf("etcd/channels=%d", nch), func(b *testing.B) {
			e := testutil.StartEtcd(b, nil, "127.0.0.1")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			fo := fleet.Options{Endpoints: []string{e.Endpoint}, Prefix: "/traffic", MinInterval: time.Nanosecond}
			foA, foB := fo, fo
			rtA := NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Datapath: open(b), Etcd: &foA}})
			rtB := NewRuntime(RuntimeOptions{NodeID: 2, Remote: RemoteOptions{Datapath: open(b), Etcd: &foB}})
			s, st := sinks(b, rtA, nch)
			rtA.Start(ctx)
			rtB.Start(ctx)
			defer rtA.Close()
			defer rtB.Close()
			has := func(ch uint32) bool {
				ps := rtB.remote.peerList()
				return len(ps) == 1 && ps[0].wants(ch)
			}
			deadline := time.Now().Add(time.Minute)
			for !has(uint32(nch)) {
				if time.Now().After(deadline) {
					b.Fatal("B never learned A's channels")
				}
				time.Sleep(5 * time.Millisecond)
			}
			regA, regB := rtA.remote.registry.Load(), rtB.remote.registry.Load()
			ha, hb := regA.Health(), regB.Health()
			b.ResetTimer()
			for i := range b.N {
				ch := uint32(1<<20 + i)
				if _, err := s.CreateSink(st.ID, ch); err != nil {
					b.Fatal(err)
				}
				for !has(ch) {
					if time.Now().After(deadline.Add(time.Minute)) {
						b.Fatalf("channel %d never reached B", ch)
					}
					time.Sleep(50 * time.Microsecond)
				}
			}
			b.StopTimer()
			ha2, hb2 := regA.Health(), regB.Health()
			b.ReportMetric(float64(ha2.PutBytes-ha.PutBytes)/float64(b.N), "put-B/op")
			b.ReportMetric(float64(ha2.Puts-ha.Puts)/float64(b.N), "puts/op")
			b.ReportMetric(float64(hb2.ReadBytes-hb.ReadBytes)/float64(b.N), "watch-B/op")
		})
	}
}
