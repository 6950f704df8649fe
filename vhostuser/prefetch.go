package vhostuser

import "unsafe"

// prefetcher starts loading guest buffers a ring will hand out soon
// (prefetch_*.go). It keeps the region of the last one: buffers are
// nearly always in the same region.
type prefetcher struct {
	t *memTable
	r *mappedRegion
}

// buffer starts loading the two cache lines from guest address gpa, for
// writing when write, if gpa is inside one of t's regions: the
// virtio-net header and the frame's first bytes, which the DPDK and
// Linux drivers place across a line boundary (the header just before
// the line the frame starts in).
func (p *prefetcher) buffer(t *memTable, gpa uint64, write bool) {
	r := p.r
	if p.t != t || r == nil || gpa-r.GuestAddr >= r.Size {
		if r = t.findGuest(gpa); r == nil {
			return
		}
		p.t, p.r = t, r
	}
	off := gpa - r.GuestAddr
	a := uintptr(unsafe.Pointer(unsafe.SliceData(r.data))) + uintptr(off)
	second := r.Size-off > cacheLine
	if write {
		prefetchForWrite(a)
		if second {
			prefetchForWrite(a + cacheLine)
		}
	} else {
		prefetchRead(a)
		if second {
			prefetchRead(a + cacheLine)
		}
	}
}

// cacheLine is the line size the prefetches step by.
const cacheLine = 64
