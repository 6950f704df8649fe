package wire

import (
	"encoding/binary"
	"strings"
)

// Format constants.
const (
	// HeaderLen is the size of the header in bytes.
	HeaderLen = 32
	// Magic0 and Magic1 are the first two bytes of every header ('V', 'L').
	Magic0, Magic1 = 'V', 'L'
	// Version is the format version this package writes and accepts.
	Version = 1
	// MaxPayload is the largest payload one header can describe (its
	// payload length field is 16 bits). A datapath's MTU usually allows
	// less; larger messages are fragmented.
	MaxPayload = 1<<16 - 1
	// MaxFragments is the largest fragment count.
	MaxFragments = 1<<16 - 1
)

// Kind says what a message is.
type Kind uint8

// Kinds. Zero is invalid, so a zeroed buffer never parses; 4 to 255 are
// reserved for later versions and rejected with ErrUnknownKind.
const (
	// KindData is a message on a channel.
	KindData Kind = 1
	// KindDirectory is channel-directory control: the payload is a
	// Directory.
	KindDirectory Kind = 2
	// KindAck acknowledges a reliable source's messages up to Seq. It is
	// one fragment; its payload, at most MaxAckLen bytes, is an Ack body
	// (ack.go: credit and selective acknowledgements).
	KindAck Kind = 3
)

var kindStrings = [...]string{KindData: "data", KindDirectory: "directory", KindAck: "ack"}

// Valid reports whether k is a kind this version defines.
func (k Kind) Valid() bool { return k >= KindData && k <= KindAck }

// String returns the kind's name, or "reserved" for a reserved value.
func (k Kind) String() string {
	if k.Valid() {
		return kindStrings[k]
	}
	return "reserved"
}

// Class is a stream's quality-of-service class: the QoS options of the
// stream a message belongs to (DESIGN.md, "Streams and QoS"). A receiver
// uses it to pick the sink-side treatment (scheduling, acknowledgement)
// without looking the stream up. The high four bits are reserved and must
// be zero.
type Class uint8

// Class bits. The zero Class is a best-effort, unaccelerated FIFO stream
// that does not care about resource use.
const (
	// ClassAccelerated: the stream asked for an accelerated datapath.
	ClassAccelerated Class = 1 << 0
	// ClassFrugal: resource use matters (no polling cores).
	ClassFrugal Class = 1 << 1
	// ClassTimeSensitive: scheduled by the 802.1Qbv gate schedule instead
	// of FIFO.
	ClassTimeSensitive Class = 1 << 2
	// ClassReliable: reliable, in-order delivery; the receiver sends
	// KindAck messages.
	ClassReliable Class = 1 << 3

	classDefined = ClassAccelerated | ClassFrugal | ClassTimeSensitive | ClassReliable
)

// Valid reports whether c has no reserved bits set.
func (c Class) Valid() bool { return c&^classDefined == 0 }

// String returns the set bits joined by "|", or "best-effort" for zero.
// It allocates; it is meant for logs, not the per-packet path.
func (c Class) String() string {
	if c == 0 {
		return "best-effort"
	}
	var parts []string
	for _, b := range [...]struct {
		bit  Class
		name string
	}{{ClassAccelerated, "accelerated"}, {ClassFrugal, "frugal"}, {ClassTimeSensitive, "time-sensitive"}, {ClassReliable, "reliable"}} {
		if c&b.bit != 0 {
			parts = append(parts, b.name)
		}
	}
	if !c.Valid() {
		parts = append(parts, "reserved")
	}
	return strings.Join(parts, "|")
}

// Flags are per-message flags. Undefined bits are reserved and must be
// zero.
type Flags uint8

// Flag bits.
const (
	// FlagRetransmit marks a message sent again by a reliable source; the
	// receiver drops it if it already has (Source, Seq).
	FlagRetransmit Flags = 1 << 0
	// FlagForwarded marks a message a daemon forwarded on behalf of a
	// stream that migrated away from it, until peers learn the new location
	// (DESIGN.md, "Migration").
	FlagForwarded Flags = 1 << 1
	// FlagAuthenticated marks a datagram that carries an AuthTrailer after
	// its payload (see Sealer, in auth.go).
	FlagAuthenticated Flags = 1 << 2

	flagsDefined = FlagRetransmit | FlagForwarded | FlagAuthenticated
)

// Valid reports whether f has no reserved bits set.
func (f Flags) Valid() bool { return f&^flagsDefined == 0 }

// SourceID names a source across hosts: the node id of its daemon in the
// high 32 bits and a number the daemon gives the source in the low 32.
// Local number 0 is the daemon itself (directory messages); sources are
// numbered from 1.
type SourceID uint64

// NewSourceID returns the id of source local on node.
func NewSourceID(node, local uint32) SourceID { return SourceID(node)<<32 | SourceID(local) }

// Node returns the node id of the source's daemon.
func (s SourceID) Node() uint32 { return uint32(s >> 32) }

// Local returns the source's number on its node.
func (s SourceID) Local() uint32 { return uint32(s) }

// Header is the decoded header. The magic and version are not fields:
// Marshal writes this package's and Parse accepts only those.
type Header struct {
	Kind       Kind     // what the message is
	Class      Class    // the stream's QoS class
	Flags      Flags    // per-message flags
	FragIndex  uint16   // this fragment's index, below FragCount
	FragCount  uint16   // fragments in the message, at least 1
	PayloadLen uint16   // bytes of payload after the header in this datagram
	Channel    uint32   // channel id
	Source     SourceID // sending source
	Seq        uint64   // message sequence number, per source
}

// Field offsets.
const (
	offMagic      = 0
	offVersion    = 2
	offKind       = 3
	offClass      = 4
	offFlags      = 5
	offFragIndex  = 6
	offFragCount  = 8
	offPayloadLen = 10
	offChannel    = 12
	offSource     = 16
	offSeq        = 24
)

// check validates the fields a header may not hold.
func (h *Header) check() error {
	if !h.Kind.Valid() {
		return ErrUnknownKind
	}
	if !h.Class.Valid() || !h.Flags.Valid() || h.FragCount == 0 || h.FragIndex >= h.FragCount {
		return ErrMalformed
	}
	if h.Kind == KindAck && (h.FragCount != 1 || h.PayloadLen > MaxAckLen) {
		return ErrMalformed
	}
	return nil
}

// Marshal writes h into b[:HeaderLen] and returns HeaderLen. It writes the
// header only: the caller puts PayloadLen bytes of payload behind it (or
// uses MarshalPacket). It returns ErrShortBuffer when b is shorter than
// HeaderLen, and ErrUnknownKind or ErrMalformed for a header that Parse
// would reject; nothing is written then.
func (h *Header) Marshal(b []byte) (int, error) {
	if len(b) < HeaderLen {
		return 0, ErrShortBuffer
	}
	if err := h.check(); err != nil {
		return 0, err
	}
	b = b[:HeaderLen]
	b[offMagic] = Magic0
	b[offMagic+1] = Magic1
	b[offVersion] = Version
	b[offKind] = byte(h.Kind)
	b[offClass] = byte(h.Class)
	b[offFlags] = byte(h.Flags)
	binary.LittleEndian.PutUint16(b[offFragIndex:], h.FragIndex)
	binary.LittleEndian.PutUint16(b[offFragCount:], h.FragCount)
	binary.LittleEndian.PutUint16(b[offPayloadLen:], h.PayloadLen)
	binary.LittleEndian.PutUint32(b[offChannel:], h.Channel)
	binary.LittleEndian.PutUint64(b[offSource:], uint64(h.Source))
	binary.LittleEndian.PutUint64(b[offSeq:], h.Seq)
	return HeaderLen, nil
}

// MarshalPacket sets h.PayloadLen to len(payload), writes the header and
// the payload into b, and returns HeaderLen+len(payload). When payload
// already sits at b[HeaderLen:] (built in place), it is not copied. Besides
// Marshal's errors it returns ErrTooLong for a payload over MaxPayload
// (h is left unchanged then) and ErrShortBuffer when b cannot hold the
// whole message.
func (h *Header) MarshalPacket(b, payload []byte) (int, error) {
	if len(payload) > MaxPayload {
		return 0, ErrTooLong
	}
	n := HeaderLen + len(payload)
	if len(b) < n {
		return 0, ErrShortBuffer
	}
	old := h.PayloadLen
	h.PayloadLen = uint16(len(payload))
	if _, err := h.Marshal(b); err != nil {
		h.PayloadLen = old
		return 0, err
	}
	if dst := b[HeaderLen:n]; len(payload) > 0 && &dst[0] != &payload[0] {
		copy(dst, payload)
	}
	return n, nil
}

// Parse validates the message in b (exactly one header and its payload,
// as one datagram carries it) and returns the header and the payload. The
// payload aliases b. Errors, checked in this order:
//
//   - ErrNotVeloce: b does not start with the magic (checked first when b
//     holds at least two bytes, so foreign traffic is rejected cheaply);
//   - ErrTruncated: b is shorter than HeaderLen or than HeaderLen plus the
//     payload length;
//   - ErrVersion: another version;
//   - ErrUnknownKind: a reserved kind;
//   - ErrMalformed: reserved class or flag bits, FragCount 0, FragIndex not
//     below FragCount, an ack with payload or fragments, or bytes after the
//     payload.
func Parse(b []byte) (Header, []byte, error) {
	if len(b) >= 2 && (b[offMagic] != Magic0 || b[offMagic+1] != Magic1) {
		return Header{}, nil, ErrNotVeloce
	}
	if len(b) < HeaderLen {
		return Header{}, nil, ErrTruncated
	}
	if b[offVersion] != Version {
		return Header{}, nil, ErrVersion
	}
	h := Header{
		Kind:       Kind(b[offKind]),
		Class:      Class(b[offClass]),
		Flags:      Flags(b[offFlags]),
		FragIndex:  binary.LittleEndian.Uint16(b[offFragIndex:]),
		FragCount:  binary.LittleEndian.Uint16(b[offFragCount:]),
		PayloadLen: binary.LittleEndian.Uint16(b[offPayloadLen:]),
		Channel:    binary.LittleEndian.Uint32(b[offChannel:]),
		Source:     SourceID(binary.LittleEndian.Uint64(b[offSource:])),
		Seq:        binary.LittleEndian.Uint64(b[offSeq:]),
	}
	if err := h.check(); err != nil {
		return Header{}, nil, err
	}
	end := HeaderLen + int(h.PayloadLen)
	if len(b) < end {
		return Header{}, nil, ErrTruncated
	}
	if len(b) > end {
		return Header{}, nil, ErrMalformed
	}
	return h, b[HeaderLen:end:end], nil
}
