package pkt

import "encoding/binary"

// IPProtocol is the protocol field of an IPv4 header.
type IPProtocol uint8

// IP protocol numbers this package knows by name.
const (
	ProtocolICMP IPProtocol = 1
	ProtocolTCP  IPProtocol = 6
	ProtocolUDP  IPProtocol = 17
)

// IPv4 header sizes and limits.
const (
	// IPv4MinHeaderLen is the size of an IPv4 header without options.
	IPv4MinHeaderLen = 20
	// IPv4MaxHeaderLen is the size of an IPv4 header with 40 bytes of
	// options.
	IPv4MaxHeaderLen = 60
	// IPv4MaxLen is the largest IPv4 packet, header included.
	IPv4MaxLen = 65535
	// DefaultTTL is the time to live PutIPv4Header uses when none is given.
	DefaultTTL = 64
)

const (
	ipv4FlagDF     = 0x4000
	ipv4FlagMF     = 0x2000
	ipv4OffsetMask = 0x1fff
)

// IPv4 is a parsed IPv4 header. Header and Payload are views of the caller's
// buffer.
type IPv4 struct {
	// Src and Dst are the source and destination addresses.
	Src, Dst [4]byte
	// Protocol is the payload's protocol.
	Protocol IPProtocol
	// TOS is the type-of-service byte (DSCP and ECN).
	TOS uint8
	// TTL is the time to live.
	TTL uint8
	// ID is the identification field.
	ID uint16
	// FlagsOffset is the raw flags and fragment offset field; see
	// DontFragment, MoreFragments, FragmentOffset and IsFragment.
	FlagsOffset uint16
	// Checksum is the header checksum as received.
	Checksum uint16
	// Header is the whole header, options included (20 to 60 bytes).
	Header []byte
	// Payload is the data after the header, up to the total length the
	// header declares: link-layer padding after it is excluded.
	Payload []byte
}

// TotalLen returns the packet length the header declares.
func (p *IPv4) TotalLen() int { return len(p.Header) + len(p.Payload) }

// Options returns the option bytes of the header (empty when none), a view.
func (p *IPv4) Options() []byte { return p.Header[IPv4MinHeaderLen:] }

// DontFragment reports whether the DF flag is set.
func (p *IPv4) DontFragment() bool { return p.FlagsOffset&ipv4FlagDF != 0 }

// MoreFragments reports whether the MF flag is set.
func (p *IPv4) MoreFragments() bool { return p.FlagsOffset&ipv4FlagMF != 0 }

// FragmentOffset returns the fragment offset in bytes.
func (p *IPv4) FragmentOffset() int { return int(p.FlagsOffset&ipv4OffsetMask) * 8 }

// IsFragment reports whether the packet is a fragment of a larger datagram
// (MF set or a non-zero offset). A fragment's Payload is only part of the
// transport message: transport headers in it must not be trusted.
func (p *IPv4) IsFragment() bool { return p.FlagsOffset&(ipv4FlagMF|ipv4OffsetMask) != 0 }

// ParseIPv4 parses and validates the IPv4 header at the start of b (an
// Ethernet payload, possibly padded) and verifies its checksum.
//
// It returns ErrTruncated when b is shorter than the header or than the
// declared total length, ErrMalformed for a version other than 4, a header
// length below 20 bytes or a total length below the header length, and
// ErrChecksum when the header checksum does not verify.
func ParseIPv4(b []byte) (IPv4, error) {
	p, err := ParseIPv4NoChecksum(b)
	if err == nil && Checksum(p.Header) != 0 {
		return p, ErrChecksum
	}
	return p, err
}

// ParseIPv4NoChecksum is ParseIPv4 without the header checksum verification,
// for packets a NIC has already verified.
func ParseIPv4NoChecksum(b []byte) (IPv4, error) {
	var p IPv4
	if len(b) < IPv4MinHeaderLen {
		return p, ErrTruncated
	}
	if b[0]>>4 != 4 {
		return p, ErrMalformed
	}
	hl := int(b[0]&0x0f) * 4
	if hl < IPv4MinHeaderLen {
		return p, ErrMalformed
	}
	tl := int(binary.BigEndian.Uint16(b[2:4]))
	if tl < hl {
		return p, ErrMalformed
	}
	if len(b) < tl {
		return p, ErrTruncated
	}
	p.TOS = b[1]
	p.ID = binary.BigEndian.Uint16(b[4:6])
	p.FlagsOffset = binary.BigEndian.Uint16(b[6:8])
	p.TTL = b[8]
	p.Protocol = IPProtocol(b[9])
	p.Checksum = binary.BigEndian.Uint16(b[10:12])
	copy(p.Src[:], b[12:16])
	copy(p.Dst[:], b[16:20])
	p.Header = b[:hl:hl]
	p.Payload = b[hl:tl:tl]
	return p, nil
}

// IPv4Header holds the fields PutIPv4Header writes. Version, header length,
// total length and checksum are computed; options are never written.
type IPv4Header struct {
	// Src and Dst are the source and destination addresses.
	Src, Dst [4]byte
	// Protocol is the payload's protocol.
	Protocol IPProtocol
	// TOS is the type-of-service byte.
	TOS uint8
	// TTL is the time to live; 0 means DefaultTTL.
	TTL uint8
	// ID is the identification field.
	ID uint16
	// DontFragment sets the DF flag.
	DontFragment bool
}

// PutIPv4Header writes a 20-byte IPv4 header for a payload of payloadLen
// bytes to b, checksum included, and returns IPv4MinHeaderLen. It returns
// ErrShortBuffer when b is shorter than the header and ErrTooLong when the
// packet would exceed IPv4MaxLen. The payload itself is not touched: it is
// usually built in place at b[IPv4MinHeaderLen:] before or after.
func PutIPv4Header(b []byte, h *IPv4Header, payloadLen int) (int, error) {
	if payloadLen < 0 || payloadLen > IPv4MaxLen-IPv4MinHeaderLen {
		return 0, ErrTooLong
	}
	if len(b) < IPv4MinHeaderLen {
		return 0, ErrShortBuffer
	}
	b = b[:IPv4MinHeaderLen]
	b[0] = 0x45
	b[1] = h.TOS
	binary.BigEndian.PutUint16(b[2:4], uint16(IPv4MinHeaderLen+payloadLen))
	binary.BigEndian.PutUint16(b[4:6], h.ID)
	var fo uint16
	if h.DontFragment {
		fo = ipv4FlagDF
	}
	binary.BigEndian.PutUint16(b[6:8], fo)
	ttl := h.TTL
	if ttl == 0 {
		ttl = DefaultTTL
	}
	b[8] = ttl
	b[9] = byte(h.Protocol)
	b[10], b[11] = 0, 0
	copy(b[12:16], h.Src[:])
	copy(b[16:20], h.Dst[:])
	binary.BigEndian.PutUint16(b[10:12], Checksum(b))
	return IPv4MinHeaderLen, nil
}

// DecrementTTL decrements the TTL of the IPv4 header at the start of hdr
// and updates its checksum incrementally. It reports false, changing
// nothing, when the TTL is already 0 or 1 (the packet must not be
// forwarded) or hdr is too short.
func DecrementTTL(hdr []byte) bool {
	if len(hdr) < IPv4MinHeaderLen || hdr[8] <= 1 {
		return false
	}
	old := binary.BigEndian.Uint16(hdr[8:10])
	hdr[8]--
	cs := ChecksumUpdate16(binary.BigEndian.Uint16(hdr[10:12]), old, binary.BigEndian.Uint16(hdr[8:10]))
	binary.BigEndian.PutUint16(hdr[10:12], cs)
	return true
}
