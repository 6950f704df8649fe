package tsn

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseTaprioExample(t *testing.T) {
	// taprio(8)'s example, in this package's syntax: three classes, a
	// 1 ms cycle.
	s, err := Parse("base=1000000000,S 01 300us,S 02 300000,S 04 400us")
	if err != nil {
		t.Fatal(err)
	}
	if s.Cycle() != time.Millisecond || !s.Base().Equal(time.Unix(1, 0)) || len(s.Entries()) != 3 {
		t.Fatalf("got %v", s)
	}
	if got, want := s.String(), "base=1000000000,cycle=1ms,S 01 300µs,S 02 300µs,S 04 400µs"; got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
	if !s.Opens(0x07) || s.Opens(0x08) {
		t.Fatal("Opens is wrong")
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "empty"},
		{"base=0", "no entries"},
		{"S 01 300us,,S 02 1ms", "empty"},
		{"H 01 300us", "only S"},
		{"S 1ff 300us", "gate mask"},
		{"S zz 300us", "gate mask"},
		{"S 01 300parsecs", "interval"},
		{"S 01 100ns", "outside"},
		{"S 01", "want base="},
		{"cycle=100us,S 01 300us", "shorter"},
		{"cycle=-1s,S 01 300us", "positive"},
		{"cycle=11s,S 01 300us", "outside"},
		{"base=yesterday,S 01 1ms", "RFC 3339"},
		{"base=0,base=0,S 01 1ms", "twice"},
		{"cycle=1ms,cycle=1ms,S 01 1ms", "twice"},
		{strings.Repeat("S 01 1us,", MaxEntries) + "S 01 1us", "more than"},
		{strings.Repeat("x", maxText+1), "at most"},
		{"S 01 9s,S 02 9s", "longest cycle"},
	} {
		_, err := Parse(tc.in)
		if !errors.Is(err, ErrSyntax) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%.40q) = %v, want ErrSyntax saying %q", tc.in, err, tc.want)
		}
	}
}

func TestParseForms(t *testing.T) {
	a, err := Parse("base=2026-12-02T20:00:00Z, cycle=2ms, S 0x01 300000, s 02 700us")
	if err != nil {
		t.Fatal(err)
	}
	if !a.Base().Equal(time.Date(2026, 12, 2, 20, 0, 0, 0, time.UTC)) || a.Cycle() != 2*time.Millisecond {
		t.Fatalf("got %v", a)
	}
	b, err := Parse(a.String())
	if err != nil || b.String() != a.String() {
		t.Fatalf("round trip: %v, %v", b, err)
	}
}

// bruteOpen finds the gates open at t by walking the schedule from its
// base, entry by entry: the definition, without At's modular arithmetic.
func bruteOpen(s *Schedule, t int64) uint8 {
	if t < s.base {
		return 0xff
	}
	pos := s.base
	for {
		var sum int64
		for i, e := range s.entries {
			d := int64(e.Interval)
			if i == len(s.entries)-1 {
				d = s.cycle - sum // the last entry runs to the cycle's end
			}
			if t < pos+d {
				return e.Gates
			}
			pos += d
			sum += d
		}
	}
}

// TestAtAndNextOpenAgreeWithTheDefinition checks At and NextOpen, step by
// step over a few cycles, against the schedule walked from its base.
func TestAtAndNextOpenAgreeWithTheDefinition(t *testing.T) {
	for _, text := range []string{
		"base=1000,S 01 3us,S 02 7us",
		"base=1000,cycle=15us,S 01 3us,S 00 2us,S 02 5us",
		"base=500,S 03 4us,S 02 4us,S 01 2us,S 01 1us",
		"base=0,S 01 5us",
	} {
		s, err := Parse(text)
		if err != nil {
			t.Fatal(err)
		}
		end := s.base + 4*s.cycle
		for now := s.base - 3000; now < end; now += 250 {
			g, until := s.At(now)
			if want := bruteOpen(s, now); g != want {
				t.Fatalf("%s: At(%d) gates %02x, want %02x", text, now, g, want)
			}
			if until <= now || bruteOpen(s, until-1) != g {
				t.Fatalf("%s: At(%d) ends at %d", text, now, until)
			}
			for _, mask := range []uint8{1, 2, 3, 4} {
				start, stop, ok := s.NextOpen(now, mask)
				if s.union&mask == 0 {
					if ok && now >= s.base {
						t.Fatalf("%s: NextOpen(%d, %02x) found a window in a schedule that never opens it", text, now, mask)
					}
					continue
				}
				if !ok || start < now {
					t.Fatalf("%s: NextOpen(%d, %02x) = %d, %d, %v", text, now, mask, start, stop, ok)
				}
				// Closed from now to start, open from start to stop,
				// closed at stop: checked every 50 ns.
				for x := now; x < start; x += 50 {
					if bruteOpen(s, x)&mask != 0 {
						t.Fatalf("%s: NextOpen(%d, %02x) = %d: open already at %d", text, now, mask, start, x)
					}
				}
				if stop == Forever {
					stop = start + 3*s.cycle
				} else if bruteOpen(s, stop)&mask != 0 {
					t.Fatalf("%s: NextOpen(%d, %02x) ends at %d, still open", text, now, mask, stop)
				}
				for x := start; x < stop; x += 50 {
					if bruteOpen(s, x)&mask == 0 {
						t.Fatalf("%s: NextOpen(%d, %02x) = [%d, %d): closed at %d", text, now, mask, start, stop, x)
					}
				}
			}
		}
	}
}

func TestWindowArithmeticDoesNotAllocate(t *testing.T) {
	s, err := Parse("base=0,S 01 300us,S 02 700us")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UnixNano()
	if n := testing.AllocsPerRun(1000, func() {
		s.At(now)
		s.NextOpen(now, 2)
		now += 12345
	}); n != 0 {
		t.Fatalf("%v allocations per call", n)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"base=0,S 01 300us,S 02 700us", "cycle=2ms,S 03 1ms", "base=2026-12-02T20:00:00Z,S ff 1us", "H 01 1", "S 01 1,S 02 2,S 04 3000"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		s, err := Parse(text)
		if err != nil {
			if !errors.Is(err, ErrSyntax) {
				t.Fatalf("error %v is not ErrSyntax", err)
			}
			return
		}
		again, err := Parse(s.String())
		if err != nil || again.String() != s.String() {
			t.Fatalf("round trip of %q: %v, %v", s, again, err)
		}
		now := s.base + s.cycle/3
		if g, end := s.At(now); end <= now || g != bruteOpen(s, now) {
			t.Fatalf("At(%d) = %02x, %d", now, g, end)
		}
		if start, end, ok := s.NextOpen(now, s.union); s.union != 0 && (!ok || start < now || end <= start) {
			t.Fatalf("NextOpen = %d, %d, %v", start, end, ok)
		}
	})
}
