// Package vhostuser is Veloce's vhost-user protocol layer and split
// virtqueue implementation: the part of a virtio device backend that talks
// to a frontend (QEMU, Cloud Hypervisor, DPDK virtio-user) over a unix
// socket and reads and writes the guest's rings in shared memory. It knows
// nothing of streams, sessions or packets beyond the virtio wire formats.
//
// # What the package owns
//
//   - The message codec (vhost-user.rst, "Message Specification"):
//     [ReadMessage] reads one request with its SCM_RIGHTS file descriptors
//     (an [FDSet] of owners, received close-on-exec) and validates it (known request, version, payload size exact or
//     bounded per request, descriptor count per request); typed accessors
//     such as [Message.VringAddr] decode payloads; [ReplyU64],
//     [ReplyVringState], [ReplyConfig], [ReplyInflight] and [WriteReply]
//     answer. [ParseMessage] is the same validation on a byte slice.
//     Feature and protocol-feature bits are constants ([FVersion1],
//     [ProtocolFLogShmfd], ...).
//   - Guest memory ([Memory]): the regions of SET_MEM_TABLE /
//     ADD_MEM_REG, mmapped from their fds (which Memory owns), with
//     bounds-checked, allocation-free and lock-free translation of guest
//     physical ([Memory.Translate]) and frontend virtual
//     ([Memory.TranslateUser]) addresses.
//   - The migration dirty log ([DirtyLog]) of SET_LOG_BASE.
//   - Split virtqueues ([SplitRing], behind the sealed [Queue] interface so
//     a packed ring can be added): descriptor chain walking with every
//     check a hostile guest calls for, used-ring publication, EVENT_IDX
//     and flag-based notification suppression, dirty logging of every
//     guest write.
//
// These pieces hold no connection state: which request is legal when,
// feature negotiation, ring start/stop, kick and call eventfds and pollers
// belong to the virtio-net device model built on them (NetDevice and
// Server, in net.go, netpoll.go and server.go).
//
// # How a backend plugs it in
//
// A device model runs one control goroutine per connection:
//
//	buf := make([]byte, vhostuser.MaxMessageSize)
//	for {
//		msg, fds, err := vhostuser.ReadMessage(conn, buf)
//		if err != nil { ... } // io.EOF: frontend gone; *ProtocolError: drop the connection
//		switch msg.Request {
//		case vhostuser.GetFeatures:
//			vhostuser.ReplyU64(conn, msg.Request, features)
//		case vhostuser.SetMemTable:
//			t, _ := msg.MemoryTable()
//			mem, err := vhostuser.NewMemoryFromTable(t.Regions, fds.TakeAll()) // takes the fds
//			// quiesce pollers, rebuild rings against mem, close the old Memory
//		case vhostuser.SetLogBase:
//			l, _ := msg.Log()
//			log, err := vhostuser.NewDirtyLog(fds.Take(0), l) // takes the fd
//			// ring.SetLogging(log, ...) on every ring, then:
//			vhostuser.WriteReply(conn, msg.Request, msg.Payload, nil) // must be answered
//		...
//		}
//		fds.Close() // closes what no case took
//		if msg.NeedsAck() { vhostuser.ReplyU64(conn, msg.Request, status) }
//	}
//
// and, once a ring is started (first kick), one poller per ring that owns a
// [SplitRing] built by [NewSplitRing] from the recorded SET_VRING_NUM,
// SET_VRING_ADDR and SET_VRING_BASE values:
//
//	c := vhostuser.NewChain(int(size))
//	for {
//		ok, err := ring.Pop(c)
//		if errors.Is(err, vhostuser.ErrRingBroken) { break }
//		if err != nil { continue } // malformed chain: counted, returned with len 0
//		if !ok { break }
//		// read c.Readable() / fill c.Writable()
//		ring.Push(c, written)
//	}
//	ring.Publish()
//	if ring.NeedsNotify() { /* write the call eventfd */ }
//
// # Decisions
//
//   - Every descriptor has one owner, visible in the types: a message's
//     arrive in an [FDSet], from which a handler takes ([FDSet.Take]) the
//     ones it keeps; Memory, DirtyLog and the inflight region own theirs
//     as [FD]s; a vring owns its kick, call and err eventfds, which its
//     queue pair's poller borrows while it runs (the device stops the
//     poller before it closes or replaces them). The owner types live in
//     internal/fd.
//   - NetDevice handles each request in a method of its own (the table
//     netHandlers in net.go); every refusal is a *ProtocolError naming the
//     request and matching a sentinel (ErrBadPayload, ErrBadFD,
//     ErrNotOffered, ErrNoMemory, ErrUnsupported, ErrUnknownRequest, or
//     the Memory/DirtyLog/ring error that caused it).
//   - Kick, call and err descriptors must be eventfds (checked with
//     /proc/self/fd); a socket, pipe or file is refused with ErrBadFD and
//     the frontend dropped. Adopted eventfds are made non-blocking, so a
//     call never blocks a poller even when the frontend filled its
//     counter.
//   - Every payload is validated before it is decoded; decoders never panic,
//     whatever the input (fuzzed: FuzzReadMessage). Unknown requests are
//     refused rather than skipped: after one the stream cannot be trusted.
//   - A REM_MEM_REG fd, which the spec says may be sent and must be closed
//     unused, is closed by ReadMessage.
//   - SET_LOG_BASE requires LOG_SHMFD (a 16-byte payload and one fd); it
//     is the only form QEMU and rust-vmm frontends use. Its reply echoes
//     the 16-byte log description: rust-vmm's frontend (vhost 0.16 and
//     later, so Cloud Hypervisor) reads exactly that and hangs the
//     migration on a shorter reply, and QEMU reads whatever size the reply
//     header gives.
//   - SET_MEM_TABLE carries up to 32 regions, as rust-vmm frontends may send
//     (Cloud Hypervisor sends its whole table, hotplugged regions included,
//     when it reconnects); QEMU sends at most 8.
//   - Inflight descriptions are 24 bytes (QEMU's layout, which rust-vmm
//     matches).
//   - A malformed descriptor chain is counted and its head returned to the
//     used ring with length 0, so the driver reclaims it and is not stuck;
//     an available index that moves by more than the queue size marks the
//     ring broken. A chain is at most queue size descriptors, an indirect
//     table at most queue size entries, a descriptor at most
//     [DefaultMaxDescriptorLen] bytes unless configured otherwise.
//   - Readable descriptors after writable ones are refused (virtio 1.1,
//     2.6.4.2), as are INDIRECT with NEXT and nested indirect tables.
//   - Memory translation takes no lock: the table is an immutable snapshot
//     behind an atomic pointer. Unmapping (RemoveRegion, Close) requires
//     the caller to have quiesced the rings that use the memory.
//   - The package supports little-endian hosts only (virtio 1.x rings are
//     little-endian); building for a big-endian GOARCH fails on purpose.
//   - unsafe is confined to memory_unsafe.go: atomic 32/64-bit access to
//     shared memory and a fence.
//
// The companion package vhostusertest provides a fake guest (memfd-backed
// memory and a split-ring driver) and a fake frontend for tests.
package vhostuser
