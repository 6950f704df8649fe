package backend

import (
	"runtime"

	"github.com/veloce-io/veloce/internal/slots"
)

// SlotMemory is a Datapath that sends datagrams straight out of the
// runtime's remote slots, without copying them, when the slots live in
// memory it provides (the DPDK plugin: external memory the NIC may read).
// The runtime asks the first datapath that implements it for its slot
// memory and lays every remote slot there, each behind remoteHeadroom
// bytes the datapath may write its own headers into.
//
// A datapath that sent from a slot may read it until its SendBatch has
// returned and after: a NIC reads a frame when it gets to it. SlotBusy
// says when it is done; the runtime writes a slot again, or lets it go
// back to the pool, only once it is not busy, so the bytes the datapath
// checksummed and the runtime sealed are the bytes that go on the wire.
type SlotMemory interface {
	// SlotMemory returns memory for n slots of stride bytes (slot i at
	// i*stride) and the function that frees it, which the runtime calls
	// once nothing can write the slots any more (the runtime is
	// unreachable), whether or not the datapath was closed by then.
	SlotMemory(n, stride int) (mem []byte, free func(), err error)
	// SlotBusy reports whether the datapath may still read slot i.
	// It is called from the datapath's sending goroutine (the polling
	// thread of a Poller) after each batch, so it must be cheap.
	SlotBusy(i int) bool
}

// remoteHeadroom is reserved in front of each remote slot for a datapath's
// frame headers (Ethernet, IPv4 and UDP: 42 bytes), a cache line so that
// every datagram stays 64-byte aligned.
const remoteHeadroom = 64

// newSlotPool makes the remote slot pool: in the memory of the first
// datapath that offers it (SlotMemory), else in the pool's own. The
// datapath's memory is freed when rm is unreachable (emit writes the slots
// until then, and the datapaths may be closed before).
func (rm *remote) newSlotPool() *slots.Pool[remoteMeta] {
	opts := slots.Options{Slots: remoteSlots, SlotSize: remoteSlotSize, Headroom: remoteHeadroom}
	for _, st := range rm.dps {
		sm, ok := st.dp.(SlotMemory)
		if !ok {
			continue
		}
		mem, free, err := sm.SlotMemory(remoteSlots, remoteHeadroom+remoteSlotSize)
		if err != nil {
			rm.rt.log.Warn("datapath slot memory unavailable: its messages are copied once more", "datapath", st.dp.Name(), "err", err)
			continue
		}
		opts.Mem = mem
		st.slotMem, st.held.ids = sm, make([]uint32, remoteSlots)
		pool, err := slots.New[remoteMeta](opts)
		if err != nil {
			free()
			panic(err) // remoteSlots and the sizes are constants
		}
		runtime.AddCleanup(rm, func(free func()) { free() }, free)
		return pool
	}
	return slots.MustNew[remoteMeta](opts)
}

// heldSlots are slots a SlotMemory datapath sent and may still read: they
// go back to the pool only once it is done with them. It is owned by the
// datapath's one sending goroutine (flusher or sender), which is the
// only one to send from these slots, so it takes no lock.
type heldSlots struct {
	ids        []uint32 // a ring of remoteSlots entries
	head, tail uint32   // tail-head slots held
}

// release ends the send of ids on st: each slot goes back to the pool,
// but one st's datapath may still read waits in st.held. It does not
// allocate.
func (rm *remote) release(st *datapathState, ids []uint32) {
	for _, id := range ids {
		if st.slotMem == nil || !st.slotMem.SlotBusy(int(id)) {
			rm.slots.Put(id)
			continue
		}
		h := &st.held // room for every slot there is
		h.ids[h.tail%remoteSlots] = id
		h.tail++
	}
	rm.reap(st)
}

// reap returns to the pool the held slots st's datapath is done with, in
// the order they were sent (the order NICs complete them in): it stops at
// the first one still busy. A held slot is out of the pool, so a message
// cannot be written into it while the datapath reads it.
func (rm *remote) reap(st *datapathState) {
	h := &st.held
	for h.head != h.tail {
		id := h.ids[h.head%remoteSlots]
		if st.slotMem.SlotBusy(int(id)) {
			return
		}
		h.head++
		rm.slots.Put(id)
	}
}

// heldCount is how many of st's slots wait for its datapath.
func (st *datapathState) heldCount() int { return int(st.held.tail - st.held.head) }
