package wire

import "net/netip"

// Packet is one datagram in a batch that a datapath plugin sends or
// receives. The caller owns Buf; a plugin uses it only during the call and
// keeps no reference afterwards, so the runtime can hand it slot memory and
// reuse Packets from batch to batch without allocating.
//
// Sending (SendBatch): Buf[:N] is the datagram (a Header and its payload)
// and Addr the destination. N must be between 0 and len(Buf).
//
// Receiving (RecvBatch): len(Buf) is the capacity offered for one datagram
// (give it room for the largest datagram expected, e.g. the MTU, or 64 KiB
// to be safe). The plugin sets N to the bytes stored in Buf and Addr to the
// sender. A datagram longer than len(Buf) is truncated to it: the plugin
// counts it, and Parse rejects the stump with ErrTruncated because its
// header declares more payload than Buf[:N] holds. Addr is the IPv4
// address for IPv4 senders even on an IPv6 socket (IPv4-mapped addresses
// are unmapped).
type Packet struct {
	Addr netip.AddrPort // destination when sending; sender when receiving
	Buf  []byte         // caller-owned storage; its length is the capacity
	N    int            // bytes used in Buf
}

// Bytes returns Buf[:N], the datagram.
func (p *Packet) Bytes() []byte { return p.Buf[:p.N] }
