package udp

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/internal/wire"
)

// Two hosts, each a network namespace with one end of a veth pair
// (10.99.0.1/24 and 10.99.0.2/24), exchange 100,000 data messages from two
// sources; every message must arrive exactly once, intact, and in order
// per source. UDP may lose datagrams when a receive buffer overflows, so
// the sender is flow-controlled the way a reliable stream would be: the
// receiver acknowledges (wire KindAck, cumulative per source) and the
// sender keeps at most window messages unacknowledged. Loss would show as
// a gap in a source's sequence, and fails the test.
func TestHostsExchange100kMessagesOverVeth(t *testing.T) {
	const (
		total   = 100_000
		sources = 2
		window  = 1024 // unacknowledged messages; ~3 MiB of skbs at 1.4 KB
		channel = 7    // what fillMessage writes
	)
	hostA, hostB := newNetns(t), newNetns(t)
	testutil.Veth(t, hostA.Netns, "10.99.0.1/24", hostB.Netns, "10.99.0.2/24")

	a := hostA.newPlugin(t, "10.99.0.1:0", Options{})
	b := hostB.newPlugin(t, "10.99.0.2:0", Options{})
	if ra, rb := a.LocalAddr(), b.LocalAddr(); ra.Addr().String() != "10.99.0.1" || rb.Addr().String() != "10.99.0.2" {
		t.Fatalf("bound %v and %v", ra, rb)
	}

	srcs := [sources]wire.SourceID{wire.NewSourceID(1, 10), wire.NewSourceID(1, 11)}
	const firstSeq = 1000            // sequences start anywhere
	var acked [sources]atomic.Uint64 // highest sequence acknowledged, per source
	for i := range acked {
		acked[i].Store(firstSeq - 1)
	}
	ackSignal := make(chan struct{}, 1)
	var stop atomic.Bool
	errs := make(chan error, 3)
	var wg sync.WaitGroup
	report := func(err error) {
		if err != nil {
			stop.Store(true) // the other goroutines give up too
		}
		errs <- err
	}

	// Host B: receive, check, acknowledge each batch.
	wg.Add(1)
	go func() {
		defer wg.Done()
		report(func() error {
			rx := make([]wire.Packet, DefaultBatchSize)
			for i := range rx {
				rx[i].Buf = make([]byte, 2048)
			}
			ackBuf := make([]byte, sources*wire.HeaderLen)
			acks := make([]wire.Packet, sources)
			var next [sources]uint64
			for i := range next {
				next[i] = firstSeq
			}
			received, idle := 0, 0
			for received < total {
				n, err := b.RecvBatch(rx, 100*time.Millisecond)
				if err != nil {
					return fmt.Errorf("host B: %w", err)
				}
				if n == 0 {
					if idle++; idle > 100 || stop.Load() {
						return fmt.Errorf("host B: stalled at %d of %d messages (next seqs %v)", received, total, next)
					}
					continue
				}
				idle = 0
				for _, p := range rx[:n] {
					if p.Addr != a.LocalAddr() {
						return fmt.Errorf("host B: datagram from %v", p.Addr)
					}
					h, err := checkMessage(p.Bytes())
					if err != nil {
						return fmt.Errorf("host B: %w", err)
					}
					s := int(h.Source.Local() - srcs[0].Local())
					if h.Kind != wire.KindData || h.Channel != channel || s < 0 || s >= sources || h.Source != srcs[s] {
						return fmt.Errorf("host B: unexpected header %+v", h)
					}
					if h.Seq != next[s] {
						return fmt.Errorf("host B: source %d: got seq %d, want %d (%d messages received): lost, duplicated or reordered",
							s, h.Seq, next[s], received)
					}
					next[s]++
					received++
				}
				for s := range sources {
					h := wire.Header{Kind: wire.KindAck, FragCount: 1, Channel: channel, Source: srcs[s], Seq: next[s] - 1}
					buf := ackBuf[s*wire.HeaderLen : (s+1)*wire.HeaderLen]
					if _, err := h.Marshal(buf); err != nil {
						return err
					}
					acks[s] = wire.Packet{Addr: a.LocalAddr(), Buf: buf, N: wire.HeaderLen}
				}
				if sent, err := b.SendBatch(acks); sent != len(acks) || err != nil {
					// A lost ack is made good by the next one (cumulative).
					if err != nil {
						return fmt.Errorf("host B: send acks: %w", err)
					}
				}
			}
			return nil
		}())
	}()

	// Host A, receiver: read acknowledgements.
	wg.Add(1)
	go func() {
		defer wg.Done()
		report(func() error {
			rx := make([]wire.Packet, DefaultBatchSize)
			for i := range rx {
				rx[i].Buf = make([]byte, 256)
			}
			const last = firstSeq + total/sources - 1
			for acked[0].Load() != last || acked[1].Load() != last {
				if stop.Load() {
					return nil
				}
				n, err := a.RecvBatch(rx, 50*time.Millisecond)
				if err != nil {
					return fmt.Errorf("host A: %w", err)
				}
				for _, p := range rx[:n] {
					h, _, err := wire.Parse(p.Bytes())
					if err != nil || h.Kind != wire.KindAck {
						return fmt.Errorf("host A: bad ack %+v: %v", h, err)
					}
					s := int(h.Source.Local() - srcs[0].Local())
					if s < 0 || s >= sources {
						return fmt.Errorf("host A: ack for unknown source %+v", h)
					}
					if h.Seq > acked[s].Load() {
						acked[s].Store(h.Seq)
					}
				}
				if n > 0 {
					select {
					case ackSignal <- struct{}{}:
					default:
					}
				}
			}
			return nil
		}())
	}()

	// Host A, sender: sources take turns; sizes vary from the bare header
	// to 1400 bytes; at most window messages unacknowledged.
	sendErr := func() error {
		tx := make([]wire.Packet, DefaultBatchSize)
		for i := range tx {
			tx[i].Buf = make([]byte, 1400)
			tx[i].Addr = b.LocalAddr()
		}
		var seq [sources]uint64
		for i := range seq {
			seq[i] = firstSeq
		}
		inflight := func() uint64 {
			var n uint64
			for s := range sources {
				n += seq[s] - 1 - acked[s].Load()
			}
			return n
		}
		sent := 0
		for sent < total {
			stalled := time.Now()
			for inflight()+DefaultBatchSize > window {
				select {
				case <-ackSignal:
				case <-time.After(100 * time.Millisecond):
					if stop.Load() {
						return fmt.Errorf("host A: stopped with %d sent", sent)
					}
					if time.Since(stalled) > 20*time.Second {
						return fmt.Errorf("host A: no acknowledgement for 20s with %d in flight, %d sent", inflight(), sent)
					}
				}
			}
			k := min(DefaultBatchSize, total-sent)
			for i := range k {
				s := (sent + i) % sources
				size := wire.HeaderLen + (sent+i)*37%(1400-wire.HeaderLen+1)
				tx[i].N = fillMessage(t, tx[i].Buf, srcs[s], seq[s], size)
				seq[s]++
			}
			for off := 0; off < k; {
				n, err := a.SendBatch(tx[off:k])
				if err != nil {
					return fmt.Errorf("host A: send: %w", err)
				}
				if off += n; off < k {
					time.Sleep(time.Millisecond) // send buffer full
				}
			}
			sent += k
		}
		return nil
	}()
	if sendErr != nil {
		stop.Store(true)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
		t.Fatal(sendErr)
	}
	// B stops after the last message, A's ack reader after the last ack.
	wg.Wait()
	close(errs)
	var failed bool
	for err := range errs {
		if err != nil {
			failed = true
			t.Error(err)
		}
	}
	sa, sb := a.Stats(), b.Stats()
	t.Logf("host A: %+v", sa)
	t.Logf("host B: %+v", sb)
	if !failed && (sb.PacketsReceived != total || sa.PacketsSent != total) {
		t.Errorf("A sent %d, B received %d, want %d", sa.PacketsSent, sb.PacketsReceived, total)
	}
	// Acknowledgements went the other way; A read until the final ones,
	// which B sent last, so none may be missing either.
	if !failed && sa.PacketsReceived != sb.PacketsSent {
		t.Errorf("B sent %d acknowledgements, A received %d", sb.PacketsSent, sa.PacketsReceived)
	}
}

// A send buffer that fills makes SendBatch stop early with no error. On a
// plain loopback the kernel frees a datagram's buffer at once, so the test
// holds them in a slow token-bucket qdisc on the loopback of a namespace
// of its own.
func TestPartialSendOnFullSendBuffer(t *testing.T) {
	testutil.RequiresCommand(t, "tc", "iproute2")
	host := newNetns(t)
	testutil.Run(t, "tc", "-n", host.Name, "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "1mbit", "burst", "16kb", "limit", "16mb")
	a := host.newPlugin(t, "127.0.0.1:0", Options{SendBuffer: 64 << 10})
	b := host.newPlugin(t, "127.0.0.1:0", Options{})
	pkts := make([]wire.Packet, 64)
	for i := range pkts {
		buf := make([]byte, 8192)
		pkts[i] = wire.Packet{Addr: b.LocalAddr(), Buf: buf, N: fillMessage(t, buf, 1, uint64(i), len(buf))}
	}
	n, err := a.SendBatch(pkts)
	if err != nil {
		t.Fatalf("SendBatch: %v", err)
	}
	if n == 0 || n >= len(pkts) {
		t.Fatalf("SendBatch sent %d of %d 8 KiB datagrams through a 64 KiB send buffer", n, len(pkts))
	}
	if s := a.Stats(); s.SendBufferFull == 0 || s.PacketsSent != uint64(n) || s.SendErrors != 0 {
		t.Errorf("stats %+v after sending %d", s, n)
	}
	// What went out arrives, in order (the qdisc drains slowly).
	got := recvAll(t, b, n)
	for i, r := range got {
		if h, err := checkMessage(r.Bytes()); err != nil || h.Seq != uint64(i) {
			t.Fatalf("datagram %d: seq %d, %v", i, h.Seq, err)
		}
	}
}
