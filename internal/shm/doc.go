// Package shm is the shared memory of guestlib's host transport: a memfd
// region that the daemon creates per client and both map MAP_SHARED, with
// two slot pools and four single-producer single-consumer rings of slot
// ids (the INSANE paper's figure 4, on one host).
//
// # Layout
//
// A region is Layout.Size bytes, every offset derived from three numbers
// in its header (SlotSize, TXSlots, RXSlots), little endian:
//
//	0x0000  header: magic "VLSH" | version u32 | slot size u32 | TX slots u32 |
//	        RX slots u32 | reserved u32 | region size u64
//	0x0040  one 64-byte line per ring counter and wait flag, so that the
//	        two sides never write the same cache line:
//	        TX head (app) | TX tail (daemon) | TX-done head (daemon) |
//	        TX-done tail (app) | RX head (daemon) | RX tail (app) |
//	        RX-free head (app) | RX-free tail (daemon) |
//	        daemon-waiting | app-waiting-RX | app-waiting-TX
//	0x1000  TX ring entries       (TXSlots x 32 B: slot, length, source, token)
//	        TX-done ring entries  (TXSlots x 4 B: slot)
//	        RX ring entries       (RXSlots x 32 B: slot, length, sink, source, seq)
//	        RX-free ring entries  (RXSlots x 4 B: slot)
//	page    TX slots (TXSlots x SlotSize), then RX slots (RXSlots x SlotSize)
//
// # Rings and ownership of slots
//
// Every ring has one producer and one consumer. The producer writes
// entries, then stores its head with a release store; the consumer loads
// the head with an acquire load, reads the entries, then stores its tail.
// Counters are free-running uint32 positions; a ring's size (a power of
// two) equals its pool's slot count, so a well-behaved peer never finds a
// ring full. sync/atomic's operations are sequentially consistent, which
// also orders a store before a later load of another word (the wake-up
// protocol below relies on that).
//
//   - TX slots start with the application. It writes a message into a free
//     slot in place and puts (slot, length, source, token) on the TX ring;
//     the daemon reads the slot in place, hands it to the runtime (which
//     copies it where it goes) and returns the slot on the TX-done ring.
//   - RX slots start with the daemon. It copies a delivered message into a
//     free slot once and puts (slot, length, sink, source, seq) on the RX
//     ring; the application reads the slot in place and, when the message
//     is released, returns the slot on the RX-free ring.
//
// Each side keeps its own positions in private memory and never reads
// back what it wrote to the region: the other side may scribble over
// anything. A Consumer reports a head further than one ring ahead of its
// tail as corrupt; a Producer treats an impossible tail as a full ring.
// Entries are copied out once (GetTX, GetRX, GetID) before their fields
// are validated by the caller, since the peer may change them meanwhile.
//
// # Wake-ups
//
// A consumer with nothing to do sets its wait flag, looks at the ring once
// more, and only then sleeps on an eventfd (Notifier). A producer, after
// publishing, checks the consumer's flag and, only when set, clears it and
// signals the eventfd. A busy stream therefore makes no system call per
// message; an idle one costs one eventfd write per wake-up. The daemon
// sleeps on the TX ring (daemon-waiting, the app signals the "TX" eventfd);
// the application sleeps on the RX ring (app-waiting-RX) and, when a
// GetBuffer waits for a slot, on the TX-done ring (app-waiting-TX); the
// daemon signals the "RX" eventfd for both.
//
// The mapping and atomic accessors live in shm_unsafe.go; everything else
// is bounds-checked slice arithmetic. Regions and notifiers need Linux
// (memfd seals, eventfd); elsewhere they return ErrNotSupported, so
// guestlib still builds there for its virtio transport.
package shm
