package vhostuser

import "unsafe"

// prefetcher starts loading guest buffers a ring will hand out soon
// (prefetch_*.go). It keeps the region of the last one: buffers are
// nearly always in the same region.
type prefetcher struct {
	t *memTable
	r *mappedRegion
}

// buffer starts loading the cache line at guest address gpa, for
// writing when write, if gpa is inside one of t's regions. The frame's
// second line (where a virtio-net header and the Ethernet header end) is
// the hardware prefetcher's.
func (p *prefetcher) buffer(t *memTable, gpa uint64, write bool) {
	r := p.r
	if p.t != t || r == nil || gpa-r.GuestAddr >= r.Size {
		if r = t.findGuest(gpa); r == nil {
			return
		}
		p.t, p.r = t, r
	}
	a := uintptr(unsafe.Pointer(unsafe.SliceData(r.data))) + uintptr(gpa-r.GuestAddr)
	if write {
		prefetchForWrite(a)
	} else {
		prefetchRead(a)
	}
}
