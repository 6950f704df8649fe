// Package guestproto is the protocol between guestlib and the daemon: the
// INSANE API's operations (open a session, create streams, sources and
// sinks, emit and deliver messages) as datagrams. Inside a VM they travel
// as UDP datagrams to the service address and port over the virtio link.
// One message per datagram. On the host, requests, replies and outcomes
// travel over a unix SOCK_SEQPACKET connection, one per packet, while
// Emit and Deliver are replaced by slot ids on shared-memory rings
// (internal/shm).
//
// Every message starts with a 12-byte header, little endian:
//
//	magic 'V''G' | version u8 | type u8 | request id u32 | session id u32
//
// Requests (guest to daemon) carry a request id the reply echoes; data
// messages (Emit, Deliver) carry id 0. Parsing never allocates and never
// reads past the datagram: a view of the payload is returned. Building
// writes into a caller buffer.
package guestproto

import (
	"encoding/binary"
)

// Header layout.
const (
	Magic0, Magic1 = 'V', 'G'
	// Version is the protocol version this package speaks.
	Version = 1
	// HeaderLen is the size of the common header.
	HeaderLen = 12
	// MaxText bounds the strings a reply carries (plugin name, messages).
	MaxText = 1024
)

// Type is a message type.
type Type uint8

// Message types. Requests are below 0x40, replies 0x40, data 0x80 and up.
const (
	OpenSession  Type = 0x01 // no body; the reply's ID is the session id
	CloseSession Type = 0x02 // no body (session in the header)
	CreateStream Type = 0x03 // body: StreamOptions
	CloseStream  Type = 0x04 // body: id u32
	CreateSource Type = 0x05 // body: stream u32, channel u32
	CloseSource  Type = 0x06 // body: id u32
	CreateSink   Type = 0x07 // body: stream u32, channel u32
	CloseSink    Type = 0x08 // body: id u32
	Ping         Type = 0x09 // no body: liveness of the session
	Reply        Type = 0x40 // body: Result
	Emit         Type = 0x80 // body: source u32, token u64, payload
	Deliver      Type = 0x81 // body: sink u32, channel u32, source u64, seq u64, payload
	Outcome      Type = 0x82 // body: source u32, token u64, status u16 (emit outcome)
	Credit       Type = 0x83 // body: sink u32, seen u32, room u32 (guest to daemon)
	// StreamChanged (daemon to guest) tells the session that a stream
	// moved to another datapath (velocectl streams set-qos). Body: stream
	// u32 | datapath len u16 | datapath | warning len u16 | warning; the
	// parsed fields are ID, Result.Plugin and Result.Message.
	StreamChanged Type = 0x84
	// EmitFrag (guest to daemon) is one fragment of a message larger
	// than one frame: body: source u32 | token u64 | index u16 | count u16
	// | payload. Every fragment but the last carries FragSize bytes, the
	// last the rest; all carry the message's token, count at least 2 and
	// index below it. A client sends them only to a daemon whose
	// OpenSession reply gave a largest message (ParseMaxMessage): older
	// daemons do not know the type.
	EmitFrag Type = 0x85
)

// FragSize is the payload of every EmitFrag but a message's last: an
// EmitFrag of it fits a 1500-byte link MTU with room to spare.
const FragSize = 1400

// EmitFragOverhead is the bytes an EmitFrag adds before its payload.
const EmitFragOverhead = HeaderLen + 16

// Flow control on the guest's link (Credit). A Deliver's header carries,
// in its RequestID field, the sink's delivery index: 1, 2, ... per sink,
// wrapping at 2^32, counted by the daemon once the guest has sent the
// sink's first Credit (before that, and for a client that never sends
// one, the field stays 0). A Credit says "the last index I read for this
// sink is Seen, and Room more may come": the daemon keeps at most Room
// deliveries in flight past Seen (on the link, in the guest's socket
// buffer) and holds or drops the rest on its side, where they are counted,
// instead of letting the guest kernel drop them unseen. Indexes, not
// counts, make the credit robust to a lost frame: the next index read
// moves Seen past it. A Seen the daemon has not sent yet (a Credit of an
// earlier numbering, as after a migration) counts as nothing in flight.

var typeNames = map[Type]string{
	OpenSession: "open-session", CloseSession: "close-session", CreateStream: "create-stream",
	CloseStream: "close-stream", CreateSource: "create-source", CloseSource: "close-source",
	CreateSink: "create-sink", CloseSink: "close-sink", Ping: "ping", Reply: "reply",
	Emit: "emit", Deliver: "deliver", Outcome: "outcome", EmitFrag: "emit-frag",
}

// String returns the type's name.
func (t Type) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return "type-" + string("0123456789abcdef"[t>>4]) + string("0123456789abcdef"[t&15])
}

// Error is a parse or build error. Its values are constants, so returning
// one never allocates.
type Error uint8

// Errors.
const (
	ErrShort       Error = iota + 1 // datagram shorter than its message
	ErrMagic                        // not a guestproto datagram
	ErrVersion                      // a version this package does not speak
	ErrType                         // unknown message type
	ErrLength                       // body length wrong for the type
	ErrShortBuffer                  // build: buffer too small
	ErrTextTooLong                  // build: a string over MaxText
	ErrRequestID                    // a data message with a request id
)

var errText = [...]string{
	ErrShort: "guestproto: message truncated", ErrMagic: "guestproto: bad magic",
	ErrVersion: "guestproto: unsupported version", ErrType: "guestproto: unknown message type",
	ErrLength: "guestproto: bad body length", ErrShortBuffer: "guestproto: buffer too small",
	ErrTextTooLong: "guestproto: text too long", ErrRequestID: "guestproto: data message with a request id",
}

func (e Error) Error() string {
	if int(e) < len(errText) && errText[e] != "" {
		return errText[e]
	}
	return "guestproto: error"
}

// Header is the common header.
type Header struct {
	Type      Type
	RequestID uint32
	Session   uint32
}

// StreamOptions are the QoS hints of a stream (the paper's section 5.2).
type StreamOptions struct {
	// Acceleration: 0 none, 1 required.
	Acceleration uint8
	// ResourceUse: 0 don't care, 1 frugal.
	ResourceUse uint8
	// TimeSensitive: 0 FIFO, 1 802.1Qbv schedule.
	TimeSensitive uint8
	// Reliable: 0 best effort, 1 reliable in order.
	Reliable uint8
}

// Status is a reply's or outcome's status code.
type Status uint16

// Status codes.
const (
	StatusOK         Status = 0
	StatusBadRequest Status = 1 // malformed or out of order
	StatusNoSession  Status = 2 // the session id is unknown (daemon restarted?)
	StatusNotFound   Status = 3 // the stream, source or sink id is unknown
	StatusNoBuffers  Status = 4 // back-pressure: the pool is empty
	StatusTooLarge   Status = 5 // the message exceeds what the stream carries
	StatusInternal   Status = 6
	// StatusLimit: the request would exceed one of the daemon's limits
	// for the port or tenant (sessions, streams, sources, sinks, control
	// requests per second). The reply's Plugin field names the limit
	// (LimitSessions...), its Message says more for a human.
	StatusLimit Status = 7
	// StatusDenied: the tenant may not do this (its tenant id collides
	// with another's, or a later access rule refuses it).
	StatusDenied Status = 8
	// StatusPeerUnreachable: the source is on a reliable stream and a
	// peer with sinks for it acknowledged nothing within the daemon's
	// reliable timeout; the source has failed and refuses every emit
	// from then on (close it and open another once the peer is back).
	StatusPeerUnreachable Status = 9
)

// The names of the limits a StatusLimit reply carries in Result.Plugin.
const (
	LimitSessions    = "sessions"
	LimitStreams     = "streams"
	LimitSources     = "sources"
	LimitSinks       = "sinks"
	LimitControlRate = "control-rate"
	LimitAppClients  = "app-clients" // host applications attached to the daemon at once
)

// Result is the body of a Reply.
type Result struct {
	Status Status
	// ID is the id of what the request created (session, stream, source,
	// sink), 0 otherwise.
	ID uint32
	// Plugin names the datapath a created stream was mapped to; in a
	// StatusLimit reply, the limit that was hit (LimitSessions...).
	Plugin []byte
	// Message is the error text, or a warning for a successful request
	// (a stream that asked for acceleration and fell back to UDP).
	Message []byte
}

// MaxMessageLen is the length of an OpenSession reply's Result.Plugin
// from a daemon that says how large a session's messages may be: the
// largest message in bytes, u32 little endian (PutMaxMessage). Daemons
// before large messages leave Plugin empty, and older clients ignore it:
// the reply parses the same for both.
const MaxMessageLen = 4

// PutMaxMessage encodes n for an OpenSession reply's Result.Plugin.
func PutMaxMessage(b *[MaxMessageLen]byte, n uint32) []byte {
	le.PutUint32(b[:], n)
	return b[:]
}

// ParseMaxMessage decodes an OpenSession reply's Result.Plugin: the
// session's largest message, or ok false when the daemon said nothing
// (an empty Plugin) or something this package does not know (any other
// length, or 0).
func ParseMaxMessage(p []byte) (n uint32, ok bool) {
	if len(p) != MaxMessageLen {
		return 0, false
	}
	n = le.Uint32(p)
	return n, n != 0
}

// Message is a parsed datagram: a header and the fields of its type. Byte
// slices are views of the datagram.
type Message struct {
	Header
	Options StreamOptions // CreateStream
	ID      uint32        // Close*, Emit (source), Deliver (sink), Outcome (source), Credit (sink)
	Stream  uint32        // CreateSource, CreateSink
	Channel uint32        // CreateSource, CreateSink, Deliver
	Token   uint64        // Emit, Outcome
	Source  uint64        // Deliver: the global source id
	Seq     uint64        // Deliver: the source's sequence number
	Seen    uint32        // Credit: the last delivery index the guest read
	Room    uint32        // Credit: how many more deliveries may be in flight
	Status  Status        // Outcome
	Result  Result        // Reply
	Payload []byte        // Emit, Deliver, EmitFrag
	// FragIndex and FragCount: EmitFrag's place in its message.
	FragIndex, FragCount uint16
}

var le = binary.LittleEndian

// Parse decodes a datagram. It does not allocate.
func Parse(b []byte, m *Message) error {
	if len(b) < HeaderLen {
		return ErrShort
	}
	if b[0] != Magic0 || b[1] != Magic1 {
		return ErrMagic
	}
	if b[2] != Version {
		return ErrVersion
	}
	*m = Message{Header: Header{Type: Type(b[3]), RequestID: le.Uint32(b[4:]), Session: le.Uint32(b[8:])}}
	body := b[HeaderLen:]
	if m.Type >= Emit && m.Type != Deliver && m.RequestID != 0 {
		return ErrRequestID
	}
	exact := func(n int) error {
		if len(body) != n {
			return ErrLength
		}
		return nil
	}
	switch m.Type {
	case OpenSession, CloseSession, Ping:
		return exact(0)
	case CreateStream:
		if err := exact(4); err != nil {
			return err
		}
		m.Options = StreamOptions{body[0], body[1], body[2], body[3]}
	case CloseStream, CloseSource, CloseSink:
		if err := exact(4); err != nil {
			return err
		}
		m.ID = le.Uint32(body)
	case CreateSource, CreateSink:
		if err := exact(8); err != nil {
			return err
		}
		m.Stream, m.Channel = le.Uint32(body), le.Uint32(body[4:])
	case Reply:
		// status u16 | id u32 | plugin len u16 | plugin | message len u16 | message
		if len(body) < 10 {
			return ErrLength
		}
		m.Result.Status, m.Result.ID = Status(le.Uint16(body)), le.Uint32(body[2:])
		var ok bool
		if m.Result.Plugin, m.Result.Message, ok = twoTexts(body[6:]); !ok {
			return ErrLength
		}
	case Emit:
		if len(body) < 12 {
			return ErrLength
		}
		m.ID, m.Token, m.Payload = le.Uint32(body), le.Uint64(body[4:]), body[12:]
	case EmitFrag:
		if len(body) < 16 {
			return ErrLength
		}
		m.ID, m.Token, m.FragIndex, m.FragCount, m.Payload = le.Uint32(body), le.Uint64(body[4:]), le.Uint16(body[12:]), le.Uint16(body[14:]), body[16:]
		if m.FragCount < 2 || m.FragIndex >= m.FragCount || len(m.Payload) > FragSize {
			return ErrLength
		}
	case Deliver:
		if len(body) < 24 {
			return ErrLength
		}
		m.ID, m.Channel, m.Source, m.Seq, m.Payload = le.Uint32(body), le.Uint32(body[4:]), le.Uint64(body[8:]), le.Uint64(body[16:]), body[24:]
	case Outcome:
		if err := exact(14); err != nil {
			return err
		}
		m.ID, m.Token, m.Status = le.Uint32(body), le.Uint64(body[4:]), Status(le.Uint16(body[12:]))
	case Credit:
		if err := exact(12); err != nil {
			return err
		}
		m.ID, m.Seen, m.Room = le.Uint32(body), le.Uint32(body[4:]), le.Uint32(body[8:])
	case StreamChanged:
		if len(body) < 8 {
			return ErrLength
		}
		m.ID = le.Uint32(body)
		var ok bool
		if m.Result.Plugin, m.Result.Message, ok = twoTexts(body[4:]); !ok {
			return ErrLength
		}
	default:
		return ErrType
	}
	return nil
}

// twoTexts splits b, "len u16 | first | len u16 | second" and nothing
// after, into its two strings (each at most MaxText).
func twoTexts(b []byte) (first, second []byte, ok bool) {
	if len(b) < 2 {
		return nil, nil, false
	}
	n := int(le.Uint16(b))
	if n > MaxText || len(b) < 2+n+2 {
		return nil, nil, false
	}
	first, rest := b[2:2+n], b[2+n:]
	n = int(le.Uint16(rest))
	if n > MaxText || len(rest) != 2+n {
		return nil, nil, false
	}
	return first, rest[2:], true
}

// PutHeader writes a header into b.
func PutHeader(b []byte, h Header) (int, error) {
	if len(b) < HeaderLen {
		return 0, ErrShortBuffer
	}
	b[0], b[1], b[2], b[3] = Magic0, Magic1, Version, byte(h.Type)
	le.PutUint32(b[4:], h.RequestID)
	le.PutUint32(b[8:], h.Session)
	return HeaderLen, nil
}

// PutRequest writes a request of any type but Reply, Emit, Deliver and
// Outcome; the fields of m its type uses are encoded.
func PutRequest(b []byte, m *Message) (int, error) {
	n, err := PutHeader(b, m.Header)
	if err != nil {
		return 0, err
	}
	var body []byte
	var tmp [8]byte
	switch m.Type {
	case OpenSession, CloseSession, Ping:
	case CreateStream:
		tmp[0], tmp[1], tmp[2], tmp[3] = m.Options.Acceleration, m.Options.ResourceUse, m.Options.TimeSensitive, m.Options.Reliable
		body = tmp[:4]
	case CloseStream, CloseSource, CloseSink:
		le.PutUint32(tmp[:], m.ID)
		body = tmp[:4]
	case CreateSource, CreateSink:
		le.PutUint32(tmp[:], m.Stream)
		le.PutUint32(tmp[4:], m.Channel)
		body = tmp[:8]
	default:
		return 0, ErrType
	}
	if len(b) < n+len(body) {
		return 0, ErrShortBuffer
	}
	return n + copy(b[n:], body), nil
}

// PutReply writes a Reply to request h (its type and request id are
// replaced by Reply and kept).
func PutReply(b []byte, h Header, r *Result) (int, error) {
	if len(r.Plugin) > MaxText || len(r.Message) > MaxText {
		return 0, ErrTextTooLong
	}
	need := HeaderLen + 10 + len(r.Plugin) + len(r.Message)
	if len(b) < need {
		return 0, ErrShortBuffer
	}
	h.Type = Reply
	n, _ := PutHeader(b, h)
	le.PutUint16(b[n:], uint16(r.Status))
	le.PutUint32(b[n+2:], r.ID)
	le.PutUint16(b[n+6:], uint16(len(r.Plugin)))
	n += 8 + copy(b[n+8:], r.Plugin)
	le.PutUint16(b[n:], uint16(len(r.Message)))
	n += 2 + copy(b[n+2:], r.Message)
	return n, nil
}

// PutEmitFrag writes fragment index of count of a large message; part
// is at most FragSize bytes.
func PutEmitFrag(b []byte, session, source uint32, token uint64, index, count uint16, part []byte) (int, error) {
	if len(part) > FragSize || count < 2 || index >= count {
		return 0, ErrLength
	}
	if len(b) < EmitFragOverhead+len(part) {
		return 0, ErrShortBuffer
	}
	PutHeader(b, Header{Type: EmitFrag, Session: session})
	le.PutUint32(b[HeaderLen:], source)
	le.PutUint64(b[HeaderLen+4:], token)
	le.PutUint16(b[HeaderLen+12:], index)
	le.PutUint16(b[HeaderLen+14:], count)
	return EmitFragOverhead + copy(b[EmitFragOverhead:], part), nil
}

// EmitOverhead is the bytes an Emit adds before its payload.
const EmitOverhead = HeaderLen + 12

// PutEmit writes an Emit. When payload already sits at b[EmitOverhead:]
// (the caller wrote it in place, as guestlib's buffers do) nothing is
// copied.
func PutEmit(b []byte, session, source uint32, token uint64, payload []byte) (int, error) {
	if len(b) < EmitOverhead+len(payload) {
		return 0, ErrShortBuffer
	}
	PutHeader(b, Header{Type: Emit, Session: session})
	le.PutUint32(b[HeaderLen:], source)
	le.PutUint64(b[HeaderLen+4:], token)
	copyIfMoved(b[EmitOverhead:], payload)
	return EmitOverhead + len(payload), nil
}

// DeliverOverhead is the bytes a Deliver adds before its payload.
const DeliverOverhead = HeaderLen + 24

// PutDeliver writes a Deliver with the sink's delivery index (0: none,
// see Credit); like PutEmit it copies nothing when the payload is already
// in place.
func PutDeliver(b []byte, session, sink, channel uint32, index uint32, source, seq uint64, payload []byte) (int, error) {
	if len(b) < DeliverOverhead+len(payload) {
		return 0, ErrShortBuffer
	}
	PutHeader(b, Header{Type: Deliver, RequestID: index, Session: session})
	le.PutUint32(b[HeaderLen:], sink)
	le.PutUint32(b[HeaderLen+4:], channel)
	le.PutUint64(b[HeaderLen+8:], source)
	le.PutUint64(b[HeaderLen+16:], seq)
	copyIfMoved(b[DeliverOverhead:], payload)
	return DeliverOverhead + len(payload), nil
}

// PutOutcome writes an emit Outcome.
func PutOutcome(b []byte, session, source uint32, token uint64, st Status) (int, error) {
	if len(b) < HeaderLen+14 {
		return 0, ErrShortBuffer
	}
	PutHeader(b, Header{Type: Outcome, Session: session})
	le.PutUint32(b[HeaderLen:], source)
	le.PutUint64(b[HeaderLen+4:], token)
	le.PutUint16(b[HeaderLen+12:], uint16(st))
	return HeaderLen + 14, nil
}

// CreditLen is the size of a Credit datagram.
const CreditLen = HeaderLen + 12

// PutCredit writes a Credit for one of the session's sinks.
func PutCredit(b []byte, session, sink, seen, room uint32) (int, error) {
	if len(b) < CreditLen {
		return 0, ErrShortBuffer
	}
	PutHeader(b, Header{Type: Credit, Session: session})
	le.PutUint32(b[HeaderLen:], sink)
	le.PutUint32(b[HeaderLen+4:], seen)
	le.PutUint32(b[HeaderLen+8:], room)
	return CreditLen, nil
}

// PutStreamChanged writes a StreamChanged: stream moved to datapath, with
// warning (empty when its options are met).
func PutStreamChanged(b []byte, session, stream uint32, datapath, warning []byte) (int, error) {
	if len(datapath) > MaxText || len(warning) > MaxText {
		return 0, ErrLength
	}
	n := HeaderLen + 4 + 2 + len(datapath) + 2 + len(warning)
	if len(b) < n {
		return 0, ErrShortBuffer
	}
	PutHeader(b, Header{Type: StreamChanged, Session: session})
	body := b[HeaderLen:]
	le.PutUint32(body, stream)
	le.PutUint16(body[4:], uint16(len(datapath)))
	copy(body[6:], datapath)
	rest := body[6+len(datapath):]
	le.PutUint16(rest, uint16(len(warning)))
	copy(rest[2:], warning)
	return n, nil
}

// copyIfMoved copies src to dst unless src already starts at dst.
func copyIfMoved(dst, src []byte) {
	if len(src) == 0 || (len(dst) > 0 && &dst[0] == &src[0]) {
		return
	}
	copy(dst, src)
}
