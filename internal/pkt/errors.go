package pkt

// Error is the error type of this package. Its values are constants, so
// returning one as an error does not allocate; compare with == or errors.Is.
type Error uint8

// The errors returned by the parsers and builders of this package.
const (
	// ErrTruncated means the buffer ends before the header, or before the
	// length that a header field declares.
	ErrTruncated Error = iota + 1
	// ErrMalformed means a header field holds a value the protocol forbids,
	// such as an IPv4 header length below 20 bytes or a UDP length below 8.
	ErrMalformed
	// ErrChecksum means a checksum did not verify.
	ErrChecksum
	// ErrUnsupported means a well-formed header this package does not handle,
	// such as an 802.3 length field in place of an EtherType, more than two
	// VLAN tags, an IPv6 packet, or ARP for another hardware or protocol type.
	ErrUnsupported
	// ErrShortBuffer means a builder's destination buffer is too small.
	ErrShortBuffer
	// ErrTooLong means a builder was asked for a packet longer than its length
	// field can express.
	ErrTooLong
)

var errorStrings = [...]string{
	ErrTruncated:   "pkt: truncated packet",
	ErrMalformed:   "pkt: malformed header",
	ErrChecksum:    "pkt: bad checksum",
	ErrUnsupported: "pkt: unsupported header",
	ErrShortBuffer: "pkt: buffer too short",
	ErrTooLong:     "pkt: packet too long",
}

// Error implements the error interface.
func (e Error) Error() string {
	if int(e) < len(errorStrings) && errorStrings[e] != "" {
		return errorStrings[e]
	}
	return "pkt: unknown error"
}
