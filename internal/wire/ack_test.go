package wire

import (
	"bytes"
	"testing"
)

// goldenAckHex is an ack body: window 300, two blocks [2,5] and [9,9].
const goldenAckHex = "2c010000" + "0200" + "0000" + "02000000" + "05000000" + "09000000" + "09000000"

func TestAckLayoutMatchesDoc(t *testing.T) {
	a := Ack{Window: 300, N: 2, Blocks: [MaxAckBlocks]AckBlock{{2, 5}, {9, 9}}}
	b := make([]byte, MaxAckLen)
	n, err := a.Marshal(b)
	if err != nil || n != AckHeaderLen+2*AckBlockLen {
		t.Fatalf("Marshal = %d, %v", n, err)
	}
	if want := mustUnhex(goldenAckHex); !bytes.Equal(b[:n], want) {
		t.Fatalf("got %x\nwant %x", b[:n], want)
	}
	got, err := ParseAck(b[:n])
	if err != nil || got != a {
		t.Fatalf("ParseAck = %+v, %v", got, err)
	}
}

func TestParseAckRejects(t *testing.T) {
	g := mustUnhex(goldenAckHex)
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"short fixed part", g[:AckHeaderLen-1], ErrTruncated},
		{"short blocks", g[:len(g)-1], ErrTruncated},
		{"trailing bytes", append(bytes.Clone(g), 0), ErrMalformed},
		{"too many blocks", patch(g, 4, MaxAckBlocks+1, 0), ErrMalformed},
		{"reserved set", patch(g, 6, 1), ErrMalformed},
		{"block covers seq+1", patch(g, 8, 1), ErrMalformed},
		{"block inverted", patch(g, 12, 1), ErrMalformed},
		{"blocks touch", patch(g, 16, 6, 0, 0, 0, 6), ErrMalformed},
		{"blocks out of order", patch(g, 16, 3, 0, 0, 0, 3), ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseAck(tc.b); err != tc.want {
				t.Fatalf("ParseAck = %v, want %v", err, tc.want)
			}
		})
	}
	a := Ack{N: 1, Blocks: [MaxAckBlocks]AckBlock{{1, 3}}}
	if n, err := a.Marshal(make([]byte, MaxAckLen)); n != 0 || err != ErrMalformed {
		t.Fatalf("Marshal of a block at seq+1 = %d, %v", n, err)
	}
	// A block ending at the top of the offsets: the next must not pass
	// by wrapping prev+2 to 1.
	a = Ack{N: 2, Blocks: [MaxAckBlocks]AckBlock{{2, 0xffffffff}, {2, 3}}}
	if err := a.check(); err != ErrMalformed {
		t.Fatalf("blocks after one ending at 2^32-1: check = %v", err)
	}
	a = Ack{N: 1, Blocks: [MaxAckBlocks]AckBlock{{2, 3}}}
	if n, err := a.Marshal(make([]byte, AckHeaderLen)); n != 0 || err != ErrShortBuffer {
		t.Fatalf("Marshal into a short buffer = %d, %v", n, err)
	}
}

func TestAckAllocatesNothing(t *testing.T) {
	a := Ack{Window: 7, N: 3, Blocks: [MaxAckBlocks]AckBlock{{2, 2}, {4, 9}, {20, 30}}}
	b := make([]byte, MaxAckLen)
	if allocs := testing.AllocsPerRun(1000, func() {
		n, _ := a.Marshal(b)
		a, _ = ParseAck(b[:n])
	}); allocs != 0 {
		t.Fatalf("%v allocations per marshal+parse", allocs)
	}
}

// FuzzParseAck: whatever arrives, ParseAck returns one of the package's
// errors or a body that marshals back to the same bytes.
func FuzzParseAck(f *testing.F) {
	f.Add(mustUnhex(goldenAckHex))
	f.Add(mustUnhex(goldenAckHex)[:AckHeaderLen])
	f.Add([]byte{})
	out := make([]byte, MaxAckLen)
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseAck(b)
		if err != nil {
			if _, ok := err.(Error); !ok {
				t.Fatalf("error of type %T", err)
			}
			return
		}
		n, err := a.Marshal(out)
		if err != nil || !bytes.Equal(out[:n], b) {
			t.Fatalf("round trip: %x, %v; want %x", out[:n], err, b)
		}
	})
}
