// Package migration moves a VM port's stream state from one veloced to
// another during a live migration (DESIGN.md, "Migration").
//
// The hypervisor moves guest memory; the daemon moves what is not in guest
// memory. The design has three parts:
//
//   - The snapshot (this package, now): [PortSnapshot] is one VM port's
//     state as plain data — the link peer's view of the guest (MAC, address,
//     DHCP lease), the sessions, streams with their QoS and datapath,
//     sources with their sequence numbers, sinks with the messages not yet
//     delivered to the guest, and the replay cache of recent control
//     replies. It holds numbers and bytes, not backend types: a later step
//     maps backend state to and from it, so the format does not change when
//     backend's internals do. [Encode] and [Decode] are its binary codec;
//     [EncodeSigned] and [DecodeSigned] add an HMAC-SHA256 over a shared
//     per-fleet key.
//   - Transfer between daemons (backend/migrate.go): at switchover the source daemon
//     quiesces the port, exports its snapshot and hands it to the
//     destination daemon, which imports it all or nothing and resumes the
//     port's streams; the source forwards messages that still arrive for
//     moved streams until peers learn the new location. Trust rests on the
//     fleet key: a destination imports only a snapshot whose HMAC verifies
//     (DecodeSigned), so only a daemon holding the key can plant sessions or
//     sequence numbers in another. Where the frontend speaks vhost-user
//     DEVICE_STATE (Cloud Hypervisor, QEMU 8.1+) the same signed bytes may
//     ride in the hypervisor's own migration stream instead.
//   - Hypervisor drivers (package migration/hypervisor and its qemu and
//     chv packages): `velocectl migrate` prepares the destination, starts
//     the hypervisor's migration (QMP migrate for QEMU through go-qemu;
//     vm.send-migration / vm.receive-migration for Cloud Hypervisor's HTTP
//     API) and triggers the snapshot handover at switchover through the
//     drivers' Switchover hook.
//
// # Format
//
// A snapshot is little endian. Its envelope — the 12-byte header and the
// trailer — is the same in every format version, so any decoder can check
// length and checksum before it looks at the version:
//
//	offset  size  field
//	0       4     magic "VSNP"
//	4       2     format version (Version)
//	6       2     flags: bit 0 signed (an HMAC trailer follows the CRC);
//	              other bits reserved, zero
//	8       4     total length of the encoding, header to trailer
//	12      n     body: sections
//	12+n    4     CRC-32C (Castagnoli) of bytes [0, 12+n)
//	16+n    32    signed only: HMAC-SHA256 under the fleet key of [0, 16+n)
//
// The body of version 1 is eight sections in this order, each
// tag u16 | length u32 | content, where the content must fill the length
// exactly. Counts are u32, strings and byte fields carry their own length
// prefix (u16 or u32 as noted), addresses are family u8 (0 none, 4, 6) |
// 0, 4 or 16 address bytes | port u16:
//
//	tag  section     content
//	1    port        name len u16 | name
//	2    link        flags u8 (bit 0: guest MAC known) | guest MAC 6 |
//	                 service MAC 6 | service port u16 | MTU u16 |
//	                 lease address 4 | prefix bits u8 | server id 4 |
//	                 lease time s u32 | lease remaining s u32   (34 bytes)
//	3    sessions    count | { id u32 | last seen ns i64 | address }
//	4    streams     count | { id u32 | session u32 | acceleration u8 |
//	                 resource use u8 | time sensitive u8 | reliable u8 |
//	                 datapath len u16 | datapath | warning len u16 | warning }
//	5    sources     count | { id u32 | stream u32 | channel u32 |
//	                 global id u64 | next seq u64 | emitted u64 | full u64 }
//	6    sinks       count | { id u32 | stream u32 | channel u32 |
//	                 delivered u64 | dropped u64 | count u32 |
//	                 { source u64 | seq u64 | payload len u32 | payload } }
//	7    replay      count | { source address | session u32 | request u32 |
//	                 type u8 | at ns i64 | reply len u16 | reply }
//	8    extensions  count | { tag u16 | len u32 | data }  (empty in version 1)
//
// New state comes only with a new format version: a version may define
// extension tags or change sections, and a decoder refuses versions it does
// not speak with a [VersionError] rather than guessing.
//
// # Decoding
//
// Decoding is all or nothing: the input is checked (magic, length,
// checksum, HMAC, version), parsed into a new value and validated (ids
// unique, every stream's session, every source's and sink's stream
// present) before anything is returned; the value shares no memory with the
// input. Every count and length is checked against the remaining input and
// the [DecodeOptions] limits before anything is allocated from it, so a
// hostile snapshot costs at most a small multiple of its own size. Errors
// wrap one of [ErrTruncated], [ErrCorrupt], [ErrVersion], [ErrTooLarge],
// [ErrUnauthenticated] or [ErrInvalid], with the place that failed:
// "decode snapshot: sink 3: message 5: ...".
package migration
