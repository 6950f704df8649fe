package pkt

import "encoding/binary"

// UDPHeaderLen is the size of a UDP header.
const UDPHeaderLen = 8

// UDP is a parsed UDP header. Datagram and Payload are views of the caller's
// buffer.
type UDP struct {
	// SrcPort and DstPort are the source and destination ports.
	SrcPort, DstPort uint16
	// Checksum is the checksum as received; 0 means the sender computed
	// none.
	Checksum uint16
	// Datagram is the header and payload, Length bytes as the header
	// declares.
	Datagram []byte
	// Payload is the data after the header.
	Payload []byte
}

// ParseUDP parses the UDP header at the start of b, normally an IPv4
// payload. Bytes after the length the UDP header declares are ignored. The
// checksum is not verified: it covers a pseudo-header only the caller knows;
// see ChecksumValid.
//
// It returns ErrTruncated when b is shorter than the header or than the
// declared length, and ErrMalformed for a declared length below 8.
func ParseUDP(b []byte) (UDP, error) {
	var u UDP
	if len(b) < UDPHeaderLen {
		return u, ErrTruncated
	}
	n := int(binary.BigEndian.Uint16(b[4:6]))
	if n < UDPHeaderLen {
		return u, ErrMalformed
	}
	if len(b) < n {
		return u, ErrTruncated
	}
	u.SrcPort = binary.BigEndian.Uint16(b[0:2])
	u.DstPort = binary.BigEndian.Uint16(b[2:4])
	u.Checksum = binary.BigEndian.Uint16(b[6:8])
	u.Datagram = b[:n:n]
	u.Payload = b[UDPHeaderLen:n:n]
	return u, nil
}

// ChecksumValid reports whether the datagram's checksum verifies against the
// IPv4 pseudo-header for src and dst. A zero checksum (none computed, allowed
// over IPv4 by RFC 768) is valid.
func (u *UDP) ChecksumValid(src, dst [4]byte) bool {
	if u.Checksum == 0 {
		return true
	}
	s := PseudoHeaderSumV4(src, dst, ProtocolUDP, uint16(len(u.Datagram)))
	return Sum(u.Datagram, s) == 0xffff
}

// UDPv4Header holds the fields PutUDPv4 writes. Length and checksum are
// computed.
type UDPv4Header struct {
	// Src and Dst are the IPv4 addresses of the pseudo-header.
	Src, Dst [4]byte
	// SrcPort and DstPort are the source and destination ports.
	SrcPort, DstPort uint16
	// NoChecksum writes a zero checksum ("none computed"), for NICs that
	// fill it in or links that cannot corrupt data.
	NoChecksum bool
}

// PutUDPv4 writes a UDP datagram to b: the header, then payload copied to
// b[UDPHeaderLen:] (no copy when it is already there), and the checksum over
// both and the IPv4 pseudo-header. It returns UDPHeaderLen+len(payload), or
// ErrShortBuffer, or ErrTooLong when the datagram would not fit an IPv4
// packet.
func PutUDPv4(b []byte, h *UDPv4Header, payload []byte) (int, error) {
	n := UDPHeaderLen + len(payload)
	if n > IPv4MaxLen-IPv4MinHeaderLen {
		return 0, ErrTooLong
	}
	if len(b) < n {
		return 0, ErrShortBuffer
	}
	b = b[:n]
	copyPayload(b[UDPHeaderLen:], payload)
	binary.BigEndian.PutUint16(b[0:2], h.SrcPort)
	binary.BigEndian.PutUint16(b[2:4], h.DstPort)
	binary.BigEndian.PutUint16(b[4:6], uint16(n))
	b[6], b[7] = 0, 0
	if !h.NoChecksum {
		cs := ^Sum(b, PseudoHeaderSumV4(h.Src, h.Dst, ProtocolUDP, uint16(n)))
		if cs == 0 {
			cs = 0xffff // RFC 768: a computed zero is sent as all ones
		}
		binary.BigEndian.PutUint16(b[6:8], cs)
	}
	return n, nil
}

// copyPayload copies src into dst unless src already is dst's prefix.
func copyPayload(dst, src []byte) {
	if len(src) == 0 || &dst[0] == &src[0] {
		return
	}
	copy(dst, src)
}
