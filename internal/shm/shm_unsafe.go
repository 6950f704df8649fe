package shm

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// word returns the 32-bit word at b[off:off+4], bounds-checked; off must
// be 4-byte aligned from a page-aligned mapping.
func word(b []byte, off int) *uint32 {
	_ = b[off+3]
	if off&3 != 0 {
		panic("shm: unaligned word")
	}
	return (*uint32)(unsafe.Pointer(&b[off]))
}

func load32(p *uint32) uint32           { return atomic.LoadUint32(p) }
func store32(p *uint32, v uint32)       { atomic.StoreUint32(p, v) }
func swap32(p *uint32, v uint32) uint32 { return atomic.SwapUint32(p, v) }

// mapShared maps size bytes of fd read-write, shared. x/sys/unix records
// the mapping, and Munmap refuses slices it did not hand out.
func mapShared(fd, size int) ([]byte, error) {
	return unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
}

func unmap(b []byte) error { return unix.Munmap(b) }
