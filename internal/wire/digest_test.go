package wire

import (
	"bytes"
	"testing"
)

// TestDigest: a digest round-trips, is told apart from a directory (each
// parser refuses the other's layout with ErrVersion) and malformed ones
// get the package's errors; parsing does not allocate.
func TestDigest(t *testing.T) {
	d := Digest{Node: 7, Generation: 1 << 40, Boot: 0xabcdef, Want: true, Total: 10000}
	b := make([]byte, DigestLen)
	if n, err := d.Marshal(b); err != nil || n != DigestLen {
		t.Fatal(n, err)
	}
	if !IsDigest(b) {
		t.Fatal("not a digest")
	}
	got, err := ParseDigest(b)
	if err != nil || got != d {
		t.Fatalf("round trip %+v %v", got, err)
	}
	if _, err := ParseDirectory(b, make([]uint32, 0, MaxDirectoryChannels)); err != ErrVersion {
		t.Errorf("a digest as a directory: %v, want ErrVersion", err)
	}
	dir := mustUnhex(goldenDirHex)
	if IsDigest(dir) {
		t.Error("a directory is a digest")
	}
	if _, err := ParseDigest(dir); err != ErrVersion {
		t.Errorf("a directory as a digest: %v", err)
	}
	if _, err := (&Digest{}).Marshal(b[:DigestLen-1]); err != ErrShortBuffer {
		t.Errorf("short buffer: %v", err)
	}
	for name, c := range map[string]struct {
		b   []byte
		err error
	}{
		"truncated": {b[:DigestLen-1], ErrTruncated},
		"trailing":  {append(bytes.Clone(b), 0), ErrMalformed},
		"count":     {func() []byte { x := bytes.Clone(b); x[4] = 1; return x }(), ErrMalformed},
		"flags":     {func() []byte { x := bytes.Clone(b); x[24] |= 2; return x }(), ErrMalformed},
	} {
		if _, err := ParseDigest(c.b); err != c.err {
			t.Errorf("%s: %v, want %v", name, err, c.err)
		}
	}
	if a := testing.AllocsPerRun(100, func() { ParseDigest(b) }); a != 0 {
		t.Errorf("ParseDigest allocates %v", a)
	}
}

// FuzzParseDigest: any payload parses or gets one of the package's
// errors; what parses marshals back to the same bytes.
func FuzzParseDigest(f *testing.F) {
	b := make([]byte, DigestLen)
	(&Digest{Node: 1, Generation: 2, Boot: 3, Total: 4}).Marshal(b)
	f.Add(b)
	f.Add(b[:8])
	f.Add(mustUnhex(goldenDirHex))
	out := make([]byte, DigestLen)
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseDigest(b)
		if err != nil {
			if _, ok := err.(Error); !ok {
				t.Fatalf("error of type %T", err)
			}
			return
		}
		n, err := d.Marshal(out)
		if err != nil || !bytes.Equal(out[:n], b) {
			t.Fatalf("round trip: %x, %v != %x", out[:n], err, b)
		}
	})
}
