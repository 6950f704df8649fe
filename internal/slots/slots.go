// Package slots is the runtime's slot pools (DESIGN.md, "The data path"):
// a fixed number of fixed-size slots, each with a small record of
// metadata, and a free list on a lock-free internal/ring queue. The outbox
// of a VM port, the slots a runtime sends to other hosts from and the RX
// slots of a host application are all one Pool.
//
// # Ownership
//
// Every slot is in exactly one of three states:
//
//   - Free: on the free list, the pool's.
//   - Held: taken by Get. The holder, and only the holder, may write the
//     slot's bytes (Bytes) and metadata (Meta). It may hand the slot on by
//     pushing its id on a queue (internal/ring orders the holder's writes
//     before the next holder's reads): whoever takes the id off the queue
//     is the holder then. The holder ends its hold with Put (back to the
//     free list) or Lend.
//   - Lent: handed to a party the daemon does not trust (a host
//     application, through shared memory), which gives it back by naming
//     its id. Reclaim returns a lent slot to the free list, and refuses,
//     with false, an id out of range or not lent: a peer cannot free a
//     slot twice, nor one it was never given, nor one the daemon still
//     holds.
//
// Each transition is one compare-and-swap on the slot's state, so a slot
// cannot be put twice: Put or Lend of a slot that is not held is a bug in
// the caller and panics, like unlocking an unlocked mutex. The memory a
// pool hands out is either its own (Options.SlotSize) or the caller's (a
// shared region laid out elsewhere): a pool with SlotSize 0 manages the
// ids alone.
//
// A lent slot given back may also go straight to its taker, held
// (ReclaimHeld), without passing through the free list.
//
// Get, Put, Lend, Reclaim and ReclaimHeld take no lock, do not allocate and are safe
// for concurrent use. A Get that finds no free slot counts as exhausted
// (Exhausted): the pool's back-pressure figure.
package slots

import (
	"errors"
	"sync/atomic"

	"github.com/veloce-io/veloce/internal/ring"
)

// State is where a slot is; see the package doc.
type State uint32

// States.
const (
	Free State = iota
	Held
	Lent
)

var stateNames = [...]string{Free: "free", Held: "held", Lent: "lent"}

// String returns the state's name.
func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "invalid"
}

// ErrSize means Options.Slots is not a power of two of at least 2, or
// Options.SlotSize is negative.
var ErrSize = errors.New("slots: slot count must be a power of two >= 2, slot size and headroom >= 0, and Mem large enough")

// Options size a pool.
type Options struct {
	// Slots is how many slots the pool has: a power of two, at least 2.
	// The free list is a queue of the same size, so a Put never finds it
	// full for long (ring.Queue.PushWait).
	Slots int
	// SlotSize is the size of each slot in bytes, allocated with the
	// pool; 0 makes a pool of ids alone, over memory the caller owns.
	SlotSize int
	// Headroom is reserved in front of every slot, outside Bytes: slot i
	// is at i*(Headroom+SlotSize)+Headroom of the pool's memory.
	Headroom int
	// Mem, when not nil, is the memory the slots live in instead of
	// memory the pool allocates: at least Slots*(Headroom+SlotSize)
	// bytes, which the caller keeps valid for the pool's life.
	Mem []byte
}

// Pool is a slot pool with metadata of type M per slot. The zero value is
// not usable; see New.
type Pool[M any] struct {
	size      int
	stride    int // headroom + size
	head      int // headroom
	mem       []byte
	meta      []M
	state     []atomic.Uint32 // a State per slot
	free      *ring.Queue
	exhausted atomic.Uint64
}

// New returns a pool whose slots are all free. It returns ErrSize for
// sizes it cannot make.
func New[M any](opts Options) (*Pool[M], error) {
	if opts.SlotSize < 0 || opts.Headroom < 0 || opts.SlotSize == 0 && (opts.Headroom > 0 || opts.Mem != nil) {
		return nil, ErrSize
	}
	free, err := ring.New(opts.Slots)
	if err != nil {
		return nil, ErrSize
	}
	p := &Pool[M]{size: opts.SlotSize, stride: opts.Headroom + opts.SlotSize, head: opts.Headroom,
		meta: make([]M, opts.Slots), state: make([]atomic.Uint32, opts.Slots), free: free}
	switch {
	case opts.Mem != nil:
		if len(opts.Mem) < opts.Slots*p.stride {
			return nil, ErrSize
		}
		p.mem = opts.Mem
	case opts.SlotSize > 0:
		p.mem = make([]byte, opts.Slots*p.stride)
	}
	for i := range uint32(opts.Slots) {
		free.PushWait(i)
	}
	return p, nil
}

// MustNew is New for sizes known to be valid (constants); it panics on
// ErrSize.
func MustNew[M any](opts Options) *Pool[M] {
	p, err := New[M](opts)
	if err != nil {
		panic(err)
	}
	return p
}

// Len returns how many slots the pool has.
func (p *Pool[M]) Len() int { return len(p.state) }

// SlotSize returns the size of the pool's own slots (0 for a pool of ids).
func (p *Pool[M]) SlotSize() int { return p.size }

// Free returns how many slots are free (a snapshot).
func (p *Pool[M]) Free() int { return p.free.Len() }

// Exhausted returns how many Gets found no free slot.
func (p *Pool[M]) Exhausted() uint64 { return p.exhausted.Load() }

// Get takes a free slot; ok is false (and the pool counts it exhausted)
// when there is none. The caller holds the slot until it puts or lends it.
func (p *Pool[M]) Get() (id uint32, ok bool) {
	id, ok = p.free.Pop()
	if !ok {
		p.exhausted.Add(1)
		return 0, false
	}
	if !p.state[id].CompareAndSwap(uint32(Free), uint32(Held)) {
		panic("slots: the free list held a slot that was not free")
	}
	return id, true
}

// Put returns a held slot to the free list. Only its holder may put it,
// once; Put of a slot that is not held panics.
func (p *Pool[M]) Put(id uint32) {
	if !p.state[id].CompareAndSwap(uint32(Held), uint32(Free)) {
		panic("slots: Put of a slot that is not held (put twice?)")
	}
	p.free.PushWait(id)
}

// Lend hands a held slot to an untrusted party: it stays off the free
// list until Reclaim. Lend of a slot that is not held panics.
func (p *Pool[M]) Lend(id uint32) {
	if !p.state[id].CompareAndSwap(uint32(Held), uint32(Lent)) {
		panic("slots: Lend of a slot that is not held")
	}
}

// Reclaim returns a lent slot, named by the party it was lent to, to the
// free list. It reports false, and changes nothing, for an id out of
// range or a slot that is not lent (freed twice, never given, or held by
// the daemon).
func (p *Pool[M]) Reclaim(id uint32) bool {
	if id >= uint32(len(p.state)) || !p.state[id].CompareAndSwap(uint32(Lent), uint32(Free)) {
		return false
	}
	p.free.PushWait(id)
	return true
}

// ReclaimHeld is Reclaim straight to Held: the caller takes the slot the
// party gave back without its passing through the free list (one
// compare-and-swap instead of Reclaim's and Get's three and two queue
// operations), and holds it as after Get. It refuses what Reclaim
// refuses, changing nothing.
func (p *Pool[M]) ReclaimHeld(id uint32) bool {
	return id < uint32(len(p.state)) && p.state[id].CompareAndSwap(uint32(Lent), uint32(Held))
}

// State returns where slot id is (a snapshot, for accounting and tests).
// id must be below Len.
func (p *Pool[M]) State(id uint32) State { return State(p.state[id].Load()) }

// Bytes returns slot id's memory, SlotSize bytes (nil for a pool of ids),
// without its headroom. It is the holder's to use.
func (p *Pool[M]) Bytes(id uint32) []byte {
	if p.size == 0 {
		return nil
	}
	off := int(id)*p.stride + p.head
	return p.mem[off : off+p.size : off+p.size]
}

// Meta returns slot id's metadata record, the holder's to use.
func (p *Pool[M]) Meta(id uint32) *M { return &p.meta[id] }
