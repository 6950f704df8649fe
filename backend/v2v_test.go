package backend

import (
	"bytes"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/guestproto"
	"github.com/veloce-io/veloce/internal/pkt"
	"github.com/veloce-io/veloce/vhostuser"
	vt "github.com/veloce-io/veloce/vhostuser/vhostusertest"
)

// TestPortTrustsGuestChecksums: a port answers a guest's request whose
// UDP checksum is wrong (the port does not verify what comes out of the
// guest's own memory, see NewPort), and still drops a frame whose IPv4
// header checksum is wrong.
func TestPortTrustsGuestChecksums(t *testing.T) {
	rt := NewRuntime(RuntimeOptions{})
	p := startPort(t, PortOptions{Name: "vm", Runtime: rt, Tenant: "t", Limits: noLimits})
	var req [64]byte
	n, err := guestproto.PutRequest(req[:], &guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession, RequestID: 1}})
	if err != nil {
		t.Fatal(err)
	}
	frame := udpFrame(pkt.MAC(DefaultServiceMAC), tGuestIP, tServiceIP, copyGuest.Port(), DefaultServicePort, req[:n])
	const udpCsum = 14 + 20 + 6
	frame[udpCsum] ^= 0x55
	reply := make([]byte, 2048)
	rn := p.HandleFrame(0, frame, reply)
	if rn == 0 {
		t.Fatal("no reply to a request with a wrong UDP checksum")
	}
	var r guestproto.Message
	if err := guestproto.Parse(reply[DatagramHeaderLen:rn], &r); err != nil || r.Type != guestproto.Reply || r.Result.Status != guestproto.StatusOK {
		t.Fatalf("reply %v (%v), status %v", r.Type, err, r.Result.Status)
	}
	frame[udpCsum] ^= 0x55
	frame[14+10] ^= 0x55 // the IPv4 header checksum
	if rn := p.HandleFrame(0, frame, reply); rn != 0 {
		t.Fatal("a reply to a frame with a wrong IPv4 header checksum")
	}
}

// TestVMToVMDataValid: a message VM to VM reaches a guest that negotiated
// VIRTIO_NET_F_GUEST_CSUM marked DATA_VALID with no UDP checksum (the
// daemon sums nothing over the payload), and a guest without the feature
// (a stock Linux guest whose device model does not pass it) unmarked and
// correctly checksummed.
func TestVMToVMDataValid(t *testing.T) {
	base := vhostuser.Bit(vhostuser.FVersion1) | vhostuser.Bit(vhostuser.FProtocolFeatures) | vhostuser.Bit(vhostuser.FRingIndirectDesc)
	for _, tc := range []struct {
		name  string
		feats vhostuser.Features
		valid bool
	}{
		{"GUEST_CSUM", base | vhostuser.Bit(vhostuser.NetFGuestCsum), true},
		{"no GUEST_CSUM", base, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 8
			rt := NewRuntime(RuntimeOptions{})
			p1 := startPort(t, PortOptions{Name: "vm1", Runtime: rt, Tenant: "t", Limits: noLimits})
			p2 := startPort(t, PortOptions{Name: "vm2", Runtime: rt, Tenant: "t", Limits: noLimits})
			g1 := attach(t, p1, 4)
			g2, err := vt.NewNetPeer(t, p2.opts.Socket, vt.NetPeerOptions{Size: 4 << 20, Features: tc.feats})
			if err != nil {
				t.Fatal(err)
			}
			if err := g2.PostRX(n + 4); err != nil {
				t.Fatal(err)
			}
			if _, err := g2.RecvRX(5 * time.Second); err != nil { // the announcement
				t.Fatalf("announcement: %v", err)
			}
			sink := vmSink(t, p2, 7)
			sess := vmCall(t, p1, &guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession}}).ID
			st := vmCall(t, p1, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateStream, Session: sess}}).ID
			src := vmCall(t, p1, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateSource, Session: sess}, Stream: st, Channel: 7}).ID
			emit := make([]byte, 2048)
			for i := 0; i < n; i++ {
				l, _ := guestproto.PutEmit(emit, sess, src, uint64(i), copyPayload(i))
				g1.AddTX(append(make([]byte, vt.NetHeaderLen), udpFrame(pkt.MAC(DefaultServiceMAC), tGuestIP, tServiceIP, copyGuest.Port(), DefaultServicePort, emit[:l])...))
			}
			if err := g1.KickTX(); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < n; i++ {
				hdr, f, err := g2.RecvRXHeader(5 * time.Second)
				if err != nil {
					t.Fatalf("delivery %d: %v", i, err)
				}
				eth, err := pkt.ParseEthernet(f)
				if err != nil {
					t.Fatal(err)
				}
				ip, err := pkt.ParseIPv4(eth.Payload) // its header checksum verified
				if err != nil {
					t.Fatalf("delivery %d: IPv4: %v", i, err)
				}
				u, err := pkt.ParseUDP(ip.Payload)
				if err != nil {
					t.Fatal(err)
				}
				var m guestproto.Message
				if guestproto.Parse(u.Payload, &m) != nil || m.Type != guestproto.Deliver || m.ID != sink || !bytes.Equal(m.Payload, copyPayload(i)) {
					t.Fatalf("delivery %d is not message %d for sink %d", i, i, sink)
				}
				if tc.valid {
					if hdr[0] != 2 || u.Checksum != 0 {
						t.Fatalf("delivery %d: header flags %#x, UDP checksum %#x; want DATA_VALID (2), none (0)", i, hdr[0], u.Checksum)
					}
				} else if hdr[0] != 0 || u.Checksum == 0 || !u.ChecksumValid(ip.Src, ip.Dst) {
					t.Fatalf("delivery %d: header flags %#x, UDP checksum %#x (valid %v); want no flags, a valid checksum", i, hdr[0], u.Checksum, u.ChecksumValid(ip.Src, ip.Dst))
				}
			}
			if got := p2.copyCount(); got == 0 || p2.out.ready.Len() != 0 {
				t.Errorf("copies %d, outbox %d: the deliveries did not go straight to the ring", got, p2.out.ready.Len())
			}
		})
	}
}
