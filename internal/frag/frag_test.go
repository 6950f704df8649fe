package frag

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

var peer = netip.MustParseAddrPort("10.0.0.1:7000")

func cfg() Config {
	return Config{FragSize: 100, MaxMessage: 1000, MaxTotal: 3000, Timeout: time.Second}
}

func split(msg []byte, size int) [][]byte {
	var out [][]byte
	for len(msg) > size {
		out = append(out, msg[:size])
		msg = msg[size:]
	}
	return append(out, msg)
}

func TestReassembleOutOfOrderWithDuplicates(t *testing.T) {
	r, err := New(cfg())
	if err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 99, 100, 101, 555, 1000} {
		msg := make([]byte, n)
		for i := range msg {
			msg[i] = byte(rnd.Uint32())
		}
		frags := split(msg, 100)
		order := rnd.Perm(len(frags))
		var got []byte
		for i, j := range order {
			out, err := r.Add(Key{peer, 1, uint64(n)}, uint16(j), uint16(len(frags)), frags[j], int64(i))
			if err != nil {
				t.Fatalf("n=%d frag %d: %v", n, j, err)
			}
			if out != nil {
				got = bytes.Clone(out)
			}
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("n=%d: reassembled %d bytes, not the message", n, len(got))
		}
		// A late duplicate of a completed message's fragment is dropped,
		// not taken for a new message.
		if _, err := r.Add(Key{peer, 1, uint64(n)}, uint16(order[0]), uint16(len(frags)), frags[order[0]], 9); err != ErrDuplicate {
			t.Fatalf("n=%d: late duplicate: %v", n, err)
		}
	}
	if s := r.Stats(); s.Complete != 6 || s.Duplicates != 6 || s.Pending != 0 || s.Lost+s.Overflow+s.Inconsistent != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestReassembleDropsAndCounts(t *testing.T) {
	r, _ := New(cfg())
	k := Key{peer, 1, 1}
	full := make([]byte, 100)
	// Inconsistent: short non-last fragment, another count, index past count.
	if _, err := r.Add(k, 0, 3, full[:50], 0); err != ErrInconsistent {
		t.Fatalf("short fragment: %v", err)
	}
	if _, err := r.Add(k, 0, 3, full, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Add(k, 1, 4, full, 0); err != ErrInconsistent {
		t.Fatalf("other count: %v", err)
	}
	if _, err := r.Add(k, 0, 3, full, 0); err != ErrDuplicate {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := r.Add(k, 0, 11, full, 0); err != ErrTooLarge {
		t.Fatalf("too large: %v", err)
	}
	// Lost: message 1 never completes; past the timeout it is dropped.
	if n := r.Expire(int64(2 * time.Second)); n != 1 {
		t.Fatalf("expired %d", n)
	}
	// Overflow: 3 buffers (MaxTotal/MaxMessage); a fourth message evicts the oldest.
	for s := uint64(10); s < 14; s++ {
		r.Add(Key{peer, 1, s}, 0, 2, full, int64(3*time.Second)+int64(s))
	}
	s := r.Stats()
	if s.Inconsistent != 2 || s.Duplicates != 1 || s.TooLarge != 1 || s.Lost != 1 || s.Overflow != 1 || s.Pending != 3 {
		t.Fatalf("stats %+v", s)
	}
	// The evicted one was seq 10: completing it starts over; 13 completes.
	if out, _ := r.Add(Key{peer, 1, 13}, 1, 2, full[:7], int64(3*time.Second)); len(out) != 107 {
		t.Fatalf("seq 13: %d bytes", len(out))
	}
}

func TestReassembleAllocatesNothing(t *testing.T) {
	r, _ := New(Config{FragSize: 1984, MaxMessage: 1 << 20, MaxTotal: 4 << 20, Timeout: time.Second})
	msg := make([]byte, 1<<20)
	frags := split(msg, 1984)
	seq := uint64(0)
	run := func() {
		seq++
		for i, f := range frags {
			r.Add(Key{peer, 1, seq}, uint16(i), uint16(len(frags)), f, int64(seq))
		}
	}
	run() // the first message allocates its buffer
	if a := testing.AllocsPerRun(20, run); a != 0 {
		t.Fatalf("%v allocations per 1 MiB message", a)
	}
}

// FuzzReassemble feeds fragments described by the input: each record is
// key seq (1 byte), index (2), count (2), payload length (2), time (1).
func FuzzReassemble(f *testing.F) {
	f.Add([]byte{1, 0, 0, 2, 0, 100, 0, 0, 1, 1, 0, 2, 0, 5, 0, 1})
	f.Add([]byte{1, 0, 0, 1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, _ := New(cfg())
		buf := make([]byte, 200)
		for len(data) >= 8 {
			seq := uint64(data[0] % 4)
			idx := binary.LittleEndian.Uint16(data[1:])
			cnt := binary.LittleEndian.Uint16(data[3:])
			n := int(binary.LittleEndian.Uint16(data[5:])) % len(buf)
			now := int64(data[7]) * int64(100*time.Millisecond)
			data = data[8:]
			out, err := r.Add(Key{peer, 1, seq}, idx, cnt, buf[:n], now)
			if out != nil && (err != nil || len(out) > 1000 || len(out) < (int(cnt)-1)*100) {
				t.Fatalf("message of %d bytes for count %d (err %v)", len(out), cnt, err)
			}
			if r.Pending() > 3 || r.Pending() < 0 {
				t.Fatalf("pending %d", r.Pending())
			}
		}
		r.Expire(1 << 62)
		if r.Pending() != 0 {
			t.Fatalf("pending %d after expiry", r.Pending())
		}
	})
}
