package backend

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/veloce-io/veloce/internal/pkt"
)

var (
	tGuestMAC   = pkt.MAC{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	tServiceMAC = pkt.MAC{0x02, 0x56, 0x4c, 0x4f, 0x43, 0x01}
	tOtherMAC   = pkt.MAC{0x52, 0x54, 0x00, 0x99, 0x99, 0x99}
	tGuestIP    = [4]byte{169, 254, 77, 2}
	tServiceIP  = [4]byte{169, 254, 77, 1}
	tOtherIP    = [4]byte{169, 254, 77, 9}
	tBcastIP    = [4]byte{255, 255, 255, 255}
)

func newPeer(t testing.TB, opts LinkPeerOptions) *LinkPeer {
	t.Helper()
	p, err := NewLinkPeer(opts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Frame builders for the tests; internal/pkt checks them against reference
// bytes.

func arpFrame(dst pkt.MAC, a pkt.ARP) []byte {
	b := make([]byte, 60)
	n, err := pkt.PutARPFrame(b, dst, &a)
	if err != nil {
		panic(err)
	}
	return b[:pkt.PadFrame(b, n)]
}

type ipSpec struct {
	dstMAC   pkt.MAC
	src, dst [4]byte
	proto    pkt.IPProtocol
	tos      uint8
	fragment bool
}

func ipFrame(s ipSpec, l4 []byte) []byte {
	b := make([]byte, 34+len(l4))
	pkt.PutEthernetHeader(b, s.dstMAC, tGuestMAC, pkt.EtherTypeIPv4)
	h := pkt.IPv4Header{Src: s.src, Dst: s.dst, Protocol: s.proto, TOS: s.tos, ID: 7}
	pkt.PutIPv4Header(b[14:], &h, len(l4))
	if s.fragment {
		b[14+6] |= 0x20 // MF
		b[14+10], b[14+11] = 0, 0
		cs := pkt.Checksum(b[14:34])
		b[14+10], b[14+11] = byte(cs>>8), byte(cs)
	}
	copy(b[34:], l4)
	return b
}

func udpFrame(dstMAC pkt.MAC, src, dst [4]byte, sport, dport uint16, payload []byte) []byte {
	u := make([]byte, 8+len(payload))
	pkt.PutUDPv4(u, &pkt.UDPv4Header{Src: src, Dst: dst, SrcPort: sport, DstPort: dport}, payload)
	return ipFrame(ipSpec{dstMAC: dstMAC, src: src, dst: dst, proto: pkt.ProtocolUDP}, u)
}

func icmpFrame(dst [4]byte, t pkt.ICMPType, payload []byte) []byte {
	m := make([]byte, 8+len(payload))
	pkt.PutICMPv4Echo(m, t, 0x4242, 3, payload)
	return ipFrame(ipSpec{dstMAC: tServiceMAC, src: tGuestIP, dst: dst, proto: pkt.ProtocolICMP, tos: 0x10}, m)
}

func corrupt(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i] ^= 0x55
	return c
}

func TestNewLinkPeerDefaults(t *testing.T) {
	p := newPeer(t, LinkPeerOptions{})
	o := p.Options()
	if !bytes.Equal(o.ServiceMAC, DefaultServiceMAC) || o.ServiceIP != DefaultServiceIP || o.GuestIP != DefaultGuestIP ||
		o.ServicePort != DefaultServicePort || o.LeaseTime != DefaultLeaseTime || o.MTU != 0 {
		t.Fatalf("defaults not applied: %+v", o)
	}
	if DefaultServiceIP.String() != "169.254.77.1" || DefaultGuestIP.String() != "169.254.77.2/24" ||
		DefaultServiceMAC.String() != "02:56:4c:4f:43:01" {
		t.Fatal("defaults differ from DESIGN.md")
	}
	// Options returns a copy: changing it does not change the peer.
	o.ServiceMAC[0] = 0xff
	if p.Options().ServiceMAC[0] != 0x02 {
		t.Fatal("Options leaks the service MAC")
	}
}

func TestNewLinkPeerRejects(t *testing.T) {
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	tests := []struct {
		name string
		opts LinkPeerOptions
	}{
		{"short MAC", LinkPeerOptions{ServiceMAC: net.HardwareAddr{2, 0, 0, 0, 1}}},
		{"multicast MAC", LinkPeerOptions{ServiceMAC: net.HardwareAddr{1, 0, 0x5e, 0, 0, 1}}},
		{"zero MAC", LinkPeerOptions{ServiceMAC: make(net.HardwareAddr, 6)}},
		{"IPv6 service", LinkPeerOptions{ServiceIP: addr("fe80::1")}},
		{"multicast service", LinkPeerOptions{ServiceIP: addr("224.0.0.1"), GuestIP: pfx("224.0.0.2/24")}},
		{"unspecified service", LinkPeerOptions{ServiceIP: addr("0.0.0.0"), GuestIP: pfx("0.0.0.2/24")}},
		{"IPv6 guest", LinkPeerOptions{GuestIP: pfx("fe80::2/64")}},
		{"/32 guest", LinkPeerOptions{GuestIP: pfx("169.254.77.2/32")}},
		{"/0 guest", LinkPeerOptions{GuestIP: pfx("169.254.77.2/0")}},
		{"service outside prefix", LinkPeerOptions{ServiceIP: addr("10.0.0.1")}},
		{"guest is service", LinkPeerOptions{GuestIP: pfx("169.254.77.1/24")}},
		{"guest is network", LinkPeerOptions{GuestIP: pfx("169.254.77.0/24")}},
		{"guest is broadcast", LinkPeerOptions{GuestIP: pfx("169.254.77.255/24")}},
		{"service is broadcast", LinkPeerOptions{ServiceIP: addr("169.254.77.255")}},
		{"DHCP server port", LinkPeerOptions{ServicePort: 67}},
		{"DHCP client port", LinkPeerOptions{ServicePort: 68}},
		{"negative lease", LinkPeerOptions{LeaseTime: -time.Hour}},
		{"sub-second lease", LinkPeerOptions{LeaseTime: time.Millisecond}},
		{"lease beyond infinite", LinkPeerOptions{LeaseTime: InfiniteLease + time.Second}},
		{"MTU 67", LinkPeerOptions{MTU: 67}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewLinkPeer(tt.opts); !errors.Is(err, ErrInvalidOptions) {
				t.Fatalf("err = %v, want ErrInvalidOptions", err)
			}
		})
	}
}

func TestNewLinkPeerAccepts(t *testing.T) {
	tests := []struct {
		name string
		opts LinkPeerOptions
	}{
		{"/31 point-to-point (RFC 3021)", LinkPeerOptions{ServiceIP: netip.MustParseAddr("10.0.0.0"), GuestIP: netip.MustParsePrefix("10.0.0.1/31")}},
		{"IPv4-mapped addresses", LinkPeerOptions{ServiceIP: netip.MustParseAddr("::ffff:10.1.0.1"), GuestIP: netip.MustParsePrefix("10.1.0.2/16")}},
		{"infinite lease", LinkPeerOptions{LeaseTime: InfiniteLease}},
		{"MTU 9000", LinkPeerOptions{MTU: 9000}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewLinkPeer(tt.opts); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestHandleVerdicts is the link peer's behaviour, frame by frame.
func TestHandleVerdicts(t *testing.T) {
	arpReq := pkt.ARP{Op: pkt.ARPRequest, SenderMAC: tGuestMAC, SenderIP: tGuestIP, TargetIP: tServiceIP}
	with := func(a pkt.ARP, f func(*pkt.ARP)) pkt.ARP { f(&a); return a }
	ping := icmpFrame(tServiceIP, pkt.ICMPEchoRequest, []byte("ping payload"))
	data := udpFrame(tServiceMAC, tGuestIP, tServiceIP, 40000, DefaultServicePort, []byte("message"))
	release, _ := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease), dhcpv4.WithHwAddr(tGuestMAC[:]),
		dhcpv4.WithClientIP(net.IP(tGuestIP[:])))
	otherServer, _ := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithHwAddr(tGuestMAC[:]),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP{169, 254, 77, 100})),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP(tGuestIP[:]))))
	decline, _ := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline), dhcpv4.WithHwAddr(tGuestMAC[:]))
	noType, _ := dhcpv4.New(dhcpv4.WithHwAddr(tGuestMAC[:]))
	tagged := make([]byte, 64)
	pkt.PutEthernetHeaderVLAN(tagged, tServiceMAC, tGuestMAC, 100, pkt.EtherTypeARP)
	ipv6 := make([]byte, 60)
	pkt.PutEthernetHeader(ipv6, tServiceMAC, tGuestMAC, pkt.EtherTypeIPv6)
	udpZero := append([]byte(nil), data...)
	udpZero[40], udpZero[41] = 0, 0
	dhcpFromClient := func(m *dhcpv4.DHCPv4) []byte {
		return udpFrame(pkt.BroadcastMAC, [4]byte{}, tBcastIP, 68, 67, m.ToBytes())
	}

	tests := []struct {
		name    string
		frame   []byte
		verdict Verdict
		reason  DropReason
	}{
		// Ethernet.
		{"runt frame", make([]byte, 10), VerdictDropped, DropMalformed},
		{"802.3 length field", append(append(tServiceMAC[:], tGuestMAC[:]...), 0x00, 0x40), VerdictDropped, DropUnsupported},
		{"unicast to another MAC", udpFrame(tOtherMAC, tGuestIP, tServiceIP, 1, DefaultServicePort, nil), VerdictDropped, DropNotForUs},
		{"VLAN tagged", tagged, VerdictDropped, DropUnsupported},
		{"IPv6", ipv6, VerdictDropped, DropUnsupported},
		// RFC 826 ARP.
		{"ARP who-has service", arpFrame(pkt.BroadcastMAC, arpReq), VerdictReplied, DropNone},
		{"ARP unicast who-has service (refresh)", arpFrame(tServiceMAC, arpReq), VerdictReplied, DropNone},
		{"ARP probe for service (RFC 5227)", arpFrame(pkt.BroadcastMAC, with(arpReq, func(a *pkt.ARP) { a.SenderIP = [4]byte{} })), VerdictReplied, DropNone},
		{"ARP who-has another address", arpFrame(pkt.BroadcastMAC, with(arpReq, func(a *pkt.ARP) { a.TargetIP = tOtherIP })), VerdictDropped, DropNotForUs},
		{"ARP guest announcement", arpFrame(pkt.BroadcastMAC, with(arpReq, func(a *pkt.ARP) { a.TargetIP = tGuestIP })), VerdictDropped, DropNotForUs},
		{"ARP reply", arpFrame(tServiceMAC, with(arpReq, func(a *pkt.ARP) { a.Op = pkt.ARPReply })), VerdictDropped, DropIgnored},
		{"ARP op 3", arpFrame(tServiceMAC, with(arpReq, func(a *pkt.ARP) { a.Op = 3 })), VerdictDropped, DropUnsupported},
		{"ARP truncated", arpFrame(pkt.BroadcastMAC, arpReq)[:40], VerdictDropped, DropMalformed},
		{"ARP for IPv6", corrupt(arpFrame(pkt.BroadcastMAC, arpReq), 16), VerdictDropped, DropUnsupported},
		// IPv4.
		{"IPv4 bad header checksum", corrupt(data, 24), VerdictDropped, DropChecksum},
		{"IPv4 truncated", data[:30], VerdictDropped, DropMalformed},
		{"IPv4 to another address", udpFrame(tServiceMAC, tGuestIP, tOtherIP, 1, DefaultServicePort, nil), VerdictDropped, DropNotForUs},
		{"IPv4 fragment", ipFrame(ipSpec{dstMAC: tServiceMAC, src: tGuestIP, dst: tServiceIP, proto: pkt.ProtocolUDP, fragment: true}, make([]byte, 16)), VerdictDropped, DropFragment},
		{"TCP to service", ipFrame(ipSpec{dstMAC: tServiceMAC, src: tGuestIP, dst: tServiceIP, proto: pkt.ProtocolTCP}, make([]byte, 20)), VerdictDropped, DropUnsupported},
		{"TCP broadcast", ipFrame(ipSpec{dstMAC: pkt.BroadcastMAC, src: tGuestIP, dst: tBcastIP, proto: pkt.ProtocolTCP}, make([]byte, 20)), VerdictDropped, DropNotForUs},
		// RFC 792 echo.
		{"ICMP echo to service", ping, VerdictReplied, DropNone},
		{"ICMP echo to another address", icmpFrame(tOtherIP, pkt.ICMPEchoRequest, nil), VerdictDropped, DropNotForUs},
		{"ICMP echo reply", icmpFrame(tServiceIP, pkt.ICMPEchoReply, nil), VerdictDropped, DropUnsupported},
		{"ICMP bad checksum", corrupt(ping, 40), VerdictDropped, DropChecksum},
		{"ICMP truncated", ipFrame(ipSpec{dstMAC: tServiceMAC, src: tGuestIP, dst: tServiceIP, proto: pkt.ProtocolICMP}, []byte{8, 0, 0xf7, 0xff}), VerdictDropped, DropMalformed},
		// RFC 768 UDP.
		{"UDP to service port", data, VerdictDeliver, DropNone},
		{"UDP without checksum", udpZero, VerdictDeliver, DropNone},
		{"UDP empty payload", udpFrame(tServiceMAC, tGuestIP, tServiceIP, 1, DefaultServicePort, nil), VerdictDeliver, DropNone},
		{"UDP bad checksum", corrupt(data, 45), VerdictDropped, DropChecksum},
		{"UDP length beyond IP payload", corrupt(data, 39), VerdictDropped, DropMalformed},
		{"UDP to another port", udpFrame(tServiceMAC, tGuestIP, tServiceIP, 40000, 53, nil), VerdictDropped, DropNotForUs},
		{"UDP broadcast to service port", udpFrame(pkt.BroadcastMAC, tGuestIP, tBcastIP, 40000, DefaultServicePort, nil), VerdictDropped, DropNotForUs},
		{"UDP directed broadcast to service port", udpFrame(pkt.BroadcastMAC, tGuestIP, [4]byte{169, 254, 77, 255}, 40000, DefaultServicePort, nil), VerdictDropped, DropNotForUs},
		// RFC 2131 DHCP.
		{"DHCP garbage", udpFrame(pkt.BroadcastMAC, [4]byte{}, tBcastIP, 68, 67, []byte("not dhcp")), VerdictDropped, DropMalformed},
		{"DHCP RELEASE", dhcpFromClient(release), VerdictDropped, DropIgnored},
		{"DHCP DECLINE", dhcpFromClient(decline), VerdictDropped, DropIgnored},
		{"DHCP REQUEST for another server", dhcpFromClient(otherServer), VerdictDropped, DropNotForUs},
		{"DHCP without message type", dhcpFromClient(noType), VerdictDropped, DropUnsupported},
		{"DHCP server to server port", udpFrame(pkt.BroadcastMAC, tGuestIP, tBcastIP, 67, 67, release.ToBytes()), VerdictDropped, DropNotForUs},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPeer(t, LinkPeerOptions{})
			reply := make([]byte, 1514)
			var res Result
			v, n := p.Handle(tt.frame, reply, &res)
			if v != tt.verdict || res.Reason != tt.reason || res.Verdict != v {
				t.Fatalf("got %v/%v, want %v/%v", v, res.Reason, tt.verdict, tt.reason)
			}
			if (v == VerdictReplied) != (n > 0) || n != res.ReplyLen {
				t.Fatalf("reply length %d (result %d) for verdict %v", n, res.ReplyLen, v)
			}
			s := p.Stats()
			if s.Replied+s.Delivered+s.Dropped != 1 {
				t.Fatalf("stats count %d frames, want 1: %+v", s.Replied+s.Delivered+s.Dropped, s)
			}
			if v == VerdictDropped && s.DroppedBy[tt.reason] != 1 {
				t.Fatalf("DroppedBy[%v] = %d, want 1", tt.reason, s.DroppedBy[tt.reason])
			}
		})
	}
}

func TestHandleNilResult(t *testing.T) {
	p := newPeer(t, LinkPeerOptions{})
	reply := make([]byte, 128)
	v, n := p.Handle(arpFrame(pkt.BroadcastMAC, pkt.ARP{Op: pkt.ARPRequest, SenderMAC: tGuestMAC, SenderIP: tGuestIP, TargetIP: tServiceIP}), reply, nil)
	if v != VerdictReplied || n != 42 {
		t.Fatalf("got %v, %d", v, n)
	}
}

func TestARPReply(t *testing.T) {
	p := newPeer(t, LinkPeerOptions{})
	req := pkt.ARP{Op: pkt.ARPRequest, SenderMAC: tGuestMAC, SenderIP: tGuestIP, TargetIP: tServiceIP}
	reply := make([]byte, 128)
	v, n := p.Handle(arpFrame(pkt.BroadcastMAC, req), reply, nil)
	if v != VerdictReplied {
		t.Fatal(v)
	}
	eth, err := pkt.ParseEthernet(reply[:n])
	if err != nil || eth.Dst != tGuestMAC || eth.Src != tServiceMAC || eth.Type != pkt.EtherTypeARP {
		t.Fatalf("ethernet %+v, %v", eth, err)
	}
	a, err := pkt.ParseARP(eth.Payload)
	want := pkt.ARP{Op: pkt.ARPReply, SenderMAC: tServiceMAC, SenderIP: tServiceIP, TargetMAC: tGuestMAC, TargetIP: tGuestIP}
	if err != nil || a != want {
		t.Fatalf("ARP %+v, %v; want %+v", a, err, want)
	}
	if s := p.Stats(); s.ARPReplies != 1 || s.Replied != 1 {
		t.Fatalf("stats %+v", s)
	}
	// Too small a reply buffer.
	if v, _ := p.Handle(arpFrame(pkt.BroadcastMAC, req), reply[:41], nil); v != VerdictDropped || p.Stats().DroppedBy[DropNoRoom] != 1 {
		t.Fatalf("short reply buffer: %v", v)
	}
}

func TestEchoReply(t *testing.T) {
	payload := []byte("0123456789abcdefghijklmnopqrstuvwxyz")
	for _, inPlace := range []bool{false, true} {
		name := "separate buffer"
		if inPlace {
			name = "in place"
		}
		t.Run(name, func(t *testing.T) {
			p := newPeer(t, LinkPeerOptions{})
			frame := icmpFrame(tServiceIP, pkt.ICMPEchoRequest, payload)
			reply := make([]byte, 1514)
			if inPlace {
				reply = frame
			}
			v, n := p.Handle(frame, reply, nil)
			if v != VerdictReplied || n != 14+20+8+len(payload) {
				t.Fatalf("got %v, %d", v, n)
			}
			eth, _ := pkt.ParseEthernet(reply[:n])
			ip, err := pkt.ParseIPv4(eth.Payload)
			if err != nil {
				t.Fatal(err)
			}
			m, err := pkt.ParseICMPv4(ip.Payload)
			if err != nil {
				t.Fatal(err)
			}
			if eth.Dst != tGuestMAC || eth.Src != tServiceMAC || ip.Src != tServiceIP || ip.Dst != tGuestIP || ip.TOS != 0x10 ||
				m.Type != pkt.ICMPEchoReply || m.ID() != 0x4242 || m.Seq() != 3 || !bytes.Equal(m.Payload, payload) {
				t.Fatalf("reply eth %+v ip %+v icmp %+v", eth, ip, m)
			}
			if p.Stats().EchoReplies != 1 {
				t.Fatal("EchoReplies not counted")
			}
		})
	}
}

func TestEchoReplyNoRoom(t *testing.T) {
	p := newPeer(t, LinkPeerOptions{})
	frame := icmpFrame(tServiceIP, pkt.ICMPEchoRequest, make([]byte, 100))
	var res Result
	if v, _ := p.Handle(frame, make([]byte, len(frame)-1), &res); v != VerdictDropped || res.Reason != DropNoRoom {
		t.Fatalf("got %v/%v", v, res.Reason)
	}
}

func TestDeliver(t *testing.T) {
	p := newPeer(t, LinkPeerOptions{ServicePort: 9000})
	frame := udpFrame(tServiceMAC, tGuestIP, tServiceIP, 40000, 9000, []byte("a data message"))
	var res Result
	v, n := p.Handle(frame, nil, &res)
	if v != VerdictDeliver || n != 0 {
		t.Fatalf("got %v, %d", v, n)
	}
	if res.Src != netip.MustParseAddrPort("169.254.77.2:40000") || string(res.Payload) != "a data message" {
		t.Fatalf("result %+v", res)
	}
	if &res.Payload[0] != &frame[42] {
		t.Fatal("payload is a copy, not a view of the frame")
	}
	if p.Stats().Delivered != 1 {
		t.Fatal("Delivered not counted")
	}
}

func TestTrustGuestChecksums(t *testing.T) {
	// A guest that offloads checksums (VIRTIO_NET_F_CSUM) sends only the
	// pseudo-header sum in the UDP checksum field.
	frame := udpFrame(tServiceMAC, tGuestIP, tServiceIP, 40000, DefaultServicePort, []byte("partial"))
	ps := pkt.PseudoHeaderSumV4(tGuestIP, tServiceIP, pkt.ProtocolUDP, 8+7)
	frame[40], frame[41] = byte(ps>>8), byte(ps)
	if v, _ := newPeer(t, LinkPeerOptions{}).Handle(frame, nil, nil); v != VerdictDropped {
		t.Fatalf("strict peer: %v", v)
	}
	if v, _ := newPeer(t, LinkPeerOptions{TrustGuestChecksums: true}).Handle(frame, nil, nil); v != VerdictDeliver {
		t.Fatalf("trusting peer: %v", v)
	}
}

func TestLearned(t *testing.T) {
	p := newPeer(t, LinkPeerOptions{})
	if p.Learned() != nil {
		t.Fatal("learned a MAC before any frame")
	}
	// A broadcast-sourced frame teaches nothing.
	bogus := arpFrame(pkt.BroadcastMAC, pkt.ARP{Op: pkt.ARPRequest, SenderIP: tGuestIP, TargetIP: tServiceIP})
	copy(bogus[6:12], pkt.BroadcastMAC[:])
	p.Handle(bogus, make([]byte, 64), nil)
	if p.Learned() != nil {
		t.Fatal("learned a multicast MAC")
	}
	// Any well-formed frame teaches, even one that is dropped.
	p.Handle(udpFrame(tServiceMAC, tGuestIP, tOtherIP, 1, 2, nil), nil, nil)
	if got := p.Learned(); got.String() != tGuestMAC.String() {
		t.Fatalf("Learned = %v, want %v", got, tGuestMAC)
	}
}

func TestGratuitousARP(t *testing.T) {
	p := newPeer(t, LinkPeerOptions{})
	b := make([]byte, 64)
	n, err := p.GratuitousARP(b)
	if err != nil || n != 42 {
		t.Fatal(n, err)
	}
	eth, _ := pkt.ParseEthernet(b[:n])
	a, err := pkt.ParseARP(eth.Payload)
	if err != nil || !eth.Dst.IsBroadcast() || eth.Src != tServiceMAC || a.Op != pkt.ARPRequest ||
		a.SenderMAC != tServiceMAC || a.SenderIP != tServiceIP || a.TargetIP != tServiceIP || !a.TargetMAC.IsZero() || !a.IsGratuitous() {
		t.Fatalf("eth %+v arp %+v, %v", eth, a, err)
	}
	if _, err := p.GratuitousARP(b[:41]); !errors.Is(err, ErrShortBuffer) {
		t.Fatalf("short buffer: %v", err)
	}
}

func TestPutDatagram(t *testing.T) {
	p := newPeer(t, LinkPeerOptions{})
	dst := netip.MustParseAddrPort("169.254.77.2:40000")
	b := make([]byte, 256)
	check := func(n int, wantDst pkt.MAC, payload string) {
		t.Helper()
		eth, _ := pkt.ParseEthernet(b[:n])
		ip, err := pkt.ParseIPv4(eth.Payload)
		if err != nil {
			t.Fatal(err)
		}
		u, err := pkt.ParseUDP(ip.Payload)
		if err != nil || !u.ChecksumValid(ip.Src, ip.Dst) || u.Checksum == 0 {
			t.Fatalf("udp %+v, %v", u, err)
		}
		if eth.Dst != wantDst || eth.Src != tServiceMAC || ip.Src != tServiceIP || ip.Dst != tGuestIP ||
			u.SrcPort != DefaultServicePort || u.DstPort != 40000 || string(u.Payload) != payload {
			t.Fatalf("eth %+v ip %+v udp %+v", eth, ip, u)
		}
	}
	n, err := p.PutDatagram(b, dst, []byte("before learning"))
	if err != nil {
		t.Fatal(err)
	}
	check(n, pkt.BroadcastMAC, "before learning")

	p.Handle(udpFrame(tServiceMAC, tGuestIP, tServiceIP, 40000, DefaultServicePort, nil), nil, nil)
	n, err = p.PutDatagram(b, dst, []byte("after learning"))
	if err != nil {
		t.Fatal(err)
	}
	check(n, tGuestMAC, "after learning")

	// Payload built in place.
	m := copy(b[DatagramHeaderLen:], "in place")
	n, err = p.PutDatagram(b, dst, b[DatagramHeaderLen:DatagramHeaderLen+m])
	if err != nil {
		t.Fatal(err)
	}
	check(n, tGuestMAC, "in place")

	if _, err := p.PutDatagram(b[:DatagramHeaderLen+3], dst, []byte("four")); !errors.Is(err, ErrShortBuffer) {
		t.Fatalf("short buffer: %v", err)
	}
	if _, err := p.PutDatagram(b, netip.MustParseAddrPort("[fe80::1]:1"), nil); !errors.Is(err, ErrNotIPv4) {
		t.Fatalf("IPv6 destination: %v", err)
	}
	big := make([]byte, 70000)
	if _, err := p.PutDatagram(big, dst, big[:65508]); !errors.Is(err, ErrShortBuffer) {
		t.Fatalf("oversized payload: %v", err)
	}
}

func TestStatsAndStrings(t *testing.T) {
	p := newPeer(t, LinkPeerOptions{})
	reply := make([]byte, 1514)
	frames := [][]byte{
		arpFrame(pkt.BroadcastMAC, pkt.ARP{Op: pkt.ARPRequest, SenderMAC: tGuestMAC, SenderIP: tGuestIP, TargetIP: tServiceIP}),
		icmpFrame(tServiceIP, pkt.ICMPEchoRequest, nil),
		udpFrame(tServiceMAC, tGuestIP, tServiceIP, 1, DefaultServicePort, nil),
		udpFrame(tServiceMAC, tGuestIP, tServiceIP, 1, DefaultServicePort, nil),
		make([]byte, 3),
	}
	for _, f := range frames {
		p.Handle(f, reply, nil)
	}
	s := p.Stats()
	if s.Replied != 2 || s.ARPReplies != 1 || s.EchoReplies != 1 || s.Delivered != 2 || s.Dropped != 1 || s.DroppedBy[DropMalformed] != 1 {
		t.Fatalf("stats %+v", s)
	}
	for r := DropNone; r < numDropReasons; r++ {
		if r.String() == "" || r.String()[0] == 'D' {
			t.Errorf("DropReason(%d) has no name", r)
		}
	}
	if VerdictDeliver.String() != "deliver" || Verdict(9).String() != "Verdict(9)" || DropReason(99).String() != "DropReason(99)" {
		t.Error("String methods")
	}
}

// TestHandleConcurrently runs one Handle caller per queue; run with -race.
func TestHandleConcurrently(t *testing.T) {
	p := newPeer(t, LinkPeerOptions{})
	frames := [][]byte{
		arpFrame(pkt.BroadcastMAC, pkt.ARP{Op: pkt.ARPRequest, SenderMAC: tGuestMAC, SenderIP: tGuestIP, TargetIP: tServiceIP}),
		icmpFrame(tServiceIP, pkt.ICMPEchoRequest, []byte("x")),
		udpFrame(tServiceMAC, tGuestIP, tServiceIP, 1, DefaultServicePort, []byte("y")),
	}
	const queues, perQueue = 4, 200
	var wg sync.WaitGroup
	for q := 0; q < queues; q++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reply := make([]byte, 1514)
			for i := 0; i < perQueue; i++ {
				p.Handle(frames[i%len(frames)], reply, nil)
				_ = p.Learned()
			}
		}()
	}
	wg.Wait()
	s := p.Stats()
	if s.Replied+s.Delivered+s.Dropped != queues*perQueue || s.Dropped != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestHotPathsDoNotAllocate: everything but DHCP runs without allocating.
func TestHotPathsDoNotAllocate(t *testing.T) {
	p := newPeer(t, LinkPeerOptions{})
	arp := arpFrame(pkt.BroadcastMAC, pkt.ARP{Op: pkt.ARPRequest, SenderMAC: tGuestMAC, SenderIP: tGuestIP, TargetIP: tServiceIP})
	ping := icmpFrame(tServiceIP, pkt.ICMPEchoRequest, make([]byte, 56))
	data := udpFrame(tServiceMAC, tGuestIP, tServiceIP, 40000, DefaultServicePort, make([]byte, 512))
	drops := [][]byte{
		make([]byte, 5),
		corrupt(data, 24),
		corrupt(data, 45),
		udpFrame(tServiceMAC, tGuestIP, tOtherIP, 1, 2, nil),
		icmpFrame(tServiceIP, pkt.ICMPEchoReply, nil),
	}
	reply := make([]byte, 1514)
	out := make([]byte, 1514)
	payload := make([]byte, 512)
	dst := netip.MustParseAddrPort("169.254.77.2:40000")
	var total int
	allocs := testing.AllocsPerRun(1000, func() {
		var res Result
		for _, f := range [][]byte{arp, ping, data} {
			v, n := p.Handle(f, reply, &res)
			if v == VerdictDropped {
				panic(res.Reason.String())
			}
			total += n + len(res.Payload)
		}
		for _, f := range drops {
			if v, _ := p.Handle(f, reply, nil); v != VerdictDropped {
				panic("not dropped")
			}
		}
		n, err := p.PutDatagram(out, dst, payload)
		if err != nil {
			panic(err)
		}
		n2, _ := p.GratuitousARP(out)
		total += n + n2
		_ = p.Stats()
	})
	if allocs != 0 {
		t.Fatalf("hot paths allocate %v times per run", allocs)
	}
}

func BenchmarkHandle(b *testing.B) {
	p := newPeer(b, LinkPeerOptions{})
	cases := []struct {
		name  string
		frame []byte
	}{
		{"ARP", arpFrame(pkt.BroadcastMAC, pkt.ARP{Op: pkt.ARPRequest, SenderMAC: tGuestMAC, SenderIP: tGuestIP, TargetIP: tServiceIP})},
		{"Echo56", icmpFrame(tServiceIP, pkt.ICMPEchoRequest, make([]byte, 56))},
		{"Deliver64", udpFrame(tServiceMAC, tGuestIP, tServiceIP, 40000, DefaultServicePort, make([]byte, 64))},
		{"Deliver1400", udpFrame(tServiceMAC, tGuestIP, tServiceIP, 40000, DefaultServicePort, make([]byte, 1400))},
		{"DropNotForUs", udpFrame(tServiceMAC, tGuestIP, tOtherIP, 1, 2, nil)},
	}
	reply := make([]byte, 1514)
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(c.frame)))
			b.ReportAllocs()
			var res Result
			for b.Loop() {
				p.Handle(c.frame, reply, &res)
			}
		})
	}
}

func BenchmarkPutDatagram1400(b *testing.B) {
	p := newPeer(b, LinkPeerOptions{})
	out := make([]byte, 1514)
	payload := make([]byte, 1400)
	dst := netip.MustParseAddrPort("169.254.77.2:40000")
	b.SetBytes(1400)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.PutDatagram(out, dst, payload); err != nil {
			b.Fatal(err)
		}
	}
}

// udhcpcMessage encodes a DHCP client message the way busybox udhcpc
// (networking/udhcp/dhcpc.c, 1.35) does, by hand rather than with dhcpv4:
// BOOTREQUEST, Ethernet chaddr, the broadcast flag when asked for, then
// message type, client identifier (type 1 + MAC), the extra options,
// maximum message size 576, the default parameter request list and the
// vendor class, padded to the BOOTP minimum of 300 bytes.
func udhcpcMessage(typ dhcpv4.MessageType, xid uint32, ciaddr [4]byte, broadcast bool, extra ...[]byte) []byte {
	m := make([]byte, 240, 300)
	m[0], m[1], m[2] = 1, 1, 6 // op, htype, hlen
	m[4], m[5], m[6], m[7] = byte(xid>>24), byte(xid>>16), byte(xid>>8), byte(xid)
	if broadcast {
		m[10] = 0x80
	}
	copy(m[12:16], ciaddr[:])
	copy(m[28:34], tGuestMAC[:])
	copy(m[236:240], []byte{99, 130, 83, 99})
	m = append(m, 53, 1, byte(typ))
	m = append(m, 61, 7, 1)
	m = append(m, tGuestMAC[:]...)
	for _, o := range extra {
		m = append(m, o...)
	}
	m = append(m, 57, 2, 0x02, 0x40)
	m = append(m, 55, 7, 1, 3, 6, 12, 15, 28, 42) // subnet, router, dns, hostname, domain, broadcast, ntp
	m = append(m, 60, 12)
	m = append(m, "udhcp 1.35.0"...)
	m = append(m, 255)
	for len(m) < 300 {
		m = append(m, 0)
	}
	return m
}

func optIP(code byte, ip [4]byte) []byte { return []byte{code, 4, ip[0], ip[1], ip[2], ip[3]} }

// dhcpReply handles frame and decodes the reply the peer sends back.
func dhcpReply(t *testing.T, p *LinkPeer, frame []byte) (pkt.Ethernet, pkt.IPv4, pkt.UDP, *dhcpv4.DHCPv4) {
	t.Helper()
	reply := make([]byte, 1514)
	var res Result
	v, n := p.Handle(frame, reply, &res)
	if v != VerdictReplied {
		t.Fatalf("verdict %v/%v, want replied", v, res.Reason)
	}
	eth, err := pkt.ParseEthernet(reply[:n])
	if err != nil {
		t.Fatal(err)
	}
	ip, err := pkt.ParseIPv4(eth.Payload)
	if err != nil {
		t.Fatal(err)
	}
	u, err := pkt.ParseUDP(ip.Payload)
	if err != nil || !u.ChecksumValid(ip.Src, ip.Dst) {
		t.Fatalf("udp %+v, %v", u, err)
	}
	if eth.Src != tServiceMAC || ip.Src != tServiceIP || u.SrcPort != 67 || u.DstPort != 68 {
		t.Fatalf("reply from %v %v:%d to port %d", eth.Src, ip.Src, u.SrcPort, u.DstPort)
	}
	m, err := dhcpv4.FromBytes(u.Payload)
	if err != nil {
		t.Fatal(err)
	}
	return eth, ip, u, m
}

// checkLease checks the fields every OFFER and ACK with a lease carries.
func checkLease(t *testing.T, m *dhcpv4.DHCPv4, typ dhcpv4.MessageType, xid uint32) {
	t.Helper()
	if m.OpCode != dhcpv4.OpcodeBootReply || m.MessageType() != typ || m.TransactionID != (dhcpv4.TransactionID{byte(xid >> 24), byte(xid >> 16), byte(xid >> 8), byte(xid)}) {
		t.Fatalf("op %v type %v xid %v", m.OpCode, m.MessageType(), m.TransactionID)
	}
	if !m.YourIPAddr.Equal(net.IP(tGuestIP[:])) || m.ClientHWAddr.String() != tGuestMAC.String() {
		t.Fatalf("yiaddr %v chaddr %v", m.YourIPAddr, m.ClientHWAddr)
	}
	if !m.ServerIdentifier().Equal(net.IP(tServiceIP[:])) {
		t.Fatalf("server identifier %v", m.ServerIdentifier())
	}
	if m.SubnetMask().String() != "ffffff00" || !m.BroadcastAddress().Equal(net.IPv4(169, 254, 77, 255)) {
		t.Fatalf("mask %v broadcast %v", m.SubnetMask(), m.BroadcastAddress())
	}
	if m.IPAddressLeaseTime(0) != DefaultLeaseTime || m.IPAddressRenewalTime(0) != DefaultLeaseTime/2 ||
		m.IPAddressRebindingTime(0) != DefaultLeaseTime/8*7 {
		t.Fatalf("lease %v renew %v rebind %v", m.IPAddressLeaseTime(0), m.IPAddressRenewalTime(0), m.IPAddressRebindingTime(0))
	}
	// RFC 6842: the client identifier comes back.
	if got := m.GetOneOption(dhcpv4.OptionClientIdentifier); !bytes.Equal(got, append([]byte{1}, tGuestMAC[:]...)) {
		t.Fatalf("client identifier %x", got)
	}
	// The guest asked for router, DNS and domain: it gets none of them,
	// so its default route and resolver stay untouched.
	for _, code := range []dhcpv4.OptionCode{dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer, dhcpv4.OptionDomainName, dhcpv4.OptionHostName} {
		if m.Options.Has(code) {
			t.Fatalf("reply carries option %v", code)
		}
	}
}

func TestGuestGetsLeaseFromBusyboxUdhcpc(t *testing.T) {
	p := newPeer(t, LinkPeerOptions{})
	const xid = 0x1a2b3c4d

	// INIT: DHCPDISCOVER, broadcast from 0.0.0.0 with the broadcast flag.
	discover := udpFrame(pkt.BroadcastMAC, [4]byte{}, tBcastIP, 68, 67, udhcpcMessage(dhcpv4.MessageTypeDiscover, xid, [4]byte{}, true))
	eth, ip, _, offer := dhcpReply(t, p, discover)
	if !eth.Dst.IsBroadcast() || ip.Dst != tBcastIP || !offer.IsBroadcast() {
		t.Fatalf("OFFER to %v %v, broadcast flag %v; want broadcast", eth.Dst, ip.Dst, offer.IsBroadcast())
	}
	checkLease(t, offer, dhcpv4.MessageTypeOffer, xid)
	if offer.Options.Has(dhcpv4.OptionInterfaceMTU) {
		t.Fatal("MTU offered though none configured")
	}

	// SELECTING: DHCPREQUEST naming the server and the offered address.
	request := udpFrame(pkt.BroadcastMAC, [4]byte{}, tBcastIP, 68, 67, udhcpcMessage(dhcpv4.MessageTypeRequest, xid+1, [4]byte{}, true,
		optIP(50, tGuestIP), optIP(54, tServiceIP)))
	eth, ip, _, ack := dhcpReply(t, p, request)
	if !eth.Dst.IsBroadcast() || ip.Dst != tBcastIP {
		t.Fatalf("ACK to %v %v, want broadcast", eth.Dst, ip.Dst)
	}
	checkLease(t, ack, dhcpv4.MessageTypeAck, xid+1)

	// RENEWING: unicast from the leased address, ciaddr set, no flag.
	renew := udpFrame(tServiceMAC, tGuestIP, tServiceIP, 68, 67, udhcpcMessage(dhcpv4.MessageTypeRequest, xid+2, tGuestIP, false))
	eth, ip, _, ack = dhcpReply(t, p, renew)
	if eth.Dst != tGuestMAC || ip.Dst != tGuestIP {
		t.Fatalf("renewal ACK to %v %v, want unicast to the guest", eth.Dst, ip.Dst)
	}
	checkLease(t, ack, dhcpv4.MessageTypeAck, xid+2)

	if s := p.Stats(); s.DHCPReplies != 3 || s.Replied != 3 {
		t.Fatalf("stats %+v", s)
	}
}

func TestDHCPReplies(t *testing.T) {
	bcastFrame := func(msg []byte) []byte { return udpFrame(pkt.BroadcastMAC, [4]byte{}, tBcastIP, 68, 67, msg) }
	tests := []struct {
		name   string
		opts   LinkPeerOptions
		frame  []byte
		typ    dhcpv4.MessageType
		dstMAC pkt.MAC
		dstIP  [4]byte
		yiaddr bool
		check  func(t *testing.T, m *dhcpv4.DHCPv4)
	}{
		{
			name: "DISCOVER without broadcast flag is answered by unicast (RFC 2131 4.1)", frame: bcastFrame(udhcpcMessage(dhcpv4.MessageTypeDiscover, 1, [4]byte{}, false)),
			typ: dhcpv4.MessageTypeOffer, dstMAC: tGuestMAC, dstIP: tGuestIP, yiaddr: true,
		},
		{
			name: "INIT-REBOOT for another address gets a broadcast NAK", frame: bcastFrame(udhcpcMessage(dhcpv4.MessageTypeRequest, 2, [4]byte{}, false, optIP(50, tOtherIP))),
			typ: dhcpv4.MessageTypeNak, dstMAC: pkt.BroadcastMAC, dstIP: tBcastIP,
			check: func(t *testing.T, m *dhcpv4.DHCPv4) {
				if m.Options.Has(dhcpv4.OptionIPAddressLeaseTime) || m.Options.Has(dhcpv4.OptionSubnetMask) {
					t.Error("NAK carries lease options")
				}
			},
		},
		{
			name: "INIT-REBOOT for the guest address gets an ACK", frame: bcastFrame(udhcpcMessage(dhcpv4.MessageTypeRequest, 3, [4]byte{}, true, optIP(50, tGuestIP))),
			typ: dhcpv4.MessageTypeAck, dstMAC: pkt.BroadcastMAC, dstIP: tBcastIP, yiaddr: true,
		},
		{
			name: "INFORM gets an ACK without lease, to ciaddr", frame: udpFrame(tServiceMAC, tGuestIP, tServiceIP, 68, 67, udhcpcMessage(dhcpv4.MessageTypeInform, 4, tGuestIP, false)),
			typ: dhcpv4.MessageTypeAck, dstMAC: tGuestMAC, dstIP: tGuestIP,
			check: func(t *testing.T, m *dhcpv4.DHCPv4) {
				if m.Options.Has(dhcpv4.OptionIPAddressLeaseTime) || m.SubnetMask() == nil {
					t.Error("INFORM ACK must carry configuration but no lease")
				}
			},
		},
		{
			name: "MTU option when configured", opts: LinkPeerOptions{MTU: 1500}, frame: bcastFrame(udhcpcMessage(dhcpv4.MessageTypeDiscover, 5, [4]byte{}, true)),
			typ: dhcpv4.MessageTypeOffer, dstMAC: pkt.BroadcastMAC, dstIP: tBcastIP, yiaddr: true,
			check: func(t *testing.T, m *dhcpv4.DHCPv4) {
				if got := m.GetOneOption(dhcpv4.OptionInterfaceMTU); !bytes.Equal(got, []byte{0x05, 0xdc}) {
					t.Errorf("MTU option %x, want 05dc", got)
				}
			},
		},
		{
			name: "infinite lease has no renewal times", opts: LinkPeerOptions{LeaseTime: InfiniteLease}, frame: bcastFrame(udhcpcMessage(dhcpv4.MessageTypeDiscover, 6, [4]byte{}, true)),
			typ: dhcpv4.MessageTypeOffer, dstMAC: pkt.BroadcastMAC, dstIP: tBcastIP, yiaddr: true,
			check: func(t *testing.T, m *dhcpv4.DHCPv4) {
				if got := m.GetOneOption(dhcpv4.OptionIPAddressLeaseTime); !bytes.Equal(got, []byte{0xff, 0xff, 0xff, 0xff}) ||
					m.Options.Has(dhcpv4.OptionRenewTimeValue) || m.Options.Has(dhcpv4.OptionRebindingTimeValue) {
					t.Errorf("lease %x, options %v", got, m.Options)
				}
			},
		},
		{
			name:  "/31 link has no broadcast address",
			opts:  LinkPeerOptions{ServiceIP: netip.AddrFrom4(tServiceIP), GuestIP: netip.PrefixFrom(netip.AddrFrom4([4]byte{169, 254, 77, 0}), 31)},
			frame: bcastFrame(udhcpcMessage(dhcpv4.MessageTypeDiscover, 7, [4]byte{}, true)),
			typ:   dhcpv4.MessageTypeOffer, dstMAC: pkt.BroadcastMAC, dstIP: tBcastIP,
			check: func(t *testing.T, m *dhcpv4.DHCPv4) {
				if m.Options.Has(dhcpv4.OptionBroadcastAddress) || m.SubnetMask().String() != "fffffffe" || !m.YourIPAddr.Equal(net.IPv4(169, 254, 77, 0)) {
					t.Errorf("options %v yiaddr %v", m.Options, m.YourIPAddr)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPeer(t, tt.opts)
			eth, ip, _, m := dhcpReply(t, p, tt.frame)
			if m.MessageType() != tt.typ || eth.Dst != tt.dstMAC || ip.Dst != tt.dstIP {
				t.Fatalf("%v to %v %v, want %v to %v %v", m.MessageType(), eth.Dst, ip.Dst, tt.typ, tt.dstMAC, tt.dstIP)
			}
			if !m.ServerIdentifier().Equal(net.IP(tServiceIP[:])) {
				t.Fatalf("server identifier %v", m.ServerIdentifier())
			}
			if tt.yiaddr != m.YourIPAddr.Equal(net.IP(tGuestIP[:])) {
				t.Fatalf("yiaddr %v", m.YourIPAddr)
			}
			if m.Options.Has(dhcpv4.OptionRouter) {
				t.Fatal("router option")
			}
			if tt.check != nil {
				tt.check(t, m)
			}
		})
	}
}

func FuzzLinkPeerHandle(f *testing.F) {
	// testdata/fuzz/FuzzLinkPeerHandle holds these and more, as files.
	f.Add(arpFrame(pkt.BroadcastMAC, pkt.ARP{Op: pkt.ARPRequest, SenderMAC: tGuestMAC, SenderIP: tGuestIP, TargetIP: tServiceIP}))
	f.Add(icmpFrame(tServiceIP, pkt.ICMPEchoRequest, []byte("ping")))
	f.Add(udpFrame(tServiceMAC, tGuestIP, tServiceIP, 40000, DefaultServicePort, []byte("data")))
	f.Add(udpFrame(pkt.BroadcastMAC, [4]byte{}, tBcastIP, 68, 67, udhcpcMessage(dhcpv4.MessageTypeDiscover, 1, [4]byte{}, true)))
	p := newPeer(f, LinkPeerOptions{MTU: 1500})
	f.Fuzz(func(t *testing.T, frame []byte) {
		reply := make([]byte, 1514)
		var res Result
		v, n := p.Handle(frame, reply, &res)
		switch v {
		case VerdictReplied:
			if n <= 0 || n > len(reply) || res.Reason != DropNone {
				t.Fatalf("replied %d bytes, reason %v", n, res.Reason)
			}
			eth, err := pkt.ParseEthernet(reply[:n])
			if err != nil || eth.Src != tServiceMAC {
				t.Fatalf("reply %x: %v", reply[:n], err)
			}
			if eth.Type == pkt.EtherTypeIPv4 {
				ip, err := pkt.ParseIPv4(eth.Payload)
				if err != nil || ip.Src != tServiceIP {
					t.Fatalf("reply IPv4 %+v: %v", ip, err)
				}
			}
		case VerdictDeliver:
			if n != 0 || !res.Src.Addr().Is4() || len(res.Payload) > len(frame) {
				t.Fatalf("deliver %+v", res)
			}
			if len(res.Payload) > 0 && !bytes.Contains(frame, res.Payload) {
				t.Fatal("payload is not part of the frame")
			}
		case VerdictDropped:
			if n != 0 || res.Reason == DropNone || res.Reason >= numDropReasons {
				t.Fatalf("dropped with %d bytes, reason %v", n, res.Reason)
			}
		default:
			t.Fatalf("verdict %v", v)
		}
		// In place must decide the same way.
		in := append([]byte(nil), frame...)
		if v2, n2 := p.Handle(in, in, nil); v2 != v || (v2 == VerdictReplied && n2 <= len(in) && !bytes.Equal(in[:n2], reply[:n])) {
			if !(v == VerdictReplied && v2 == VerdictDropped) { // a frame may be too short to hold its DHCP reply
				t.Fatalf("in place: %v %d, separate buffer: %v %d", v2, n2, v, n)
			}
		}
	})
}
