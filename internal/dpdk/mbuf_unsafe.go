//go:build dpdk && cgo

package dpdk

import (
	"sync/atomic"
	"unsafe"
)

// The per-packet accessors are pure Go: loads and stores at the offsets
// dpdk_unsafe.go took from the C headers. No cgo call, no allocation.
//
// Pointers are stored into C memory as uintptr (no write barrier: they
// are never Go pointers) and loaded as unsafe.Pointer.

func (m *Mbuf) at(off uintptr) unsafe.Pointer { return unsafe.Add(unsafe.Pointer(m), off) }
func (m *Mbuf) u16(off uintptr) *uint16       { return (*uint16)(m.at(off)) }

// Data is the packet's data: data_len bytes at buf_addr+data_off. The
// slice is C memory, valid until the mbuf is freed or handed to TxBurst.
func (m *Mbuf) Data() []byte {
	base := *(*unsafe.Pointer)(m.at(offBufAddr))
	return unsafe.Slice((*byte)(unsafe.Add(base, *m.u16(offDataOff))), *m.u16(offDataLen))
}

// Room is the writable buffer from the start of the data to the end of the
// buffer (buf_len - data_off bytes): write a packet there, then SetLen.
func (m *Mbuf) Room() []byte {
	base := *(*unsafe.Pointer)(m.at(offBufAddr))
	off := *m.u16(offDataOff)
	return unsafe.Slice((*byte)(unsafe.Add(base, off)), *m.u16(offBufLen)-off)
}

// SetLen sets the length of a single-segment packet: data_len = pkt_len =
// n. It panics if n exceeds len(m.Room()) or m is a chain.
func (m *Mbuf) SetLen(n int) {
	if uint(n) > uint(*m.u16(offBufLen)-*m.u16(offDataOff)) {
		panic("dpdk: Mbuf.SetLen beyond the buffer")
	}
	if *m.u16(offNbSegs) != 1 {
		panic("dpdk: Mbuf.SetLen on a multi-segment mbuf")
	}
	*m.u16(offDataLen) = uint16(n)
	*(*uint32)(m.at(offPktLen)) = uint32(n)
}

// Len is the data length of the (first) segment (data_len).
func (m *Mbuf) Len() int { return int(*m.u16(offDataLen)) }

// AttachExtBuf points m, a direct mbuf fresh from AllocBulk, at length
// bytes of external memory at buf for zero-copy sending, as
// rte_pktmbuf_attach_extbuf does, in pure Go: buf_addr = buf, buf_iova =
// buf (IOVA = VA), buf_len = data_len = pkt_len = length, data_off = 0,
// shinfo = d, RTE_MBUF_F_EXTERNAL set; d's count goes up by one and
// comes down when DPDK frees m (or the last clone of it), which also
// restores m's own buffer. The memory must not be reused before then.
//
// buf must be C or mmap'd memory, never Go memory: DPDK keeps the pointer
// after this call returns. IOVA = VA is right for vdevs; a real NIC needs
// the memory registered (RegisterExtMem) and DMA-mapped, under
// --iova-mode=va. length is at most 65535 (buf_len is 16 bits).
func (m *Mbuf) AttachExtBuf(buf unsafe.Pointer, length int, d *ExtBufDone) {
	if d == nil || d.sh == nil {
		panic("dpdk: AttachExtBuf with a nil or freed ExtBufDone")
	}
	if uint(length) > 0xffff {
		panic("dpdk: AttachExtBuf length beyond 65535")
	}
	flags := (*uint64)(m.at(offOlFlags))
	if *flags&(flagExternal|flagIndirect) != 0 {
		panic("dpdk: AttachExtBuf on an mbuf that is not direct")
	}
	// The 16-bit refcnt is the low half (little-endian) of this aligned
	// word; the high half is padding nobody else writes.
	ref := (*uint32)(unsafe.Add(d.sh, offShRefcnt))
	if atomic.LoadUint32(ref)&0xffff >= 0xffff {
		panic("dpdk: AttachExtBuf: too many mbufs in flight on one ExtBufDone")
	}
	atomic.AddUint32(ref, 1)

	*(*uintptr)(m.at(offBufAddr)) = uintptr(buf)
	if hasBufIOVA {
		*(*uint64)(m.at(offBufIOVA)) = uint64(uintptr(buf))
	}
	*m.u16(offBufLen) = uint16(length)
	*m.u16(offDataOff) = 0
	*m.u16(offDataLen) = uint16(length)
	*(*uint32)(m.at(offPktLen)) = uint32(length)
	*(*uintptr)(m.at(offShinfo)) = uintptr(d.sh)
	*flags |= flagExternal
}

// Pending is how many mbufs attached with d (and clones of them) DPDK has
// not freed yet: an atomic load, no cgo call. 0 once d is freed.
func (d *ExtBufDone) Pending() uint32 {
	if d.sh == nil {
		return 0
	}
	v := atomic.LoadUint32((*uint32)(unsafe.Add(d.sh, offShRefcnt))) & 0xffff
	return v - 1 // less the owner's reference
}
