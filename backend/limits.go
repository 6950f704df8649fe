package backend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/internal/guestproto"
)

// Limits bound what the applications of one VM port, or of one tenant's
// host applications, may hold and ask for. A request past a limit is
// refused with guestproto.StatusLimit (guestlib: ErrLimit, naming the
// limit), counted (PortInfo.LimitRefusals) and logged as a rate-limited
// warning. Zero fields take the defaults (DefaultLimits); a negative
// field means no limit.
type Limits struct {
	// MaxSessions bounds the open sessions; default 256.
	MaxSessions int
	// MaxStreams bounds the streams over all those sessions; default
	// 1024.
	MaxStreams int
	// MaxSources bounds the sources over all those sessions; default
	// 4096.
	MaxSources int
	// MaxSinks bounds the sinks over all those sessions; default 4096.
	MaxSinks int
	// ControlRate bounds control requests (but pings) per second, as a
	// token bucket refilled at this rate; default 1000.
	ControlRate int
	// ControlBurst is the bucket's size: how many requests may come at
	// once after a quiet spell; default ControlRate.
	ControlBurst int
}

// DefaultLimits are the limits a zero Limits takes.
var DefaultLimits = Limits{MaxSessions: 256, MaxStreams: 1024, MaxSources: 4096, MaxSinks: 4096, ControlRate: 1000}

// or returns l with its zero fields taken from d.
func (l Limits) or(d Limits) Limits {
	pick := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	pick(&l.MaxSessions, d.MaxSessions)
	pick(&l.MaxStreams, d.MaxStreams)
	pick(&l.MaxSources, d.MaxSources)
	pick(&l.MaxSinks, d.MaxSinks)
	pick(&l.ControlRate, d.ControlRate)
	pick(&l.ControlBurst, d.ControlBurst)
	return l
}

// withDefaults fills the zero fields of l from DefaultLimits.
func (l Limits) withDefaults() Limits {
	l = l.or(DefaultLimits)
	if l.ControlBurst == 0 {
		l.ControlBurst = l.ControlRate
	}
	return l
}

// limitKind indexes an account's counters and refusals.
type limitKind int

const (
	limitSessions limitKind = iota
	limitStreams
	limitSources
	limitSinks
	limitControlRate
	numLimits
)

var limitNames = [numLimits]string{guestproto.LimitSessions, guestproto.LimitStreams, guestproto.LimitSources, guestproto.LimitSinks, guestproto.LimitControlRate}

// LimitError is a request refused by a limit. Is matches ErrLimit.
type LimitError struct {
	// Limit names the limit (guestproto.LimitSessions...).
	Limit string
	// Max is the limit's value.
	Max int
	// Owner is what the limit applies to ("port vm0", "tenant uid:1000").
	Owner string
}

// ErrLimit: a request past one of the Limits (a LimitError).
var ErrLimit = errors.New("limit reached")

func (e *LimitError) Error() string {
	if e.Limit == guestproto.LimitControlRate {
		return fmt.Sprintf("%s: more than %d control requests per second: try again later", e.Owner, e.Max)
	}
	return fmt.Sprintf("%s: limit of %d %s reached", e.Owner, e.Max, e.Limit)
}

// Is makes errors.Is(err, ErrLimit) true.
func (e *LimitError) Is(target error) bool { return target == ErrLimit }

// account is what one port's, or one host tenant's, sessions hold,
// checked against its limits. Its counts change under Runtime.mu (every
// control operation takes it) and are read without it.
type account struct {
	owner  string // "port vm0", "tenant host"
	limits Limits // with defaults
	held   [numLimitsHeld]atomic.Int64
	// refused counts refusals by limit kind.
	refused [numLimits]atomic.Uint64
	rate    tokenBucket
	warn    *limitLog
}

// numLimitsHeld: sessions, streams, sources, sinks are held; the rate is
// not.
const numLimitsHeld = limitControlRate

func newAccount(owner string, l Limits, log *slog.Logger) *account {
	l = l.withDefaults()
	a := &account{owner: owner, limits: l, warn: newLimitLog(log)}
	a.rate.init(l.ControlRate, l.ControlBurst)
	return a
}

func (a *account) max(k limitKind) int {
	switch k {
	case limitSessions:
		return a.limits.MaxSessions
	case limitStreams:
		return a.limits.MaxStreams
	case limitSources:
		return a.limits.MaxSources
	case limitSinks:
		return a.limits.MaxSinks
	}
	return a.limits.ControlRate
}

// takeLocked reserves one of kind k, or returns the LimitError (counted
// and logged). The caller holds Runtime.mu. A nil account has no limits.
func (a *account) takeLocked(k limitKind) error {
	if a == nil {
		return nil
	}
	if m := a.max(k); m >= 0 && a.held[k].Load() >= int64(m) {
		return a.refuse(k)
	}
	a.held[k].Add(1)
	return nil
}

// release gives back n of kind k.
func (a *account) release(k limitKind, n int) {
	if a != nil && n != 0 {
		a.held[k].Add(-int64(n))
	}
}

// allowControl takes a control request's token at time now (unix ns), or
// returns the LimitError.
func (a *account) allowControl(now int64) error {
	if a == nil || a.limits.ControlRate < 0 || a.rate.take(now) {
		return nil
	}
	return a.refuse(limitControlRate)
}

func (a *account) refuse(k limitKind) error {
	a.refused[k].Add(1)
	err := &LimitError{Limit: limitNames[k], Max: a.max(k), Owner: a.owner}
	a.warn.warn("request refused: limit reached", "owner", a.owner, "limit", limitNames[k], "max", err.Max)
	return err
}

// refusals returns the refusals by limit name, only those above zero.
func (a *account) refusals() map[string]uint64 {
	out := map[string]uint64{}
	for k := range numLimits {
		if n := a.refused[k].Load(); n > 0 {
			out[limitNames[k]] = n
		}
	}
	return out
}

// tokenBucket admits rate events per second with bursts of burst. Its
// clock is the caller's (unix ns), so tests drive it without sleeping.
type tokenBucket struct {
	mu sync.Mutex
	// rate is in tokens per nanosecond.
	rate   float64 // +checklocks:mu
	burst  float64 // +checklocks:mu
	tokens float64 // +checklocks:mu
	// last is the time of the last take; 0: full.
	last int64 // +checklocks:mu
}

// init sets the bucket up, full, before it is shared.
//
// +checklocksignore: no other goroutine sees b yet
func (b *tokenBucket) init(rate, burst int) {
	b.rate, b.burst, b.tokens = float64(rate)/1e9, float64(max(burst, 1)), float64(max(burst, 1))
}

// take takes a token at now, or reports that none is left.
func (b *tokenBucket) take(now int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.last != 0 && now > b.last {
		b.tokens = min(b.burst, b.tokens+float64(now-b.last)*b.rate)
	}
	if b.last == 0 || now > b.last {
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// limitLog is a warning logger that writes at most limitLogBurst lines,
// then one per limitLogEvery, and says how many it suppressed in
// between: a guest hammering a limit cannot flood the daemon's log.
type limitLog struct {
	log        *slog.Logger
	bucket     tokenBucket
	suppressed atomic.Uint64
}

const (
	limitLogBurst = 5
	limitLogEvery = 10 * time.Second
)

func newLimitLog(log *slog.Logger) *limitLog {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &limitLog{log: log}
	l.bucket.init(1, limitLogBurst)
	l.bucket.rate = 1 / float64(limitLogEvery)
	return l
}

func (l *limitLog) warn(msg string, args ...any) {
	if !l.log.Enabled(context.Background(), slog.LevelWarn) {
		return
	}
	if !l.bucket.take(time.Now().UnixNano()) {
		l.suppressed.Add(1)
		return
	}
	if n := l.suppressed.Swap(0); n > 0 {
		args = append(args, "suppressed", n)
	}
	l.log.Warn(msg, args...)
}
