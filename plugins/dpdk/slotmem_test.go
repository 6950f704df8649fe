package dpdk

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/dpdk"
	"github.com/veloce-io/veloce/internal/netstack"
	"github.com/veloce-io/veloce/internal/pkt"
	"github.com/veloce-io/veloce/internal/wire"
)

var ringSeq atomic.Uint32

// ringPlugin opens a plugin on a net_ring port: what it sends comes back
// on its own receive queue, and the mbufs stay in the ring, attached to
// whatever they were sent from, until the receive side frees them. It
// knows its own MAC, so it can send to itself.
func ringPlugin(t *testing.T) *Plugin {
	t.Helper()
	p, err := New(Options{Device: fmt.Sprintf("net_ring_slotmem%d", ringSeq.Add(1)), Addr: netip.MustParsePrefix("10.96.0.1/24"), CPU: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	p.Host().Learn(p.LocalAddr().Addr(), p.Host().MAC())
	return p
}

// TestSendFromSlotMemory: datagrams in the slot memory the plugin gives
// out go without a copy (the frame headers are written into the slot's
// headroom, the mbuf is attached to the slot), and their slots stay busy
// until the mbufs are freed, here by the receiving side of the ring;
// datagrams elsewhere, or without headroom, are copied once. The
// zero-copy send allocates nothing.
func TestSendFromSlotMemory(t *testing.T) {
	requireDPDK(t)
	p := ringPlugin(t)
	const slots, stride, head = 64, 2112, 64
	mem, free, err := p.SlotMemory(slots, stride)
	if err != nil {
		t.Fatal(err)
	}
	defer free()
	if len(mem) != slots*stride {
		t.Fatalf("slot memory of %d bytes, want %d", len(mem), slots*stride)
	}
	if _, _, err := p.SlotMemory(slots, stride); err == nil {
		t.Error("a second SlotMemory was given out")
	}
	// 32 datagrams in slots 0..31 at the headroom's end, one at offset 10
	// of slot 40 (no room for the headers), one in Go memory.
	build := func(b []byte, seq uint64) wire.Packet {
		h := wire.Header{Kind: wire.KindData, FragCount: 1, PayloadLen: 100, Channel: 3, Source: 4, Seq: seq}
		payload := bytes.Repeat([]byte{byte(seq)}, 100)
		n, err := h.MarshalPacket(b, payload)
		if err != nil {
			t.Fatal(err)
		}
		return wire.Packet{Addr: p.LocalAddr(), Buf: b, N: n}
	}
	var pkts []wire.Packet
	for k := range 32 {
		pkts = append(pkts, build(mem[k*stride+head:(k+1)*stride], uint64(k)))
	}
	pkts = append(pkts, build(mem[40*stride+10:41*stride], 32), build(make([]byte, 2048), 33))
	if k, err := p.SendBatch(pkts); k != len(pkts) || err != nil {
		t.Fatalf("SendBatch: %d of %d, %v", k, len(pkts), err)
	}
	s := p.Stats()
	if s.TxZeroCopy != 32 || s.TxCopied != 2 || s.TxSlotsBusy != 32 || s.TxCopiedBytes != uint64(pkts[32].N+pkts[33].N) {
		t.Fatalf("after sending 32 from slots and 2 from elsewhere: %+v", s)
	}
	for i := range slots {
		if want := i < 32; p.SlotBusy(i) != want {
			t.Fatalf("slot %d busy %v, want %v while its frame sits in the ring", i, p.SlotBusy(i), want)
		}
	}
	// The headers went into the headroom: a frame to ourselves.
	frame := mem[head-netstack.UDPFrameHeaderLen : head+pkts[0].N]
	eth, err := pkt.ParseEthernet(frame)
	if err != nil || eth.Dst != p.Host().MAC() || eth.Type != pkt.EtherTypeIPv4 {
		t.Fatalf("slot 0's headroom holds no frame header: % x (%v)", frame[:netstack.UDPFrameHeaderLen], err)
	}

	// Receive them back: each once, intact; then no slot is busy.
	got := recvAll(t, p, len(pkts))
	for i, g := range got {
		h, payload, err := wire.Parse(g)
		if err != nil || h.Seq != uint64(i) || !bytes.Equal(payload, bytes.Repeat([]byte{byte(i)}, 100)) {
			t.Fatalf("datagram %d: seq %d, %v", i, h.Seq, err)
		}
	}
	if p.Stats().TxSlotsBusy != 0 || p.SlotBusy(0) {
		t.Fatalf("slots busy after the ring's receiver freed the mbufs: %d", p.Stats().TxSlotsBusy)
	}

	// Sending from slots allocates nothing.
	rx := make([]wire.Packet, 32)
	for i := range rx {
		rx[i].Buf = make([]byte, 2048)
	}
	zc := pkts[:32]
	if a := testing.AllocsPerRun(50, func() {
		if k, err := p.SendBatch(zc); k != len(zc) || err != nil {
			panic(fmt.Sprint("SendBatch ", k, err))
		}
		for n := 0; n < len(zc); {
			k, _ := p.RecvBatch(rx, time.Second)
			n += k
		}
	}); a != 0 {
		t.Errorf("SendBatch from slots (and RecvBatch): %.1f allocations per batch of 32", a)
	}
	if s := p.Stats(); s.TxCopied != 2 || s.TxSlotsBusy != 0 {
		t.Errorf("after the allocation runs: %+v", s)
	}
}

// recvAll pulls n datagrams from p (copies), in order.
func recvAll(t *testing.T, p *Plugin, n int) [][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	buf := make([]wire.Packet, 8)
	for i := range buf {
		buf[i].Buf = make([]byte, 2048)
	}
	var got [][]byte
	for len(got) < n && ctx.Err() == nil {
		k, err := p.RecvBatch(buf, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		for i := range buf[:k] {
			got = append(got, bytes.Clone(buf[i].Bytes()))
		}
	}
	if len(got) != n {
		t.Fatalf("received %d of %d datagrams", len(got), n)
	}
	return got
}

// BenchmarkSendBatch: SendBatch of 32 datagrams over net_ring, copied
// into mbufs (from Go memory) against attached to their slots (from
// SlotMemory), then received and freed (RxBurst, FreeBulk) as a PMD that
// is done with them would. The difference is the copy the slots save.
func BenchmarkSendBatch(b *testing.B) {
	if !Available() {
		b.Skip("needs DPDK")
	}
	for _, size := range []int{64, 1400} {
		for _, from := range []string{"copy", "slots"} {
			b.Run(fmt.Sprintf("%s/%d", from, size), func(b *testing.B) {
				p, err := New(Options{Device: fmt.Sprintf("net_ring_bench%d", ringSeq.Add(1)), Addr: netip.MustParsePrefix("10.96.0.1/24"), CPU: -1})
				if err != nil {
					b.Fatal(err)
				}
				defer p.Close()
				p.Host().Learn(p.LocalAddr().Addr(), p.Host().MAC())
				const stride = 2112
				mem, free, err := p.SlotMemory(64, stride)
				if err != nil {
					b.Fatal(err)
				}
				defer free()
				pkts := make([]wire.Packet, 32)
				for i := range pkts {
					buf := make([]byte, 2048)
					if from == "slots" {
						buf = mem[i*stride+64 : (i+1)*stride]
					}
					h := wire.Header{Kind: wire.KindData, FragCount: 1, PayloadLen: uint16(size), Channel: 1, Source: 1, Seq: uint64(i)}
					n, _ := h.MarshalPacket(buf, make([]byte, size))
					pkts[i] = wire.Packet{Addr: p.LocalAddr(), Buf: buf, N: n}
				}
				rx := make([]*dpdk.Mbuf, 32)
				b.SetBytes(int64(32 * size))
				b.ResetTimer()
				for range b.N {
					if k, err := p.SendBatch(pkts); k != len(pkts) || err != nil {
						b.Fatal(k, err)
					}
					for n := 0; n < len(pkts); {
						k := p.port.RxBurst(0, rx)
						dpdk.FreeBulk(rx[:k])
						n += k
					}
				}
				b.StopTimer()
				if s := p.Stats(); (from == "slots") != (s.TxZeroCopy > 0) {
					b.Fatalf("%s: %+v", from, s)
				}
			})
		}
	}
}
