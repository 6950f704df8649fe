package shm

import (
	"encoding/binary"
	"errors"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var testLayout = Layout{SlotSize: 2048, TXSlots: 64, RXSlots: 128}

// twoSides creates a region and maps it a second time from a duplicate of
// its descriptor, as the other process does.
func twoSides(t *testing.T, l Layout) (daemon, app *Region) {
	t.Helper()
	d, err := Create("shm-test", l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	fd, err := unix.Dup(d.FD())
	if err != nil {
		t.Fatal(err)
	}
	a, err := Open(fd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return d, a
}

func TestLayoutIsSealedAndShared(t *testing.T) {
	d, a := twoSides(t, testLayout)
	if a.Layout() != testLayout || len(a.Bytes()) != testLayout.Size() {
		t.Fatalf("opened %+v, %d bytes", a.Layout(), len(a.Bytes()))
	}
	if err := unix.Ftruncate(d.FD(), 4096); err == nil {
		t.Error("the region could be shrunk")
	}
	copy(a.TXSlot(63), "written by the application")
	if string(d.TXSlot(63)[:26]) != "written by the application" {
		t.Error("slot not shared")
	}
	if s := a.RXSlot(127); len(s) != 2048 || cap(s) != 2048 {
		t.Errorf("slot of %d bytes, capacity %d", len(s), cap(s))
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("slot out of range did not panic")
			}
		}()
		a.TXSlot(64)
	}()
	// A memfd without seals is refused: its owner could truncate it.
	fd, _ := unix.MemfdCreate("unsealed", 0)
	unix.Ftruncate(fd, int64(testLayout.Size()))
	if _, err := Open(fd); !errors.Is(err, ErrBadRegion) {
		t.Errorf("unsealed region: %v", err)
	}
}

func TestLayoutLimits(t *testing.T) {
	for _, l := range []Layout{
		{SlotSize: 32, TXSlots: 64, RXSlots: 64},
		{SlotSize: 2000, TXSlots: 64, RXSlots: 64},
		{SlotSize: 2048, TXSlots: 63, RXSlots: 64},
		{SlotSize: 2048, TXSlots: 64, RXSlots: 1},
		{SlotSize: MaxSlotSize, TXSlots: MaxSlots, RXSlots: MaxSlots},
	} {
		if err := l.Validate(); !errors.Is(err, ErrBadRegion) {
			t.Errorf("%+v: %v", l, err)
		}
	}
}

// The four rings carry entries in order between the two mappings, with
// producer and consumer on different goroutines, wrapping many times.
func TestRingsInOrderAcrossMappings(t *testing.T) {
	d, a := twoSides(t, testLayout)
	const n = 200000
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // application: TX entries out, RX entries in
		defer wg.Done()
		tx, rx := a.TXProducer(), a.RXConsumer()
		for i, got := uint32(0), uint32(0); i < n || got < n; {
			if i < n && tx.Space(1) > 0 {
				PutTX(tx.Entry(0), TXEntry{Slot: i % 64, Len: i, Source: 7, Token: uint64(i) << 20})
				tx.Publish(1)
				i++
			}
			if k, ok := rx.Available(); !ok {
				t.Error("corrupt RX head")
				return
			} else if k > 0 {
				for j := uint32(0); j < k; j++ {
					if e := GetRX(rx.Entry(j)); e.Seq != uint64(got+j) || e.Len != got+j {
						t.Errorf("RX entry %d: %+v", got+j, e)
						return
					}
				}
				rx.Release(k)
				got += k
			}
		}
	}()
	go func() { // daemon: TX entries in, RX entries out
		defer wg.Done()
		tx, rx := d.TXConsumer(), d.RXProducer()
		for i, got := uint32(0), uint32(0); i < n || got < n; {
			if k, _ := tx.Available(); k > 0 {
				for j := uint32(0); j < k; j++ {
					if e := GetTX(tx.Entry(j)); e.Len != got+j || e.Token != uint64(got+j)<<20 || e.Source != 7 {
						t.Errorf("TX entry %d: %+v", got+j, e)
						return
					}
				}
				tx.Release(k)
				got += k
			}
			if sp := rx.Space(1); i < n && sp > 0 {
				k := min(sp, n-i)
				for j := uint32(0); j < k; j++ {
					PutRX(rx.Entry(j), RXEntry{Slot: (i + j) % 128, Len: i + j, Sink: 1, Source: 2, Seq: uint64(i + j)})
				}
				rx.Publish(k)
				i += k
			}
		}
	}()
	wg.Wait()
}

// A peer that writes impossible positions stops only its own traffic.
func TestBrokenPeerPositions(t *testing.T) {
	d, a := twoSides(t, testLayout)
	done, free := d.DoneProducer(), d.FreeConsumer()
	// The application claims a tail past the head: the ring looks full.
	*word(a.Bytes(), offDoneTail) = 1 << 30
	if s := done.Space(1); s != 0 {
		t.Errorf("space %d with a tail past the head", s)
	}
	*word(a.Bytes(), offDoneTail) = 0
	if s := done.Space(1); s != testLayout.TXSlots {
		t.Errorf("space %d after the tail came back", s)
	}
	// It claims a head a ring ahead: corrupt, and Resync skips it.
	*word(a.Bytes(), offFreeHead) = testLayout.RXSlots + 1
	if _, ok := free.Available(); ok {
		t.Error("a head a ring ahead accepted")
	}
	free.Resync()
	if k, ok := free.Available(); !ok || k != 0 || free.Pending() {
		t.Errorf("after resync: %d, %v", k, ok)
	}
	// Flags: taken once.
	f := a.AppWaitingRX()
	f.Set()
	if !d.AppWaitingRX().TakeIfSet() || d.AppWaitingRX().TakeIfSet() || f.IsSet() {
		t.Error("flag not taken exactly once")
	}
}

func TestNotifier(t *testing.T) {
	n, err := NewNotifier()
	if err != nil {
		t.Fatal(err)
	}
	fd, _ := unix.Dup(n.FD())
	other, err := NotifierFromFD(fd)
	if err != nil {
		t.Fatal(err)
	}
	n.Signal()
	n.Signal()
	if err := other.Wait(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- other.Wait() }()
	other.Close()
	if err := <-done; err == nil {
		t.Error("Wait on a closed notifier returned nil")
	}
	n.Close()
	n.Signal() // after Close: nothing
	memfd, _ := unix.MemfdCreate("not-an-eventfd", 0)
	if _, err := NotifierFromFD(memfd); !errors.Is(err, ErrBadRegion) {
		t.Errorf("a memfd as a notifier: %v", err)
	}
}

// FuzzParseHeader: a header is accepted only if everything its layout
// places fits the limits, and it round-trips. Seed corpus:
// testdata/fuzz/FuzzParseHeader (veloced's layout, the smallest, and
// each way a header can be wrong).
func FuzzParseHeader(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := ParseHeader(b)
		if err != nil {
			if !errors.Is(err, ErrBadRegion) {
				t.Fatalf("error not ErrBadRegion: %v", err)
			}
			return
		}
		if l.Validate() != nil || l.Size() > MaxSize || l.Size() < ControlSize {
			t.Fatalf("accepted %+v", l)
		}
		// Everything the layout places is inside it.
		o := l.offsets()
		if o.txRing < controlLinesTo || o.rxSlots+uint64(l.RXSlots)*uint64(l.SlotSize) > uint64(l.Size()) {
			t.Fatalf("layout %+v overflows: %+v", l, o)
		}
		c := make([]byte, HeaderLen)
		PutHeader(c, l)
		if l2, err := ParseHeader(c); err != nil || l2 != l {
			t.Fatalf("round trip %+v: %+v, %v", l, l2, err)
		}
	})
}

// TestSignalNeverBlocks: the other side (a hostile application) fills the
// eventfd's counter; Signal must return at once, not wait for room.
func TestSignalNeverBlocks(t *testing.T) {
	n, err := NewNotifier()
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	var max [8]byte
	binary.LittleEndian.PutUint64(max[:], 0xfffffffffffffffe)
	if _, err := unix.Write(n.FD(), max[:]); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		for range 100 {
			n.Signal()
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Signal blocked on a full eventfd")
	}
	if a := testing.AllocsPerRun(100, n.Signal); a != 0 {
		t.Errorf("Signal allocates %.1f", a)
	}
}
