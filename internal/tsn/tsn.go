// Package tsn holds IEEE 802.1Qbv gate schedules: their text form, its
// parser, and the window arithmetic a transmission scheduler needs (which
// gates are open at an instant, and when a closed gate opens next).
//
// A schedule has the parameters of Linux's taprio qdisc: a base time, a
// cycle time, and entries of a gate mask and an interval. Gate i (bit i of
// the mask) is traffic class i's. The schedule starts at the base time and
// repeats every cycle; before the base time it is not in force and every
// gate is open (802.1Qbv's default operation). When the cycle is longer than
// the entries' intervals together, the last entry's gates stay as they are
// until the cycle ends, as in 802.1Qbv.
//
// The text form, one string, items separated by commas:
//
//	base=TIME,cycle=DURATION,S MASK INTERVAL,S MASK INTERVAL,...
//
// TIME is integer nanoseconds since the Unix epoch (taprio's base-time) or
// an RFC 3339 time; it defaults to 0, the epoch, which puts every cycle on
// a multiple of the cycle time. DURATION and INTERVAL are integer
// nanoseconds (taprio's unit) or Go durations ("300us", "1.5ms"); cycle
// defaults to the sum of the intervals. MASK is hexadecimal (taprio's
// "S 01 300000" is "S 01 300us" here). Only the S (set gates) command is
// taken: taprio's H and R (frame preemption) have no meaning for datagrams
// a host sends whole.
//
// Parsing copies nothing of the input into the Schedule and bounds
// everything (MaxEntries, MinInterval, MaxCycle), so a hostile string gets
// an error, never a schedule the scheduler cannot walk cheaply. At and
// NextOpen take no lock and do not allocate; a Schedule is immutable once
// parsed.
package tsn

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Limits on a schedule.
const (
	// MaxEntries bounds the entries of one schedule (taprio has no fixed
	// limit; 64 covers every schedule the standard's examples use).
	MaxEntries = 64
	// MinInterval is the shortest interval: a software scheduler cannot
	// open a gate for less.
	MinInterval = time.Microsecond
	// MaxCycle is the longest cycle.
	MaxCycle = 10 * time.Second
	// maxText bounds the input string.
	maxText = 4096
)

// ErrSyntax is returned (wrapped, with what was wrong) for a schedule
// string that does not parse or breaks a limit.
var ErrSyntax = errors.New("bad gate schedule")

// Entry is one step of the cycle: the gates open during Interval.
type Entry struct {
	Gates    uint8
	Interval time.Duration
}

// Schedule is a parsed gate schedule. Build one with Parse or New.
type Schedule struct {
	base    int64 // unix ns
	cycle   int64 // ns
	entries []Entry
	// ends[i] is entry i's end, in ns from the cycle's start; the last is
	// cycle (the last entry extends to the end of the cycle).
	ends []int64
	// union is the OR of every entry's gates.
	union uint8
}

// New checks and builds a schedule from its parts (cycle 0: the sum of
// the intervals). It returns ErrSyntax, wrapped, when a limit is broken.
func New(base time.Time, cycle time.Duration, entries []Entry) (*Schedule, error) {
	if len(entries) == 0 {
		return nil, fmt.Errorf("%w: no entries (give at least one \"S MASK INTERVAL\")", ErrSyntax)
	}
	if len(entries) > MaxEntries {
		return nil, fmt.Errorf("%w: %d entries, at most %d", ErrSyntax, len(entries), MaxEntries)
	}
	s := &Schedule{base: base.UnixNano(), entries: append([]Entry(nil), entries...), ends: make([]int64, len(entries))}
	var sum int64
	for i, e := range entries {
		if e.Interval < MinInterval || e.Interval > MaxCycle {
			return nil, fmt.Errorf("%w: entry %d: interval %v outside [%v, %v]", ErrSyntax, i+1, e.Interval, MinInterval, MaxCycle)
		}
		sum += int64(e.Interval)
		s.ends[i] = sum
		s.union |= e.Gates
	}
	if sum > int64(MaxCycle) {
		return nil, fmt.Errorf("%w: the intervals add up to %v, more than the longest cycle, %v", ErrSyntax, time.Duration(sum), MaxCycle)
	}
	switch {
	case cycle == 0:
		s.cycle = sum
	case cycle < 0 || cycle > MaxCycle:
		return nil, fmt.Errorf("%w: cycle %v outside (0, %v]", ErrSyntax, cycle, MaxCycle)
	case int64(cycle) < sum:
		return nil, fmt.Errorf("%w: cycle %v is shorter than the intervals together, %v", ErrSyntax, cycle, time.Duration(sum))
	default:
		s.cycle = int64(cycle)
	}
	s.ends[len(s.ends)-1] = s.cycle
	return s, nil
}

// Parse parses the text form (see the package doc). Errors wrap ErrSyntax
// and say which item was wrong.
func Parse(text string) (*Schedule, error) {
	if len(text) > maxText {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrSyntax, len(text), maxText)
	}
	var (
		base                time.Time = time.Unix(0, 0)
		cycle               time.Duration
		entries             []Entry
		haveBase, haveCycle bool
	)
	for i, item := range strings.Split(text, ",") {
		item = strings.TrimSpace(item)
		bad := func(format string, a ...any) error {
			return fmt.Errorf("%w: item %d (%q): %s", ErrSyntax, i+1, clip(item), fmt.Sprintf(format, a...))
		}
		switch {
		case item == "":
			return nil, bad("empty")
		case strings.HasPrefix(item, "base="):
			if haveBase {
				return nil, bad("base given twice")
			}
			t, err := parseTime(item[len("base="):])
			if err != nil {
				return nil, bad("%v", err)
			}
			base, haveBase = t, true
		case strings.HasPrefix(item, "cycle="):
			if haveCycle {
				return nil, bad("cycle given twice")
			}
			d, err := parseDuration(item[len("cycle="):])
			if err != nil {
				return nil, bad("%v", err)
			}
			if d <= 0 {
				return nil, bad("the cycle must be positive")
			}
			cycle, haveCycle = d, true
		default:
			f := strings.Fields(item)
			if len(f) != 3 {
				return nil, bad("want base=TIME, cycle=DURATION or \"S MASK INTERVAL\"")
			}
			if f[0] != "S" && f[0] != "s" {
				return nil, bad("command %q: only S (set gates) is supported", f[0])
			}
			m, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimPrefix(f[1], "0x"), "0X"), 16, 8)
			if err != nil {
				return nil, bad("gate mask %q: want hexadecimal 00 to ff", f[1])
			}
			d, err := parseDuration(f[2])
			if err != nil {
				return nil, bad("interval: %v", err)
			}
			if len(entries) == MaxEntries {
				return nil, bad("more than %d entries", MaxEntries)
			}
			entries = append(entries, Entry{Gates: uint8(m), Interval: d})
		}
	}
	return New(base, cycle, entries)
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// parseDuration takes integer nanoseconds or a Go duration.
func parseDuration(s string) (time.Duration, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Duration(n), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("duration %q: want nanoseconds or a duration such as 300us", clip(s))
	}
	return d, nil
}

// parseTime takes integer nanoseconds since the epoch or RFC 3339.
func parseTime(s string) (time.Time, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Unix(0, n), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("time %q: want nanoseconds since the epoch or RFC 3339", clip(s))
	}
	if y := t.Year(); y < 1970 || y > 2200 {
		return time.Time{}, fmt.Errorf("time %q: year outside 1970-2200", clip(s))
	}
	return t, nil
}

// String returns the schedule in its text form (Parse takes it back).
func (s *Schedule) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "base=%d,cycle=%v", s.base, time.Duration(s.cycle))
	for _, e := range s.entries {
		fmt.Fprintf(&b, ",S %02x %v", e.Gates, e.Interval)
	}
	return b.String()
}

// Base returns the base time.
func (s *Schedule) Base() time.Time { return time.Unix(0, s.base) }

// Cycle returns the cycle time.
func (s *Schedule) Cycle() time.Duration { return time.Duration(s.cycle) }

// Entries returns a copy of the entries.
func (s *Schedule) Entries() []Entry { return append([]Entry(nil), s.entries...) }

// Opens reports whether some entry opens every gate of mask at some time
// (a class whose gate never opens would never send).
func (s *Schedule) Opens(mask uint8) bool { return s.union&mask == mask }

// Forever is the end NextOpen and At return for a state that never ends.
const Forever = math.MaxInt64

// At returns the gates open at t (unix ns) and when that entry ends (unix
// ns). Before the base time every gate is open until the base time.
func (s *Schedule) At(t int64) (gates uint8, end int64) {
	if t < s.base {
		return 0xff, s.base
	}
	off := (t - s.base) % s.cycle
	start := t - off
	for i, e := range s.ends {
		if off < e {
			return s.entries[i].Gates, start + e
		}
	}
	return s.entries[len(s.entries)-1].Gates, start + s.cycle // not reached: the last end is the cycle
}

// NextOpen returns the window of the first time at or after t (unix ns)
// at which some gate of mask is open: its start (t itself when a gate is
// open at t) and its end, when every gate of mask is closed again (Forever
// when that never happens). ok is false when no entry opens a gate of
// mask. It walks at most two cycles' entries and does not allocate.
func (s *Schedule) NextOpen(t int64, mask uint8) (start, end int64, ok bool) {
	if s.union&mask == 0 {
		if t < s.base {
			return t, s.base, true
		}
		return 0, 0, false
	}
	found := false
	if t < s.base {
		// Open until the base; the window runs on if the first entries
		// keep a gate of mask open.
		start, found = t, true
		t = s.base
	}
	off := (t - s.base) % s.cycle
	cycleStart := t - off
	i := 0
	for off >= s.ends[i] {
		i++
	}
	// Find the opening (if start is not set yet), then the closing.
	n := len(s.entries)
	for k := 0; k < 2*n+1; k++ {
		j := (i + k) % n
		if k > 0 && j == 0 {
			cycleStart += s.cycle
		}
		entryStart := cycleStart
		if j > 0 {
			entryStart += s.ends[j-1]
		}
		open := s.entries[j].Gates&mask != 0
		switch {
		case !found && open:
			start, found = max(entryStart, t), true
		case found && !open:
			return start, entryStart, true
		}
	}
	return start, Forever, true // every entry opens a gate of mask
}
