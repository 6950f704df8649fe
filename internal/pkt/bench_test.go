package pkt

import (
	"fmt"
	"testing"
)

func BenchmarkSum(b *testing.B) {
	for _, n := range []int{20, 64, 512, 1500, 9000} {
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = byte(i * 7)
		}
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.SetBytes(int64(n))
			var s uint16
			for b.Loop() {
				s += Sum(buf, s)
			}
		})
	}
}

func BenchmarkParseUDPFrame(b *testing.B) {
	f := mustUnhex(hexUDP)
	b.SetBytes(int64(len(f)))
	b.ReportAllocs()
	var n int
	for b.Loop() {
		e, err := ParseEthernet(f)
		if err != nil {
			b.Fatal(err)
		}
		ip, err := ParseIPv4(e.Payload)
		if err != nil {
			b.Fatal(err)
		}
		u, err := ParseUDP(ip.Payload)
		if err != nil || !u.ChecksumValid(ip.Src, ip.Dst) {
			b.Fatal(err)
		}
		n += len(u.Payload)
	}
}

func BenchmarkParseARP(b *testing.B) {
	f := mustUnhex(hexARPRequest)
	b.ReportAllocs()
	for b.Loop() {
		e, _ := ParseEthernet(f)
		if _, err := ParseARP(e.Payload); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPutUDPFrame(b *testing.B) {
	for _, n := range []int{64, 1400} {
		payload := make([]byte, n)
		out := make([]byte, 2048)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				PutEthernetHeader(out, guestMAC, serviceMAC, EtherTypeIPv4)
				ul, err := PutUDPv4(out[34:], &UDPv4Header{Src: serviceIP, Dst: guestIP, SrcPort: 7077, DstPort: 40000}, payload)
				if err != nil {
					b.Fatal(err)
				}
				PutIPv4Header(out[14:], &IPv4Header{Src: serviceIP, Dst: guestIP, Protocol: ProtocolUDP}, ul)
			}
		})
	}
}

func BenchmarkEchoReply(b *testing.B) {
	f := mustUnhex(hexPing)
	out := make([]byte, 2048)
	b.ReportAllocs()
	for b.Loop() {
		e, _ := ParseEthernet(f)
		ip, _ := ParseIPv4(e.Payload)
		m, err := ParseICMPv4(ip.Payload)
		if err != nil {
			b.Fatal(err)
		}
		PutEthernetHeader(out, e.Src, serviceMAC, EtherTypeIPv4)
		il, _ := PutICMPv4Echo(out[34:], ICMPEchoReply, m.ID(), m.Seq(), m.Payload)
		PutIPv4Header(out[14:], &IPv4Header{Src: ip.Dst, Dst: ip.Src, Protocol: ProtocolICMP}, il)
	}
}
