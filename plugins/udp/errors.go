package udp

// Error is the type of this package's sentinel errors. Its values are
// constants, so returning one does not allocate; compare with == or
// errors.Is.
type Error uint8

// Errors returned by the batch methods.
const (
	// ErrClosed means the Plugin is closed (or closing).
	ErrClosed Error = iota + 1
	// ErrAddress means a packet's destination cannot be sent to from this
	// socket: invalid, zoned, or of the other address family (IPv6 on a
	// socket bound to IPv4).
	ErrAddress
	// ErrLength means a packet's N is negative or larger than len(Buf).
	ErrLength
)

var errorStrings = [...]string{
	ErrClosed:  "udp: plugin closed",
	ErrAddress: "udp: destination address not usable on this socket",
	ErrLength:  "udp: packet length outside its buffer",
}

// Error implements the error interface.
func (e Error) Error() string {
	if int(e) < len(errorStrings) && errorStrings[e] != "" {
		return errorStrings[e]
	}
	return "udp: unknown error"
}
