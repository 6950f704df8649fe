package udp

import (
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/wire"
)

// A batch costs no allocation: send 32 datagrams, receive them.
func TestBatchesDoNotAllocate(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(addr, func(t *testing.T) {
			a := newPlugin(t, addr, Options{})
			b := newPlugin(t, addr, Options{})
			tx := make([]wire.Packet, DefaultBatchSize)
			rx := make([]wire.Packet, DefaultBatchSize)
			for i := range tx {
				buf := make([]byte, 256)
				tx[i] = wire.Packet{Addr: b.LocalAddr(), Buf: buf, N: fillMessage(t, buf, 1, uint64(i), 64+i)}
				rx[i].Buf = make([]byte, 2048)
			}
			var failed string
			roundTrip := testing.AllocsPerRun(200, func() {
				if n, err := a.SendBatch(tx); n != len(tx) || err != nil {
					failed = "SendBatch"
				}
				// Drain outside the measurement's concern: RecvBatch is
				// measured separately below, but the socket must not fill.
				for got := 0; got < len(tx); {
					n, err := b.RecvBatch(rx, time.Second)
					if err != nil || n == 0 {
						failed = "RecvBatch"
						return
					}
					got += n
				}
			})
			if failed != "" {
				t.Fatalf("%s failed during measurement", failed)
			}
			if roundTrip != 0 {
				t.Errorf("SendBatch+RecvBatch: %v allocations per batch, want 0", roundTrip)
			}
			// RecvBatch alone, including the empty-socket (timeout) path.
			recvAllocs := testing.AllocsPerRun(200, func() {
				if n, err := b.RecvBatch(rx, 0); n != 0 || err != nil {
					failed = "empty RecvBatch"
				}
				if n, err := b.RecvBatch(rx, time.Microsecond); n != 0 || err != nil {
					failed = "timed RecvBatch"
				}
			})
			if failed != "" {
				t.Fatalf("%s failed during measurement", failed)
			}
			if recvAllocs != 0 {
				t.Errorf("empty RecvBatch: %v allocations, want 0", recvAllocs)
			}
			// SendBatch alone.
			sendOnly := testing.AllocsPerRun(20, func() {
				if n, err := a.SendBatch(tx[:1]); n != 1 || err != nil {
					failed = "single SendBatch"
				}
			})
			if sendOnly != 0 {
				t.Errorf("SendBatch: %v allocations, want 0", sendOnly)
			}
		})
	}
}
