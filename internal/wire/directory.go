package wire

import "encoding/binary"

// Directory payload constants.
const (
	// DirectoryHeaderLen is the size of a directory payload before its
	// channel list.
	DirectoryHeaderLen = 24
	// DirectoryVersion is the directory payload layout this package writes
	// and accepts. Layout 0 (the first, without a boot id; its version
	// field was reserved and zero) and unknown layouts are rejected with
	// ErrVersion.
	DirectoryVersion = 2
	// MaxDirectoryChannels bounds the channel ids in one directory payload:
	// 256 ids make a 1048-byte payload, so a directory message (with the
	// 32-byte header, the authentication trailer, UDP and IPv6) fits the
	// IPv6 minimum MTU of 1280 and every Ethernet/IP datapath sends it
	// unfragmented at the IP layer.
	MaxDirectoryChannels = 256
	// MaxDirectoryLen is the size of the largest directory payload.
	MaxDirectoryLen = DirectoryHeaderLen + 4*MaxDirectoryChannels
)

// Directory is the payload of a KindDirectory message: the channel ids a
// daemon has sinks for. It is a full statement, not a change: a receiver
// replaces what it knew about Node when Generation is newer than what it
// has, and ignores older generations (datagrams may be duplicated or
// reordered). Generations count within one run of the daemon: Boot is a
// random number the daemon picks at start, and a directory with another
// Boot than the one the receiver knows for Node replaces it at once,
// whatever its generation (the daemon restarted and counts from 1
// again). An empty list withdraws all of Node's channels.
//
// A daemon with more than MaxDirectoryChannels channels sends the list as
// FragCount directory messages with the same Generation (the header's
// FragIndex numbering them), each a complete Directory payload holding an
// ascending run of the list; the receiver adopts the generation once it
// has all parts.
//
// Layout, little endian:
//
//	offset size field
//	 0     4    node id
//	 4     2    channel count, at most MaxDirectoryChannels
//	 6     2    layout version, DirectoryVersion (2)
//	 8     8    generation
//	16     8    boot id
//	24     4*n  channel ids, strictly ascending
//
// Version history: layout 0 had no boot id and its channel list started
// at offset 16 (bytes 6-7 were reserved, zero).
type Directory struct {
	Node       uint32   // node id of the daemon that has the sinks
	Generation uint64   // increases with every change of the daemon's list
	Boot       uint64   // the daemon's boot id: random, picked at each start
	Channels   []uint32 // channel ids, strictly ascending, at most MaxDirectoryChannels
}

// DirectoryLen returns the payload size of a directory of n channels.
func DirectoryLen(n int) int { return DirectoryHeaderLen + 4*n }

// Marshal writes d into b and returns DirectoryLen(len(d.Channels)). It
// returns ErrTooLong for more than MaxDirectoryChannels channels,
// ErrMalformed when the channels are not strictly ascending, and
// ErrShortBuffer when b is too small; nothing useful is written then.
func (d *Directory) Marshal(b []byte) (int, error) {
	if len(d.Channels) > MaxDirectoryChannels {
		return 0, ErrTooLong
	}
	n := DirectoryLen(len(d.Channels))
	if len(b) < n {
		return 0, ErrShortBuffer
	}
	for i := 1; i < len(d.Channels); i++ {
		if d.Channels[i] <= d.Channels[i-1] {
			return 0, ErrMalformed
		}
	}
	b = b[:n]
	binary.LittleEndian.PutUint32(b[0:], d.Node)
	binary.LittleEndian.PutUint16(b[4:], uint16(len(d.Channels)))
	binary.LittleEndian.PutUint16(b[6:], DirectoryVersion)
	binary.LittleEndian.PutUint64(b[8:], d.Generation)
	binary.LittleEndian.PutUint64(b[16:], d.Boot)
	for i, c := range d.Channels {
		binary.LittleEndian.PutUint32(b[DirectoryHeaderLen+4*i:], c)
	}
	return n, nil
}

// ParseDirectory validates the directory payload b (exactly one directory)
// and decodes it. The channel ids go into channels[:0], whose capacity
// must hold them (MaxDirectoryChannels always does): the result's Channels
// is that slice, so parsing does not allocate. Errors:
//
//   - ErrVersion: a layout version other than DirectoryVersion (checked
//     first when b holds the version field, so an old daemon's directory
//     is told apart from a broken one);
//   - ErrTruncated: b is shorter than DirectoryHeaderLen or than the
//     declared channel list;
//   - ErrTooLong: more than MaxDirectoryChannels channels;
//   - ErrMalformed: bytes after the list, or ids not strictly ascending;
//   - ErrShortBuffer: cap(channels) is below the channel count.
//
// On error the contents of channels' backing array are unspecified.
func ParseDirectory(b []byte, channels []uint32) (Directory, error) {
	if len(b) >= 8 && binary.LittleEndian.Uint16(b[6:]) != DirectoryVersion {
		return Directory{}, ErrVersion
	}
	if len(b) < DirectoryHeaderLen {
		return Directory{}, ErrTruncated
	}
	count := int(binary.LittleEndian.Uint16(b[4:]))
	if count > MaxDirectoryChannels {
		return Directory{}, ErrTooLong
	}
	n := DirectoryLen(count)
	if len(b) < n {
		return Directory{}, ErrTruncated
	}
	if len(b) > n {
		return Directory{}, ErrMalformed
	}
	if cap(channels) < count {
		return Directory{}, ErrShortBuffer
	}
	channels = channels[:count]
	for i := range channels {
		c := binary.LittleEndian.Uint32(b[DirectoryHeaderLen+4*i:])
		if i > 0 && c <= channels[i-1] {
			return Directory{}, ErrMalformed
		}
		channels[i] = c
	}
	return Directory{
		Node:       binary.LittleEndian.Uint32(b[0:]),
		Generation: binary.LittleEndian.Uint64(b[8:]),
		Boot:       binary.LittleEndian.Uint64(b[16:]),
		Channels:   channels,
	}, nil
}
