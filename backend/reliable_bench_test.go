package backend

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/veloce-io/veloce/plugins/udp"
)

// BenchmarkReliableVsBestEffort (make bench; issue 13): throughput of a
// reliable stream against a best-effort one on a clean link (kernel UDP
// over loopback, two runtimes), 256-byte messages, measured in the same
// run. The best-effort source is paced as an application would pace it
// (at most 4096 messages ahead of its sink, the kernel's receive buffer
// being the limit), the reliable one by its window alone. Reported:
// msg/s of each and reliable/best-effort (aim: at least 0.9).
func BenchmarkReliableVsBestEffort(b *testing.B) {
	const count = 200_000
	open := func() *udp.Plugin {
		p, err := udp.New(udp.Options{Listen: netip.MustParseAddrPort("127.0.0.1:0"), RecvBuffer: 8 << 20, SendBuffer: 8 << 20})
		if err != nil {
			b.Fatal(err)
		}
		return p
	}
	run := func(reliable bool, channel uint32) float64 {
		dpA, dpB := open(), open()
		opts := func(node uint32, peer *udp.Plugin, dp *udp.Plugin) RuntimeOptions {
			return RuntimeOptions{NodeID: node, Remote: RemoteOptions{Datapath: dp, Peers: []netip.AddrPort{peer.LocalAddr()},
				DirectoryInterval: 100 * time.Millisecond, DirectoryExpiry: time.Minute}}
		}
		rtA, rtB := NewRuntime(opts(1, dpB, dpA)), NewRuntime(opts(2, dpA, dpB))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); rtA.Run(ctx) }()
		go func() { defer wg.Done(); rtB.Run(ctx) }()
		defer func() { cancel(); wg.Wait() }()
		sink := &countingSink{}
		sb := rtB.OpenSession(sink, netip.AddrPort{})
		stb, _ := sb.CreateStream(StreamOptions{Reliable: reliable})
		sb.CreateSink(stb.ID, channel)
		for len(*rtA.remote.peerList()[0].channels.Load()) == 0 && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		sa := rtA.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
		sta, _ := sa.CreateStream(StreamOptions{Reliable: reliable})
		src, _ := sa.CreateSource(sta.ID, channel)
		payload := make([]byte, 256)
		start := time.Now()
		for i := 0; i < count && ctx.Err() == nil; {
			if reliable {
				if taken, _ := rtA.emit(src, payload); taken == 0 {
					time.Sleep(10 * time.Microsecond)
					continue
				}
			} else {
				if rtA.remote.dps[0].ready.Len() > 1024 || uint64(i)-sink.got.Load() > 4096 {
					time.Sleep(10 * time.Microsecond)
					continue
				}
				rtA.emit(src, payload)
			}
			i++
		}
		// Best effort may lose a few to the kernel: wait for the count or
		// for silence.
		last, quiet := uint64(0), 0
		for sink.got.Load() < count && quiet < 50 && ctx.Err() == nil {
			time.Sleep(2 * time.Millisecond)
			if n := sink.got.Load(); n == last {
				quiet++
			} else {
				last, quiet = n, 0
			}
		}
		return float64(sink.got.Load()) / time.Since(start).Seconds()
	}
	for range b.N {
		be := run(false, 7)
		rel := run(true, 8)
		b.ReportMetric(be, "best-effort-msg/s")
		b.ReportMetric(rel, "reliable-msg/s")
		b.ReportMetric(rel/be, "reliable/best-effort")
	}
}
