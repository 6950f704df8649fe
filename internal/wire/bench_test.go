package wire

import "testing"

func BenchmarkMarshal(b *testing.B) {
	buf := make([]byte, HeaderLen)
	h := goldenHeader
	b.ReportAllocs()
	for b.Loop() {
		if _, err := h.Marshal(buf); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParse(b *testing.B) {
	msg := mustUnhex(goldenHex)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if _, _, err := Parse(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseForeign is the cost of rejecting a datagram that is not
// Veloce's.
func BenchmarkParseForeign(b *testing.B) {
	msg := []byte("GET / HTTP/1.1\r\nHost: example\r\n\r\n")
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Parse(msg); err != ErrNotVeloce {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseDirectory(b *testing.B) {
	d := Directory{Node: 1, Generation: 2, Channels: make([]uint32, MaxDirectoryChannels)}
	for i := range d.Channels {
		d.Channels[i] = uint32(i)
	}
	buf := make([]byte, MaxDirectoryLen)
	if _, err := d.Marshal(buf); err != nil {
		b.Fatal(err)
	}
	chans := make([]uint32, 0, MaxDirectoryChannels)
	b.ReportAllocs()
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		if _, err := ParseDirectory(buf, chans); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSealOpen is the cost authentication adds to a 256-byte message:
// one Seal on the sender, one Open on the receiver.
func BenchmarkSealOpen(b *testing.B) {
	s, o := NewSealer(testKey, 7), NewOpener(testKey)
	buf := make([]byte, HeaderLen+256+AuthTrailerLen)
	h := goldenHeader
	h.FragIndex, h.FragCount = 0, 1
	n, _ := h.MarshalPacket(buf, make([]byte, 256))
	b.ReportAllocs()
	b.SetBytes(int64(n))
	var c uint64
	for b.Loop() {
		c++
		m, _ := s.Seal(buf, n, c)
		if _, _, _, err := o.Open(buf[:m]); err != nil {
			b.Fatal(err)
		}
	}
}
