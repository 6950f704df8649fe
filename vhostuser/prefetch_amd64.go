package vhostuser

// Cache prefetches for guest memory the poller is about to touch: a
// descriptor, a TX frame, an RX buffer. The frontend runs on another core
// and has just written those lines, so each first touch is a cross-core
// miss; started a frame or two ahead, the misses overlap with the work on
// the frames before. A prefetch never faults and changes nothing the
// guest can see; callers still pass only addresses inside a mapping.

// prefetchRead starts loading the cache line holding addr for reading.
func prefetchRead(addr uintptr)

// prefetchWrite starts loading the line holding addr for writing
// (PREFETCHW), so that the store that follows needs no second trip.
func prefetchWrite(addr uintptr)

func cpuHasPrefetchW() bool

// hasPrefetchW says the CPU has PREFETCHW; without it a write prefetch
// is a read prefetch (older CPUs decode the instruction as a NOP, but
// the read prefetch still helps).
var hasPrefetchW = cpuHasPrefetchW()

// prefetchForWrite is prefetchWrite where the CPU has it.
func prefetchForWrite(addr uintptr) {
	if hasPrefetchW {
		prefetchWrite(addr)
	} else {
		prefetchRead(addr)
	}
}
