package pkt

import (
	"bytes"
	"errors"
	"testing"
)

// Each builder must reproduce the independently built reference frames byte
// for byte.

func TestPutARPFrameMatchesReference(t *testing.T) {
	want := mustUnhex(hexARPRequest)
	req := ARP{Op: ARPRequest, SenderMAC: guestMAC, SenderIP: guestIP, TargetIP: serviceIP}
	b := make([]byte, 100)
	for i := range b {
		b[i] = 0xaa // PadFrame must zero the padding
	}
	n, err := PutARPFrame(b, BroadcastMAC, &req)
	if err != nil || n != 42 {
		t.Fatalf("PutARPFrame = %d, %v", n, err)
	}
	n = PadFrame(b, n)
	if !bytes.Equal(b[:n], want) {
		t.Fatalf("frame\n got %x\nwant %x", b[:n], want)
	}
	if _, err := PutARPFrame(b[:41], BroadcastMAC, &req); !errors.Is(err, ErrShortBuffer) {
		t.Errorf("short buffer: %v", err)
	}
}

func TestARPReplyTo(t *testing.T) {
	req := ARP{Op: ARPRequest, SenderMAC: guestMAC, SenderIP: guestIP, TargetIP: serviceIP}
	rep := ARPReplyTo(&req, serviceMAC)
	want := ARP{Op: ARPReply, SenderMAC: serviceMAC, SenderIP: serviceIP, TargetMAC: guestMAC, TargetIP: guestIP}
	if rep != want {
		t.Fatalf("got %+v, want %+v", rep, want)
	}
}

func TestPutUDPFrameMatchesReference(t *testing.T) {
	want := mustUnhex(hexUDP)
	b := make([]byte, 1500)
	n := 0
	m, err := PutEthernetHeader(b, serviceMAC, guestMAC, EtherTypeIPv4)
	if err != nil {
		t.Fatal(err)
	}
	n += m
	u := UDPv4Header{Src: guestIP, Dst: serviceIP, SrcPort: 40000, DstPort: 7077}
	ul, err := PutUDPv4(b[n+IPv4MinHeaderLen:], &u, []byte("hello veloce"))
	if err != nil {
		t.Fatal(err)
	}
	h := IPv4Header{Src: guestIP, Dst: serviceIP, Protocol: ProtocolUDP, ID: 0x1c46, DontFragment: true}
	m, err = PutIPv4Header(b[n:], &h, ul)
	if err != nil {
		t.Fatal(err)
	}
	n += m + ul
	if !bytes.Equal(b[:n], want) {
		t.Fatalf("frame\n got %x\nwant %x", b[:n], want)
	}
}

func TestPutUDPv4InPlace(t *testing.T) {
	b := make([]byte, 64)
	copy(b[UDPHeaderLen:], "in place")
	u := UDPv4Header{Src: guestIP, Dst: serviceIP, SrcPort: 1, DstPort: 2}
	n, err := PutUDPv4(b, &u, b[UDPHeaderLen:UDPHeaderLen+8])
	if err != nil || n != 16 {
		t.Fatalf("PutUDPv4 = %d, %v", n, err)
	}
	d, err := ParseUDP(b[:n])
	if err != nil || string(d.Payload) != "in place" || !d.ChecksumValid(guestIP, serviceIP) || d.Checksum == 0 {
		t.Fatalf("parsed %+v, %v", d, err)
	}
	u.NoChecksum = true
	if _, err := PutUDPv4(b, &u, b[UDPHeaderLen:UDPHeaderLen+8]); err != nil || b[6] != 0 || b[7] != 0 {
		t.Fatalf("NoChecksum wrote %x, %v", b[6:8], err)
	}
}

func TestPutUDPv4ZeroChecksumSentAsOnes(t *testing.T) {
	// Find a payload whose checksum computes to zero: the header sum plus
	// payload word x must be 0xffff, so x = ^(rest of the sum).
	u := UDPv4Header{Src: guestIP, Dst: serviceIP, SrcPort: 1, DstPort: 2}
	b := make([]byte, 10)
	if _, err := PutUDPv4(b, &u, []byte{0, 0}); err != nil {
		t.Fatal(err)
	}
	b[6], b[7] = 0, 0
	rest := Sum(b, PseudoHeaderSumV4(guestIP, serviceIP, ProtocolUDP, 10))
	x := ^rest
	n, err := PutUDPv4(b, &u, []byte{byte(x >> 8), byte(x)})
	if err != nil || n != 10 {
		t.Fatal(n, err)
	}
	if b[6] != 0xff || b[7] != 0xff {
		t.Fatalf("checksum %x, want ffff", b[6:8])
	}
	d, _ := ParseUDP(b)
	if !d.ChecksumValid(guestIP, serviceIP) {
		t.Fatal("0xffff checksum does not verify")
	}
}

func TestPutICMPv4EchoMatchesReference(t *testing.T) {
	want := mustUnhex(hexPing)[34:]
	payload := make([]byte, 56)
	for i := range payload {
		payload[i] = byte(i)
	}
	b := make([]byte, 128)
	n, err := PutICMPv4Echo(b, ICMPEchoRequest, 0x42, 1, payload)
	if err != nil || !bytes.Equal(b[:n], want) {
		t.Fatalf("got %x, %v\nwant %x", b[:n], err, want)
	}
}

func TestPutIPv4HeaderFields(t *testing.T) {
	b := make([]byte, 20)
	h := IPv4Header{Src: guestIP, Dst: serviceIP, Protocol: ProtocolICMP, TOS: 0xb8, TTL: 7, ID: 9}
	if _, err := PutIPv4Header(b, &h, 100); err != nil {
		t.Fatal(err)
	}
	if Checksum(b) != 0 {
		t.Fatal("header checksum does not verify")
	}
	if b[1] != 0xb8 || b[8] != 7 || b[6] != 0 || b[2] != 0 || b[3] != 120 {
		t.Fatalf("header %x", b)
	}
	if _, err := PutIPv4Header(b[:19], &h, 0); !errors.Is(err, ErrShortBuffer) {
		t.Errorf("short buffer: %v", err)
	}
	if _, err := PutIPv4Header(b, &h, 65535-19); !errors.Is(err, ErrTooLong) {
		t.Errorf("too long: %v", err)
	}
}

func TestBuildersRejectShortBuffers(t *testing.T) {
	var a ARP
	u := UDPv4Header{}
	tests := []struct {
		name string
		put  func([]byte) (int, error)
		need int
	}{
		{"PutEthernetHeader", func(b []byte) (int, error) { return PutEthernetHeader(b, BroadcastMAC, guestMAC, EtherTypeIPv4) }, 14},
		{"PutEthernetHeaderVLAN", func(b []byte) (int, error) {
			return PutEthernetHeaderVLAN(b, BroadcastMAC, guestMAC, 100, EtherTypeIPv4)
		}, 18},
		{"PutARP", func(b []byte) (int, error) { return PutARP(b, &a) }, 28},
		{"PutUDPv4", func(b []byte) (int, error) { return PutUDPv4(b, &u, []byte("abc")) }, 11},
		{"PutICMPv4Echo", func(b []byte) (int, error) { return PutICMPv4Echo(b, ICMPEchoReply, 1, 2, []byte("abc")) }, 11},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := make([]byte, tt.need)
			if n, err := tt.put(b); err != nil || n != tt.need {
				t.Fatalf("exact buffer: %d, %v", n, err)
			}
			if _, err := tt.put(b[:tt.need-1]); !errors.Is(err, ErrShortBuffer) {
				t.Fatalf("short buffer: %v", err)
			}
		})
	}
	big := make([]byte, 70000)
	if _, err := PutUDPv4(big, &u, big[:65535-20-7]); !errors.Is(err, ErrTooLong) {
		t.Errorf("PutUDPv4 too long: %v", err)
	}
	if _, err := PutICMPv4(big, ICMPEchoReply, 0, 0, big[:65535-20-7]); !errors.Is(err, ErrTooLong) {
		t.Errorf("PutICMPv4 too long: %v", err)
	}
}

func TestVLANRoundTrip(t *testing.T) {
	b := make([]byte, 64)
	n, err := PutEthernetHeaderVLAN(b, serviceMAC, guestMAC, 0x2064, EtherTypeIPv4)
	if err != nil {
		t.Fatal(err)
	}
	want := mustUnhex(hexVLAN)[:n]
	if !bytes.Equal(b[:n], want) {
		t.Fatalf("got %x want %x", b[:n], want)
	}
}

func TestMAC(t *testing.T) {
	if !BroadcastMAC.IsBroadcast() || !BroadcastMAC.IsMulticast() || guestMAC.IsMulticast() || guestMAC.IsZero() || !(MAC{}).IsZero() {
		t.Error("MAC predicates")
	}
	if s := guestMAC.String(); s != "52:54:00:12:34:56" {
		t.Errorf("String = %q", s)
	}
	m, ok := MACFrom(guestMAC.HardwareAddr())
	if !ok || m != guestMAC {
		t.Errorf("MACFrom round trip: %v %v", m, ok)
	}
	if _, ok := MACFrom(make([]byte, 8)); ok {
		t.Error("MACFrom accepted 8 bytes")
	}
}
