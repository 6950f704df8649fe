package wire

// Error is the error type of this package. Its values are constants, so
// returning one as an error does not allocate; compare with == or errors.Is.
type Error uint8

// The errors returned by the parsers and marshallers of this package.
const (
	// ErrTruncated means the buffer ends before the header, or before the
	// payload length the header declares, or before the channel list a
	// directory declares.
	ErrTruncated Error = iota + 1
	// ErrNotVeloce means the buffer does not start with the magic 'V' 'L':
	// the datagram is not Veloce's.
	ErrNotVeloce
	// ErrVersion means a Veloce header, or a directory payload layout, of
	// a version this package does not speak.
	ErrVersion
	// ErrUnknownKind means a header whose kind is reserved (not data,
	// directory or ack).
	ErrUnknownKind
	// ErrMalformed means a field holds a value the format forbids: reserved
	// bits set, a fragment count of zero or an index not below the count,
	// bytes after the declared payload, a fragmented ack or one longer than MaxAckLen, ack blocks out of order, or
	// directory channel ids not in strictly ascending order.
	ErrMalformed
	// ErrShortBuffer means a destination buffer (or, for ParseDirectory, the
	// caller's channel slice) is too small.
	ErrShortBuffer
	// ErrTooLong means a payload longer than MaxPayload, or a directory with
	// more than MaxDirectoryChannels channels.
	ErrTooLong
)

var errorStrings = [...]string{
	ErrTruncated:   "wire: truncated message",
	ErrNotVeloce:   "wire: not a veloce message",
	ErrVersion:     "wire: unsupported version",
	ErrUnknownKind: "wire: unknown message kind",
	ErrMalformed:   "wire: malformed message",
	ErrShortBuffer: "wire: buffer too short",
	ErrTooLong:     "wire: message too long",
}

// Error implements the error interface.
func (e Error) Error() string {
	if int(e) < len(errorStrings) && errorStrings[e] != "" {
		return errorStrings[e]
	}
	return "wire: unknown error"
}
