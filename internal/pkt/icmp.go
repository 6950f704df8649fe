package pkt

import "encoding/binary"

// ICMPv4HeaderLen is the size of the fixed ICMPv4 header (type, code,
// checksum and the 4-byte rest of header).
const ICMPv4HeaderLen = 8

// ICMPType is the type field of an ICMPv4 message.
type ICMPType uint8

// ICMPv4 message types this package knows by name.
const (
	ICMPEchoReply       ICMPType = 0
	ICMPDestUnreachable ICMPType = 3
	ICMPEchoRequest     ICMPType = 8
	ICMPTimeExceeded    ICMPType = 11
)

// ICMPv4 is a parsed ICMPv4 message. Payload is a view of the caller's
// buffer.
type ICMPv4 struct {
	// Type and Code identify the message.
	Type ICMPType
	Code uint8
	// Checksum is the checksum as received.
	Checksum uint16
	// Rest is the type-specific "rest of header" word; for echo messages
	// see ID and Seq.
	Rest uint32
	// Payload is the data after the 8-byte header.
	Payload []byte
}

// ID returns the identifier of an echo request or reply.
func (m *ICMPv4) ID() uint16 { return uint16(m.Rest >> 16) }

// Seq returns the sequence number of an echo request or reply.
func (m *ICMPv4) Seq() uint16 { return uint16(m.Rest) }

// ParseICMPv4 parses the ICMPv4 message filling b (an IPv4 payload: the
// checksum covers all of it) and verifies its checksum.
//
// It returns ErrTruncated when b is shorter than the header and
// ErrChecksum when the checksum does not verify.
func ParseICMPv4(b []byte) (ICMPv4, error) {
	m, err := ParseICMPv4NoChecksum(b)
	if err == nil && Checksum(b) != 0 {
		return m, ErrChecksum
	}
	return m, err
}

// ParseICMPv4NoChecksum is ParseICMPv4 without checksum verification.
func ParseICMPv4NoChecksum(b []byte) (ICMPv4, error) {
	var m ICMPv4
	if len(b) < ICMPv4HeaderLen {
		return m, ErrTruncated
	}
	m.Type = ICMPType(b[0])
	m.Code = b[1]
	m.Checksum = binary.BigEndian.Uint16(b[2:4])
	m.Rest = binary.BigEndian.Uint32(b[4:8])
	m.Payload = b[ICMPv4HeaderLen:len(b):len(b)]
	return m, nil
}

// PutICMPv4 writes an ICMPv4 message to b: the header, then payload copied
// to b[ICMPv4HeaderLen:] (no copy when it is already there), with the
// checksum over both. It returns ICMPv4HeaderLen+len(payload), or
// ErrShortBuffer, or ErrTooLong when the message would not fit an IPv4
// packet.
func PutICMPv4(b []byte, t ICMPType, code uint8, rest uint32, payload []byte) (int, error) {
	n := ICMPv4HeaderLen + len(payload)
	if n > IPv4MaxLen-IPv4MinHeaderLen {
		return 0, ErrTooLong
	}
	if len(b) < n {
		return 0, ErrShortBuffer
	}
	b = b[:n]
	copyPayload(b[ICMPv4HeaderLen:], payload)
	b[0] = byte(t)
	b[1] = code
	b[2], b[3] = 0, 0
	binary.BigEndian.PutUint32(b[4:8], rest)
	binary.BigEndian.PutUint16(b[2:4], Checksum(b))
	return n, nil
}

// PutICMPv4Echo writes an echo request or reply (t) with identifier id,
// sequence number seq and payload; see PutICMPv4.
func PutICMPv4Echo(b []byte, t ICMPType, id, seq uint16, payload []byte) (int, error) {
	return PutICMPv4(b, t, 0, uint32(id)<<16|uint32(seq), payload)
}
