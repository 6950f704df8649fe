package xdp

// The unsafe part of the socket: the rings live in mappings the kernel
// shares with us, a producer and a consumer index, a flags word and an
// array of entries at the offsets XDP_MMAP_OFFSETS reports, and the
// socket options that take or return structs.
//
// The indices are read and written with sync/atomic: a Go atomic store is
// a release (and more), an atomic load an acquire, which is the ordering
// the kernel's side of the rings (smp_load_acquire/smp_store_release)
// pairs with. Entries are plain memory, written before the producer store
// that publishes them and read after the producer load that shows them.

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ring is the part shared by the four rings. cachedProd and cachedCons are
// this side's view of the indices, refreshed from the shared words only
// when the cached view says there is not enough.
type ring struct {
	producer   *uint32
	consumer   *uint32
	flags      *uint32
	mask, size uint32
	cachedProd uint32
	cachedCons uint32
}

func (r *ring) needWakeup() bool { return atomic.LoadUint32(r.flags)&unix.XDP_RING_NEED_WAKEUP != 0 }

// prodRing is a ring this side produces on (fill, TX).
type prodRing struct {
	ring
	addrs []uint64       // fill
	descs []unix.XDPDesc // TX
}

// reserve returns how many of n entries are free (at most n).
func (r *prodRing) reserve(n uint32) uint32 {
	free := r.size - (r.cachedProd - r.cachedCons)
	if free < n {
		r.cachedCons = atomic.LoadUint32(r.consumer)
		free = r.size - (r.cachedProd - r.cachedCons)
	}
	return min(free, n)
}

// submit publishes n entries written after cachedProd.
func (r *prodRing) submit(n uint32) {
	if n == 0 {
		return
	}
	r.cachedProd += n
	atomic.StoreUint32(r.producer, r.cachedProd)
}

// pending reports whether the consumer has not caught up.
func (r *prodRing) pending() bool { return atomic.LoadUint32(r.consumer) != r.cachedProd }

// consRing is a ring this side consumes from (RX, completion).
type consRing struct {
	ring
	addrs []uint64       // completion
	descs []unix.XDPDesc // RX
}

// peek returns how many of n entries are ready (at most n).
func (r *consRing) peek(n uint32) uint32 {
	ready := r.cachedProd - r.cachedCons
	if ready < n {
		r.cachedProd = atomic.LoadUint32(r.producer)
		ready = r.cachedProd - r.cachedCons
	}
	return min(ready, n)
}

// release gives n consumed entries back to the producer.
func (r *consRing) release(n uint32) {
	if n == 0 {
		return
	}
	r.cachedCons += n
	atomic.StoreUint32(r.consumer, r.cachedCons)
}

// mapRing maps one ring of n entries of entrySize bytes at pgoff.
func (s *Socket) mapRing(name string, pgoff int64, off unix.XDPRingOffset, n uint32, entrySize uintptr) (ring, unsafe.Pointer, error) {
	m, err := unix.Mmap(s.fd, pgoff, int(off.Desc)+int(n)*int(entrySize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return ring{}, nil, fmt.Errorf("map %s ring: %w", name, err)
	}
	s.maps = append(s.maps, m)
	base := unsafe.Pointer(unsafe.SliceData(m))
	r := ring{
		producer: (*uint32)(unsafe.Add(base, off.Producer)),
		consumer: (*uint32)(unsafe.Add(base, off.Consumer)),
		flags:    (*uint32)(unsafe.Add(base, off.Flags)),
		mask:     n - 1, size: n,
	}
	r.cachedProd, r.cachedCons = atomic.LoadUint32(r.producer), atomic.LoadUint32(r.consumer)
	return r, unsafe.Add(base, off.Desc), nil
}

// mapRings maps the four rings of n entries each.
func (s *Socket) mapRings(n uint32) error {
	var off unix.XDPMmapOffsets
	l := uint32(unsafe.Sizeof(off))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s.fd), unix.SOL_XDP, unix.XDP_MMAP_OFFSETS,
		uintptr(unsafe.Pointer(&off)), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return fmt.Errorf("read ring offsets: %w", e)
	}
	const addrSize, descSize = unsafe.Sizeof(uint64(0)), unsafe.Sizeof(unix.XDPDesc{})
	r, p, err := s.mapRing("fill", unix.XDP_UMEM_PGOFF_FILL_RING, off.Fr, n, addrSize)
	if err != nil {
		return err
	}
	s.fill = prodRing{ring: r, addrs: unsafe.Slice((*uint64)(p), n)}
	if r, p, err = s.mapRing("completion", unix.XDP_UMEM_PGOFF_COMPLETION_RING, off.Cr, n, addrSize); err != nil {
		return err
	}
	s.comp = consRing{ring: r, addrs: unsafe.Slice((*uint64)(p), n)}
	if r, p, err = s.mapRing("RX", unix.XDP_PGOFF_RX_RING, off.Rx, n, descSize); err != nil {
		return err
	}
	s.rx = consRing{ring: r, descs: unsafe.Slice((*unix.XDPDesc)(p), n)}
	if r, p, err = s.mapRing("TX", unix.XDP_PGOFF_TX_RING, off.Tx, n, descSize); err != nil {
		return err
	}
	s.tx = prodRing{ring: r, descs: unsafe.Slice((*unix.XDPDesc)(p), n)}
	return nil
}

// registerUMEM registers umem with the socket (XDP_UMEM_REG).
func registerUMEM(fd int, umem []byte, frameSize int) error {
	reg := unix.XDPUmemReg{Addr: uint64(uintptr(unsafe.Pointer(unsafe.SliceData(umem)))), Len: uint64(len(umem)), Size: uint32(frameSize)}
	_, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_XDP, unix.XDP_UMEM_REG,
		uintptr(unsafe.Pointer(&reg)), unsafe.Sizeof(reg), 0)
	if e != 0 {
		return e
	}
	return nil
}

// xdpOptions reads XDP_OPTIONS.
func xdpOptions(fd int) (uint32, error) {
	var v uint32
	l := uint32(unsafe.Sizeof(v))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_XDP, unix.XDP_OPTIONS,
		uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return 0, e
	}
	return v, nil
}

// statistics reads XDP_STATISTICS.
func statistics(fd int) (unix.XDPStatistics, error) {
	var st unix.XDPStatistics
	l := uint32(unsafe.Sizeof(st))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_XDP, unix.XDP_STATISTICS,
		uintptr(unsafe.Pointer(&st)), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return st, fmt.Errorf("read xsk statistics: %w", e)
	}
	return st, nil
}
