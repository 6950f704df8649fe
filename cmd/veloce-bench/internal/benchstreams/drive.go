package benchstreams

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
)

// pingPong runs warmup unmeasured, then up to count measured round trips
// (fewer when maxTime runs out): ping sends a message, pong waits for the
// answer. A watchdog re-pings when no answer came for a second (a lost
// datagram); that round is counted as lost, not measured.
func pingPong(ctx context.Context, warmup, count int, maxTime time.Duration, ping, pong func() error, onMeasure func(start bool)) (Latency, error) {
	var rounds atomic.Uint64
	var repinged atomic.Bool
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		last, since := rounds.Load(), time.Now()
		for {
			select {
			case <-wctx.Done():
				return
			case now := <-t.C:
				if r := rounds.Load(); r != last {
					last, since = r, now
				} else if now.Sub(since) >= time.Second {
					repinged.Store(true)
					ping()
					since = now
				}
			}
		}
	}()
	for i := 0; i < warmup; i++ {
		if err := ping(); err != nil {
			return Latency{}, err
		}
		if err := pong(); err != nil {
			return Latency{}, err
		}
		rounds.Add(1)
	}
	rtts := make([]time.Duration, 0, count)
	lost := 0
	if onMeasure != nil {
		onMeasure(true)
	}
	end := time.Now().Add(maxTime)
	for i := 0; i < count; i++ {
		t0 := time.Now()
		if t0.After(end) {
			break
		}
		if err := ping(); err != nil {
			return Latency{}, err
		}
		if err := pong(); err != nil {
			return Latency{}, err
		}
		rtt := time.Since(t0)
		rounds.Add(1)
		if repinged.Swap(false) {
			lost++
			continue
		}
		rtts = append(rtts, rtt)
	}
	if onMeasure != nil {
		onMeasure(false)
	}
	if ctx.Err() != nil {
		return Latency{}, ctx.Err()
	}
	l := Summarize(rtts)
	l.Lost = lost
	return l, nil
}

// Throughput is one one-way throughput measurement.
type Throughput struct {
	// Mmsgs is the rate at which each sink received messages over the
	// measured window, in millions per second (receiver-counted).
	Mmsgs float64 `json:"mmsgs"`
	// DeliveriesMmsgs is the rate summed over all sinks.
	DeliveriesMmsgs float64 `json:"deliveries_mmsgs"`
	// Sent is how many messages the source sent in all (warm-up
	// included); Delivered how many deliveries the sinks counted;
	// Lost = Sent*sinks - Delivered after the drain.
	Sent      uint64 `json:"sent"`
	Delivered uint64 `json:"delivered"`
	Lost      uint64 `json:"lost"`
	// Stalls counts the times the window stayed full for 50 ms and the
	// missing messages were written off as lost.
	Stalls int `json:"stalls"`
	// WindowSeconds is the length of the measured window.
	WindowSeconds float64 `json:"window_seconds"`
}

// throughput sends as fast as send allows, with at most window messages
// per sink in flight (sent but not yet counted by that sink in sc: the
// slowest sink holds the sender back), for warm + dur; the rate is what
// the sinks counted during dur, divided by their number. A sink that
// stays window behind for 50 ms (it lost messages) has what it misses
// written off, counted as a stall.
func throughput(ctx context.Context, warm, dur time.Duration, window int, send func() error, sc *sinkCounts) (Throughput, error) {
	k := uint64(len(sc.c))
	sc.rebase()
	recv := sc.total
	var sent uint64
	var writtenOff uint64 // of the slowest sink
	var th Throughput
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	start := time.Now()
	measureFrom, measureTo := start.Add(warm), start.Add(warm+dur)
	var t0 time.Time
	var r0 uint64
	inWindow := false
	w := uint64(window)
	for i := 0; ; i++ {
		if i&63 == 0 {
			now := time.Now()
			if !inWindow && now.After(measureFrom) {
				t0, r0, inWindow = now, recv(), true
			}
			if now.After(measureTo) {
				r1 := recv()
				el := now.Sub(t0)
				th.DeliveriesMmsgs = benchutil.Round4(Rate(r1-r0, el) / 1e6)
				th.Mmsgs = benchutil.Round4(Rate(r1-r0, el) / 1e6 / float64(k))
				th.WindowSeconds = benchutil.Round2(el.Seconds())
				break
			}
			if ctx.Err() != nil {
				return th, ctx.Err()
			}
		}
		for sent-writtenOff >= sc.slowest()+w {
			before := sc.slowest()
			if sc.waitSlowest(sent-writtenOff-w/2, timer, 50*time.Millisecond) || sc.slowest() != before {
				continue
			}
			th.Stalls++
			writtenOff = sent - sc.slowest()
		}
		if err := send(); err != nil {
			return th, err
		}
		sent++
	}
	// Drain: wait until nothing more arrives for 100 ms (or all did).
	for last := recv(); recv() < k*sent; {
		time.Sleep(100 * time.Millisecond)
		if r := recv(); r == last {
			break
		} else {
			last = r
		}
	}
	th.Sent, th.Delivered = sent, recv()
	if th.Delivered < k*sent {
		th.Lost = k*sent - th.Delivered
	}
	return th, nil
}
