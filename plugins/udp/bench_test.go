package udp

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/wire"
)

// BenchmarkRoundTrip moves messages over loopback from one socket to
// another, DefaultBatchSize at a time: first all sent, then all received.
// "batch" is this plugin (one sendmmsg and about one recvmmsg per batch);
// "netconn" is the reference, net.UDPConn WriteToUDPAddrPort and
// ReadFromUDPAddrPort per message, in the same run. ns/op and msgs/s are
// per message; compare the two as a ratio.
func BenchmarkRoundTrip(b *testing.B) {
	for _, size := range []int{64, 1400} {
		b.Run(fmt.Sprintf("size=%d/batch", size), func(b *testing.B) { benchBatch(b, size) })
		b.Run(fmt.Sprintf("size=%d/netconn", size), func(b *testing.B) { benchNetConn(b, size) })
	}
}

func benchBatch(b *testing.B, size int) {
	tx := newPlugin(b, "127.0.0.1:0", Options{})
	rx := newPlugin(b, "127.0.0.1:0", Options{})
	out := make([]wire.Packet, DefaultBatchSize)
	in := make([]wire.Packet, DefaultBatchSize)
	for i := range out {
		buf := make([]byte, size)
		out[i] = wire.Packet{Addr: rx.LocalAddr(), Buf: buf, N: fillMessage(b, buf, 1, uint64(i), size)}
		in[i].Buf = make([]byte, 2048)
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; done += len(out) {
		for off := 0; off < len(out); {
			n, err := tx.SendBatch(out[off:])
			if err != nil {
				b.Fatal(err)
			}
			off += n
		}
		for got := 0; got < len(out); {
			n, err := rx.RecvBatch(in[:len(out)-got], time.Second)
			if err != nil || n == 0 {
				b.Fatalf("RecvBatch = %d, %v after %d of %d", n, err, got, len(out))
			}
			got += n
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

func benchNetConn(b *testing.B, size int) {
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		// The same socket buffers the plugin asks for.
		if err := c.SetReadBuffer(DefaultSocketBuffer); err != nil {
			b.Fatal(err)
		}
		if err := c.SetWriteBuffer(DefaultSocketBuffer); err != nil {
			b.Fatal(err)
		}
		return c
	}
	tx, rx := listen(), listen()
	to := rx.LocalAddr().(*net.UDPAddr).AddrPort()
	msgs := make([][]byte, DefaultBatchSize)
	for i := range msgs {
		msgs[i] = make([]byte, size)
		fillMessage(b, msgs[i], 1, uint64(i), size)
	}
	in := make([]byte, 2048)
	if err := rx.SetReadDeadline(time.Now().Add(time.Hour)); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; done += len(msgs) {
		for _, m := range msgs {
			if _, err := tx.WriteToUDPAddrPort(m, to); err != nil {
				b.Fatal(err)
			}
		}
		for range msgs {
			if _, _, err := rx.ReadFromUDPAddrPort(in); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkPingPong is the latency case: one 64-byte message goes from a to
// b, b echoes it, and a waits for the echo, each side blocking in
// RecvBatch with no timeout, as the runtime's receive loop does. ns/op is
// one round trip over loopback, including both receivers' wake-ups.
func BenchmarkPingPong(b *testing.B) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		b.Run(addr, func(b *testing.B) {
			pa := newPlugin(b, addr, Options{})
			pb := newPlugin(b, addr, Options{})
			echoDone := make(chan error, 1)
			go func() {
				pkts := []wire.Packet{{Buf: make([]byte, 2048)}}
				for {
					n, err := pb.RecvBatch(pkts, -1)
					if err == ErrClosed {
						echoDone <- nil
						return
					}
					if err != nil || n != 1 {
						echoDone <- fmt.Errorf("echo RecvBatch = %d, %v", n, err)
						return
					}
					// Echo in place: N and Addr are what arrived.
					if m, err := pb.SendBatch(pkts[:1]); m != 1 || err != nil {
						echoDone <- fmt.Errorf("echo SendBatch = %d, %v", m, err)
						return
					}
				}
			}()
			buf := make([]byte, 64)
			out := []wire.Packet{{Addr: pb.LocalAddr(), Buf: buf, N: fillMessage(b, buf, 1, 1, 64)}}
			in := []wire.Packet{{Buf: make([]byte, 2048)}}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if n, err := pa.SendBatch(out); n != 1 || err != nil {
					b.Fatalf("SendBatch = %d, %v", n, err)
				}
				if n, err := pa.RecvBatch(in, -1); n != 1 || err != nil {
					b.Fatalf("RecvBatch = %d, %v", n, err)
				}
			}
			b.StopTimer()
			pb.Close()
			if err := <-echoDone; err != nil {
				b.Fatal(err)
			}
		})
	}
}
