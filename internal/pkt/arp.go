package pkt

import "encoding/binary"

// ARPLen is the size of an ARP packet for IPv4 over Ethernet.
const ARPLen = 28

// ARP operation codes.
const (
	ARPRequest ARPOp = 1 // who-has
	ARPReply   ARPOp = 2 // is-at
)

// ARPOp is the operation field of an ARP packet.
type ARPOp uint16

const (
	arpHardwareEthernet = 1
	arpProtocolIPv4     = uint16(EtherTypeIPv4)
)

// ARP is an ARP packet for IPv4 over Ethernet (RFC 826): the only kind
// ParseARP accepts and PutARP writes.
type ARP struct {
	// Op is the operation, ARPRequest or ARPReply (others are passed through).
	Op ARPOp
	// SenderMAC and SenderIP are the sender's hardware and protocol
	// addresses.
	SenderMAC MAC
	SenderIP  [4]byte
	// TargetMAC and TargetIP are the target's hardware and protocol
	// addresses; TargetMAC is ignored (usually zero) in requests.
	TargetMAC MAC
	TargetIP  [4]byte
}

// IsGratuitous reports whether a announces its sender's own address
// (sender and target protocol addresses equal), as a gratuitous ARP or an
// RFC 5227 announcement does.
func (a *ARP) IsGratuitous() bool { return a.SenderIP == a.TargetIP }

// IsProbe reports whether a is an RFC 5227 probe: a request with a zero
// sender protocol address.
func (a *ARP) IsProbe() bool { return a.Op == ARPRequest && a.SenderIP == [4]byte{} }

// ARPReplyTo returns the reply to request req that says ip is at hw:
// the target becomes req's sender.
func ARPReplyTo(req *ARP, hw MAC) ARP {
	return ARP{
		Op:        ARPReply,
		SenderMAC: hw,
		SenderIP:  req.TargetIP,
		TargetMAC: req.SenderMAC,
		TargetIP:  req.SenderIP,
	}
}

// ParseARP parses an ARP packet at the start of b (an Ethernet payload;
// trailing padding is ignored).
//
// It returns ErrTruncated when b is shorter than ARPLen and ErrUnsupported
// when the hardware or protocol type or lengths are not Ethernet and IPv4.
func ParseARP(b []byte) (ARP, error) {
	var a ARP
	if len(b) < ARPLen {
		return a, ErrTruncated
	}
	if binary.BigEndian.Uint16(b[0:2]) != arpHardwareEthernet ||
		binary.BigEndian.Uint16(b[2:4]) != arpProtocolIPv4 ||
		b[4] != 6 || b[5] != 4 {
		return a, ErrUnsupported
	}
	a.Op = ARPOp(binary.BigEndian.Uint16(b[6:8]))
	copy(a.SenderMAC[:], b[8:14])
	copy(a.SenderIP[:], b[14:18])
	copy(a.TargetMAC[:], b[18:24])
	copy(a.TargetIP[:], b[24:28])
	return a, nil
}

// PutARP writes a as an ARP packet for IPv4 over Ethernet to b and returns
// ARPLen, or ErrShortBuffer.
func PutARP(b []byte, a *ARP) (int, error) {
	if len(b) < ARPLen {
		return 0, ErrShortBuffer
	}
	binary.BigEndian.PutUint16(b[0:2], arpHardwareEthernet)
	binary.BigEndian.PutUint16(b[2:4], arpProtocolIPv4)
	b[4], b[5] = 6, 4
	binary.BigEndian.PutUint16(b[6:8], uint16(a.Op))
	copy(b[8:14], a.SenderMAC[:])
	copy(b[14:18], a.SenderIP[:])
	copy(b[18:24], a.TargetMAC[:])
	copy(b[24:28], a.TargetIP[:])
	return ARPLen, nil
}

// PutARPFrame writes an untagged Ethernet frame carrying a to b, with
// Ethernet source a.SenderMAC and destination dst, and returns its length
// (EthernetHeaderLen+ARPLen), or ErrShortBuffer. The frame is not padded to
// the 60-byte Ethernet minimum; see [PadFrame].
func PutARPFrame(b []byte, dst MAC, a *ARP) (int, error) {
	if len(b) < EthernetHeaderLen+ARPLen {
		return 0, ErrShortBuffer
	}
	n, _ := PutEthernetHeader(b, dst, a.SenderMAC, EtherTypeARP)
	m, _ := PutARP(b[n:], a)
	return n + m, nil
}

// MinFrameLen is the minimum Ethernet frame length without the frame check
// sequence.
const MinFrameLen = 60

// PadFrame zero-pads the n-byte frame in b to MinFrameLen when it is
// shorter and b has room, and returns the new length. Virtual NICs do not
// need padding; wire NICs usually pad themselves.
func PadFrame(b []byte, n int) int {
	if n >= MinFrameLen || len(b) < MinFrameLen {
		return n
	}
	clear(b[n:MinFrameLen])
	return MinFrameLen
}
