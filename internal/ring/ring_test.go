package ring

import (
	"sync"
	"testing"
)

func TestFIFOAndBounds(t *testing.T) {
	if _, err := New(3); err == nil {
		t.Fatal("size 3 accepted")
	}
	q, _ := New(4)
	if _, ok := q.Pop(); ok {
		t.Fatal("pop from empty")
	}
	for i := uint32(0); i < 4; i++ {
		if !q.Push(i) {
			t.Fatalf("push %d into a queue of 4", i)
		}
	}
	if q.Push(9) || q.Len() != 4 {
		t.Fatalf("full queue took a value (len %d)", q.Len())
	}
	for lap := 0; lap < 3; lap++ {
		for i := uint32(0); i < 4; i++ {
			v, ok := q.Pop()
			if !ok || v != i {
				t.Fatalf("lap %d: pop = %d, %v; want %d", lap, v, ok, i)
			}
			q.Push(i)
		}
	}
}

// Many producers and consumers: every value comes out exactly once, and
// each producer's values in the order it pushed them.
func TestConcurrentExactlyOnceInOrder(t *testing.T) {
	const producers, consumers, per = 4, 3, 20000
	q, _ := New(256)
	var wg sync.WaitGroup
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				for !q.Push(uint32(p<<24 | i)) {
				}
			}
		}()
	}
	results := make([][]uint32, consumers)
	var cwg sync.WaitGroup
	var taken sync.WaitGroup
	taken.Add(producers * per)
	done := make(chan struct{})
	for c := 0; c < consumers; c++ {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				if v, ok := q.Pop(); ok {
					results[c] = append(results[c], v)
					taken.Done()
				}
			}
		}()
	}
	wg.Wait()
	taken.Wait()
	close(done)
	cwg.Wait()
	seen := make(map[uint32]bool)
	for _, r := range results {
		last := map[uint32]int{}
		for _, v := range r {
			if seen[v] {
				t.Fatalf("%x popped twice", v)
			}
			seen[v] = true
			p, i := v>>24, int(v&0xffffff)
			if prev, ok := last[p]; ok && i <= prev {
				t.Fatalf("producer %d: %d after %d in one consumer", p, i, prev)
			}
			last[p] = i
		}
	}
	if len(seen) != producers*per {
		t.Fatalf("%d values out of %d", len(seen), producers*per)
	}
}

func TestNoAllocations(t *testing.T) {
	q, _ := New(64)
	if a := testing.AllocsPerRun(1000, func() { q.Push(1); q.Pop() }); a != 0 {
		t.Fatalf("%v allocations", a)
	}
}

func BenchmarkPushPop(b *testing.B) {
	q, _ := New(1024)
	for i := 0; i < b.N; i++ {
		q.Push(uint32(i))
		q.Pop()
	}
}

// TestPushWaitNeverLosesAValue: a pool of ids circulating through a queue
// its size, by many goroutines: Push can report full while a Pop is half
// done; PushWait waits it out, and every id is still there at the end.
func TestPushWaitNeverLosesAValue(t *testing.T) {
	const size = 64
	q, _ := New(size)
	for i := uint32(0); i < size; i++ {
		q.PushWait(i)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20000; i++ {
				if v, ok := q.Pop(); ok {
					q.PushWait(v)
				}
			}
		}()
	}
	wg.Wait()
	seen := map[uint32]bool{}
	for {
		v, ok := q.Pop()
		if !ok {
			break
		}
		seen[v] = true
	}
	if len(seen) != size {
		t.Fatalf("%d of %d ids left", len(seen), size)
	}
}
