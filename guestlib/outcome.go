package guestlib

import (
	"sync"

	"github.com/veloce-io/veloce/internal/guestproto"
)

// OutcomeWindow is how many of a source's latest emits Outcome answers
// for. The daemon reports only refusals; a source remembers those of its
// last OutcomeWindow tokens in a fixed ring (allocated at the first
// refusal, 16 bytes a token), so memory stays bounded however many
// messages are refused, and a token older than that reports
// ErrOutcomeUnknown rather than a success it cannot vouch for.
const OutcomeWindow = 1 << 12

// outcomes holds a source's refusals, by token modulo OutcomeWindow.
type outcomes struct {
	mu sync.Mutex
	// ring is nil until the first refusal.
	ring []refusal // +checklocks:mu
}

type refusal struct {
	token  uint64 // 0: none
	status guestproto.Status
}

// inWindow reports whether token t is one of the source's last
// OutcomeWindow tokens.
func (so *Source) inWindow(t uint64) bool {
	last := so.token.Load()
	return t != 0 && t <= last && last-t < OutcomeWindow
}

// refused records the daemon's refusal of source's emit token. A refusal
// for a token already out of the window is dropped: its slot may hold a
// newer token's refusal.
func (s *Session) refused(source uint32, token uint64, st guestproto.Status) {
	s.mu.Lock()
	so := s.sources[source]
	s.mu.Unlock()
	if so == nil {
		return
	}
	o := &so.outcomes
	o.mu.Lock()
	if so.inWindow(token) {
		if o.ring == nil {
			o.ring = make([]refusal, OutcomeWindow)
		}
		o.ring[token%OutcomeWindow] = refusal{token, st}
	}
	o.mu.Unlock()
}

// Outcome reports what the daemon did with an emitted message: nil when
// it accepted it (or has not refused it yet: the daemon reports only
// refusals, asynchronously), else why not (ErrTooLarge, ErrNotFound,
// ErrNoSession, ErrNoBuffers...). It answers for the source's last
// OutcomeWindow tokens; for an older token, or one the source never
// handed out, it returns ErrOutcomeUnknown. It does not allocate.
func (so *Source) Outcome(t Token) error {
	o := &so.outcomes
	o.mu.Lock()
	if o.ring != nil && t != 0 {
		if r := o.ring[uint64(t)%OutcomeWindow]; r.token == uint64(t) {
			o.mu.Unlock()
			return statusErr(r.status)
		}
	}
	// Checked after the ring, under its lock: a slot holds another token
	// only once t left the window, or if t was never refused.
	known := so.inWindow(uint64(t))
	o.mu.Unlock()
	if !known {
		return ErrOutcomeUnknown
	}
	return nil
}
