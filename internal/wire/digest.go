package wire

import "encoding/binary"

// Digest payload constants.
const (
	// DigestVersion is the layout version (the directory's field at
	// offset 6) of a directory digest: a KindDirectory payload that names
	// a directory instead of carrying it.
	DigestVersion = 3
	// DigestLen is the size of a digest payload.
	DigestLen = 32
	// DigestWant is the flag of a digest whose sender asks for the
	// receiver's full directory (it does not hold the generation the
	// receiver's last digest named).
	DigestWant = 1
)

// Digest is the small statement a daemon sends each directory interval
// in place of its whole directory, once a peer speaks digests: "my
// directory is still generation Generation of boot Boot, Total channels".
// A receiver holding that generation complete takes it as the directory
// sent again (it stays current); one that does not answers with its own
// digest with Want set, and the sender sends it the full directory
// (which goes to every peer, as before, whenever it changes). So a
// steady fleet sends one small datagram per peer per interval, whatever
// the number of channels.
//
// Layout, little endian (the first 24 bytes line up with Directory's):
//
//	offset size field
//	 0     4    node id
//	 4     2    channel count: 0 (the list is not in a digest)
//	 6     2    layout version, DigestVersion (3)
//	 8     8    generation
//	16     8    boot id
//	24     4    flags: DigestWant, the other bits zero
//	28     4    total channels of the directory named
//
// A daemon of an older release counts a digest as a directory of an
// unknown version (ErrVersion) and ignores it; it gets full directories
// every interval as before, since it never sends a digest.
type Digest struct {
	Node       uint32
	Generation uint64
	Boot       uint64
	Want       bool
	Total      uint32
}

// IsDigest reports whether the directory payload b has the digest
// layout's version (ParseDigest validates the rest).
func IsDigest(b []byte) bool {
	return len(b) >= 8 && binary.LittleEndian.Uint16(b[6:]) == DigestVersion
}

// Marshal writes d into b and returns DigestLen, or ErrShortBuffer.
func (d *Digest) Marshal(b []byte) (int, error) {
	if len(b) < DigestLen {
		return 0, ErrShortBuffer
	}
	le := binary.LittleEndian
	le.PutUint32(b[0:], d.Node)
	le.PutUint16(b[4:], 0)
	le.PutUint16(b[6:], DigestVersion)
	le.PutUint64(b[8:], d.Generation)
	le.PutUint64(b[16:], d.Boot)
	var flags uint32
	if d.Want {
		flags = DigestWant
	}
	le.PutUint32(b[24:], flags)
	le.PutUint32(b[28:], d.Total)
	return DigestLen, nil
}

// ParseDigest decodes a digest payload. Errors: ErrVersion for another
// layout version, ErrTruncated below DigestLen, ErrMalformed for bytes
// after it, a non-zero channel count or unknown flags.
func ParseDigest(b []byte) (Digest, error) {
	if len(b) >= 8 && !IsDigest(b) {
		return Digest{}, ErrVersion
	}
	if len(b) < DigestLen {
		return Digest{}, ErrTruncated
	}
	if len(b) > DigestLen {
		return Digest{}, ErrMalformed
	}
	le := binary.LittleEndian
	flags := le.Uint32(b[24:])
	if le.Uint16(b[4:]) != 0 || flags&^DigestWant != 0 {
		return Digest{}, ErrMalformed
	}
	return Digest{Node: le.Uint32(b[0:]), Generation: le.Uint64(b[8:]), Boot: le.Uint64(b[16:]),
		Want: flags&DigestWant != 0, Total: le.Uint32(b[28:])}, nil
}
