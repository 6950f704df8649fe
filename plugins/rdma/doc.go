// Package rdma is the RDMA datapath: streams that ask for acceleration go
// to peers with an RDMA device over reliable-connected (RC) queue pairs,
// one per peer, each message one RDMA send carrying the same wire header
// (internal/wire) as every other datapath, so the runtime cannot tell the
// datapaths apart past the plugin.
//
// # Connection set-up
//
// A Signaller carries the set-up: the dialling side makes a queue pair in
// INIT and sends its Endpoint (QPN, first PSN, RoCE v2 GID, receive
// buffer size, MTU); the accepting side makes its own, moves it to RTR and
// RTS towards the dialler and answers with its Endpoint; the dialler moves
// to RTR and RTS. The default TCPSignaller is one short TCP connection on
// the RDMA netdev's address and the plugin's port (the kernel-UDP
// plugin's port number, over TCP). The runtime's control channel can
// replace it: it has only to carry these two messages. Not librdmacm:
// rdma_cm would bring a second library, its own event thread and address
// resolution, for what two fixed-size messages do. When both sides dial at
// once the lower address's dial wins (the other is refused). An accepted
// request replaces any connection the peer had: a peer only dials when it
// has none, after a restart say.
//
// # Memory
//
// Two regions of fixed-size slots (Options.SlotSize), mmap'd outside the
// Go heap and registered once: send slots, shared by all peers, and
// receive slots, all posted to one shared receive queue (SRQ) that every
// queue pair consumes. SendBatch copies each message once into a send
// slot and posts a run of messages for one peer as one chain (one cgo
// call); completions return the slots. Received messages are handed to
// the runtime as views of their slots and the slots are reposted to the
// SRQ in one chain per batch. Zero-copy sending would need the runtime's
// slot pools themselves in registered memory (a pool over rdma.Memory,
// its region's lkey with each slot id): then SendBatch posts the pool's
// addresses and holds the slot until its completion.
//
// # Threads
//
// Poll runs the polling thread (locked, optionally pinned to Options.CPU):
// it drains the receive CQ, hands each batch to the runtime, and calls the
// runtime's flush on every turn; after Options.SpinIdle without work it
// arms the CQ and sleeps in ppoll on the completion channel's fd and an
// eventfd that Wake writes (at most Options.MaxSleep). Sends (SendBatch)
// reap the send CQ first, under a mutex the polling thread alone takes in
// practice.
//
// # Failures
//
// A send completing with an error (transport retries exceeded: the peer's
// queue pair is gone) or a queue pair whose sends see no completion for
// Options.StallTimeout (soft-RoCE does not always report a vanished peer)
// fails that connection; the next SendBatch for the peer reconnects,
// every Options.RetryInterval while the peer is down, and returns a
// *PeerError wrapping ErrPeerDown meanwhile. Reaches is true for
// addresses on the RDMA subnet, until an attempt to connect to a peer that
// was never connected fails (no RDMA plugin there); Probe makes that
// attempt at once.
//
// # Availability
//
// The verbs binding (internal/rdma) needs cgo and the build tag `rdma`;
// without them New returns an error wrapping rdma.ErrUnavailable, and
// without an RDMA device on the netdev one wrapping rdma.ErrNoDevice.
// Tests run inside a VM on Debian's generic kernel with soft-RoCE
// (TestRDMAInVM; see guest_test.go for the topology).
package rdma
