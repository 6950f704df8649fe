package migration

import (
	"fmt"
	"net/netip"
)

// PortSnapshot is the stream state of one VM port: what the destination
// daemon needs, beyond guest memory, for the guest's applications to carry
// on. Backend state maps to it field by field; see each type for where a
// field comes from. Slices are in no particular order, but ids within each
// kind are unique. A decoded PortSnapshot shares no memory with its input.
type PortSnapshot struct {
	// Port is the port's name (backend PortOptions.Name), at most
	// MaxNameLen bytes.
	Port string
	// Link is the link peer's view of the guest.
	Link LinkState
	// Sessions are the port's open sessions.
	Sessions []Session
	// Streams are the sessions' streams.
	Streams []Stream
	// Sources are the streams' sources.
	Sources []Source
	// Sinks are the streams' sinks, with the messages queued for them.
	Sinks []Sink
	// Replay holds the port's recent control replies, for requests the
	// guest resends after the switchover.
	Replay []ReplayEntry
	// Extensions is where later format versions add state; each tag is
	// defined by the version that introduces it. Version 1 defines none,
	// so it must be empty.
	Extensions []Extension
}

// LinkState is the link peer's state (backend LinkPeer and its
// LinkPeerOptions, defaults applied).
type LinkState struct {
	// GuestMAC is the guest's MAC as the link peer learned it from the
	// guest's frames; meaningful only when GuestMACKnown.
	GuestMAC [6]byte
	// GuestMACKnown says a guest MAC was learned (LinkPeer.Learned is not
	// nil).
	GuestMACKnown bool
	// ServiceMAC is the link peer's own MAC (LinkPeerOptions.ServiceMAC).
	ServiceMAC [6]byte
	// ServicePort is the UDP port guestlib talks to.
	ServicePort uint16
	// MTU is the MTU offered with DHCP; 0 when none is.
	MTU uint16
	// Lease is the guest's DHCP lease.
	Lease Lease
}

// Lease is the DHCP lease the link peer hands the guest.
type Lease struct {
	// Addr is the guest's IPv4 address (LinkPeerOptions.GuestIP).
	Addr [4]byte
	// PrefixBits is the length of the guest's prefix, at most 32.
	PrefixBits uint8
	// ServerID is the DHCP server identifier, the service IPv4 address.
	ServerID [4]byte
	// Seconds is the lease time handed out; InfiniteLease means forever.
	Seconds uint32
	// RemainingSeconds is how long the guest's lease has left, 0 when
	// unknown: backend's DHCP server keeps no lease state and answers a
	// migrated guest's renewal the same way on every daemon.
	RemainingSeconds uint32
}

// InfiniteLease, as Lease.Seconds, is a lease that never expires (RFC
// 2131's 0xffffffff).
const InfiniteLease = 0xffffffff

// Session is an application's session (backend Session).
type Session struct {
	// ID is the session id the guest uses, not 0.
	ID uint32
	// Addr is the application's socket in the guest: the source of its
	// datagrams, which the port checks on every request. It carries no
	// zone.
	Addr netip.AddrPort
	// LastSeen is the unix nanosecond time of the session's last message.
	LastSeen int64
}

// QoS values: each option is 0 or 1, the numbers guestproto carries.
const (
	AccelerationNone, AccelerationRequired = 0, 1 // QoS.Acceleration
	ResourceUseAny, ResourceUseFrugal      = 0, 1 // QoS.ResourceUse
	ScheduleFIFO, ScheduleQbv              = 0, 1 // QoS.TimeSensitive
	BestEffort, ReliableInOrder            = 0, 1 // QoS.Reliable
)

// QoS are a stream's options (backend StreamOptions), as numbers.
type QoS struct {
	// Acceleration: AccelerationNone or AccelerationRequired.
	Acceleration uint8
	// ResourceUse: ResourceUseAny or ResourceUseFrugal.
	ResourceUse uint8
	// TimeSensitive: ScheduleFIFO or ScheduleQbv (802.1Qbv).
	TimeSensitive uint8
	// Reliable: BestEffort or ReliableInOrder.
	Reliable uint8
}

// Stream is a stream (backend Stream).
type Stream struct {
	// ID is the stream id, not 0.
	ID uint32
	// Session is the id of the stream's session.
	Session uint32
	// QoS are the options the application asked for.
	QoS QoS
	// Datapath names the datapath the policy chose (udp, rdma, dpdk,
	// xdp), at most MaxNameLen bytes. The destination maps the options
	// again, and may choose otherwise.
	Datapath string
	// Warning is the policy's warning, "" when the options were met; at
	// most MaxTextLen bytes.
	Warning string
}

// Source is a source (backend Source).
type Source struct {
	// ID is the source id, not 0.
	ID uint32
	// Stream is the id of the source's stream.
	Stream uint32
	// Channel is the channel the source emits on.
	Channel uint32
	// Global is the source id peers and sinks see (source node id << 32 |
	// ID); the destination keeps it, so receivers see one source.
	Global uint64
	// NextSeq is the sequence number the source's next message carries
	// (backend: the last sequence number emitted, plus one).
	NextSeq uint64
	// Emitted and Full are the source's counters (velocectl streams).
	Emitted, Full uint64
}

// Sink is a sink (backend Sink) with the messages not yet delivered to
// the guest (the port's outbox).
type Sink struct {
	// ID is the sink id, not 0.
	ID uint32
	// Stream is the id of the sink's stream.
	Stream uint32
	// Channel is the channel the sink receives.
	Channel uint32
	// Delivered and Dropped are the sink's counters.
	Delivered, Dropped uint64
	// Queued are the undelivered messages, oldest first.
	Queued []Message
}

// Message is a message queued for a sink.
type Message struct {
	// Source is the global id of the source that emitted it.
	Source uint64
	// Seq is its sequence number.
	Seq uint64
	// Payload is the message; nil when empty.
	Payload []byte
}

// ReplayEntry is an entry of the port's replay cache: the reply to a
// control request, kept for a request the guest resends.
type ReplayEntry struct {
	// Src is the requesting application's socket (no zone).
	Src netip.AddrPort
	// Session is the session the request named.
	Session uint32
	// Request is the request id.
	Request uint32
	// Type is the request's guestproto type.
	Type uint8
	// At is the unix nanosecond time the reply was made.
	At int64
	// Reply is the cached reply, the body of a guestproto Reply (status,
	// id, plugin, message); nil when empty. At most MaxReplyLen bytes.
	Reply []byte
}

// Extension is state a later format version adds.
type Extension struct {
	// Tag says what Data is; each is defined by a format version.
	Tag uint16
	// Data is the extension's content; nil when empty.
	Data []byte
}

// Limits of the format, for every encoder and decoder.
const (
	// MaxSnapshotSize bounds an encoding, trailer included.
	MaxSnapshotSize = 64 << 20
	// MaxNameLen bounds the port and datapath names.
	MaxNameLen = 255
	// MaxTextLen bounds a stream's warning.
	MaxTextLen = 1024
	// MaxReplyLen bounds a cached reply.
	MaxReplyLen = 4096
)

// DecodeOptions bound what a decoder accepts. A zero field takes its
// default (the Default* constants); the limits protect the destination
// from a hostile or broken snapshot, and are enforced before anything is
// allocated from the input.
type DecodeOptions struct {
	// MaxBytes bounds the whole encoding; default and ceiling
	// MaxSnapshotSize.
	MaxBytes int
	// MaxSessions bounds the number of sessions; default
	// DefaultMaxSessions.
	MaxSessions int
	// MaxStreams bounds the number of streams; default DefaultMaxStreams.
	MaxStreams int
	// MaxSources bounds the number of sources; default DefaultMaxSources.
	MaxSources int
	// MaxSinks bounds the number of sinks; default DefaultMaxSinks.
	MaxSinks int
	// MaxMessagesPerSink bounds the messages queued for one sink; default
	// DefaultMaxMessagesPerSink.
	MaxMessagesPerSink int
	// MaxMessages bounds the messages queued for all sinks together;
	// default DefaultMaxMessages.
	MaxMessages int
	// MaxPayload bounds one message's payload; default DefaultMaxPayload.
	MaxPayload int
	// MaxReplay bounds the replay cache entries; default DefaultMaxReplay.
	MaxReplay int
}

// Defaults of DecodeOptions. The message bounds exceed what one port's
// outbox holds (1024 frames of at most one MTU).
const (
	DefaultMaxSessions        = 1024
	DefaultMaxStreams         = 4096
	DefaultMaxSources         = 4096
	DefaultMaxSinks           = 4096
	DefaultMaxMessagesPerSink = 4096
	DefaultMaxMessages        = 16384
	DefaultMaxPayload         = 65535
	DefaultMaxReplay          = 256
)

// withDefaults returns o with defaults applied (o may be nil).
func (o *DecodeOptions) withDefaults() DecodeOptions {
	var d DecodeOptions
	if o != nil {
		d = *o
	}
	def := func(v *int, dflt int) {
		if *v <= 0 {
			*v = dflt
		}
	}
	def(&d.MaxBytes, MaxSnapshotSize)
	d.MaxBytes = min(d.MaxBytes, MaxSnapshotSize)
	def(&d.MaxSessions, DefaultMaxSessions)
	def(&d.MaxStreams, DefaultMaxStreams)
	def(&d.MaxSources, DefaultMaxSources)
	def(&d.MaxSinks, DefaultMaxSinks)
	def(&d.MaxMessagesPerSink, DefaultMaxMessagesPerSink)
	def(&d.MaxMessages, DefaultMaxMessages)
	def(&d.MaxPayload, DefaultMaxPayload)
	def(&d.MaxReplay, DefaultMaxReplay)
	return d
}

// Validate checks that s holds together: ids are not 0 and unique within
// their kind, every stream's session and every source's and sink's stream
// is in s, QoS values are 0 or 1, the lease's prefix is at most 32 bits,
// addresses carry no zone, strings and replies fit the format's limits,
// and there are no extensions (format version 1 defines none). Errors wrap
// ErrInvalid, or ErrTooLarge for a field over a format limit.
func (s *PortSnapshot) Validate() error {
	if len(s.Port) > MaxNameLen {
		return fmt.Errorf("port name: %w", tooLarge("MaxNameLen", MaxNameLen, uint64(len(s.Port))))
	}
	if s.Link.Lease.PrefixBits > 32 {
		return invalid("link: prefix length %d", s.Link.Lease.PrefixBits)
	}
	sessions := make(map[uint32]bool, len(s.Sessions))
	for _, se := range s.Sessions {
		if err := uniqueID(sessions, se.ID); err != nil {
			return fmt.Errorf("session %d: %w", se.ID, err)
		}
		if se.Addr.Addr().Zone() != "" {
			return invalid("session %d: address %v has a zone", se.ID, se.Addr)
		}
	}
	streams := make(map[uint32]bool, len(s.Streams))
	for _, st := range s.Streams {
		if err := st.validate(streams, sessions); err != nil {
			return fmt.Errorf("stream %d: %w", st.ID, err)
		}
	}
	sources := make(map[uint32]bool, len(s.Sources))
	for _, so := range s.Sources {
		if err := uniqueID(sources, so.ID); err != nil {
			return fmt.Errorf("source %d: %w", so.ID, err)
		}
		if !streams[so.Stream] {
			return invalid("source %d: stream %d not in the snapshot", so.ID, so.Stream)
		}
	}
	sinks := make(map[uint32]bool, len(s.Sinks))
	for _, sk := range s.Sinks {
		if err := uniqueID(sinks, sk.ID); err != nil {
			return fmt.Errorf("sink %d: %w", sk.ID, err)
		}
		if !streams[sk.Stream] {
			return invalid("sink %d: stream %d not in the snapshot", sk.ID, sk.Stream)
		}
	}
	for i, e := range s.Replay {
		if e.Src.Addr().Zone() != "" {
			return invalid("replay entry %d: address %v has a zone", i, e.Src)
		}
		if len(e.Reply) > MaxReplyLen {
			return fmt.Errorf("replay entry %d: %w", i, tooLarge("MaxReplyLen", MaxReplyLen, uint64(len(e.Reply))))
		}
	}
	if len(s.Extensions) > 0 {
		return invalid("extension tag %d: format version %d defines no extensions", s.Extensions[0].Tag, Version)
	}
	return nil
}

func (st *Stream) validate(streams, sessions map[uint32]bool) error {
	if err := uniqueID(streams, st.ID); err != nil {
		return err
	}
	if !sessions[st.Session] {
		return invalid("session %d not in the snapshot", st.Session)
	}
	q := st.QoS
	if q.Acceleration > 1 || q.ResourceUse > 1 || q.TimeSensitive > 1 || q.Reliable > 1 {
		return invalid("QoS %+v: each option must be 0 or 1", q)
	}
	if len(st.Datapath) > MaxNameLen {
		return fmt.Errorf("datapath: %w", tooLarge("MaxNameLen", MaxNameLen, uint64(len(st.Datapath))))
	}
	if len(st.Warning) > MaxTextLen {
		return fmt.Errorf("warning: %w", tooLarge("MaxTextLen", MaxTextLen, uint64(len(st.Warning))))
	}
	return nil
}

func uniqueID(seen map[uint32]bool, id uint32) error {
	if id == 0 {
		return invalid("id 0")
	}
	if seen[id] {
		return invalid("duplicate id")
	}
	seen[id] = true
	return nil
}
