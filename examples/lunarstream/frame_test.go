package lunarstream

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

// Any range of a body is the same bytes as that range of the whole body,
// whatever its alignment.
func TestFillRangesMatchTheWholeBody(t *testing.T) {
	whole := make([]byte, 100)
	Fill(whole, 42, 0)
	for off := 0; off < len(whole); off++ {
		for n := 0; off+n <= len(whole); n += 3 {
			got := make([]byte, n)
			Fill(got, 42, off)
			if !bytes.Equal(got, whole[off:off+n]) {
				t.Fatalf("Fill(%d bytes at %d) = %x, want %x", n, off, got, whole[off:off+n])
			}
		}
	}
	other := make([]byte, 100)
	Fill(other, 43, 0)
	if bytes.Equal(whole, other) {
		t.Fatal("frames 42 and 43 have the same body")
	}
}

func TestHeaderRoundTripAndHostileHeaders(t *testing.T) {
	h := Header{Frame: 7, SendTime: 123456789, Length: 1000, Offset: 900, Checksum: 0xdeadbeef}
	var b [HeaderLen]byte
	h.Put(b[:])
	got, err := Parse(b[:], 100)
	if err != nil || got != h {
		t.Fatalf("Parse = %+v, %v; want %+v", got, err, h)
	}
	for _, c := range []struct {
		name string
		edit func([]byte) []byte
		part int
		want error
	}{
		{"short", func(b []byte) []byte { return b[:HeaderLen-1] }, 0, ErrShort},
		{"magic", func(b []byte) []byte { b[0] ^= 1; return b }, 0, ErrMagic},
		{"too large", func(b []byte) []byte { b[20] = 0xff; return b }, 0, ErrTooLarge},
		{"part past the end", func(b []byte) []byte { return b }, 101, ErrOffset},
		{"offset past the end", func(b []byte) []byte { b[24] = 0xff; return b }, 0, ErrOffset},
	} {
		bb := b
		if _, err := Parse(c.edit(bb[:]), c.part); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

// parts splits frame f of size bytes into messages of at most msgSize.
func parts(f uint64, size, msgSize int, sent time.Time) [][]byte {
	body := make([]byte, size)
	Fill(body, f, 0)
	h := Header{Frame: f, SendTime: sent.UnixNano(), Length: uint32(size), Checksum: Checksum(body)}
	var out [][]byte
	for off := 0; ; {
		n := min(msgSize-HeaderLen, size-off)
		m := make([]byte, HeaderLen+n)
		h.Offset = uint32(off)
		h.Put(m)
		copy(m[HeaderLen:], body[off:off+n])
		out = append(out, m)
		if off += n; off >= size {
			return out
		}
	}
}

// The receiver's account of each way a frame can go wrong: every frame
// ends up verified, corrupt or lost, and hostile messages are counted,
// never trusted.
func TestReceiverAccounts(t *testing.T) {
	const size, msg = 5000, 1436
	now := time.Now()
	r := NewReceiver(6, msg)
	feed := func(ms [][]byte) {
		for _, m := range ms {
			r.Accept(m, now.Add(time.Millisecond))
		}
	}
	feed(parts(0, size, msg, now)) // verified
	p := parts(1, size, msg, now)
	p[2][HeaderLen+10] ^= 0x40 // one byte flipped
	feed(p)
	p = parts(2, size, msg, now) // a middle part missing: the rest is out of place
	feed(append(p[:1], p[2:]...))
	p = parts(3, size, msg, now) // the last part missing, then frame 4 begins: 3 lost
	feed(p[:len(p)-1])
	feed(parts(4, size, msg, now))
	feed(parts(4, size, msg, now)[:1]) // a duplicate: stale
	if err := r.Accept([]byte("not a frame"), now); err == nil {
		t.Error("junk accepted")
	}
	if r.Done() {
		t.Fatal("done before frame 5")
	}
	p = parts(5, size, msg, now)
	p[len(p)-1][28] ^= 1 // the checksum changed in the last part's header only
	feed(p)
	if !r.Done() {
		t.Fatal("not done after frame 5")
	}
	s := r.Summary()
	want := Summary{Role: "consumer", FrameSize: size, Frames: 6, Verified: 2, Corrupt: 3, Lost: 1, Malformed: 1, Stale: 1,
		LatencyP50: 1000, LatencyP99: 1000, LatencyMax: 1000}
	s.FPS = 0 // both verified frames at the same instant
	if s != want {
		t.Fatalf("summary %+v\nwant    %+v", s, want)
	}
}

// A consumer verifies every byte of a frame without allocating.
func TestReceiverAllocatesNothingPerMessage(t *testing.T) {
	const size, msg, runs = 20000, 1436, 50
	var frames [][][]byte
	for f := range runs + 1 { // AllocsPerRun runs once more to warm up
		frames = append(frames, parts(uint64(f), size, msg, time.Now()))
	}
	r := NewReceiver(runs+1, msg)
	f := 0
	allocs := testing.AllocsPerRun(runs, func() {
		for _, m := range frames[f] {
			r.Accept(m, time.Time{})
		}
		f++
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per frame of %d messages", allocs, len(frames[0]))
	}
	if s := r.Summary(); s.Verified != runs+1 || s.Corrupt != 0 {
		t.Fatalf("%+v", s)
	}
}

func mustParse(m []byte) Header {
	h, err := Parse(m, len(m)-HeaderLen)
	if err != nil {
		panic(err)
	}
	return h
}

// FuzzAccept: whatever arrives, the receiver neither crashes nor counts a
// frame twice, and only a message that parses is a part.
func FuzzAccept(f *testing.F) {
	for _, m := range parts(0, 100, 64, time.Unix(0, 0)) {
		f.Add(m)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReceiver(0, 64)
		for i := 0; i < 3; i++ {
			err := r.Accept(b, time.Unix(1, 0))
			if _, perr := Parse(b, max(len(b)-HeaderLen, 0)); (err == nil) != (perr == nil) {
				t.Fatalf("Accept %v, Parse %v", err, perr)
			}
		}
		s := r.Summary()
		if s.Verified+s.Corrupt > s.Frames || s.Verified > 1 {
			t.Fatalf("%+v", s)
		}
	})
}

// FuzzConsumeStream: a hostile byte stream (a TCP peer) ends with an error
// or EOF, never a crash, and nothing unverified counts as verified.
func FuzzConsumeStream(f *testing.F) {
	var good bytes.Buffer
	e := &StreamEmitter{W: &good}
	body := make([]byte, 300)
	for fr := range uint64(2) {
		Fill(body, fr, 0)
		e.EmitFrame(context.Background(), Header{Frame: fr, Length: uint32(len(body)), Checksum: Checksum(body)}, body)
	}
	f.Add(good.Bytes())
	f.Add(good.Bytes()[:HeaderLen+10])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReceiver(0, 64)
		ConsumeStream(bytes.NewReader(b), r)
		s := r.Summary()
		if s.Verified > uint64(len(b)/HeaderLen) || s.Verified+s.Corrupt > s.Frames {
			t.Fatalf("%+v", s)
		}
	})
}

// A byte stream out of step (a header that does not parse, or a frame
// header with an offset) ends ConsumeStream with ErrStreamHeader.
func TestConsumeStreamRefusesABadHeader(t *testing.T) {
	var b [HeaderLen]byte
	(&Header{Frame: 0, Length: 10, Offset: 4}).Put(b[:])
	for _, in := range [][]byte{b[:], bytes.Repeat([]byte{0xff}, HeaderLen)} {
		r := NewReceiver(1, 64)
		if err := ConsumeStream(bytes.NewReader(in), r); !errors.Is(err, ErrStreamHeader) {
			t.Errorf("%x: %v", in, err)
		}
		if s := r.Summary(); s.Malformed != 1 || s.Verified != 0 {
			t.Errorf("%+v", s)
		}
	}
}
