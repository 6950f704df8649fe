package wire

import (
	"bytes"
	"testing"
)

// The committed corpora in testdata/fuzz/<FuzzName>/ hold these seeds and
// a few invalid variants; f.Add repeats the valid ones so the targets have
// seeds even without the directory.

func FuzzParseHeader(f *testing.F) {
	f.Add(mustUnhex(goldenHex))
	f.Add(mustUnhex(goldenHex)[:HeaderLen])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, payload, err := Parse(b)
		if err != nil {
			if _, ok := err.(Error); !ok {
				t.Fatalf("error of type %T", err)
			}
			return
		}
		if len(b) != HeaderLen+len(payload) || len(payload) != int(h.PayloadLen) {
			t.Fatalf("payload %d bytes of %d, header says %d", len(payload), len(b), h.PayloadLen)
		}
		if len(payload) > 0 && &payload[0] != &b[HeaderLen] {
			t.Fatal("payload does not alias the buffer")
		}
		if !h.Kind.Valid() || !h.Class.Valid() || !h.Flags.Valid() || h.FragCount == 0 || h.FragIndex >= h.FragCount {
			t.Fatalf("accepted invalid header %+v", h)
		}
		// A parsed header marshals back to the same bytes.
		var out [HeaderLen]byte
		if n, err := h.Marshal(out[:]); err != nil || n != HeaderLen {
			t.Fatalf("Marshal of parsed header = %d, %v", n, err)
		}
		if !bytes.Equal(out[:], b[:HeaderLen]) {
			t.Fatalf("round trip: %x != %x", out, b[:HeaderLen])
		}
	})
}

func FuzzParseDirectory(f *testing.F) {
	f.Add(mustUnhex(goldenDirHex))
	f.Add(mustUnhex(goldenDirHex)[:DirectoryHeaderLen])
	f.Add([]byte{})
	chans := make([]uint32, 0, MaxDirectoryChannels)
	out := make([]byte, MaxDirectoryLen)
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseDirectory(b, chans)
		if err != nil {
			if _, ok := err.(Error); !ok {
				t.Fatalf("error of type %T", err)
			}
			return
		}
		if len(d.Channels) > MaxDirectoryChannels || len(b) != DirectoryLen(len(d.Channels)) {
			t.Fatalf("%d channels in %d bytes", len(d.Channels), len(b))
		}
		for i := 1; i < len(d.Channels); i++ {
			if d.Channels[i] <= d.Channels[i-1] {
				t.Fatalf("not ascending at %d: %v", i, d.Channels)
			}
		}
		n, err := d.Marshal(out)
		if err != nil || !bytes.Equal(out[:n], b) {
			t.Fatalf("round trip: %x, %v != %x", out[:n], err, b)
		}
	})
}

// FuzzOpen: whatever arrives, Open returns one of the package's errors or
// a datagram whose tag verified; a parsed datagram seals back to the same
// bytes (so nothing outside header, payload and trailer is accepted).
func FuzzOpen(f *testing.F) {
	f.Add(sealed(f, testKey, 1))
	f.Add(mustUnhex(goldenHex))
	f.Add([]byte{})
	o, s := NewOpener(testKey), NewSealer(testKey, 0)
	out := make([]byte, 1<<17)
	f.Fuzz(func(t *testing.T, b []byte) {
		h, payload, tr, err := o.Open(b)
		if err != nil {
			switch err.(type) {
			case Error, AuthError:
			default:
				t.Fatalf("error of type %T", err)
			}
			return
		}
		if h.Flags&FlagAuthenticated == 0 || len(b) != HeaderLen+len(payload)+AuthTrailerLen {
			t.Fatalf("accepted %+v with %d payload bytes in %d", h, len(payload), len(b))
		}
		n := copy(out, b[:len(b)-AuthTrailerLen])
		s.boot = tr.Boot
		m, err := s.Seal(out, n, tr.Counter)
		if err != nil || !bytes.Equal(out[:m], b) {
			t.Fatalf("reseal: %v", err)
		}
	})
}
