package backend

import (
	"context"
	"encoding/binary"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/shm"
)

// batchSinks is a runtime whose channel 5 has a sink in each of n test
// clients, with the clients' application ends.
func batchSinks(t testing.TB, n int) (*Runtime, []*hostClient, []*testApp, []*Sink) {
	t.Helper()
	h := &hostApps{rt: NewRuntime(RuntimeOptions{}), clients: map[*hostClient]struct{}{}}
	var cs []*hostClient
	var apps []*testApp
	var sks []*Sink
	for range n {
		c := newTestClient(t, h)
		s := c.sess.Load()
		st, _ := s.CreateStream(StreamOptions{})
		sk, err := s.CreateSink(st.ID, 5)
		if err != nil {
			t.Fatal(err)
		}
		cs, apps, sks = append(cs, c), append(apps, newTestApp(c)), append(sks, sk)
	}
	return h.rt, cs, apps, sks
}

// TestBatchDeliveryPublishesOncePerBatch: a received batch delivered to
// several host applications (Runtime.deliverBatch) reaches each one's RX
// ring in one publication at the batch's end, with one wake-up for an
// application that sleeps, instead of one publication (and a look at its
// wait flag) per message: before the flush the applications see nothing,
// after it the whole batch, in order. Without the batching each message
// is published as it is delivered and the first check fails.
func TestBatchDeliveryPublishesOncePerBatch(t *testing.T) {
	const sinks, batch = 4, 32
	rt, cs, apps, sks := batchSinks(t, sinks)
	for _, c := range cs {
		c.region.AppWaitingRX().Set() // asleep on its RX eventfd
	}
	var b deliveryBatch
	payload := make([]byte, 64)
	for i := uint64(1); i <= batch; i++ {
		binary.LittleEndian.PutUint64(payload, i)
		if d, dropped := rt.deliverBatch(&b, sks[0].key, 9, i, payload); d != sinks || dropped != 0 {
			t.Fatalf("message %d: delivered %d, dropped %d", i, d, dropped)
		}
	}
	for k, a := range apps {
		if n, _ := a.rx.Available(); n != 0 {
			t.Fatalf("application %d sees %d entries before the batch's end: published per message", k, n)
		}
		if w := cs[k].wakeups.Load(); w != 0 {
			t.Fatalf("application %d woken %d times before the batch's end", k, w)
		}
	}
	b.flush()
	if b.rings != sinks {
		t.Errorf("the batch held %d rings, want %d (one per application)", b.rings, sinks)
	}
	for k, a := range apps {
		if n, _ := a.rx.Available(); n != batch {
			t.Errorf("application %d: %d entries after the flush, want %d", k, n, batch)
		}
		if w := cs[k].wakeups.Load(); w != 1 {
			t.Errorf("application %d woken %d times for one batch, want 1", k, w)
		}
		for i := uint64(1); i <= batch; i++ {
			if !a.take(func(e shm.RXEntry, data []byte) {
				if e.Seq != i || e.Source != 9 || e.Sink != sks[k].ID || binary.LittleEndian.Uint64(data) != i {
					t.Errorf("application %d, message %d: seq %d source %d sink %d data %d", k, i, e.Seq, e.Source, e.Sink, binary.LittleEndian.Uint64(data))
				}
			}) {
				t.Fatalf("application %d: message %d missing", k, i)
			}
		}
		if cs[k].pubLock.Load() || cs[k].holder.Load() != nil || cs[k].active.Load() != 0 {
			t.Errorf("application %d: the ring is still held after the flush", k)
		}
	}
	// A second batch takes the rings again; an application awake (its
	// flag down) is not woken.
	rt.deliverBatch(&b, sks[0].key, 9, batch+1, payload)
	b.flush()
	for k, c := range cs {
		if n, _ := apps[k].rx.Available(); n != 1 || c.wakeups.Load() != 1 {
			t.Errorf("application %d: second batch %d entries, %d wake-ups in all", k, n, c.wakeups.Load())
		}
	}
}

// TestBatchDeliveryAllocatesNothing: delivering a batch to eight host
// applications, flushing it and their taking the messages allocates
// nothing once the batch's list has grown.
func TestBatchDeliveryAllocatesNothing(t *testing.T) {
	const sinks, batch = 8, 16
	rt, _, apps, sks := batchSinks(t, sinks)
	var b deliveryBatch
	payload := make([]byte, 64)
	var seq, got uint64
	step := func() {
		for range batch {
			seq++
			rt.deliverBatch(&b, sks[0].key, 1, seq, payload)
		}
		b.flush()
		for _, a := range apps {
			for a.take(func(shm.RXEntry, []byte) { got++ }) {
			}
		}
	}
	for range 3 * hostRXSlots / batch { // every slot and ring position used
		step()
	}
	if a := testing.AllocsPerRun(500, step); a != 0 {
		t.Errorf("%.2f allocations per batch", a)
	}
	if got != seq*sinks {
		t.Errorf("%d of %d deliveries arrived", got, seq*sinks)
	}
	for _, sk := range sks {
		if sk.dropped.Load() != 0 {
			t.Errorf("sink %d dropped %d", sk.ID, sk.dropped.Load())
		}
	}
}

// TestBatchDeliveryWithOtherGoroutines: while a batch holds a client's
// ring, deliveries from other goroutines (VM pollers, other clients'
// drains) queue and are published with the batch or after it: none is
// lost, duplicated or left unpublished, each producer's stay in order,
// and no producer waits for the batch.
func TestBatchDeliveryWithOtherGoroutines(t *testing.T) {
	h := &hostApps{rt: NewRuntime(RuntimeOptions{}), clients: map[*hostClient]struct{}{}}
	c := newTestClient(t, h)
	app := newTestApp(c)
	const producers, per = 3, 20000 // producer 0 delivers in batches
	sk := &Sink{ID: 1}
	var wg sync.WaitGroup
	var inFlight atomic.Int64
	var refused atomic.Uint64
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b deliveryBatch
			for i := uint64(1); i <= per; {
				if inFlight.Load() >= hostRXSlots/2 {
					b.flush()
					time.Sleep(10 * time.Microsecond)
					continue
				}
				inFlight.Add(1)
				var ok bool
				if p == 0 {
					ok = c.deliverHeld(&b, sk, uint64(p), i, []byte{byte(p), byte(i)})
					if i%16 == 0 {
						b.flush()
					}
				} else {
					ok = c.deliver(sk, uint64(p), i, []byte{byte(p), byte(i)})
				}
				if !ok {
					inFlight.Add(-1)
					refused.Add(1)
					continue
				}
				i++
			}
			b.flush()
		}()
	}
	last := make([]uint64, producers)
	deadline := time.Now().Add(30 * time.Second)
	for taken := 0; taken < producers*per; {
		if !app.take(func(e shm.RXEntry, data []byte) {
			if e.Source >= producers || e.Seq != last[e.Source]+1 || data[0] != byte(e.Source) || data[1] != byte(e.Seq) {
				t.Fatalf("producer %d: seq %d after %d", e.Source, e.Seq, last[e.Source])
			}
			last[e.Source] = e.Seq
		}) {
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d taken; the rest never published (ready %d, held %v)", taken, producers*per, c.ready.Len(), c.holder.Load() != nil)
			}
			runtime.Gosched()
			continue
		}
		inFlight.Add(-1)
		taken++
	}
	wg.Wait()
	if n, _ := app.rx.Available(); n != 0 {
		t.Errorf("%d extra entries", n)
	}
	if refused.Load() != 0 {
		t.Errorf("%d deliveries refused with half the slots free", refused.Load())
	}
	if c.malformed.Load() != 0 {
		t.Errorf("%d RX-free entries taken for malformed: slots lost", c.malformed.Load())
	}
}

// TestBatchDeliveryToClosedClient: a client closed before or while a
// batch delivers to it takes nothing more, and its region is not
// released while the batch holds its ring.
func TestBatchDeliveryToClosedClient(t *testing.T) {
	rt, cs, _, sks := batchSinks(t, 2)
	var b deliveryBatch
	if d, _ := rt.deliverBatch(&b, sks[0].key, 1, 1, []byte("x")); d != 2 {
		t.Fatalf("delivered %d, want 2", d)
	}
	cs[1].closed.Store(true) // release has begun
	if d, dropped := rt.deliverBatch(&b, sks[0].key, 1, 2, []byte("y")); d != 1 || dropped != 1 {
		t.Errorf("after one client closed: delivered %d, dropped %d", d, dropped)
	}
	if cs[1].active.Load() != 1 {
		t.Errorf("the held client's active count is %d while the batch holds it, want 1", cs[1].active.Load())
	}
	b.flush()
	if cs[1].active.Load() != 0 {
		t.Errorf("active %d after the flush", cs[1].active.Load())
	}
	var b2 deliveryBatch
	if d, _ := rt.deliverBatch(&b2, sks[0].key, 1, 3, []byte("z")); d != 1 {
		t.Errorf("a new batch delivered to %d, want 1 (the closed client takes nothing)", d)
	}
	b2.flush()
	if len(b2.held) != 0 || cs[1].pubLock.Load() {
		t.Error("a batch took the closed client's ring")
	}
}

// BenchmarkDeliveryToEightHostApps: the daemon's cost per delivery of a
// 64-byte message to eight host applications, in batches of 16
// (Runtime.deliverBatch, as a datapath's receiver delivers) and one by
// one (Runtime.deliver); the applications' side is a tight loop taking
// and freeing, outside the timer's concern only in that it runs on the
// same goroutine.
func BenchmarkDeliveryToEightHostApps(b *testing.B) {
	for _, mode := range []struct {
		name    string
		batched bool
	}{{"batched", true}, {"one-by-one", false}} {
		b.Run(mode.name, func(b *testing.B) {
			const sinks, batch = 8, 16
			rt, _, apps, sks := batchSinks(b, sinks)
			var db deliveryBatch
			payload := make([]byte, 64)
			var seq uint64
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N / batch {
				for range batch {
					seq++
					if mode.batched {
						rt.deliverBatch(&db, sks[0].key, 1, seq, payload)
					} else {
						rt.deliver(sks[0].key, 1, seq, payload)
					}
				}
				db.flush()
				for _, a := range apps {
					for a.take(func(shm.RXEntry, []byte) {}) {
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(seq*sinks), "ns/delivery")
		})
	}
}

// TestBatchHolderDeliversOutsideTheBatch: the goroutine whose batch holds
// a client's ring (and its reclaim lock) may deliver to that client
// outside the batch too — a reliable stream's in-order delivery or a
// large message in the middle of a received batch. With the pool empty
// that must not wait for the lock it holds itself: the delivery is
// refused, and once the batch is flushed and the application frees its
// slots, deliveries go through again. The slots the application freed
// are taken straight off its RX-free ring by the batch.
func TestBatchHolderDeliversOutsideTheBatch(t *testing.T) {
	rt, cs, apps, sks := batchSinks(t, 1)
	c, app, sk := cs[0], apps[0], sks[0]
	var b deliveryBatch
	payload := make([]byte, 64)
	n := 0
	for ; n <= hostRXSlots; n++ {
		if !c.deliverHeld(&b, sk, 1, uint64(n+1), payload) {
			break
		}
	}
	if n != hostRXSlots || !c.recHeld {
		t.Fatalf("%d delivered into %d slots (reclaim lock held: %v)", n, hostRXSlots, c.recHeld)
	}
	done := make(chan [2]bool)
	go func() {
		var r [2]bool
		r[0] = c.deliver(sk, 2, 1, payload)                      // one slot
		r[1] = c.deliver(sk, 2, 2, make([]byte, 3*hostSlotSize)) // a run: there are runs free
		done <- r
	}()
	select {
	case r := <-done:
		if r[0] {
			t.Error("a one-slot delivery with every slot taken went through")
		}
		if !r[1] {
			t.Error("a run with runs free was refused")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a delivery outside the batch waits for the batch's reclaim lock")
	}
	// Same goroutine as the batch, too.
	if c.deliver(sk, 3, 1, payload) {
		t.Error("a one-slot delivery with every slot taken went through")
	}
	b.flush()
	taken := 0
	for { // a run too: take and free without reading
		k, _ := app.rx.Available()
		if k == 0 {
			break
		}
		e := shm.GetRX(app.rx.Entry(0))
		app.rx.Release(1)
		shm.PutID(app.free.Entry(0), e.Slot)
		app.free.Publish(1)
		taken++
	}
	if taken != hostRXSlots+1 {
		t.Fatalf("the application took %d, want %d", taken, hostRXSlots+1)
	}
	exhausted := c.rxSlots.Exhausted()
	for i := range 8 {
		if d, _ := rt.deliverBatch(&b, sk.key, 4, uint64(i+1), payload); d != 1 {
			t.Fatalf("after the application freed everything: delivery %d refused", i)
		}
	}
	b.flush()
	if c.malformed.Load() != 0 {
		t.Errorf("malformed %d", c.malformed.Load())
	}
	if c.rxSlots.Exhausted() != exhausted {
		t.Errorf("the batch went to the empty pool (%d times) instead of the slots the application freed", c.rxSlots.Exhausted()-exhausted)
	}
}

// TestBatchDeliveryToSleepingApplications: guestlib applications that
// consume as fast as they can, and so keep falling asleep on their RX
// eventfds, get every message a receiver delivers in batches of varying
// size (as a datapath's receive loop does), at most window per sink in
// flight as veloce-bench streams sends them: none is lost or stuck
// (200,000 messages; 20,000 with -short).
func TestBatchDeliveryToSleepingApplications(t *testing.T) {
	d, sock := hostDaemon(t)
	const sinks, window = 8, 256
	total := uint64(200000)
	if testing.Short() {
		total = 20000
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var counts [sinks]atomic.Uint64
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for i := range sinks {
		s := openApp(t, sock)
		st, err := s.CreateStream(ctx, guestlib.StreamOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sk, err := st.CreateSink(ctx, 9, guestlib.SinkOptions{Queue: 8192})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				m, err := sk.Consume(ctx)
				if err != nil {
					return
				}
				m.Release()
				counts[i].Add(1)
			}
		}()
	}
	slowest := func() uint64 {
		m := ^uint64(0)
		for i := range counts {
			m = min(m, counts[i].Load())
		}
		return m
	}
	var b deliveryBatch
	payload := make([]byte, 64)
	rnd := uint64(1)
	for seq := uint64(1); seq <= total; {
		for seq-slowest() > window {
			if ctx.Err() != nil {
				t.Fatalf("stuck at %d: counts %v", seq, loads(counts[:]))
			}
			runtime.Gosched()
		}
		rnd = rnd*6364136223846793005 + 1442695040888963407
		for k := 1 + rnd>>60; k > 0 && seq <= total; k-- { // batches of 1 to 16
			d.rt.deliverLocalBatch(&b, 9, 1, seq, payload)
			seq++
		}
		b.flush()
	}
	for slowest() < total {
		if ctx.Err() != nil {
			t.Fatalf("stuck: counts %v of %d", loads(counts[:]), total)
		}
		time.Sleep(time.Millisecond)
	}
	var dropped uint64
	for _, st := range d.Streams() {
		for _, sk := range st.Sinks {
			dropped += sk.Dropped
		}
	}
	if dropped != 0 {
		t.Errorf("%d deliveries dropped", dropped)
	}
}

func loads(c []atomic.Uint64) []uint64 {
	out := make([]uint64, len(c))
	for i := range c {
		out[i] = c[i].Load()
	}
	return out
}

// TestPublishRoundThatFoundNothingLooksAgain: a goroutine queues a
// message while another holds the publishing lock in a round that found
// ready empty (its head was still being written, or another round took
// it). The queuing goroutine cannot take the lock and leaves the message
// to the holder, so the holder must look again: the message is on the
// RX ring when both are done, with no further delivery to push it out.
// Without pubAgain the holder stopped on its empty round and the message
// waited on ready for the next delivery.
func TestPublishRoundThatFoundNothingLooksAgain(t *testing.T) {
	_, cs, apps, sks := batchSinks(t, 1)
	c := cs[0]
	rounds := 0
	c.testPublished = func() {
		rounds++
		if rounds > 1 {
			return
		}
		done := make(chan bool)
		go func() { done <- c.put(sks[0].ID, 3, 7, []byte("queued meanwhile")) }()
		if !<-done {
			t.Error("put refused")
		}
	}
	c.publish() // nothing ready: this round finds nothing
	if rounds != 2 {
		t.Errorf("%d publishing rounds, want 2 (the empty one, and the one for the message queued meanwhile)", rounds)
	}
	got := 0
	for apps[0].take(func(e shm.RXEntry, data []byte) {
		if e.Seq != 7 || e.Source != 3 || string(data) != "queued meanwhile" {
			t.Errorf("delivered seq %d source %d %q", e.Seq, e.Source, data)
		}
		got++
	}) {
	}
	if got != 1 {
		t.Fatalf("%d messages on the RX ring after both publishers returned, want 1 (the message waits on ready: %d)", got, c.ready.Len())
	}
}
