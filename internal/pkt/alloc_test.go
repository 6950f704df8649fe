package pkt

import "testing"

// The per-packet path must not allocate: parse a frame down to its payload,
// and build the replies a link peer sends.

func TestParseDoesNotAllocate(t *testing.T) {
	udp := mustUnhex(hexUDP)
	ping := mustUnhex(hexPing)
	arp := mustUnhex(hexARPRequest)
	vlan := mustUnhex(hexVLAN)
	bad := patch(udp, 30, udp[30]^1)
	var sink int
	allocs := testing.AllocsPerRun(1000, func() {
		for _, f := range [][]byte{udp, vlan} {
			e, _ := ParseEthernet(f)
			ip, _ := ParseIPv4(e.Payload)
			u, _ := ParseUDP(ip.Payload)
			if u.ChecksumValid(ip.Src, ip.Dst) {
				sink += len(u.Payload)
			}
		}
		e, _ := ParseEthernet(ping)
		ip, _ := ParseIPv4(e.Payload)
		m, _ := ParseICMPv4(ip.Payload)
		sink += len(m.Payload)
		e, _ = ParseEthernet(arp)
		a, _ := ParseARP(e.Payload)
		sink += int(a.Op)
		// Errors must not allocate either.
		e, _ = ParseEthernet(bad)
		if _, err := ParseIPv4(e.Payload); err != nil {
			sink++
		}
		if _, err := ParseEthernet(nil); err != nil {
			sink++
		}
	})
	if allocs != 0 {
		t.Fatalf("parsing allocates %v times per run", allocs)
	}
	_ = sink
}

func TestBuildRepliesDoesNotAllocate(t *testing.T) {
	ping := mustUnhex(hexPing)
	arp := mustUnhex(hexARPRequest)
	out := make([]byte, 2048)
	payload := []byte("a message to the guest")
	allocs := testing.AllocsPerRun(1000, func() {
		// ARP reply.
		e, _ := ParseEthernet(arp)
		req, _ := ParseARP(e.Payload)
		rep := ARPReplyTo(&req, serviceMAC)
		if _, err := PutARPFrame(out, req.SenderMAC, &rep); err != nil {
			panic(err)
		}
		// ICMP echo reply copying the request's payload.
		e, _ = ParseEthernet(ping)
		ip, _ := ParseIPv4(e.Payload)
		m, _ := ParseICMPv4(ip.Payload)
		n, _ := PutEthernetHeader(out, e.Src, serviceMAC, EtherTypeIPv4)
		il, _ := PutICMPv4Echo(out[n+IPv4MinHeaderLen:], ICMPEchoReply, m.ID(), m.Seq(), m.Payload)
		if _, err := PutIPv4Header(out[n:], &IPv4Header{Src: ip.Dst, Dst: ip.Src, Protocol: ProtocolICMP}, il); err != nil {
			panic(err)
		}
		// UDP datagram.
		ul, _ := PutUDPv4(out[n+IPv4MinHeaderLen:], &UDPv4Header{Src: ip.Dst, Dst: ip.Src, SrcPort: 7077, DstPort: 40000}, payload)
		if _, err := PutIPv4Header(out[n:], &IPv4Header{Src: ip.Dst, Dst: ip.Src, Protocol: ProtocolUDP}, ul); err != nil {
			panic(err)
		}
		// Builder errors must not allocate.
		if _, err := PutARP(out[:1], &rep); err == nil {
			panic("no error")
		}
	})
	if allocs != 0 {
		t.Fatalf("building replies allocates %v times per run", allocs)
	}
}
