//go:build dpdk && cgo

package dpdk

/*
// rte_dev_dma_map is experimental in 22.11.
#define ALLOW_EXPERIMENTAL_API 1
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <rte_bus.h>
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>

// A slot's shared info is never freed through DPDK: its owner reference
// stays until the region is unmapped, so the count reaches zero only
// there. free_cb must exist all the same.
static void veloce_extmem_free_cb(void *addr, void *opaque) {
	(void)addr;
	(void)opaque;
}

static size_t veloce_shinfo_size(void) { return sizeof(struct rte_mbuf_ext_shared_info); }

static void veloce_extmem_init(void *sh, unsigned n) {
	struct rte_mbuf_ext_shared_info *s = sh;
	for (unsigned i = 0; i < n; i++) {
		s[i].free_cb = veloce_extmem_free_cb;
		s[i].fcb_opaque = NULL;
		rte_mbuf_ext_refcnt_set(&s[i], 1);
	}
}

static const char *veloce_port_bus(uint16_t port) {
	struct rte_eth_dev_info info;
	memset(&info, 0, sizeof info);
	if (rte_eth_dev_info_get(port, &info) != 0 || info.device == NULL)
		return "";
	const struct rte_bus *bus = rte_dev_bus(info.device);
	return bus == NULL ? "" : rte_bus_name(bus);
}

static int veloce_iova_va(void) { return rte_eal_iova_mode() == RTE_IOVA_VA; }

static int veloce_dma_map(uint16_t port, void *addr, size_t len, int unmap) {
	struct rte_eth_dev_info info;
	memset(&info, 0, sizeof info);
	if (rte_eth_dev_info_get(port, &info) != 0 || info.device == NULL)
		return -ENODEV;
	int r = unmap ? rte_dev_dma_unmap(info.device, addr, (uint64_t)(uintptr_t)addr, len)
	              : rte_dev_dma_map(info.device, addr, (uint64_t)(uintptr_t)addr, len);
	return r < 0 ? -rte_errno : 0;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

var shinfoSize = uintptr(C.veloce_shinfo_size())

// ErrExtMemBusy is ExtMem.Free's error while DPDK still holds mbufs
// attached to one of its slots.
var ErrExtMemBusy = errors.New("dpdk: external memory still attached to mbufs in flight")

// ExtMem is a region of slots to send from without copying: anonymous
// mmap'd memory (neither Go's heap nor C's), registered with the EAL as
// external memory (rte_extmem_register), laid out as n slots of stride
// bytes each. Every slot has its own shared-info record (struct
// rte_mbuf_ext_shared_info, kept after the slots in the same mapping,
// outside Bytes) whose reference count is one for the region plus one per
// mbuf attached to the slot and not yet freed (AttachExtMem). So Busy(i),
// an atomic load, tells whether DPDK may still read slot i: from
// AttachExtMem until the PMD, or whoever received the mbuf (net_ring),
// frees it. The owner must not write a busy slot.
//
// There is no callback into Go: the PMD decrements the count in C, the
// owner polls it. The region's IOVA is its virtual address, right for the
// vdevs (which copy or pass pointers) and for a real NIC under
// --iova-mode=va once DMAMap has mapped the region for its device.
type ExtMem struct {
	mem    []byte // the slots, n*stride bytes
	stride int
	n      int
	sh     unsafe.Pointer // n shared-info records, after the slots
	all    []byte         // the whole mapping
	// regLen is the registered length: the slots, rounded up to pages.
	regLen int

	mu         sync.Mutex
	registered bool // +checklocks:mu
	// freed is set (under mu, before the mapping goes) by Free; Slot and
	// Busy read it without the lock.
	freed atomic.Bool
}

// NewExtMem maps n slots of stride bytes (stride a multiple of 64, at most
// 65535: an mbuf's buf_len is 16 bits) and registers them with the EAL.
// It needs Init. Free undoes both. The pages are touched lazily, as the
// slots are used. Each region takes one of the EAL's memseg lists
// (RTE_MAX_MEMSEG_LISTS, 128 in all with the EAL's own): registering
// fails when they run out.
func NewExtMem(n, stride int) (*ExtMem, error) {
	if !Initialized() {
		return nil, ErrUnavailable
	}
	if n <= 0 || stride <= 0 || stride%64 != 0 || stride > 0xffff || n > 1<<24 {
		return nil, fmt.Errorf("dpdk: external memory of %d slots of %d bytes: bad sizes", n, stride)
	}
	page := os.Getpagesize()
	slots := (n*stride + page - 1) &^ (page - 1)
	total := (slots + n*int(shinfoSize) + page - 1) &^ (page - 1)
	all, err := unix.Mmap(-1, 0, total, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("dpdk: map %d bytes of external memory: %w", total, err)
	}
	base := unsafe.Pointer(unsafe.SliceData(all))
	C.veloce_extmem_init(unsafe.Add(base, slots), C.uint(n))
	// Register the slots only: the shared-info records are never DMA'd.
	if err := RegisterExtMem(base, slots); err != nil {
		unix.Munmap(all)
		return nil, err
	}
	return &ExtMem{mem: all[: n*stride : n*stride], stride: stride, n: n, sh: unsafe.Add(base, slots), all: all, regLen: slots, registered: true}, nil
}

// Bytes is the slot memory, n*stride bytes; slot i is
// Bytes()[i*stride:(i+1)*stride].
func (x *ExtMem) Bytes() []byte { return x.mem }

// Stride is the size of a slot.
func (x *ExtMem) Stride() int { return x.stride }

// Len is the number of slots.
func (x *ExtMem) Len() int { return x.n }

// Slot says where b (non-empty) lies in the region: slot i, at offset off
// in it. ok is false when b does not start in the region, runs past its
// slot's end, or the region was freed. Pure Go, no allocation.
func (x *ExtMem) Slot(b []byte) (i, off int, ok bool) {
	if len(b) == 0 || x.freed.Load() {
		return 0, 0, false
	}
	d := uintptr(unsafe.Pointer(unsafe.SliceData(b))) - uintptr(unsafe.Pointer(unsafe.SliceData(x.mem)))
	if d >= uintptr(len(x.mem)) { // below the base wraps around too
		return 0, 0, false
	}
	i, off = int(d)/x.stride, int(d)%x.stride
	if off+len(b) > x.stride {
		return 0, 0, false
	}
	return i, off, true
}

func (x *ExtMem) refcnt(i int) *uint32 {
	return (*uint32)(unsafe.Add(x.sh, uintptr(i)*shinfoSize+offShRefcnt))
}

// Busy reports whether an mbuf attached to slot i is still out: an atomic
// load, no cgo call. False for a freed region.
func (x *ExtMem) Busy(i int) bool {
	if uint(i) >= uint(x.n) || x.freed.Load() {
		return false
	}
	return atomic.LoadUint32(x.refcnt(i))&0xffff > 1
}

// InFlight counts the busy slots (a scan; for accounting and tests).
func (x *ExtMem) InFlight() int {
	k := 0
	for i := range x.n {
		if x.Busy(i) {
			k++
		}
	}
	return k
}

// AttachExtMem points m, a direct mbuf fresh from AllocBulk, at length
// bytes at offset off of x's slot i, as rte_pktmbuf_attach_extbuf does, in
// pure Go: buf_addr (and buf_iova, IOVA = VA) = the slot, buf_len = the
// stride, data_off = off, data_len = pkt_len = length, shinfo = the slot's
// record, whose count goes up by one until DPDK frees m. It panics when
// the bytes are not inside the slot, the slot is busy already (one mbuf
// per slot at a time: that is what lets Busy name the slot), or m is not
// direct.
func (m *Mbuf) AttachExtMem(x *ExtMem, i, off, length int) {
	if uint(i) >= uint(x.n) || off < 0 || length < 0 || off+length > x.stride {
		panic("dpdk: AttachExtMem outside the slot")
	}
	flags := (*uint64)(m.at(offOlFlags))
	if *flags&(flagExternal|flagIndirect) != 0 {
		panic("dpdk: AttachExtMem on an mbuf that is not direct")
	}
	ref := x.refcnt(i)
	if !atomic.CompareAndSwapUint32(ref, 1, 2) {
		panic("dpdk: AttachExtMem on a slot that is busy")
	}
	buf := unsafe.Pointer(&x.mem[i*x.stride])
	*(*uintptr)(m.at(offBufAddr)) = uintptr(buf)
	if hasBufIOVA {
		*(*uint64)(m.at(offBufIOVA)) = uint64(uintptr(buf))
	}
	*m.u16(offBufLen) = uint16(x.stride)
	*m.u16(offDataOff) = uint16(off)
	*m.u16(offDataLen) = uint16(length)
	*(*uint32)(m.at(offPktLen)) = uint32(length)
	*(*uintptr)(m.at(offShinfo)) = uintptr(unsafe.Add(x.sh, uintptr(i)*shinfoSize))
	*flags |= flagExternal
}

// Free unregisters the region from the EAL and unmaps it. While a slot is
// still busy it changes nothing and returns ErrExtMemBusy (an mbuf may
// still be read: call again later, or leave the region mapped for good).
// Idempotent. Nothing may use the region afterwards, and nothing may call
// AttachExtMem concurrently.
func (x *ExtMem) Free() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.freed.Load() {
		return nil
	}
	if k := x.InFlight(); k > 0 {
		return fmt.Errorf("dpdk: free external memory with %d slots busy: %w", k, ErrExtMemBusy)
	}
	var errs []error
	if x.registered {
		if err := UnregisterExtMem(unsafe.Pointer(unsafe.SliceData(x.all)), x.regLen); err != nil {
			errs = append(errs, err)
		}
		x.registered = false
	}
	x.freed.Store(true)
	if err := unix.Munmap(x.all); err != nil {
		errs = append(errs, fmt.Errorf("dpdk: unmap external memory: %w", err))
	}
	return errors.Join(errs...)
}

// DMAMap maps x's slots for DMA by port p's device (rte_dev_dma_map, IOVA
// = VA): what a real NIC needs before it can send from them. Vdevs
// (net_af_packet, net_tap and net_vhost copy, net_ring passes pointers)
// map nothing and return nil; a bus that cannot map returns an error
// wrapping syscall.ENOTSUP.
func (p *Port) DMAMap(x *ExtMem) error { return p.dma(x, false) }

// DMAUnmap undoes DMAMap (rte_dev_dma_unmap); call it before x.Free, once
// the port sends nothing from x any more.
func (p *Port) DMAUnmap(x *ExtMem) error { return p.dma(x, true) }

func (p *Port) dma(x *ExtMem, unmap bool) error {
	if !Initialized() {
		return ErrUnavailable
	}
	if x.freed.Load() {
		return fmt.Errorf("dpdk: DMA mapping of freed external memory: %w", syscall.EINVAL)
	}
	op := "rte_dev_dma_map"
	if unmap {
		op = "rte_dev_dma_unmap"
	}
	u := C.int(0)
	if unmap {
		u = 1
	}
	if r := C.veloce_dma_map(C.uint16_t(p.id), unsafe.Pointer(unsafe.SliceData(x.all)), C.size_t(x.regLen), u); r < 0 {
		return cerr(fmt.Sprintf("%s(port %d %q, %d bytes)", op, p.id, p.name, x.regLen), r)
	}
	return nil
}

// IOVAIsVA reports whether the EAL runs with IOVA = virtual address
// (rte_eal_iova_mode, --iova-mode=va), the only mode in which a device
// that does DMA can read mbufs attached to external memory: their IOVA is
// their virtual address.
func IOVAIsVA() bool { return Initialized() && C.veloce_iova_va() != 0 }

// Bus is the name of the bus the port's device is on: "vdev" for virtual
// devices (which do no DMA), "pci" for NICs.
func (p *Port) Bus() string { return C.GoString(C.veloce_port_bus(C.uint16_t(p.id))) }
