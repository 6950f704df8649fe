package cow

import (
	"maps"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

// check compares a trie with the map it should hold.
func check(t *testing.T, root *node[uint32, int], want map[uint32]int, hash func(uint32) uint64) {
	t.Helper()
	got := map[uint32]int{}
	if root != nil {
		root.each(func(k uint32, v int) bool {
			if _, dup := got[k]; dup {
				t.Fatalf("key %d twice", k)
			}
			got[k] = v
			return true
		})
	}
	if !maps.Equal(got, want) {
		t.Fatalf("trie holds %v, want %v", got, want)
	}
	for k, v := range want {
		if g, ok := root.lookup(hash(k), k); !ok || g != v {
			t.Fatalf("lookup %d: %d, %v; want %d", k, g, ok, v)
		}
	}
	for k := range uint32(64) {
		if _, in := want[k]; !in {
			if _, ok := root.lookup(hash(k), k); ok {
				t.Fatalf("lookup %d found a deleted key", k)
			}
		}
	}
	if root != nil && len(root.kids) == 0 {
		t.Fatal("empty node kept")
	}
}

// TestTrieAgainstMap runs random stores and deletes on the trie and on a
// Go map, with hash functions that force every shape: spread hashes,
// hashes equal but for the last level's bits, and full collisions
// (chains).
func TestTrieAgainstMap(t *testing.T) {
	hashes := map[string]func(uint32) uint64{
		"spread":         func(k uint32) uint64 { return hashOf(k) },
		"top bits only":  func(k uint32) uint64 { return uint64(k%16) << 60 },
		"full collision": func(k uint32) uint64 { return uint64(k % 3) },
		"shared prefix":  func(k uint32) uint64 { return uint64(k%5)<<40 | 0x1f },
	}
	for name, hash := range hashes {
		t.Run(name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			var root *node[uint32, int]
			want := map[uint32]int{}
			for i := range 4000 {
				k := uint32(rng.IntN(64))
				before := root
				snapshot := maps.Clone(want)
				if rng.IntN(3) == 0 {
					var removed bool
					if root != nil {
						root, removed = root.remove(0, hash(k), k)
					}
					_, had := want[k]
					if removed != had {
						t.Fatalf("op %d: delete %d reported %v, had %v", i, k, removed, had)
					}
					delete(want, k)
				} else {
					var added bool
					root, added = root.insert(0, &leaf[uint32, int]{hash: hash(k), key: k, val: i})
					_, had := want[k]
					if added == had {
						t.Fatalf("op %d: store %d reported new %v, had %v", i, k, added, had)
					}
					want[k] = i
				}
				check(t, root, want, hash)
				if i%97 == 0 {
					check(t, before, snapshot, hash) // the old version is untouched
				}
			}
		})
	}
}

func TestMap(t *testing.T) {
	var m Map[uint32, string]
	if m.Len() != 0 || m.Get(1) != "" || m.Delete(1) {
		t.Fatal("zero Map not empty")
	}
	m.Store(1, "a")
	m.Store(2, "b")
	m.Store(1, "c")
	if v, ok := m.Lookup(1); !ok || v != "c" || m.Len() != 2 {
		t.Fatalf("Lookup(1) = %q, %v; len %d", v, ok, m.Len())
	}
	snap := m.All()
	m.Update(3, func(old string, ok bool) (string, bool) { return old + "x", true })
	m.Update(2, func(string, bool) (string, bool) { return "", false })
	m.Update(9, func(string, bool) (string, bool) { return "", false })
	if got := maps.Collect(m.All()); !maps.Equal(got, map[uint32]string{1: "c", 3: "x"}) || m.Len() != 2 {
		t.Fatalf("after updates: %v, len %d", got, m.Len())
	}
	if got := maps.Collect(snap); !maps.Equal(got, map[uint32]string{1: "c", 2: "b"}) {
		t.Fatalf("snapshot changed: %v", got)
	}
	m.DeleteFunc(func(k uint32, _ string) bool { return k == 3 })
	if m.Len() != 1 || m.Get(3) != "" {
		t.Fatal("DeleteFunc")
	}
	m.Clear()
	if m.Len() != 0 || m.Get(1) != "" {
		t.Fatal("Clear")
	}
}

// TestReadersDuringWrites: readers see, without a lock, every key that
// was in the map before they started and stays in it, while a writer
// keeps changing others (run with -race).
func TestReadersDuringWrites(t *testing.T) {
	var m Map[[4]byte, int]
	for i := range 1000 {
		m.Store([4]byte{0, 0, byte(i >> 8), byte(i)}, i)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				for i := range 1000 {
					if v, ok := m.Lookup([4]byte{0, 0, byte(i >> 8), byte(i)}); !ok || v != i {
						t.Errorf("key %d: %d, %v", i, v, ok)
						return
					}
				}
			}
		}()
	}
	for i := range 20000 {
		k := [4]byte{1, byte(i >> 16), byte(i >> 8), byte(i)}
		m.Store(k, i)
		if i%2 == 0 {
			m.Delete(k)
		}
	}
	stop.Store(true)
	wg.Wait()
	if m.Len() != 1000+10000 {
		t.Fatalf("len %d", m.Len())
	}
}

func TestLookupDoesNotAllocate(t *testing.T) {
	var m Map[uint32, *int]
	var n Map[[4]byte, [6]byte]
	for i := range uint32(5000) {
		m.Store(i, new(int))
		n.Store([4]byte{byte(i), byte(i >> 8)}, [6]byte{1})
	}
	if a := testing.AllocsPerRun(1000, func() {
		m.Get(4321)
		m.Lookup(99999)
		n.Lookup([4]byte{7, 1})
		m.Len()
	}); a != 0 {
		t.Fatalf("%v allocations per lookup", a)
	}
}

// TestStoreCostIsLogarithmic: a change copies one path of the trie, not
// the table. A store and a delete in a map of 100,000 entries allocate at
// most a few objects and a few KiB more than in one of 10 (at most 4
// objects and 2 x 544 bytes per level, 5 levels more at most), where
// copying a Go map of 100,000 entries allocates over a MiB in hundreds of
// objects. No timing is measured.
func TestStoreCostIsLogarithmic(t *testing.T) {
	cost := func(size int) (allocs float64, bytes uint64) {
		var m Map[uint32, int]
		for i := range uint32(size) {
			m.Store(i, 1)
		}
		k := uint32(size)
		op := func() {
			m.Store(k, 1)
			m.Delete(k)
			k = uint32(size) + (k+1)%64 // an average over keys, so over depths
		}
		allocs = testing.AllocsPerRun(640, op)
		bytes = bytesPerRun(640, op)
		return allocs, bytes
	}
	smallA, smallB := cost(10)
	bigA, bigB := cost(100000)
	t.Logf("store+delete: %v allocations, %d bytes at 10 entries; %v, %d at 100,000", smallA, smallB, bigA, bigB)
	if bigA > smallA+20 || bigB > smallB+5*2*544 {
		t.Errorf("store+delete at 100,000 entries: %v allocations, %d bytes; at 10: %v, %d", bigA, bigB, smallA, smallB)
	}
}
