// Package pkt parses and builds the packet headers Veloce's datapaths speak:
// Ethernet II (skipping 802.1Q and 802.1ad tags), ARP for IPv4 over Ethernet,
// IPv4, UDP and ICMPv4, plus the Internet checksum (RFC 1071) and its
// incremental update (RFC 1624).
//
// The package is written for the per-packet path and is shared by every
// datapath that handles raw frames (the vhost-user link peer, the DPDK and
// AF_XDP plugins). Its rules:
//
//   - Parsing never allocates and never copies packet data. A ParseX function
//     validates the header in the caller's buffer and returns a small value
//     struct holding the decoded fixed fields and sub-slices (views) of the
//     caller's buffer, such as [IPv4.Payload]. Views alias the buffer: they are
//     valid only as long as the buffer is, and see any later writes to it.
//   - Building never allocates. A PutX function writes into a caller-provided
//     buffer and returns the number of bytes written, or [ErrShortBuffer] when
//     the buffer is too small (nothing useful is written then). Builders that
//     take a payload copy it behind the header; when the payload already sits
//     exactly there (the caller built it in place), the copy is skipped.
//   - Errors are the constants of type [Error]. Returning one as an error
//     does not allocate, and callers compare with == or errors.Is.
//   - Multi-byte fields are big-endian on the wire and host-order integers in
//     the structs. Addresses are [MAC] and [4]byte values; convert with
//     netip.AddrFrom4 where a netip.Addr is wanted.
//
// A typical receive path:
//
//	eth, err := pkt.ParseEthernet(frame)
//	if err != nil || eth.Type != pkt.EtherTypeIPv4 { ... }
//	ip, err := pkt.ParseIPv4(eth.Payload)
//	if err != nil || ip.IsFragment() || ip.Protocol != pkt.ProtocolUDP { ... }
//	udp, err := pkt.ParseUDP(ip.Payload)
//	if err != nil || !udp.ChecksumValid(ip.Src, ip.Dst) { ... }
//	use(udp.Payload)
//
// Fragments are identified ([IPv4.IsFragment]) and left to the caller:
// nothing here reassembles. IPv4 options are skipped, not interpreted.
package pkt
