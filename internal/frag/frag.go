// Package frag reassembles messages sent as fragments (the wire header's
// FragIndex and FragCount), bounded in memory and time.
//
// A message of FragCount fragments is keyed by (peer, source, seq); every
// fragment but the last carries exactly Config.FragSize bytes of the
// message (the sender's fragment size, the same on every daemon), the
// last one the rest. Fragments may arrive in any order and more than
// once. A Reassembler is owned by one goroutine (a datapath's receiver);
// its counters may be read from any.
//
// Bounds: a message larger than MaxMessage is refused (counted TooLarge);
// at most MaxTotal bytes of buffers exist (MaxTotal/MaxMessage messages in
// progress, at least one); a new message when all are in use evicts the
// oldest (counted Overflow); a message not complete within Timeout is
// dropped (counted Lost: a fragment was lost). Fragments that disagree
// with their message (another count, a wrong size, an index out of range)
// are dropped and counted Inconsistent. Buffers are allocated on first
// use and then reused: the steady state allocates nothing.
package frag

import (
	"errors"
	"net/netip"
	"sync/atomic"
	"time"
)

// Config bounds a Reassembler.
type Config struct {
	// FragSize is the payload of every fragment but a message's last.
	FragSize int
	// MaxMessage is the largest message reassembled.
	MaxMessage int
	// MaxTotal bounds the buffers of messages in progress (bytes).
	MaxTotal int
	// Timeout is how long a message may take to complete.
	Timeout time.Duration
}

// Key names a message.
type Key struct {
	Peer   netip.AddrPort
	Source uint64
	Seq    uint64
}

// Stats are a Reassembler's counters.
type Stats struct {
	Complete     uint64 `json:"complete"`     // messages reassembled
	Lost         uint64 `json:"lost"`         // messages dropped incomplete at their timeout
	Overflow     uint64 `json:"overflow"`     // messages evicted incomplete for room
	Inconsistent uint64 `json:"inconsistent"` // fragments that disagree with their message
	TooLarge     uint64 `json:"too_large"`    // fragments of messages over MaxMessage
	Duplicates   uint64 `json:"duplicates"`   // fragments received twice
	Pending      int    `json:"pending"`      // messages in progress (owner's view)
}

// Add's outcomes besides a complete message.
var (
	ErrTooLarge     = errors.New("frag: message over the limit")
	ErrInconsistent = errors.New("frag: fragment inconsistent with its message")
	ErrDuplicate    = errors.New("frag: duplicate fragment")
)

// recentKeys is how many completed messages a Reassembler remembers.
const recentKeys = 64

type entry struct {
	key   Key
	count uint16
	have  int   // fragments received
	size  int   // message length, known once the last fragment came; -1 before
	start int64 // unix ns of the first fragment
	buf   []byte
	bits  []uint64
	used  bool
}

// Reassembler collects fragments into messages.
type Reassembler struct {
	cfg      Config
	maxFrags int
	entries  []*entry // allocated lazily, up to cap
	index    map[Key]*entry
	pending  atomic.Int64
	// done is the entry whose message the last Add returned: freed at the
	// next call.
	done *entry
	// recent are the last messages completed (a ring): a late duplicate
	// of one of their fragments is dropped, not taken for a new message
	// that would never complete (and be counted lost).
	recent     [recentKeys]Key
	recentNext int

	complete, lost, overflow, inconsistent, tooLarge, duplicates atomic.Uint64
}

// New returns a Reassembler for c.
func New(c Config) (*Reassembler, error) {
	if c.FragSize <= 0 || c.MaxMessage <= 0 || c.Timeout <= 0 {
		return nil, errors.New("frag: FragSize, MaxMessage and Timeout must be positive")
	}
	maxFrags := (c.MaxMessage + c.FragSize - 1) / c.FragSize
	if maxFrags > 1<<16-1 {
		return nil, errors.New("frag: MaxMessage needs more than 65535 fragments")
	}
	n := max(1, c.MaxTotal/c.MaxMessage)
	return &Reassembler{cfg: c, maxFrags: maxFrags, entries: make([]*entry, 0, n), index: make(map[Key]*entry, n)}, nil
}

// Fragments returns how many fragments a message of n bytes takes.
func (r *Reassembler) Fragments(n int) int { return max(1, (n+r.cfg.FragSize-1)/r.cfg.FragSize) }

// Add takes fragment index of count of message k, received at now (unix
// ns). When it completes the message, Add returns it; the slice is valid
// until the next call of Add or Expire. Otherwise it returns nil and nil,
// or an error for a fragment it dropped (counted).
func (r *Reassembler) Add(k Key, index, count uint16, payload []byte, now int64) ([]byte, error) {
	r.release()
	if count == 0 || index >= count {
		r.inconsistent.Add(1)
		return nil, ErrInconsistent
	}
	if int(count) > r.maxFrags || (int(count)-1)*r.cfg.FragSize+len(payload) > r.cfg.MaxMessage && index == count-1 {
		r.tooLarge.Add(1)
		return nil, ErrTooLarge
	}
	last := index == count-1
	if (!last && len(payload) != r.cfg.FragSize) || (last && (len(payload) > r.cfg.FragSize || (count > 1 && len(payload) == 0))) {
		r.inconsistent.Add(1)
		return nil, ErrInconsistent
	}
	e := r.index[k]
	if e == nil {
		for i := range r.recent {
			if r.recent[i] == k {
				r.duplicates.Add(1)
				return nil, ErrDuplicate
			}
		}
		r.expire(now)
		e = r.take(now)
		e.key, e.count, e.have, e.size, e.start, e.used = k, count, 0, -1, now, true
		clear(e.bits[:(int(count)+63)/64])
		r.index[k] = e
		r.pending.Add(1)
	} else if e.count != count {
		r.inconsistent.Add(1)
		return nil, ErrInconsistent
	}
	w, b := index/64, uint64(1)<<(index%64)
	if e.bits[w]&b != 0 {
		r.duplicates.Add(1)
		return nil, ErrDuplicate
	}
	e.bits[w] |= b
	off := int(index) * r.cfg.FragSize
	copy(e.buf[off:], payload)
	if last {
		e.size = off + len(payload)
	}
	e.have++
	if e.have < int(count) {
		return nil, nil
	}
	r.complete.Add(1)
	r.recent[r.recentNext] = k
	r.recentNext = (r.recentNext + 1) % recentKeys
	r.pending.Add(-1) // done: no longer in progress, though its buffer is lent out
	r.done = e
	return e.buf[:e.size:e.size], nil
}

// take returns a free entry, making one or evicting the oldest.
func (r *Reassembler) take(now int64) *entry {
	for _, e := range r.entries {
		if !e.used {
			return e
		}
	}
	if len(r.entries) < cap(r.entries) {
		e := &entry{buf: make([]byte, r.maxFrags*r.cfg.FragSize), bits: make([]uint64, (r.maxFrags+63)/64)}
		r.entries = append(r.entries, e)
		return e
	}
	old := r.entries[0]
	for _, e := range r.entries[1:] {
		if e.start < old.start {
			old = e
		}
	}
	r.overflow.Add(1)
	r.free(old)
	return old
}

func (r *Reassembler) free(e *entry) {
	delete(r.index, e.key)
	e.used = false
	r.pending.Add(-1)
}

func (r *Reassembler) release() {
	if e := r.done; e != nil {
		delete(r.index, e.key)
		e.used = false
		r.done = nil
	}
}

// Expire drops the messages older than the timeout at now (counted
// Lost) and returns how many.
func (r *Reassembler) Expire(now int64) int {
	r.release()
	return r.expire(now)
}

func (r *Reassembler) expire(now int64) int {
	n := 0
	for _, e := range r.entries {
		if e.used && now-e.start > int64(r.cfg.Timeout) {
			r.free(e)
			r.lost.Add(1)
			n++
		}
	}
	return n
}

// Pending returns the messages in progress.
func (r *Reassembler) Pending() int { return int(r.pending.Load()) }

// Stats returns the counters; safe from any goroutine.
func (r *Reassembler) Stats() Stats {
	return Stats{Complete: r.complete.Load(), Lost: r.lost.Load(), Overflow: r.overflow.Load(), Inconsistent: r.inconsistent.Load(),
		TooLarge: r.tooLarge.Load(), Duplicates: r.duplicates.Load(), Pending: r.Pending()}
}

// Add merges s into t.
func (t *Stats) Add(s Stats) {
	t.Complete += s.Complete
	t.Lost += s.Lost
	t.Overflow += s.Overflow
	t.Inconsistent += s.Inconsistent
	t.TooLarge += s.TooLarge
	t.Duplicates += s.Duplicates
	t.Pending += s.Pending
}
