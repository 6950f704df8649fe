package shm

import (
	"encoding/binary"
	"testing"
)

func TestLayoutRuns(t *testing.T) {
	l := Layout{SlotSize: 2048, TXSlots: 2048, RXSlots: 2048}
	for _, c := range []struct {
		n, slots uint32
	}{{0, 1}, {1, 1}, {2048, 1}, {2049, 2}, {1 << 20, 512}, {1<<20 + 1, 513}, {1<<32 - 1, 2097152}} {
		if got := l.SlotsFor(c.n); got != c.slots {
			t.Errorf("SlotsFor(%d) = %d, want %d", c.n, got, c.slots)
		}
	}
	for _, c := range []struct {
		first, n uint32
		fits     bool
	}{{0, 8, true}, {2047, 2048, true}, {2047, 2049, false}, {2048, 1, false}, {1536, 1 << 20, true},
		{1537, 1 << 20, false}, {1<<32 - 1, 1<<32 - 1, false}, {0, 1<<32 - 1, false}} {
		if got := l.RunFits(c.first, c.n, l.TXSlots); got != c.fits {
			t.Errorf("RunFits(%d, %d) = %v", c.first, c.n, got)
		}
	}
}

// FuzzRuns drives a Runs with allocations, lends, frees and reclaims of
// any ids and checks it against a model: a run it hands out lies in its
// range over free slots only, Free and Reclaim take back only what starts
// a run (Reclaim: a lent one), and the free count is the model's.
//
// ops is a list of 3-byte operations: kind (mod 4), then a little-endian
// u16 argument.
func FuzzRuns(f *testing.F) {
	f.Add([]byte{0, 4, 0, 0, 3, 0, 2, 100, 0, 1, 100, 0, 3, 100, 0, 0, 200, 0})
	f.Add([]byte{0, 64, 0, 0, 1, 0, 1, 100, 0, 1, 101, 0, 3, 101, 0, 0, 60, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		const base, n = 100, 64
		r := NewRuns(base, n)
		owner := make([]int, n) // 0 free, else the id of the run + 1
		lent := map[uint32]bool{}
		size := map[uint32]uint32{}
		free := uint32(n)
		for ; len(ops) >= 3; ops = ops[3:] {
			a := uint32(binary.LittleEndian.Uint16(ops[1:]))
			switch ops[0] % 4 {
			case 0:
				first, ok := r.Alloc(a % 80)
				if !ok {
					continue
				}
				c := a % 80
				if first < base || first+c > base+n {
					t.Fatalf("run %d+%d outside %d+%d", first, c, base, n)
				}
				for i := first - base; i < first-base+c; i++ {
					if owner[i] != 0 {
						t.Fatalf("run %d+%d over slot %d of run %d", first, c, i+base, owner[i]-1)
					}
					owner[i] = int(first) + 1
				}
				size[first], free = c, free-c
			case 1:
				id := base + a%(n+8) - 4
				if size[id] != 0 && !lent[id] {
					r.Lend(id)
					lent[id] = true
				}
			case 2, 3:
				id := base + a%(n+8) - 4
				var got uint32
				var ok bool
				if ops[0]%4 == 2 {
					got, ok = r.Free(id)
				} else {
					got, ok = r.Reclaim(id)
				}
				want := size[id] != 0 && (ops[0]%4 == 2 || lent[id])
				if ok != want || (ok && got != size[id]) {
					t.Fatalf("free/reclaim %d: %d %v, want %d %v", id, got, ok, size[id], want)
				}
				if ok {
					for i := id - base; i < id-base+got; i++ {
						owner[i] = 0
					}
					free += got
					delete(size, id)
					delete(lent, id)
				}
			}
			if r.FreeSlots() != free {
				t.Fatalf("%d free slots, want %d", r.FreeSlots(), free)
			}
		}
	})
}
