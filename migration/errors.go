package migration

import (
	"errors"
	"fmt"
)

// Errors of the codec. Decode's errors wrap exactly one of the first six;
// branch on them with errors.Is.
var (
	// ErrTruncated means the input ends before the length its header
	// declares, or a record runs past the end of its section.
	ErrTruncated = errors.New("snapshot truncated")
	// ErrCorrupt means the input is not an intact snapshot: bad magic, a
	// checksum mismatch, trailing bytes, reserved bits set, a section out
	// of place or with bytes left over.
	ErrCorrupt = errors.New("snapshot corrupt")
	// ErrVersion is matched by every *VersionError.
	ErrVersion = errors.New("snapshot format version not supported")
	// ErrTooLarge is matched by every *LimitError.
	ErrTooLarge = errors.New("snapshot exceeds a limit")
	// ErrUnauthenticated means DecodeSigned got a snapshot without an HMAC
	// or with one that does not verify under the key.
	ErrUnauthenticated = errors.New("snapshot not authenticated")
	// ErrInvalid means the snapshot is intact but its contents do not hold
	// together: a duplicate id, a stream of a session that is not there, a
	// source or sink of a missing stream, a field out of range.
	ErrInvalid = errors.New("snapshot invalid")
	// ErrKey means an HMAC key shorter than MinKeySize.
	ErrKey = errors.New("snapshot key shorter than MinKeySize")
)

// VersionError reports a snapshot of a format version this package does
// not speak. It matches ErrVersion.
type VersionError struct {
	// Found is the version the snapshot carries.
	Found uint16
	// Supported is the version this package reads and writes.
	Supported uint16
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("snapshot format version %d, this daemon speaks version %d", e.Found, e.Supported)
}

// Is makes errors.Is(err, ErrVersion) true.
func (e *VersionError) Is(target error) bool { return target == ErrVersion }

// LimitError reports a snapshot that exceeds one of the limits (a
// DecodeOptions field or a limit of the format). It matches ErrTooLarge.
type LimitError struct {
	// Limit names the limit, as the DecodeOptions field (MaxSinks) or the
	// format constant (MaxNameLen).
	Limit string
	// Max is the limit's value.
	Max uint64
	// Got is what the snapshot declares.
	Got uint64
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("snapshot exceeds %s: %d > %d", e.Limit, e.Got, e.Max)
}

// Is makes errors.Is(err, ErrTooLarge) true.
func (e *LimitError) Is(target error) bool { return target == ErrTooLarge }

func tooLarge(limit string, max, got uint64) error {
	return &LimitError{Limit: limit, Max: max, Got: got}
}

func invalid(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, ErrInvalid)...)
}
