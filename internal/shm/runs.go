package shm

// Runs: a message larger than one slot takes a run of adjacent slots of
// its pool, so that its bytes are contiguous in the region and neither
// side copies it to read it in place. Its ring entry names the run's
// first slot and the message's length; the slots it covers follow from
// the length (Layout.SlotsFor). The side that owns a pool's free slots
// (the application for TX, the daemon for RX) keeps a Runs over the part
// of the pool it sets aside for runs, in its own memory, and takes back
// a run by its first slot: Free and Reclaim refuse an id that does not
// start a run given out (the peer may name any id).

// SlotsFor returns how many slots a message of n bytes takes: one for
// up to SlotSize bytes (an empty message too).
func (l Layout) SlotsFor(n uint32) uint32 {
	if n <= l.SlotSize {
		return 1
	}
	return uint32((uint64(n) + uint64(l.SlotSize) - 1) / uint64(l.SlotSize))
}

// RunFits reports whether a run of the slots n bytes take, from slot
// first, lies within a pool of slots slots (no overflow).
func (l Layout) RunFits(first, n, slots uint32) bool {
	return uint64(first)+uint64(l.SlotsFor(n)) <= uint64(slots)
}

// TXRun returns TX slots first to first+count-1 as one slice; the run
// must lie within the pool.
func (r *Region) TXRun(first, count uint32) []byte {
	return r.run(r.off.txSlots, first, count, r.layout.TXSlots)
}

// RXRun returns RX slots first to first+count-1 as one slice.
func (r *Region) RXRun(first, count uint32) []byte {
	return r.run(r.off.rxSlots, first, count, r.layout.RXSlots)
}

func (r *Region) run(base uint64, first, count, n uint32) []byte {
	if count == 0 || uint64(first)+uint64(count) > uint64(n) {
		panic("shm: run outside its pool")
	}
	o := int(base) + int(first)*int(r.layout.SlotSize)
	e := o + int(count)*int(r.layout.SlotSize)
	return r.mem[o:e:e]
}

// Runs allocates runs of adjacent slots among slots Base to Base+N-1 of
// a pool, first fit. It lives in private memory; it is not safe for
// concurrent use (its user holds a lock: runs are for large messages,
// rare next to one-slot ones). It does not allocate after NewRuns.
type Runs struct {
	base uint32
	// size[i] is the length of the run that starts at slot base+i, 0 if
	// none starts there; lent[i] whether that run is the peer's.
	size []uint32
	lent []bool
	free uint32
}

// NewRuns returns an allocator over n slots from base.
func NewRuns(base, n uint32) *Runs {
	return &Runs{base: base, size: make([]uint32, n), lent: make([]bool, n), free: n}
}

// Base returns the first slot of the allocator's range.
func (a *Runs) Base() uint32 { return a.base }

// Len returns the slots of the allocator's range.
func (a *Runs) Len() uint32 { return uint32(len(a.size)) }

// FreeSlots returns how many of its slots are in no run.
func (a *Runs) FreeSlots() uint32 { return a.free }

// Contains reports whether slot id is in the allocator's range.
func (a *Runs) Contains(id uint32) bool { return id >= a.base && id-a.base < uint32(len(a.size)) }

// Alloc takes a run of count adjacent free slots and returns its first
// slot; ok is false when no such run is free.
func (a *Runs) Alloc(count uint32) (first uint32, ok bool) {
	n := uint32(len(a.size))
	if count == 0 || count > a.free {
		return 0, false
	}
	for i := uint32(0); i+count <= n; {
		if s := a.size[i]; s != 0 {
			i += s
			continue
		}
		j := i
		for j < i+count && a.size[j] == 0 {
			j++
		}
		if j == i+count {
			// i..j-1 are free: the scan skips runs whole, so it never
			// lands inside one (whose slots but the first read 0).
			a.size[i] = count
			a.lent[i] = false
			a.free -= count
			return a.base + i, true
		}
		i = j
	}
	return 0, false
}

// Lend marks the run at first as the peer's; it panics if no run starts
// there (a bug in the caller).
func (a *Runs) Lend(first uint32) {
	i := first - a.base
	if !a.Contains(first) || a.size[i] == 0 || a.lent[i] {
		panic("shm: Lend of a slot that starts no held run")
	}
	a.lent[i] = true
}

// Free gives back the run at first, held or lent, and returns its
// length; ok is false (nothing changes) if no run starts there.
func (a *Runs) Free(first uint32) (count uint32, ok bool) {
	if !a.Contains(first) {
		return 0, false
	}
	i := first - a.base
	if count = a.size[i]; count == 0 {
		return 0, false
	}
	a.size[i], a.lent[i] = 0, false
	a.free += count
	return count, true
}

// Reclaim is Free for a run the peer gives back: it refuses (false) an
// id that starts no run, or a run not lent.
func (a *Runs) Reclaim(first uint32) (count uint32, ok bool) {
	if !a.Contains(first) || !a.lent[first-a.base] {
		return 0, false
	}
	return a.Free(first)
}
