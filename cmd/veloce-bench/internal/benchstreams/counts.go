package benchstreams

import (
	"sync/atomic"
	"time"
)

// sinkCounts counts what each receiver (sink) got since the last rebase
// and wakes a sender waiting for the slowest one to reach a target: the
// flow control of a throughput run, at most Window messages in flight per
// sink. Each counter has a cache line of its own, so the sinks' goroutines
// do not share one while counting.
type sinkCounts struct {
	c      []paddedCount
	target atomic.Uint64 // 0: nobody waits; else slowest must reach it
	wake   chan struct{}
}

type paddedCount struct {
	n, base atomic.Uint64
	_       [48]byte
}

func newSinkCounts(sinks int) *sinkCounts {
	return &sinkCounts{c: make([]paddedCount, sinks), wake: make(chan struct{}, 1)}
}

// add counts k messages at sink i and wakes the sender if the slowest
// sink reached its target.
func (s *sinkCounts) add(i int, k uint64) {
	c := &s.c[i]
	v := c.n.Add(k) - c.base.Load()
	if t := s.target.Load(); t != 0 && v >= t && s.slowest() >= t && s.target.CompareAndSwap(t, 0) {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// rebase makes every count start from 0 now.
func (s *sinkCounts) rebase() {
	for i := range s.c {
		s.c[i].base.Store(s.c[i].n.Load())
	}
}

// total is what every sink got since the rebase.
func (s *sinkCounts) total() uint64 {
	var t uint64
	for i := range s.c {
		t += s.c[i].n.Load() - s.c[i].base.Load()
	}
	return t
}

// slowest is the least any sink got since the rebase.
func (s *sinkCounts) slowest() uint64 {
	m := ^uint64(0)
	for i := range s.c {
		m = min(m, s.c[i].n.Load()-s.c[i].base.Load())
	}
	return m
}

// waitSlowest waits until every sink got at least t, for at most
// timeout (on timer, which it leaves stopped), and reports whether they
// did.
func (s *sinkCounts) waitSlowest(t uint64, timer *time.Timer, timeout time.Duration) bool {
	timer.Reset(timeout)
	defer timer.Stop()
	for s.slowest() < t {
		s.target.Store(t)
		if s.slowest() >= t {
			s.target.Store(0)
			return true
		}
		select {
		case <-s.wake:
		case <-timer.C:
			s.target.Store(0)
			return s.slowest() >= t
		}
	}
	return true
}
