package pkt

import (
	"bytes"
	"errors"
	"testing"
)

func TestParseEthernet(t *testing.T) {
	tests := []struct {
		name    string
		frame   []byte
		wantErr error
		typ     EtherType
		tags    uint8
		vid     uint16
		hdrLen  int
	}{
		{name: "untagged ARP", frame: mustUnhex(hexARPRequest), typ: EtherTypeARP, hdrLen: 14},
		{name: "untagged IPv4", frame: mustUnhex(hexUDP), typ: EtherTypeIPv4, hdrLen: 14},
		{name: "802.1Q", frame: mustUnhex(hexVLAN), typ: EtherTypeIPv4, tags: 1, vid: 100, hdrLen: 18},
		{name: "802.1ad+802.1Q", frame: mustUnhex("ffffffffffff525400123456" + "88a8" + "0007" + "8100" + "0064" + "0806" + "00"),
			typ: EtherTypeARP, tags: 2, vid: 7, hdrLen: 22},
		{name: "three tags", frame: mustUnhex("ffffffffffff525400123456" + "88a80001" + "81000002" + "81000003" + "0800"), wantErr: ErrUnsupported},
		{name: "802.3 length", frame: mustUnhex("ffffffffffff525400123456" + "05dc"), wantErr: ErrUnsupported},
		{name: "empty", frame: nil, wantErr: ErrTruncated},
		{name: "13 bytes", frame: mustUnhex("ffffffffffff52540012345608"), wantErr: ErrTruncated},
		{name: "tag without type", frame: mustUnhex("ffffffffffff525400123456" + "81000064"), wantErr: ErrTruncated},
		{name: "header only", frame: mustUnhex("ffffffffffff525400123456" + "0800"), typ: EtherTypeIPv4, hdrLen: 14},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := ParseEthernet(tt.frame)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if e.Type != tt.typ || e.Tags != tt.tags || e.VLANID() != tt.vid || e.HeaderLen != tt.hdrLen {
				t.Errorf("got type %#x tags %d vid %d hdrlen %d, want %#x %d %d %d",
					e.Type, e.Tags, e.VLANID(), e.HeaderLen, tt.typ, tt.tags, tt.vid, tt.hdrLen)
			}
			if !bytes.Equal(e.Payload, tt.frame[tt.hdrLen:]) {
				t.Errorf("payload is not the rest of the frame")
			}
			if e.Src != guestMAC {
				t.Errorf("src = %v, want %v", e.Src, guestMAC)
			}
		})
	}
}

func TestParseARP(t *testing.T) {
	frame := mustUnhex(hexARPRequest)
	tests := []struct {
		name    string
		b       []byte
		wantErr error
	}{
		{"RFC826 request", frame[14:], nil},
		{"unpadded", frame[14:42], nil},
		{"truncated", frame[14:41], ErrTruncated},
		{"hardware type 6", patch(frame[14:], 1, 6), ErrUnsupported},
		{"protocol IPv6", patch(patch(frame[14:], 2, 0x86), 3, 0xdd), ErrUnsupported},
		{"hlen 8", patch(frame[14:], 4, 8), ErrUnsupported},
		{"plen 16", patch(frame[14:], 5, 16), ErrUnsupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := ParseARP(tt.b)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			want := ARP{Op: ARPRequest, SenderMAC: guestMAC, SenderIP: guestIP, TargetIP: serviceIP}
			if a != want {
				t.Errorf("got %+v, want %+v", a, want)
			}
			if a.IsGratuitous() || a.IsProbe() {
				t.Errorf("plain request taken for gratuitous or probe")
			}
		})
	}
}

// patch returns a copy of b with b[i] = v.
func patch(b []byte, i int, v byte) []byte {
	c := append([]byte(nil), b...)
	c[i] = v
	return c
}

func TestParseIPv4(t *testing.T) {
	ping := mustUnhex(hexPing)[14:]
	udp := mustUnhex(hexUDP)[14:]
	tests := []struct {
		name     string
		b        []byte
		wantErr  error
		proto    IPProtocol
		hdrLen   int
		payload  int
		fragment bool
	}{
		{name: "ICMP", b: ping, proto: ProtocolICMP, hdrLen: 20, payload: 64},
		{name: "UDP", b: udp, proto: ProtocolUDP, hdrLen: 20, payload: 20},
		{name: "Ethernet padding excluded", b: append(append([]byte(nil), udp...), 0, 0, 0, 0, 0, 0), proto: ProtocolUDP, hdrLen: 20, payload: 20},
		{name: "options skipped", b: mustUnhex(hexIPOptions), proto: ProtocolUDP, hdrLen: 24, payload: 9},
		{name: "first fragment", b: mustUnhex(hexFragment), proto: ProtocolUDP, hdrLen: 20, payload: 16, fragment: true},
		{name: "short header", b: udp[:19], wantErr: ErrTruncated},
		{name: "short of total length", b: udp[:len(udp)-1], wantErr: ErrTruncated},
		{name: "short of options", b: mustUnhex(hexIPOptions)[:20], wantErr: ErrTruncated},
		{name: "version 6", b: patch(udp, 0, 0x65), wantErr: ErrMalformed},
		{name: "IHL 4", b: patch(udp, 0, 0x44), wantErr: ErrMalformed},
		{name: "total length below header", b: patch(patch(udp, 2, 0), 3, 19), wantErr: ErrMalformed},
		{name: "bad checksum", b: patch(udp, 11, udp[11]^1), wantErr: ErrChecksum},
		{name: "corrupt source", b: patch(udp, 12, 10), wantErr: ErrChecksum},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParseIPv4(tt.b)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if p.Protocol != tt.proto || len(p.Header) != tt.hdrLen || len(p.Payload) != tt.payload || p.IsFragment() != tt.fragment {
				t.Errorf("got proto %d hdr %d payload %d fragment %v, want %d %d %d %v",
					p.Protocol, len(p.Header), len(p.Payload), p.IsFragment(), tt.proto, tt.hdrLen, tt.payload, tt.fragment)
			}
			if p.Src != guestIP || p.Dst != serviceIP {
				t.Errorf("addresses %v -> %v", p.Src, p.Dst)
			}
			if cap(p.Payload) != len(p.Payload) {
				t.Errorf("payload view can grow into padding: cap %d len %d", cap(p.Payload), len(p.Payload))
			}
			if len(p.Options()) != tt.hdrLen-20 {
				t.Errorf("options %d bytes, want %d", len(p.Options()), tt.hdrLen-20)
			}
		})
	}
}

func TestIPv4Fragments(t *testing.T) {
	tests := []struct {
		name        string
		flagsOffset uint16
		fragment    bool
		df, mf      bool
		offset      int
	}{
		{"DF only", 0x4000, false, true, false, 0},
		{"none", 0, false, false, false, 0},
		{"first (MF)", 0x2000, true, false, true, 0},
		{"middle", 0x2000 | 185, true, false, true, 1480},
		{"last", 185, true, false, false, 1480},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := IPv4{FlagsOffset: tt.flagsOffset}
			if p.IsFragment() != tt.fragment || p.DontFragment() != tt.df || p.MoreFragments() != tt.mf || p.FragmentOffset() != tt.offset {
				t.Errorf("fragment %v df %v mf %v offset %d", p.IsFragment(), p.DontFragment(), p.MoreFragments(), p.FragmentOffset())
			}
		})
	}
}

func TestParseUDP(t *testing.T) {
	ip, err := ParseIPv4(mustUnhex(hexUDP)[14:])
	if err != nil {
		t.Fatal(err)
	}
	d := ip.Payload
	tests := []struct {
		name    string
		b       []byte
		wantErr error
		valid   bool
		payload string
	}{
		{name: "valid", b: d, valid: true, payload: "hello veloce"},
		{name: "trailing bytes ignored", b: append(append([]byte(nil), d...), 1, 2, 3), valid: true, payload: "hello veloce"},
		{name: "zero checksum allowed", b: patch(patch(d, 6, 0), 7, 0), valid: true, payload: "hello veloce"},
		{name: "bad checksum", b: patch(d, 7, d[7]^0x80), valid: false, payload: "hello veloce"},
		{name: "corrupt payload", b: patch(d, 9, 'E'), valid: false, payload: "hEllo veloce"},
		{name: "short header", b: d[:7], wantErr: ErrTruncated},
		{name: "short of length", b: d[:len(d)-1], wantErr: ErrTruncated},
		{name: "length 7", b: patch(patch(d, 4, 0), 5, 7), wantErr: ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := ParseUDP(tt.b)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if u.SrcPort != 40000 || u.DstPort != 7077 || string(u.Payload) != tt.payload {
				t.Errorf("got %d -> %d %q", u.SrcPort, u.DstPort, u.Payload)
			}
			if got := u.ChecksumValid(ip.Src, ip.Dst); got != tt.valid {
				t.Errorf("ChecksumValid = %v, want %v", got, tt.valid)
			}
		})
	}
	// The checksum covers the pseudo-header: another destination must fail.
	u, _ := ParseUDP(d)
	if u.ChecksumValid(ip.Src, [4]byte{169, 254, 77, 3}) {
		t.Error("checksum ignores the pseudo-header")
	}
}

func TestParseICMPv4(t *testing.T) {
	b := mustUnhex(hexPing)[34:]
	tests := []struct {
		name    string
		b       []byte
		wantErr error
	}{
		{"echo request", b, nil},
		{"short", b[:7], ErrTruncated},
		{"bad checksum", patch(b, 3, b[3]^1), ErrChecksum},
		{"corrupt payload", patch(b, 20, 0xee), ErrChecksum},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ParseICMPv4(tt.b)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if m.Type != ICMPEchoRequest || m.Code != 0 || m.ID() != 0x42 || m.Seq() != 1 || len(m.Payload) != 56 {
				t.Errorf("got %+v", m)
			}
		})
	}
}

func TestErrorStrings(t *testing.T) {
	for e := ErrTruncated; e <= ErrTooLong; e++ {
		if s := e.Error(); s == "" || s == "pkt: unknown error" {
			t.Errorf("Error(%d) has no message", e)
		}
	}
	if Error(200).Error() != "pkt: unknown error" {
		t.Error("out of range error")
	}
}
