package vhostusertest

import (
	"sync/atomic"
	"unsafe"
)

// load16 and store16 access the 2-aligned little-endian u16 at mem[off:]
// through the aligned 32-bit word holding it, as a driver's barriers and
// READ_ONCE/WRITE_ONCE would. mem must start 4-byte aligned (a mapping
// does). store16 uses compare-and-swap so the neighbouring u16, which the
// other side may write, is preserved.

func word(mem []byte, off uint64) (*uint32, uint) {
	w := off &^ 3
	_ = mem[w+3]
	return (*uint32)(unsafe.Pointer(&mem[w])), uint(off&3) * 8
}

func load16(mem []byte, off uint64) uint16 {
	w, shift := word(mem, off)
	return uint16(atomic.LoadUint32(w) >> shift)
}

func store16(mem []byte, off uint64, v uint16) {
	w, shift := word(mem, off)
	for {
		old := atomic.LoadUint32(w)
		nw := old&^(0xffff<<shift) | uint32(v)<<shift
		if atomic.CompareAndSwapUint32(w, old, nw) {
			return
		}
	}
}

// loadWord and storeWord access the 4-aligned u32 at mem[off:] atomically.
func loadWord(mem []byte, off uint64) uint32 {
	w, _ := word(mem, off)
	return atomic.LoadUint32(w)
}

func storeWord(mem []byte, off uint64, v uint32) {
	w, _ := word(mem, off)
	atomic.StoreUint32(w, v)
}
