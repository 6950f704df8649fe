package vhostuser

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Shared-memory access primitives for rings and the dirty log. Guest
// memory is written concurrently by the guest, so the index fields that
// publish data (avail->idx, used->idx) are accessed with sync/atomic,
// whose operations are sequentially consistent and therefore give the
// acquire/release (and, between a store and a later load, the full-fence)
// ordering the virtio spec requires. sync/atomic has no 16-bit operations:
// a 16-bit field is read through the naturally aligned 32-bit word that
// contains it when that word lies inside the slice.
//
// The byte order is little-endian: virtio 1.x rings are little-endian and
// this package only builds on little-endian hosts (see endian_big.go).
//
// Every function bounds-checks its offset with ordinary slice indexing
// before converting to a pointer.

// addrOf returns the host address of b[off].
func addrOf(b []byte, off int) uintptr {
	return uintptr(unsafe.Pointer(&b[off]))
}

// load16 reads the little-endian u16 at b[off:off+2], atomically when the
// aligned 32-bit word holding it lies inside b and with a plain load
// otherwise (a hint field at the edge of a ring; callers order such loads
// with fence).
func load16(b []byte, off int) uint16 {
	_ = b[off+1]
	mis := int(addrOf(b, off) & 3)
	if ws := off - mis; ws >= 0 && ws+4 <= len(b) && mis <= 2 {
		w := atomic.LoadUint32((*uint32)(unsafe.Pointer(&b[ws])))
		return uint16(w >> (8 * mis))
	}
	return *(*uint16)(unsafe.Pointer(&b[off]))
}

// store16 writes the little-endian u16 at b[off:off+2] with a plain store.
// Only for fields the device alone writes and that are not covered by an
// atomic word store (avail_event); order it with fence.
func store16(b []byte, off int, v uint16) {
	_ = b[off+1]
	*(*uint16)(unsafe.Pointer(&b[off])) = v
}

// store32 atomically writes the u32 at b[off:off+4], which must be 4-byte
// aligned in host memory.
func store32(b []byte, off int, v uint32) {
	_ = b[off+3]
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&b[off])), v)
}

// put32 and put64 write the u32 or u64 at b[off:], which must be aligned
// in host memory, with one plain store instruction: never torn, in
// program order with the caller's other stores, but with no barrier. For
// memory no one reads while the device runs (the inflight region, read
// by a later backend after this one is gone).
func put32(b []byte, off int, v uint32) {
	_ = b[off+3]
	*(*uint32)(unsafe.Pointer(&b[off])) = v
}

func put64(b []byte, off int, v uint64) {
	_ = b[off+7]
	*(*uint64)(unsafe.Pointer(&b[off])) = v
}

// load32 atomically reads the u32 at b[off:off+4], which must be 4-byte
// aligned in host memory.
func load32(b []byte, off int) uint32 {
	_ = b[off+3]
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&b[off])))
}

// or64 atomically ORs v into the u64 at b[off:off+8], which must be 8-byte
// aligned in host memory.
func or64(b []byte, off int, v uint64) {
	_ = b[off+7]
	atomic.OrUint64((*uint64)(unsafe.Pointer(&b[off])), v)
}

// fence is a full memory barrier: an atomic read-modify-write on a word
// private to the caller (locked instruction on amd64, acquire-release RMW
// on arm64), so plain loads and stores on either side are not reordered
// across it.
func fence(w *uint32) { atomic.AddUint32(w, 1) }

// spans reports whether host address addr lies inside b (a mapping).
func spans(b []byte, addr uintptr) bool {
	if len(b) == 0 {
		return false
	}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return addr >= base && addr-base < uintptr(len(b))
}

// mapShared maps length bytes of fd at offset, shared and writable; extra
// is added to the flags (MAP_NORESERVE for guest memory). Every mapping of
// frontend memory is made here and released by unmap.
func mapShared(fd int, offset int64, length int, extra int) ([]byte, error) {
	return unix.Mmap(fd, offset, length, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|extra)
}

// unmap releases a mapping made by mapShared.
func unmap(b []byte) error { return unix.Munmap(b) }
