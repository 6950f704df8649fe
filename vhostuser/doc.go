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
//   - Split and packed virtqueues ([SplitRing], [PackedRing], behind the
//     sealed [Queue] interface): descriptor chain walking with every
//     check a hostile guest calls for (the same error kinds for both
//     layouts), used-ring publication, EVENT_IDX and flag-based
//     notification suppression, dirty logging of every guest write.
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
//   - Migration switches dirty logging in place: SET_LOG_BASE (also a
//     resized log mid-migration), SET_FEATURES toggling only
//     VHOST_F_LOG_ALL, and SET_VRING_ADDR changing only VHOST_VRING_F_LOG
//     and the log address swap the rings' logging configuration
//     atomically while the pollers run; the reply goes once every poller
//     has finished the round it was in, and a replaced log is unmapped
//     only then. QEMU sends these with its big lock held; stopping and
//     restarting the pollers there stalled the guest's traffic. The log is
//     mapped with MAP_POPULATE. A SET_FEATURES without LOG_ALL (migration
//     completed, failed or cancelled) stops the marking.
//   - A frame for the guest that finds its RX ring short (not refilled
//     yet, RX not running yet) waits in a bounded per-queue-pair backlog
//     (rxbacklog.go) and is delivered, in order and dirty-logged, before
//     any newer frame once buffers come; only a full backlog drops
//     (NetStats.Drops).
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
//   - unsafe and mmap are confined to memory_unsafe.go: atomic 32/64-bit
//     access to shared memory, a fence, the one mapping call and the
//     address test used to attribute faults.
//   - Memory a frontend hands over can never fault the daemon. Seals are
//     not required: QEMU's memory-backend-memfd seals by default (seal=on:
//     F_SEAL_GROW|F_SEAL_SHRINK|F_SEAL_SEAL), but memory-backend-file on
//     hugetlbfs or /dev/shm cannot be sealed, and DPDK virtio-user and
//     Cloud Hypervisor hand over memfds they do not seal (as far as we
//     read their sources); requiring F_SEAL_SHRINK would refuse stock
//     frontends. Instead, two layers. (1) At map time every fd is
//     checked with fstat: a regular file must hold offset+size (guest
//     memory regions, the SET_LOG_BASE log, the SET_INFLIGHT_FD region),
//     else the request is refused (ErrBadRegion, ErrBadLog, ErrBadRing).
//     (2) A file can still shrink later, so every goroutine that touches
//     frontend memory runs with debug.SetPanicOnFault(true): each
//     queue-pair poller (which also runs the FrameHandler and RXSource,
//     so their reads of frames in guest memory and the runtime's memmove
//     into RX buffers are covered), every poll group's thread (each
//     member's round under its own recover: pollgroup.go), DeliverRX,
//     whatever goroutine calls it (directrx.go), and Serve's control
//     goroutine (ring set-up, inflight recovery). The resulting panic is
//     recovered at the poller loop, the poll group's member round,
//     DeliverRX, and the message-handler boundary, attributed by
//     address to a mapping the frontend handed over (any other panic is
//     a bug and goes on), and becomes a *FaultError (ErrMemoryFault):
//     that frontend is dropped. This is gVisor's safecopy idea with the
//     Go runtime doing the signal work; nothing is added per packet (one
//     deferred recover per poller, not per frame). A FrameHandler must
//     therefore not hold a lock while it reads a frame unless it
//     releases it with defer.
//   - One failure path for a frontend that faults the device's memory or
//     breaks a ring (ErrRingBroken: avail->idx moved by more than the
//     queue size): the poller stops, the device logs it once, counts it
//     (NetStats.Failures), shows it (NetState.Failure), signals the err
//     eventfd (SET_VRING_ERR) of the rings concerned, drops the
//     connection (Serve returns the error) and serves the next frontend
//     from a clean state. A malformed chain is not a failure: it is
//     returned with length 0 and counted.
//   - The device's own memfd (the GET_INFLIGHT_FD region) is sealed
//     F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL once sized, so the frontend
//     it is sent to cannot truncate it (internal/shm seals its regions
//     the same way).
//   - The control plane never waits for one frontend: handlers build
//     their reply under the device lock, and it is written after the
//     lock is released, with a one-second write deadline (a frontend
//     that does not read its replies is dropped, and the reads stop
//     meanwhile, so replies never queue up). Stats and State take no
//     lock: counters are atomics and the negotiated state is a snapshot
//     published after every message.
//   - An idle port costs no CPU, with or without EVENT_IDX: a poller
//     spins for a while, then sleeps in poll(2) on the TX kick and its
//     wake eventfd. It asks for RX kicks (and wakes on them) only while
//     something waits for RX buffers the guest has not posted (an
//     announcement, or a frame the RXSource has pending), so an RX ring
//     full of posted buffers with nothing to deliver does not keep it
//     awake; NetDevice.Wake wakes it when the source gets a frame.
//
// The companion package vhostusertest provides a fake guest (memfd-backed
// memory and a split-ring driver) and a fake frontend for tests.
package vhostuser
