//go:build dpdk && cgo

package dpdk

import (
	"errors"
	"syscall"
	"testing"
)

// TestExtMemSlots: mbufs attached to slots of an ExtMem keep exactly their
// slot busy until DPDK frees them (net_ring holds them until the receiver
// frees them), the receiver reads the slot's own bytes (no copy), Slot
// locates slices, Free refuses to unmap while a slot is out, and nothing
// on the way allocates.
func TestExtMemSlots(t *testing.T) {
	needEAL(t)
	pool := newPool(t, 255, 0)
	const n, stride = 64, 2112
	x, err := NewExtMem(n, stride)
	if err != nil {
		t.Fatal(err)
	}
	freed := false
	t.Cleanup(func() {
		if !freed {
			x.Free()
		}
	})
	if len(x.Bytes()) != n*stride || x.Stride() != stride || x.Len() != n {
		t.Fatalf("region of %d bytes, stride %d, %d slots", len(x.Bytes()), x.Stride(), x.Len())
	}
	mem := x.Bytes()
	for _, c := range []struct {
		b       []byte
		i, off  int
		located bool
	}{
		{mem[0:10], 0, 0, true},
		{mem[5*stride+64 : 5*stride+200], 5, 64, true},
		{mem[(n-1)*stride+stride-1 : n*stride], n - 1, stride - 1, true},
		{mem[3*stride+100 : 4*stride+1], 0, 0, false}, // crosses into the next slot
		{make([]byte, 10), 0, 0, false},               // Go memory
		{nil, 0, 0, false},
	} {
		i, off, ok := x.Slot(c.b)
		if ok != c.located || ok && (i != c.i || off != c.off) {
			t.Errorf("Slot(%d bytes): %d, %d, %v; want %d, %d, %v", len(c.b), i, off, ok, c.i, c.off, c.located)
		}
	}

	rp := ringPort(t, pool)
	tx, rx := make([]*Mbuf, 8), make([]*Mbuf, 8)
	if err := pool.AllocBulk(tx); err != nil {
		t.Fatal(err)
	}
	for k, m := range tx {
		i := 2*k + 1 // every other slot
		off := 64
		l := frame(mem[i*stride+off:], [6]byte{2}, [6]byte{4}, uint32(k))
		m.AttachExtMem(x, i, off, l)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("a second AttachExtMem on a busy slot did not panic")
			}
		}()
		one := make([]*Mbuf, 1)
		if err := pool.AllocBulk(one); err != nil {
			t.Fatal(err)
		}
		defer FreeBulk(one)
		one[0].AttachExtMem(x, 1, 0, 64)
	}()
	sendAll(t, rp, tx)
	for i := range n {
		if want := i%2 == 1 && i < 2*len(tx); x.Busy(i) != want {
			t.Fatalf("slot %d busy %v while the frames sit in the ring, want %v", i, x.Busy(i), want)
		}
	}
	if err := x.Free(); !errors.Is(err, ErrExtMemBusy) {
		t.Fatalf("Free with %d slots in flight: %v, want ErrExtMemBusy", x.InFlight(), err)
	}
	got := rp.RxBurst(0, rx)
	if got != len(tx) {
		t.Fatalf("ring gave %d frames, want %d", got, len(tx))
	}
	for k, m := range rx[:got] {
		i := 2*k + 1
		if d := m.Data(); &d[0] != &mem[i*stride+64] {
			t.Errorf("frame %d read from %p, want slot %d at %p (zero copy)", k, &d[0], i, &mem[i*stride+64])
		}
		if seq, ours, err := parseFrame(m.Data()); !ours || err != nil || seq != uint32(k) {
			t.Errorf("frame %d: seq %d ours %v %v", k, seq, ours, err)
		}
	}
	FreeBulk(rx[:got])
	if x.InFlight() != 0 || pool.InUse() != 0 {
		t.Fatalf("after the receiver freed them: %d slots busy, %d mbufs in use", x.InFlight(), pool.InUse())
	}

	// The per-packet part allocates nothing.
	if a := testing.AllocsPerRun(100, func() {
		if pool.AllocBulk(tx) != nil {
			panic("pool empty")
		}
		for k, m := range tx {
			if _, _, ok := x.Slot(mem[k*stride+64 : k*stride+128]); !ok {
				panic("slot not found")
			}
			m.AttachExtMem(x, k, 64, 64)
		}
		sent := rp.TxBurst(0, tx)
		FreeBulk(tx[sent:])
		FreeBulk(rx[:rp.RxBurst(0, rx)])
		for k := range tx {
			if x.Busy(k) {
				panic("busy after free")
			}
		}
	}); a != 0 {
		t.Errorf("Slot+AttachExtMem+TxBurst+RxBurst+FreeBulk+Busy: %v allocations per run", a)
	}

	if rp.Bus() != "vdev" {
		t.Errorf("net_ring is on bus %q, want vdev", rp.Bus())
	}
	t.Logf("IOVA as VA: %v", IOVAIsVA())
	// Vdevs have no DMA mapping to make, and accept the call.
	if err := rp.DMAMap(x); err != nil {
		t.Errorf("DMAMap on net_ring: %v", err)
	}
	if err := rp.DMAUnmap(x); err != nil {
		t.Errorf("DMAUnmap on net_ring: %v", err)
	}
	if err := x.Free(); err != nil {
		t.Fatal(err)
	}
	freed = true
	if _, _, ok := x.Slot(mem[:1]); ok || x.Busy(0) {
		t.Error("a freed region still locates slots")
	}
	if err := rp.DMAMap(x); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("DMAMap of a freed region: %v, want EINVAL", err)
	}
}
