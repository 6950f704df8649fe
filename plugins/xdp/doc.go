// Package xdp is the AF_XDP datapath: streams that ask for acceleration
// where resource use matters (frugal: no core spent polling an idle
// stream) leave and enter the host through an AF_XDP socket on one queue
// of a network interface, past the kernel's IP and UDP layers, while the
// kernel keeps the interface for everything else.
//
// # Plugging it in
//
// New(Options{Interface: "eth1", Queue: 0}) attaches the plugin's XDP
// program to the interface, opens and binds the socket, and returns a
// *Plugin with the method set the runtime expects (backend.Datapath,
// Poller, Reacher, StatsReporter; contract_test.go pins it): Name "xdp",
// LocalAddr (the interface's IPv4 address and Options.Port), SendBatch,
// RecvBatch, Poll/Wake, Reaches (the interface's on-link prefix),
// DatapathStats. Give it to backend.RemoteOptions.Accelerated; the
// runtime then runs Poll on the plugin's own thread. veloced takes
// `--xdp IFACE[:QUEUE]` (cmd/veloced/xdp.go). New must run in the interface's
// network namespace. When XDP cannot run (no such interface, no AF_XDP in
// the kernel, missing capabilities, a driver that refuses the mode, a
// program already attached), New returns an *UnavailableError that names
// the step and wraps ErrUnavailable, and the policy falls back to kernel
// UDP with its visible warning.
//
// The plugin speaks the same wire as plugins/udp and plugins/dpdk: frames
// are built and parsed by internal/netstack, datagrams carry the
// internal/wire header; a kernel-UDP peer and an XDP peer exchange the
// same stream (TestInteropWithKernelUDP100kBothWays).
//
// # The XDP program
//
// Written in this project with cilium/ebpf's asm package
// (internal/xdp.Instructions; its doc gives the C it stands for), loaded
// and attached with cilium/ebpf (link.AttachXDP, a bpf_link: closing it
// detaches the program, so Close leaves nothing on the interface, and a
// crashed daemon's program goes with its descriptors). No clang, no
// object file: the program is reproducible from the Go source. It
// redirects to the XSKMAP only IPv4 UDP frames without options or
// fragmentation addressed to the plugin's address and port, and passes
// everything else (ARP, ICMP, ssh, other UDP) to the kernel, so the
// interface stays a normal interface: the kernel answers ARP and ping on
// it while traffic runs. Options.Attach picks native (driver) mode or
// generic (SKB) mode; the default tries native first and falls back to
// generic. Stats.Attach says which.
//
// # Copy and zero-copy
//
// Options.Bind: BindAuto lets the kernel choose (zero-copy where the
// driver supports it, copy otherwise), BindCopy forces copy, BindZeroCopy
// fails (ErrUnavailable) where the driver cannot. Stats.Mode reports what
// the socket got (XDP_OPTIONS). In copy mode the kernel copies each frame
// between its buffers and the UMEM; in zero-copy the NIC DMAs into the
// UMEM. Either way the runtime's handle sees views of UMEM frames (no copy
// on receive past the kernel's), returned to the fill ring when handle
// returns; SendBatch copies each datagram once, behind the headers, into a
// UMEM transmit frame.
//
// # need_wakeup
//
// The socket is bound with XDP_USE_NEED_WAKEUP: the kernel says through a
// ring flag when it needs a system call to go on. SendBatch kicks
// (sendto(2), MSG_DONTWAIT) once per burst only when the TX ring asks (in
// copy mode it always does: the send happens in that call); the receive
// side calls recvfrom(2) only when the fill ring asks. So a busy socket
// costs no system call per packet on receive and one per burst on send.
//
// # Threads and idling
//
// Poll runs on a locked OS thread: it flushes what the runtime queued,
// takes bursts off the RX ring, hands them to handle, and gives the frames
// back. When a turn finds nothing to do (by default; after
// Options.SpinIdle with busy polling on) it sleeps in poll(2) on the
// socket and an eventfd: an idle stream costs no CPU
// (TestIdlePollCostsNoCPU), a frame or Wake (an 8-byte eventfd write,
// done only when the thread sleeps) ends the sleep. RecvBatch is the pull
// alternative (poll(2) with the timeout while the RX ring is empty).
// SendBatch may be called from any goroutine (a mutex, uncontended in
// practice, guards the TX side: the polling thread's flush and the
// runtime's directory sender share it). Nothing allocates per packet
// (TestRoundAllocatesNothing).
//
// # Busy polling
//
// Options.BusyPoll sets SO_PREFER_BUSY_POLL, SO_BUSY_POLL and
// SO_BUSY_POLL_BUDGET, and Poll then calls recvfrom(2) on empty turns:
// the driver's NAPI runs on the polling thread instead of in softirq
// after an interrupt, which cuts latency and jitter for time-sensitive
// streams, at the cost of the polling core while it spins. It helps only
// where a NAPI context feeds the socket (native mode on a real NIC, best
// with the interface's napi_defer_hard_irqs and gro_flush_timeout set);
// on veth it is accepted and does nothing useful.
//
// # Neighbours
//
// ARP belongs to the kernel (the program passes it up), so the plugin
// sends to the MACs the kernel resolved: it mirrors the interface's IPv4
// neighbour table (netlink, re-read every Options.NeighbourRefresh), asks
// the kernel on a miss and, when the kernel has no entry, makes it
// resolve one (RTM_NEWNEIGH with NTF_USE: the kernel sends ARP as for its
// own traffic). Packets for an unresolved peer wait up to
// Options.ResolveTimeout, then fail with ErrUnresolved.
//
// # On veth (this machine, Linux 6.18)
//
// Both native and generic XDP attach to veth, and AF_XDP works in copy
// mode in both; zero-copy does not (veth has no XSK pool support), so
// BindZeroCopy fails there. Native veth XDP needs nothing of the peer for
// this plugin: the "peer must have an XDP program (or GRO on)" rule
// applies to frames redirected *into* a veth with XDP_REDIRECT/XDP_TX
// (ndo_xdp_xmit), while AF_XDP transmits in copy mode through the
// ordinary skb path (dev_direct_xmit). Native veth XDP refuses a peer MTU
// above what fits a page and needs as many RX queues as the peer has TX
// queues (one each by default). A kernel sender on a veth leaves UDP
// checksums to offload that does not exist; the plugin verifies
// checksums, so such a peer turns transmit checksum offload off
// (testutil.NoTxChecksum) — real NICs compute them.
//
// # Limits
//
// One plugin per interface (an interface holds one XDP program) and one
// queue per plugin. IPv4 only; no IP options, fragments or VLAN tags on
// the plugin's port.
package xdp
