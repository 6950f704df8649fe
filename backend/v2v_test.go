package backend

import (
	"testing"

	"github.com/veloce-io/veloce/internal/guestproto"
	"github.com/veloce-io/veloce/internal/pkt"
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
