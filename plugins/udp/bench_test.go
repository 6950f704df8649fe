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
