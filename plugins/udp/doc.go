// Package udp is Veloce's kernel-UDP datapath plugin: the one datapath every
// host has, and so the fallback the runtime uses when a stream asks for no
// acceleration, or asks for it on a host that has no RDMA, DPDK or AF_XDP
// (DESIGN.md, "Streams and QoS"). It moves datagrams in the project's wire
// format (package internal/wire) between hosts, and interoperates on the
// wire with the DPDK and AF_XDP plugins, which put the same header inside
// the same UDP.
//
// # Plugging it in
//
// The runtime (package backend) owns the datapath interface; plugins do not
// import backend, so this package cannot assert that it implements it.
// The method set the runtime expects of a datapath, which [*Plugin] has:
//
//	Name() string                                                    // "udp"
//	LocalAddr() netip.AddrPort                                        // where peers send
//	SendBatch(pkts []wire.Packet) (int, error)                        // one sendmmsg(2)
//	RecvBatch(pkts []wire.Packet, timeout time.Duration) (int, error) // one recvmmsg(2)
//	Close() error
//
// plus Stats for velocectl. The runtime creates one Plugin per host (New),
// gives its polling thread the receive side (a loop around RecvBatch that
// parses each datagram with wire.Parse and dispatches by channel id), and
// its packet scheduler the send side (SendBatch with the datagrams of the
// messages whose sinks are on peers, as the channel directory says).
//
// # Concurrency
//
// SendBatch is for one goroutine at a time, and so is RecvBatch: one sender
// goroutine and one receiver goroutine may run concurrently, each with its
// own preallocated message headers, I/O vectors and socket addresses, so a
// batch costs one system call, takes no lock per packet and allocates
// nothing. LocalAddr, Name and Stats may be called from any goroutine.
// Close may be called from any goroutine at any time: it wakes a receiver
// blocked in RecvBatch, waits for the batch calls under way to return, and
// then closes the socket; later calls return [ErrClosed].
//
// # Semantics
//
// SendBatch never blocks. It returns how many packets from the front of
// the batch the kernel took; fewer than all with a nil error means the
// socket's send buffer is full, and the caller keeps the rest for later.
// RecvBatch waits at most timeout for the first datagram (0: do not wait,
// negative: wait until one arrives or Close), in the runtime's network
// poller, then takes as many as are queued, up to the batch size, without
// waiting further. InterruptRecv, from any goroutine, ends a wait under
// way as if its time ran out.
//
// Both IPv4 and IPv6 work. A socket bound to an IPv4 address speaks IPv4
// only; one bound to an IPv6 address speaks IPv6, and one bound to the
// IPv6 unspecified address [::] also speaks IPv4 (as IPv4-mapped
// addresses, which SendBatch accepts as plain IPv4 addresses and RecvBatch
// reports unmapped). IPv6 zones (link-local scopes) are not supported: New
// refuses a zoned Listen address, SendBatch a zoned destination, and
// RecvBatch reports senders without their zone.
//
// Like any UDP, delivery is best effort: a datagram may be lost when a
// receiver's socket buffer overflows. Options.RecvBuffer defaults to 4 MiB
// (raised past net.core.rmem_max when the process has CAP_NET_ADMIN);
// reliable streams add acknowledgements and flow control on top (wire
// KindAck).
//
// # Resources
//
// A Plugin owns one file descriptor, its non-blocking UDP socket, which it
// wraps in an *os.File so that the socket is registered with the Go
// runtime's network poller. RecvBatch waits there, like a read on a
// net.Conn: the goroutine parks without holding a thread, the poller
// wakes it when a datagram arrives, a positive timeout is a read deadline,
// and Close closes the file, which wakes it. (A raw blocking poll(2)
// instead would hold an OS thread and cost the scheduler a thread handoff
// on every wake-up.) The system calls themselves are raw sendmmsg(2) and
// recvmmsg(2) run through the file's syscall.RawConn. A Plugin that is
// dropped without Close has its socket closed by a cleanup (and logs a
// warning). Every unsafe operation (the message headers, socket addresses
// and raw system calls) is in mmsg_unsafe.go.
package udp
