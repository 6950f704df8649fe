// Package ring is a bounded lock-free multi-producer multi-consumer queue
// of uint32 values (slot ids), after Dmitry Vyukov's bounded MPMC queue:
// each cell carries a sequence number that says whether it is free for the
// producer of a given position or full for its consumer, so producers and
// consumers claim positions with one compare-and-swap and never wait on a
// lock. Push and Pop do not allocate.
//
// The runtime moves slot ids through these queues: free slots, messages
// waiting for a port's poller, messages waiting for a plugin.
package ring

import (
	"errors"
	"runtime"
	"sync/atomic"
)

type cell struct {
	seq atomic.Uint64
	val uint32
}

// Queue is a bounded MPMC queue. The zero value is not usable; see New.
type Queue struct {
	_     [64]byte
	head  atomic.Uint64 // next position to pop
	_     [56]byte
	tail  atomic.Uint64 // next position to push
	_     [56]byte
	mask  uint64
	cells []cell
}

// New returns a queue holding up to size values; size must be a power of
// two, at least 2.
func New(size int) (*Queue, error) {
	if size < 2 || size&(size-1) != 0 {
		return nil, errors.New("ring: size must be a power of two >= 2")
	}
	q := &Queue{mask: uint64(size - 1), cells: make([]cell, size)}
	for i := range q.cells {
		q.cells[i].seq.Store(uint64(i))
	}
	return q, nil
}

// Cap returns the queue's capacity.
func (q *Queue) Cap() int { return len(q.cells) }

// Len returns the number of values in the queue (a snapshot).
func (q *Queue) Len() int {
	n := int64(q.tail.Load()) - int64(q.head.Load())
	if n < 0 {
		return 0
	}
	return int(n)
}

// Push adds v; it returns false when the queue is full.
func (q *Queue) Push(v uint32) bool {
	for {
		pos := q.tail.Load()
		c := &q.cells[pos&q.mask]
		seq := c.seq.Load()
		switch {
		case seq == pos:
			if q.tail.CompareAndSwap(pos, pos+1) {
				c.val = v
				c.seq.Store(pos + 1)
				return true
			}
		case seq < pos:
			return false // the cell still holds a value from a lap ago: full
		}
		// Another producer took this position; try the next.
	}
}

// PushWait adds v, waiting while Push reports the queue full. Use it on
// queues sized for every value that can be in them (the ids of a pool no
// larger than the queue), where a value must never be lost: there Push
// fails only while a consumer that claimed the cell a lap behind has not
// yet released it (it was preempted between its claim and its release),
// which lasts until that goroutine runs again.
func (q *Queue) PushWait(v uint32) {
	for i := 0; !q.Push(v); i++ {
		if i >= 64 {
			runtime.Gosched()
		}
	}
}

// Pop removes the oldest value; ok is false when the queue is empty.
func (q *Queue) Pop() (v uint32, ok bool) {
	for {
		pos := q.head.Load()
		c := &q.cells[pos&q.mask]
		seq := c.seq.Load()
		switch {
		case seq == pos+1:
			if q.head.CompareAndSwap(pos, pos+1) {
				v = c.val
				c.seq.Store(pos + q.mask + 1)
				return v, true
			}
		case seq < pos+1:
			return 0, false // not yet written: empty
		}
	}
}
