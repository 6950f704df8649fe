package netstack

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/pkt"
)

var (
	ourMAC   = pkt.MAC{0x02, 0, 0, 0, 0, 1}
	theirMAC = pkt.MAC{0x02, 0, 0, 0, 0, 2}
	ourIP    = netip.MustParseAddr("10.1.0.1")
	theirIP  = netip.MustParseAddr("10.1.0.2")
)

func newHost(t testing.TB, cfg Config) *Host {
	t.Helper()
	if cfg.MAC.IsZero() {
		cfg.MAC = ourMAC
	}
	if !cfg.Addr.IsValid() {
		cfg.Addr = netip.PrefixFrom(ourIP, 24)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// peerHost is the other end of the link, built with the same code.
func peerHost(t testing.TB) *Host {
	return newHost(t, Config{MAC: theirMAC, Addr: netip.PrefixFrom(theirIP, 24), Neighbours: 4})
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{MAC: pkt.BroadcastMAC, Addr: netip.MustParsePrefix("10.0.0.1/24")},
		{MAC: ourMAC, Addr: netip.MustParsePrefix("224.0.0.1/24")},
		{MAC: ourMAC, Addr: netip.MustParsePrefix("0.0.0.0/0")},
		{MAC: ourMAC, Addr: netip.MustParsePrefix("2001:db8::1/64")},
		{MAC: ourMAC},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

// TestARPResolvesBothWays: a request from the peer is answered and teaches
// us the peer; our request is answered by the peer's host and its reply
// teaches us too; ARP for other addresses is not answered.
func TestARPResolvesBothWays(t *testing.T) {
	us, them := newHost(t, Config{Neighbours: 4}), peerHost(t)
	frame := make([]byte, 1514)
	reply := make([]byte, 1514)
	var res Result

	n, err := them.PutARPRequest(frame, ourIP)
	if err != nil || n != pkt.MinFrameLen {
		t.Fatalf("PutARPRequest: %d, %v", n, err)
	}
	us.Handle(frame[:n], reply, &res)
	if res.Verdict != VerdictReplied {
		t.Fatalf("request for our address: %v %v", res.Verdict, res.Reason)
	}
	if mac, ok := us.Neighbour(theirIP); !ok || mac != theirMAC {
		t.Errorf("the asker was not learned: %v %v", mac, ok)
	}
	// The peer learns us from our reply.
	them.Handle(reply[:res.ReplyLen], frame, &res)
	if res.Verdict != VerdictDropped || res.Reason != DropIgnored {
		t.Errorf("reply at the asker: %v %v", res.Verdict, res.Reason)
	}
	if mac, ok := them.Neighbour(ourIP); !ok || mac != ourMAC {
		t.Errorf("the asker did not learn from the reply: %v %v", mac, ok)
	}
	if arp, _ := us.Replies(); arp != 1 {
		t.Errorf("ARP replies = %d", arp)
	}

	// ARP for someone else: not answered, not learned.
	stranger := newHost(t, Config{MAC: pkt.MAC{0x02, 0, 0, 0, 0, 9}, Addr: netip.MustParsePrefix("10.1.0.9/24")})
	n, _ = stranger.PutARPRequest(frame, netip.MustParseAddr("10.1.0.77"))
	us.Handle(frame[:n], reply, &res)
	if res.Reason != DropNotForUs {
		t.Errorf("ARP for another address: %v %v", res.Verdict, res.Reason)
	}
	if _, ok := us.Neighbour(netip.MustParseAddr("10.1.0.9")); ok {
		t.Error("learned a host that talked to someone else")
	}
}

func TestUDPRoundTripAndChecksums(t *testing.T) {
	us, them := newHost(t, Config{}), peerHost(t)
	frame := make([]byte, 1514)
	payload := []byte("the wire header and a message")
	n, err := them.PutUDPFrame(frame, ourMAC, ourIP.As4(), 7000, 7078, payload)
	if err != nil {
		t.Fatal(err)
	}
	var res Result
	us.Handle(frame[:n], nil, &res)
	if res.Verdict != VerdictDeliver || res.Src != netip.AddrPortFrom(theirIP, 7000) || res.DstPort != 7078 ||
		res.Broadcast || !bytes.Equal(res.Payload, payload) || res.SrcMAC != theirMAC {
		t.Fatalf("delivered %+v", res)
	}
	// A corrupted UDP checksum is dropped unless checksums are trusted.
	frame[n-1] ^= 0xff
	us.Handle(frame[:n], nil, &res)
	if res.Reason != DropChecksum {
		t.Errorf("corrupt payload: %v %v", res.Verdict, res.Reason)
	}
	trusting := newHost(t, Config{TrustChecksums: true})
	trusting.Handle(frame[:n], nil, &res)
	if res.Verdict != VerdictDeliver {
		t.Errorf("trusting host dropped it: %v", res.Reason)
	}
	// Addressed to another host on the link.
	n, _ = them.PutUDPFrame(frame, ourMAC, [4]byte{10, 1, 0, 3}, 7000, 7078, payload)
	us.Handle(frame[:n], nil, &res)
	if res.Reason != DropNotForUs {
		t.Errorf("datagram for 10.1.0.3: %v %v", res.Verdict, res.Reason)
	}
	// Broadcasts only when asked for.
	n, _ = them.PutUDPFrame(frame, pkt.BroadcastMAC, LimitedBroadcast, 68, 67, payload)
	us.Handle(frame[:n], nil, &res)
	if res.Reason != DropNotForUs {
		t.Errorf("broadcast without AcceptBroadcast: %v %v", res.Verdict, res.Reason)
	}
	bc := newHost(t, Config{AcceptBroadcast: true})
	bc.Handle(frame[:n], nil, &res)
	if res.Verdict != VerdictDeliver || !res.Broadcast {
		t.Errorf("broadcast with AcceptBroadcast: %+v", res)
	}
	if d, ok := bc.Broadcast(); !ok || d != [4]byte{10, 1, 0, 255} {
		t.Errorf("directed broadcast %v %v", d, ok)
	}
}

func TestEchoReplyInPlace(t *testing.T) {
	us := newHost(t, Config{})
	frame := make([]byte, 1514)
	const hdrs = pkt.EthernetHeaderLen + pkt.IPv4MinHeaderLen
	il, _ := pkt.PutICMPv4Echo(frame[hdrs:], pkt.ICMPEchoRequest, 7, 9, []byte("ping"))
	pkt.PutIPv4Header(frame[pkt.EthernetHeaderLen:], &pkt.IPv4Header{Src: theirIP.As4(), Dst: ourIP.As4(), Protocol: pkt.ProtocolICMP}, il)
	pkt.PutEthernetHeader(frame, ourMAC, theirMAC, pkt.EtherTypeIPv4)
	var res Result
	us.Handle(frame[:hdrs+il], frame, &res)
	if res.Verdict != VerdictReplied {
		t.Fatalf("echo request: %v %v", res.Verdict, res.Reason)
	}
	eth, _ := pkt.ParseEthernet(frame[:res.ReplyLen])
	ip, _ := pkt.ParseIPv4(eth.Payload)
	m, err := pkt.ParseICMPv4(ip.Payload)
	if err != nil || m.Type != pkt.ICMPEchoReply || m.ID() != 7 || m.Seq() != 9 || string(m.Payload) != "ping" ||
		eth.Dst != theirMAC || ip.Dst != theirIP.As4() {
		t.Errorf("reply %+v %+v %+v %v", eth, ip, m, err)
	}
}

func TestNeighbourTableIsBounded(t *testing.T) {
	us := newHost(t, Config{Neighbours: 3})
	for i := 2; i < 10; i++ {
		us.Learn(netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}), pkt.MAC{2, 0, 0, 0, 0, byte(i)})
	}
	if n := len(us.Neighbours()); n != 3 {
		t.Errorf("%d neighbours, want 3", n)
	}
	us.Learn(netip.MustParseAddr("192.168.1.1"), theirMAC)
	if _, ok := us.Neighbour(netip.MustParseAddr("192.168.1.1")); ok {
		t.Error("learned an address off the link")
	}
	none := newHost(t, Config{})
	none.Learn(theirIP, theirMAC)
	if _, ok := none.Neighbour(theirIP); ok {
		t.Error("a host without a table learned")
	}
}

func TestResolverPacesAndGivesUp(t *testing.T) {
	r := Resolver{Interval: 100 * time.Millisecond, Timeout: time.Second}
	t0 := time.Unix(1000, 0)
	if send, fail := r.Want(theirIP, t0); !send || fail {
		t.Fatal("first want does not send")
	}
	if send, fail := r.Want(theirIP, t0.Add(50*time.Millisecond)); send || fail {
		t.Error("sent again within the interval, or gave up early")
	}
	if send, _ := r.Want(theirIP, t0.Add(150*time.Millisecond)); !send {
		t.Error("did not resend after the interval")
	}
	if _, fail := r.Want(theirIP, t0.Add(1500*time.Millisecond)); !fail {
		t.Error("did not give up after the timeout")
	}
	// Given up, it keeps asking, paced, and keeps failing at once.
	if send, fail := r.Want(theirIP, t0.Add(5*time.Second)); !send || !fail {
		t.Errorf("long after: send %v fail %v, want both", send, fail)
	}
	if send, _ := r.Want(theirIP, t0.Add(5*time.Second+time.Millisecond)); send {
		t.Error("not paced after giving up")
	}
	r.Resolved(theirIP)
	if send, fail := r.Want(theirIP, t0.Add(6*time.Second)); !send || fail {
		t.Error("Resolved did not forget the address")
	}
}

func TestHandleDoesNotAllocate(t *testing.T) {
	us, them := newHost(t, Config{Neighbours: 4}), peerHost(t)
	frame := make([]byte, 1514)
	n, _ := them.PutUDPFrame(frame, ourMAC, ourIP.As4(), 7000, 7078, make([]byte, 512))
	var res Result
	if a := testing.AllocsPerRun(1000, func() { us.Handle(frame[:n], nil, &res) }); a != 0 {
		t.Errorf("Handle allocates %.1f per datagram", a)
	}
	out := make([]byte, 1514)
	if a := testing.AllocsPerRun(1000, func() { them.PutUDPFrame(out, ourMAC, ourIP.As4(), 7000, 7078, frame[:512]) }); a != 0 {
		t.Errorf("PutUDPFrame allocates %.1f", a)
	}
	us.Learn(theirIP, theirMAC)
	if a := testing.AllocsPerRun(1000, func() { us.Neighbour(theirIP) }); a != 0 {
		t.Errorf("Neighbour allocates %.1f", a)
	}
}

// FuzzHandle: any frame gets a verdict without panicking, and a reply
// never exceeds the reply buffer.
func FuzzHandle(f *testing.F) {
	them := newHost(f, Config{MAC: theirMAC, Addr: netip.PrefixFrom(theirIP, 24)})
	b := make([]byte, 1514)
	n, _ := them.PutUDPFrame(b, ourMAC, ourIP.As4(), 1, 2, []byte("seed"))
	f.Add(append([]byte(nil), b[:n]...))
	n, _ = them.PutARPRequest(b, ourIP)
	f.Add(append([]byte(nil), b[:n]...))
	f.Add([]byte{})
	us := newHost(f, Config{Neighbours: 8, AcceptBroadcast: true})
	reply := make([]byte, 1514)
	f.Fuzz(func(t *testing.T, frame []byte) {
		var res Result
		us.Handle(frame, reply, &res)
		switch res.Verdict {
		case VerdictReplied:
			if res.ReplyLen <= 0 || res.ReplyLen > len(reply) {
				t.Fatalf("reply length %d", res.ReplyLen)
			}
		case VerdictDeliver:
			if len(res.Payload) > len(frame) {
				t.Fatalf("payload longer than the frame")
			}
		case VerdictDropped:
			if res.Reason == DropNone || res.Reason >= NumDropReasons {
				t.Fatalf("drop without a reason: %v", res.Reason)
			}
		}
	})
}
