package wire

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// testKey is a fixed key for tests (32 distinct bytes).
var testKey = []byte("\x8f\x1e\x03\xa7\x5c\x92\x44\xd0\x6b\x17\xee\x39\xc5\x70\x2a\xb8" +
	"\x0d\x61\xf4\x9e\x33\xca\x58\x86\x1b\xe2\x47\x7d\xa0\x15\xbb\x69")

// sealed returns golden's data message sealed with key.
func sealed(t testing.TB, key []byte, counter uint64) []byte {
	t.Helper()
	b := make([]byte, 128)
	n := copy(b, mustUnhex(goldenHex))
	m, err := NewSealer(key, 0x0102030405060708).Seal(b, n, counter)
	if err != nil || m != n+AuthTrailerLen {
		t.Fatalf("Seal = %d, %v", m, err)
	}
	return b[:m]
}

func TestAuthRoundTrip(t *testing.T) {
	b := sealed(t, testKey, 99)
	if !IsAuthenticated(b) || IsAuthenticated(mustUnhex(goldenHex)) {
		t.Fatal("IsAuthenticated is wrong")
	}
	h, payload, tr, err := NewOpener(testKey).Open(b)
	if err != nil {
		t.Fatal(err)
	}
	want := goldenHeader
	want.Flags |= FlagAuthenticated
	if h != want || string(payload) != "hello" || tr != (Trailer{Boot: 0x0102030405060708, Counter: 99}) {
		t.Fatalf("Open = %+v %q %+v", h, payload, tr)
	}
}

// An authenticated datagram is taken only whole, with the right key; a
// receiver without a key rejects it, and one with a key rejects what has
// no trailer: both sides fail closed.
func TestAuthFailsClosed(t *testing.T) {
	good := sealed(t, testKey, 1)
	o := NewOpener(testKey)
	other := bytes.Clone(testKey)
	other[0] ^= 1
	for _, tc := range []struct {
		name string
		b    []byte
		o    *Opener
		want error
	}{
		{"wrong key", good, NewOpener(other), ErrBadTag},
		{"no trailer", mustUnhex(goldenHex), o, ErrNoAuth},
		{"flag cleared", patch(good, offFlags, byte(FlagRetransmit)), o, ErrNoAuth},
		{"trailer cut", good[:len(good)-1], o, ErrBadTag},
		{"short", good[:HeaderLen+AuthTrailerLen-1], o, ErrNoAuth},
		{"foreign", []byte("GET / HTTP/1.1\r\n\r\n"), o, ErrNotVeloce},
		{"counter changed", patch(good, len(good)-AuthTagLen-1, 0xff), o, ErrBadTag},
		{"boot changed", patch(good, len(good)-AuthTrailerLen, 0xff), o, ErrBadTag},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, _, err := tc.o.Open(tc.b); err != tc.want {
				t.Fatalf("Open = %v, want %v", err, tc.want)
			}
		})
	}
	// Every bit of header, payload and trailer is covered.
	for i := range len(good) * 8 {
		b := bytes.Clone(good)
		b[i/8] ^= 1 << (i % 8)
		if _, _, _, err := o.Open(b); err == nil {
			t.Fatalf("bit %d flipped: accepted", i)
		}
	}
	// A receiver without a key sees bytes after the payload.
	if _, _, err := Parse(good); err != ErrMalformed {
		t.Fatalf("Parse of a sealed datagram = %v, want ErrMalformed", err)
	}
	// A valid tag over a header Parse rejects is still rejected.
	bad := make([]byte, 128)
	n := copy(bad, patch(mustUnhex(goldenHex), offFragIndex, 9, 0))
	m, _ := NewSealer(testKey, 1).Seal(bad, n, 1)
	if _, _, _, err := o.Open(bad[:m]); err != ErrMalformed {
		t.Fatalf("Open of a sealed malformed header = %v", err)
	}
}

func TestSealValidation(t *testing.T) {
	s := NewSealer(testKey, 1)
	g := mustUnhex(goldenHex)
	if _, err := s.Seal(bytes.Clone(g), len(g), 1); err != ErrShortBuffer {
		t.Fatalf("no room: %v", err)
	}
	if _, err := s.Seal(make([]byte, 100), 10, 1); err != ErrTruncated {
		t.Fatalf("short datagram: %v", err)
	}
	if _, err := s.Seal(make([]byte, 100), HeaderLen, 1); err != ErrNotVeloce {
		t.Fatalf("zeros: %v", err)
	}
}

func TestReplayWindow(t *testing.T) {
	var w ReplayWindow
	base := uint64(1_700_000_000_000_000_000)
	step := func(c uint64, want bool) {
		t.Helper()
		if got := w.Admit(c); got != want {
			t.Fatalf("Admit(base+%d) = %v, want %v (top base+%d)", c-base, got, want, w.Top()-base)
		}
	}
	step(base+10, true)
	step(base+10, false) // duplicate
	step(base+12, true)
	step(base+11, true) // reordered, inside the window
	step(base+11, false)
	step(base+12, false)
	step(base+12+ReplayWindowSize, true)
	step(base+12, false) // exactly the window size below the top: out
	step(base+13, true)  // just inside, never seen
	step(base+13, false)
	step(base+12+ReplayWindowSize, false) // the top itself
	step(base+12+2*ReplayWindowSize-1, true)
	step(base+12+ReplayWindowSize, false) // still inside, admitted before
	step(base+14+ReplayWindowSize, true)  // inside, never seen
	step(base+5*ReplayWindowSize, true)   // a big jump clears everything
	step(base+5*ReplayWindowSize-1, true)
	step(base+5*ReplayWindowSize-ReplayWindowSize, false)
}

func TestParseKey(t *testing.T) {
	raw := testKey
	hexKey := []byte("8f1e03a75c9244d06b17ee39c5702ab80d61f49e33ca58861be2477da015bb69\n")
	for _, tc := range []struct {
		name string
		data []byte
		want []byte
		why  string // in the error
	}{
		{"raw 32 bytes", raw, raw, ""},
		{"raw 64 bytes", append(bytes.Clone(raw), raw...), append(bytes.Clone(raw), raw...), ""},
		{"hex with newline", hexKey, raw, ""},
		{"upper-case hex", []byte(strings.ToUpper(string(hexKey))), raw, ""},
		{"short raw", raw[:31], nil, "31 bytes"},
		{"short hex", hexKey[:62], nil, "31 bytes"},
		{"empty", nil, nil, "0 bytes"},
		{"zeros", make([]byte, 64), nil, "distinct"},
		{"passphrase", []byte("correct horse battery staple, correct horse\n"), nil, "text"},
		{"hex of zeros", []byte(strings.Repeat("00", 32)), nil, "distinct"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ParseKey(tc.data)
			if tc.why == "" {
				if err != nil || !bytes.Equal(k, tc.want) {
					t.Fatalf("ParseKey = %x, %v", k, err)
				}
				return
			}
			var ke *KeyError
			if !errors.As(err, &ke) || !errors.Is(err, ErrWeakKey) || !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("ParseKey = %v, want a KeyError about %q", err, tc.why)
			}
		})
	}
}
