// Package wire is Veloce's on-wire message format between hosts: the one
// header every Ethernet/IP datapath (kernel UDP, DPDK, AF_XDP) puts at the
// start of each UDP payload, and that RDMA puts at the start of each message
// it sends over an RC queue pair (DESIGN.md, "Host to host"). Because the
// format is the same everywhere, a DPDK host, an AF_XDP host and a
// kernel-UDP host interoperate on one wire.
//
// # Layout
//
// A datagram is [Ethernet][IPv4 or IPv6][UDP][Header, 32 bytes][payload].
// The header is little endian (the byte order of the hosts Veloce targets,
// so C code in the DPDK and RDMA plugins can overlay a struct on it there;
// this package's code is byte-order independent) and every field is
// naturally aligned:
//
//	offset size field
//	 0     2    magic 'V' 'L' (0x56 0x4c): rejects foreign datagrams cheaply
//	 2     1    version (Version, 1)
//	 3     1    kind (Kind: data, directory, ack; other values reserved)
//	 4     1    stream class (Class: the stream's QoS bits)
//	 5     1    flags (Flags)
//	 6     2    fragment index, 0 .. count-1
//	 8     2    fragment count, >= 1
//	10     2    payload length in bytes (this datagram's payload only)
//	12     4    channel id
//	16     8    source id (SourceID: node id << 32 | local source number)
//	24     8    sequence number (per source, counts messages)
//
// The INSANE header the design asks for (version, stream class, channel id,
// source id, sequence, fragment index and count, payload length) plus a
// magic, a kind and flags would take 34 bytes with a 32-bit payload length.
// The payload length is 16 bits instead: it measures one datagram's payload,
// and no UDP datagram can carry more than 65535 bytes, so the field loses
// nothing. A message larger than one datagram travels as FragCount
// fragments, so one message can reach 65535 fragments.
//
// # Semantics
//
// All fragments of one message carry the same Kind, Class, Channel, Source
// and Seq; FragIndex tells them apart. Seq counts messages, not datagrams:
// per source it starts anywhere and increases by one per message, so a
// receiver detects loss and reordering per source and reassembles by
// (Source, Seq). Kinds:
//
//   - [KindData]: a message on a channel.
//   - [KindDirectory]: channel-directory control. The payload is a
//     [Directory]: a daemon tells a peer which channel ids it has sinks for,
//     so sources send only where someone listens. Source is the sending
//     daemon's own id (its node id, local number 0) and Channel is 0. A
//     list longer than [MaxDirectoryChannels] travels as FragCount parts of
//     the same generation, each a complete Directory payload. The payload
//     has its own layout version ([DirectoryVersion]) and carries the
//     daemon's boot id, so a restarted daemon is recognised at once. A
//     payload of layout [DigestVersion] is a [Digest] instead: it names a
//     directory (generation, boot id, total) without its list, sent each
//     interval in place of the whole directory ([IsDigest] tells them
//     apart).
//   - [KindAck]: acknowledgement for reliable streams. Source and Channel
//     name the acknowledged source and channel; Seq is the highest sequence
//     number received in order (cumulative). Its payload, an [Ack] body,
//     carries the receiver's credit (free slots) and selective
//     acknowledgements of what arrived past Seq; an ack is never
//     fragmented.
//
// # Rules
//
// Parsing and marshalling never allocate. [Parse] validates strictly (magic,
// version, kind, reserved bits, fragment index and count, payload length
// against the buffer, trailing bytes) and returns a payload view that
// aliases the caller's buffer. Errors are the constants of type [Error];
// returning one does not allocate, and callers compare with == or errors.Is.
//
// A receive path:
//
//	h, payload, err := wire.Parse(pkt.Buf[:pkt.N])
//	if err != nil { count(err); continue }
//	switch h.Kind {
//	case wire.KindData: deliver(h.Channel, h.Source, h.Seq, payload)
//	case wire.KindDirectory:
//		d, err := wire.ParseDirectory(payload, chans[:0]) // cap(chans) >= MaxDirectoryChannels
//		...
//	}
//
// # Authentication
//
// Between daemons that share a fleet key, every datagram carries an
// trailer after its payload (flag [FlagAuthenticated]): the sender's
// boot id, a per-sender counter and an HMAC-SHA256 tag truncated to 16
// bytes over header, payload, boot id and counter (see auth.go). [Sealer]
// writes it, [Opener] verifies it, [ReplayWindow] drops replays by
// counter; none of them allocates. Without a key nothing changes on the
// wire; each side rejects the other's datagrams (fails closed).
//
// [Packet] is the unit datapath plugins move in batches.
package wire
