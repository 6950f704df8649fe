// Package backend is Veloce's daemon and stream runtime.
//
//   - [Runtime]: sessions, streams, sources, sinks and the channels that tie
//     sources to sinks; the QoS [Policy] that maps a stream to a datapath,
//     with a warning the application sees when it falls back; remote peers
//     reached through a [Datapath] plugin, told which channels have local
//     sinks (the channel directory: datagrams to static peers, or the
//     fleet directory in etcd, [RemoteOptions.Etcd]). Control operations take a lock; Emit
//     and delivery take none and allocate nothing (copy-on-write tables,
//     lock-free slot queues).
//   - Endpoints, where applications live: a VM [Port] (guestlib's virtio
//     transport: guestproto datagrams to the service address, answered in
//     the poller, deliveries through the port's outbox and the RX ring) and
//     host applications on the daemon's unix socket (hostapp.go).
//   - [Daemon]: ports, the host-application socket, the runtime and the
//     control API velocectl uses.
//   - [LinkPeer]: the daemon's end of the point-to-point link every VM port
//     is.
//   - Tenants (tenants.go): every session belongs to a tenant (a port's,
//     or the one a host application's uid/gid maps to); channels are
//     scoped to tenants but for RuntimeOptions.SharedChannels; peers'
//     messages are the operator tenant's ([HostTenant]) until the wire
//     carries a tenant id (Runtime.deliverRemote is the hook).
//   - [Limits] (limits.go) per port and per host tenant: sessions, streams,
//     sources, sinks and control requests per second; a refusal is
//     guestproto.StatusLimit naming the limit (guestlib.ErrLimit),
//     counted in PortInfo.LimitRefusals and logged as a rate-limited
//     warning. Session opens and closes log at DEBUG.
//
// The vhost-user device model hands each frame the guest transmits to
// [LinkPeer.Handle], which answers ARP,
// ICMP echo and DHCP itself (writing the reply frame for the caller to put
// on the guest's RX queue), delivers UDP datagrams addressed to the service
// address and port to the runtime, and counts and drops everything else.
// [LinkPeer.PutDatagram] builds the frames that carry the runtime's messages
// back to the guest, and [LinkPeer.GratuitousARP] the announcement a
// destination daemon sends after a live migration.
//
// Addressing decisions (DESIGN.md, "Addressing between guest and daemon"):
//
//   - The service answers at one IPv4 address (default 169.254.77.1) and one
//     MAC (default 02:56:4c:4f:43:01, locally administered), identical on
//     every daemon so that a migrated guest's neighbour entry stays valid.
//   - DHCP hands the guest one fixed address (default 169.254.77.2/24) with a
//     subnet mask, broadcast address, server identifier, lease, renewal and
//     rebinding times, and optionally the interface MTU. It never sends a
//     router, DNS or domain option: the guest's default route and resolver
//     stay untouched. The server keeps no lease state, so every daemon
//     answers a migrated guest's renewal the same way.
//   - The link is untagged: VLAN-tagged frames are dropped as unsupported.
//     IPv4 fragments are dropped (guestlib never sends datagrams larger than
//     the link MTU); nothing is reassembled.
package backend
