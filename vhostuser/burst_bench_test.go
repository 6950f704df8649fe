package vhostuser_test

import (
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
)

// Burst benchmarks: the poller's per-frame work for a burst of frames of
// one size, as veloce-bench vhost drives it (testpmd's 32-frame bursts,
// one descriptor per buffer), without the threads and the frontend:
// ns/frame is the device's cost plus the test driver's (the same before
// and after a change). rx: an RXSource fills posted 1526-byte buffers
// (processRX); tx: single-descriptor frames dropped by the handler
// (processTX).

const benchBurst = 32

// dropper is a Handler that drops every frame and an RXSource that never
// runs dry, writing its frame's first 42 bytes (the headers) when handed
// the buffer it filled last, as veloce-bench's source does; it allocates
// nothing.
type dropper struct {
	frame []byte
	last  *byte
}

func (*dropper) HandleFrame(_ int, frame, _ []byte) int { return 0 }

func (d *dropper) FillRX(_ int, buf []byte) int {
	if d.last == &buf[0] {
		copy(buf[:42], d.frame)
	} else {
		copy(buf, d.frame)
		d.last = &buf[0]
	}
	return len(d.frame)
}

func (*dropper) PendingRX(int) bool { return true }

type burstEnv struct {
	g              *vhostusertest.Guest
	tp             *vhostuser.TestPoller
	split          [2]*vhostusertest.Driver
	packed         [2]*vhostusertest.PackedDriver
	txGPA, rxGPA   uint64
	frameLen       int
	offer, reclaim func(ring int)
}

func newBurstEnv(b *testing.B, packed bool, frameLen int) *burstEnv {
	g := vhostusertest.NewGuest(b, guestGPA, guestUser, guestSize)
	mem := g.Memory(b)
	e := &burstEnv{g: g, frameLen: frameLen, rxGPA: dataGPA, txGPA: dataGPA + dataStride}
	dev := newNetDevice(b, 1, &dropper{frame: make([]byte, frameLen)})
	features := linuxFeatures &^ vhostuser.Bit(vhostuser.NetFMrgRxbuf)
	var rings [2]vhostuser.Queue
	for i := range 2 {
		base := uint64(ringGPA + i*ringStride)
		data := uint64(dataGPA + i*dataStride)
		if packed {
			d := vhostusertest.NewPackedDriver(g, base, qSize, data, data+dataStride)
			r, err := vhostuser.NewPackedRing(mem, vhostuser.PackedRingOptions{Size: qSize, Addr: d.Addr(uint32(i), false), Base: d.Base(), EventIdx: true, IndirectDesc: true})
			if err != nil {
				b.Fatal(err)
			}
			e.packed[i], rings[i] = d, r
			continue
		}
		d := vhostusertest.NewDriver(g, base, qSize, data, data+dataStride)
		r, err := vhostuser.NewSplitRing(mem, vhostuser.SplitRingOptions{Size: qSize, Addr: d.Addr(uint32(i), false), EventIdx: true, IndirectDesc: true})
		if err != nil {
			b.Fatal(err)
		}
		e.split[i], rings[i] = d, r
	}
	if packed {
		features |= vhostuser.Bit(vhostuser.FRingPacked)
	}
	e.tp = vhostuser.NewTestPollerQueues(dev, 0, features, rings[0], rings[1], newEventfd(b), newEventfd(b))
	b.Cleanup(e.tp.Close)
	// Buffers: RX i at rxGPA+2048i (1526 writable bytes), TX i at
	// txGPA+2048i (header and frame).
	desc := func(ring int, i uint16) (uint64, uint32, uint16) {
		if ring == 0 {
			return e.rxGPA + 2048*uint64(i), netHdrLen + 1514, vhostuser.DescFWrite
		}
		return e.txGPA + 2048*uint64(i), uint32(netHdrLen + frameLen), 0
	}
	var descs [benchBurst]vhostusertest.PackedDesc
	e.offer = func(ring int) {
		for i := range uint16(benchBurst) {
			a, l, f := desc(ring, i)
			if packed {
				descs[i] = vhostusertest.PackedDesc{Addr: a, Len: l, ID: i, Flags: f}
				continue
			}
			e.split[ring].SetDesc(i, a, l, f, 0)
			e.split[ring].Offer(i)
		}
		if packed {
			e.packed[ring].AddRaw(descs[:]...)
		}
	}
	e.reclaim = func(ring int) {
		for i := range benchBurst {
			var ok bool
			if packed {
				_, _, ok = e.packed[ring].Used()
			} else {
				_, _, ok = e.split[ring].Used()
			}
			if !ok {
				b.Fatalf("ring %d: used entry %d of %d missing", ring, i, benchBurst)
			}
		}
	}
	return e
}

func benchmarkBurst(b *testing.B, packed, rx bool, frameLen int) {
	e := newBurstEnv(b, packed, frameLen)
	ring := 1
	if rx {
		ring = 0
	}
	b.SetBytes(int64(benchBurst * frameLen))
	for b.Loop() {
		e.offer(ring)
		var n int
		if rx {
			n = e.tp.ProcessRX()
		} else {
			n = e.tp.ProcessTX()
		}
		if n != benchBurst {
			b.Fatalf("processed %d of %d", n, benchBurst)
		}
		e.reclaim(ring)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchBurst), "ns/frame")
}

func BenchmarkBurst(b *testing.B) {
	for _, layout := range []string{"split", "packed"} {
		for _, dir := range []string{"rx", "tx"} {
			for _, size := range []int{64, 512, 1500} {
				b.Run(layout+"/"+dir+"/"+itoa(size), func(b *testing.B) {
					benchmarkBurst(b, layout == "packed", dir == "rx", size)
				})
			}
		}
	}
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		if n /= 10; n == 0 {
			return string(b[i:])
		}
	}
}
