package pkt

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// refSum is the RFC 1071 reference algorithm, 16 bits at a time.
func refSum(b []byte, initial uint16) uint16 {
	s := uint32(initial)
	for len(b) >= 2 {
		s += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s>>16 != 0 {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

func TestSumKnownVectors(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		initial uint16
		sum     uint16
	}{
		// RFC 1071, section 3, numerical example.
		{"RFC1071/3", "0001f203f4f5f6f7", 0, 0xddf2},
		{"empty", "", 0, 0},
		{"empty/initial", "", 0x1234, 0x1234},
		{"odd length pads low byte", "010203", 0, 0x0402},
		{"end-around carry", "ffffffff", 0, 0xffff},
		{"carry into initial", "8000", 0x8000, 0x0001},
		// Wikipedia's IPv4 header example with checksum b861 in place: sums to ffff.
		{"IPv4 header", "450000730000400040 11b861c0a80001c0a800c7", 0, 0xffff},
		// Hand-computed: 0001+0002+000a+0000+6162 = 616f.
		{"UDP header+ab", "00010002000a00006162", 0, 0x616f},
		// Bytes 00..27: the 32-byte loop, the 8-byte loop and no tail.
		{"40 bytes", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2021222324252627", 0, 0x7d91},
		// Bytes 00..26: every tail step (4, 2 and 1 byte) after the loops.
		{"39 bytes", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223242526", 0, 0x7d91 - 0x0027},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := unhex(t, removeSpaces(tt.data))
			want := tt.sum
			if got := Sum(b, tt.initial); got != want {
				t.Errorf("Sum = %#04x, want %#04x", got, want)
			}
			if got := refSum(b, tt.initial); got != want {
				t.Errorf("refSum = %#04x, want %#04x (bad vector)", got, want)
			}
		})
	}
}

func removeSpaces(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != ' ' {
			out = append(out, s[i])
		}
	}
	return string(out)
}

func TestChecksumKnownPackets(t *testing.T) {
	// RFC 1071 example: the checksum is the complement of ddf2.
	if got := Checksum(unhex(t, "0001f203f4f5f6f7")); got != 0x220d {
		t.Errorf("RFC 1071 checksum = %#04x, want 0x220d", got)
	}
	// Wikipedia's IPv4 header with the checksum field zeroed: b861.
	h := unhex(t, "450000730000400040110000c0a80001c0a800c7")
	if got := Checksum(h); got != 0xb861 {
		t.Errorf("IPv4 header checksum = %#04x, want 0xb861", got)
	}
	// UDP 10.0.0.1:1 -> 10.0.0.2:2 "ab", by hand:
	// pseudo 0a00+0001+0a00+0002+0011+000a = 141e; UDP 616f; ~(141e+616f) = 8a72.
	ps := PseudoHeaderSumV4([4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}, ProtocolUDP, 10)
	if ps != 0x141e {
		t.Errorf("pseudo-header sum = %#04x, want 0x141e", ps)
	}
	if got := ^Sum(unhex(t, "00010002000a00006162"), ps); got != 0x8a72 {
		t.Errorf("UDP checksum = %#04x, want 0x8a72", got)
	}
	// ICMP echo request id 1234 seq 1 "abcd", by hand:
	// 0800+1234+0001+6162+6364 = defb; ~defb = 2104.
	if got := Checksum(unhex(t, "0800000012340001"+"61626364")); got != 0x2104 {
		t.Errorf("ICMP checksum = %#04x, want 0x2104", got)
	}
}

func TestSumMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 2048)
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	for n := 0; n <= 300; n++ {
		for _, off := range []int{0, 1, 3, 7} { // unaligned starts
			b := buf[off : off+n]
			init := uint16(r.Uint32())
			if got, want := Sum(b, init), refSum(b, init); got != want {
				t.Fatalf("len %d off %d init %#x: Sum = %#04x, want %#04x", n, off, init, got, want)
			}
		}
	}
	// All ones stresses every carry path.
	ones := make([]byte, 1501)
	for i := range ones {
		ones[i] = 0xff
	}
	for n := 0; n <= len(ones); n++ {
		if got, want := Sum(ones[:n], 0xffff), refSum(ones[:n], 0xffff); got != want {
			t.Fatalf("all-ones len %d: Sum = %#04x, want %#04x", n, got, want)
		}
	}
}

func TestSumChaining(t *testing.T) {
	b := unhex(t, hexPing)
	whole := Sum(b, 0)
	for n := 0; n <= len(b); n += 2 {
		if got := Sum(b[n:], Sum(b[:n], 0)); got != whole {
			t.Fatalf("split at %d: %#04x, want %#04x", n, got, whole)
		}
		if got := SumAdd(Sum(b[:n], 0), Sum(b[n:], 0)); got != whole {
			t.Fatalf("SumAdd split at %d: %#04x, want %#04x", n, got, whole)
		}
	}
}

func TestChecksumUpdate(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	h := unhex(t, "450000730000400040110000c0a80001c0a800c7")
	binary.BigEndian.PutUint16(h[10:], Checksum(h))
	for i := 0; i < 1000; i++ {
		// Change one 16-bit word (not the checksum itself).
		w := 2 * r.IntN(10)
		if w == 10 {
			continue
		}
		old := binary.BigEndian.Uint16(h[w:])
		nw := uint16(r.Uint32())
		binary.BigEndian.PutUint16(h[w:], nw)
		cs := ChecksumUpdate16(binary.BigEndian.Uint16(h[10:]), old, nw)
		binary.BigEndian.PutUint16(h[10:], cs)
		if Checksum(h) != 0 {
			t.Fatalf("iteration %d: incremental checksum %#04x does not verify", i, cs)
		}
	}
	for i := 0; i < 1000; i++ {
		var na [4]byte
		binary.BigEndian.PutUint32(na[:], r.Uint32())
		var old [4]byte
		copy(old[:], h[12:16])
		copy(h[12:16], na[:])
		cs := ChecksumUpdate4(binary.BigEndian.Uint16(h[10:]), old, na)
		binary.BigEndian.PutUint16(h[10:], cs)
		if Checksum(h) != 0 {
			t.Fatalf("iteration %d: ChecksumUpdate4 %#04x does not verify", i, cs)
		}
	}
}

func TestDecrementTTL(t *testing.T) {
	p := unhex(t, hexPing)[EthernetHeaderLen:]
	for ttl := p[8]; ttl > 1; ttl-- {
		if !DecrementTTL(p) {
			t.Fatalf("DecrementTTL at TTL %d = false", ttl)
		}
		if _, err := ParseIPv4(p); err != nil {
			t.Fatalf("after TTL %d: %v", ttl-1, err)
		}
	}
	if p[8] != 1 || DecrementTTL(p) {
		t.Fatalf("TTL %d: DecrementTTL must refuse to go below 1", p[8])
	}
}
