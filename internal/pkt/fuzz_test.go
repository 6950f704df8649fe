package pkt

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// Seeds shared by the fuzz targets; testdata/fuzz/<FuzzName>/ holds the same
// and a few mutations in committed files.
func addFrameSeeds(f *testing.F, strip int) {
	for _, h := range []string{hexARPRequest, hexPing, hexUDP, hexVLAN} {
		b := mustUnhex(h)
		if strip <= len(b) {
			f.Add(b[strip:])
		}
	}
	f.Add([]byte{})
}

func FuzzParseEthernet(f *testing.F) {
	addFrameSeeds(f, 0)
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseEthernet(b)
		if err != nil {
			return
		}
		if e.Tags > MaxVLANTags || e.HeaderLen != EthernetHeaderLen+int(e.Tags)*VLANTagLen {
			t.Fatalf("tags %d header %d", e.Tags, e.HeaderLen)
		}
		if e.HeaderLen+len(e.Payload) != len(b) || e.Type < minEtherType || e.Type == EtherTypeVLAN || e.Type == EtherTypeQinQ {
			t.Fatalf("bad view: header %d payload %d of %d, type %#x", e.HeaderLen, len(e.Payload), len(b), e.Type)
		}
		if e.Tags == 0 {
			var out [EthernetHeaderLen]byte
			PutEthernetHeader(out[:], e.Dst, e.Src, e.Type)
			if !bytes.Equal(out[:], b[:EthernetHeaderLen]) {
				t.Fatalf("round trip: %x != %x", out, b[:EthernetHeaderLen])
			}
		}
	})
}

func FuzzParseARP(f *testing.F) {
	addFrameSeeds(f, EthernetHeaderLen)
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseARP(b)
		if err != nil {
			return
		}
		var out [ARPLen]byte
		if n, err := PutARP(out[:], &a); err != nil || n != ARPLen {
			t.Fatal(n, err)
		}
		if !bytes.Equal(out[:], b[:ARPLen]) {
			t.Fatalf("round trip: %x != %x", out, b[:ARPLen])
		}
	})
}

func FuzzParseIPv4(f *testing.F) {
	addFrameSeeds(f, EthernetHeaderLen)
	f.Add(mustUnhex(hexIPOptions))
	f.Add(mustUnhex(hexFragment))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseIPv4(b)
		if err != nil {
			// Without the checksum check only ErrChecksum may go away.
			if _, err2 := ParseIPv4NoChecksum(b); (err2 == nil) != (err == ErrChecksum) {
				t.Fatalf("ParseIPv4 %v, ParseIPv4NoChecksum %v", err, err2)
			}
			return
		}
		if len(p.Header) < IPv4MinHeaderLen || len(p.Header) > IPv4MaxHeaderLen || p.TotalLen() > len(b) {
			t.Fatalf("header %d payload %d of %d", len(p.Header), len(p.Payload), len(b))
		}
		if int(binary.BigEndian.Uint16(b[2:4])) != p.TotalLen() || Checksum(p.Header) != 0 {
			t.Fatal("total length or checksum inconsistent")
		}
		if p.IsFragment() != (p.MoreFragments() || p.FragmentOffset() != 0) {
			t.Fatal("fragment predicates disagree")
		}
		// Headers without options, reserved bit or fragmentation are
		// exactly what PutIPv4Header writes.
		if len(p.Header) == IPv4MinHeaderLen && p.FlagsOffset&^ipv4FlagDF == 0 && p.TTL != 0 {
			h := IPv4Header{Src: p.Src, Dst: p.Dst, Protocol: p.Protocol, TOS: p.TOS, TTL: p.TTL, ID: p.ID, DontFragment: p.DontFragment()}
			var out [IPv4MinHeaderLen]byte
			PutIPv4Header(out[:], &h, len(p.Payload))
			// 0x0000 and 0xffff are both valid encodings of a zero sum.
			if !bytes.Equal(out[:10], b[:10]) || !bytes.Equal(out[12:], b[12:20]) || Checksum(out[:]) != 0 {
				t.Fatalf("round trip: %x != %x", out, b[:20])
			}
		}
	})
}

func FuzzParseUDP(f *testing.F) {
	addFrameSeeds(f, EthernetHeaderLen+IPv4MinHeaderLen)
	f.Fuzz(func(t *testing.T, b []byte) {
		u, err := ParseUDP(b)
		if err != nil {
			return
		}
		if len(u.Datagram) != int(binary.BigEndian.Uint16(b[4:6])) || len(u.Payload) != len(u.Datagram)-UDPHeaderLen {
			t.Fatal("lengths inconsistent")
		}
		// Rebuilding must yield a datagram whose checksum verifies.
		out := make([]byte, len(u.Datagram))
		h := UDPv4Header{Src: guestIP, Dst: serviceIP, SrcPort: u.SrcPort, DstPort: u.DstPort}
		n, err := PutUDPv4(out, &h, u.Payload)
		if err != nil {
			t.Fatal(err)
		}
		v, err := ParseUDP(out[:n])
		if err != nil || !v.ChecksumValid(guestIP, serviceIP) || !bytes.Equal(v.Payload, u.Payload) || v.Checksum == 0 {
			t.Fatalf("rebuilt datagram: %+v, %v", v, err)
		}
	})
}

func FuzzParseICMPv4(f *testing.F) {
	addFrameSeeds(f, EthernetHeaderLen+IPv4MinHeaderLen)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseICMPv4(b)
		if err != nil {
			return
		}
		out := make([]byte, len(b))
		n, err := PutICMPv4(out, m.Type, m.Code, m.Rest, m.Payload)
		if err != nil || n != len(b) {
			t.Fatal(n, err)
		}
		if !bytes.Equal(out[:2], b[:2]) || !bytes.Equal(out[4:], b[4:]) || Checksum(out) != 0 {
			t.Fatalf("round trip: %x != %x", out, b)
		}
	})
}

func FuzzSum(f *testing.F) {
	f.Add([]byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}, uint16(0))
	f.Add(bytes.Repeat([]byte{0xff}, 77), uint16(0xffff))
	f.Fuzz(func(t *testing.T, b []byte, initial uint16) {
		if got, want := Sum(b, initial), refSum(b, initial); got != want {
			t.Fatalf("Sum = %#04x, reference %#04x", got, want)
		}
	})
}
