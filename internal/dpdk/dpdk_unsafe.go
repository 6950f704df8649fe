//go:build dpdk && cgo

package dpdk

/*
#cgo pkg-config: libdpdk
#cgo CFLAGS: -O2 -Wno-deprecated-declarations

// The burst calls never call back into Go. (They are not marked noescape,
// although they keep no pointer: noescape turns off the cgocheck of their
// arguments, which catches a Go pointer slipped into a burst array.)
#cgo nocallback veloce_rx_burst
#cgo nocallback veloce_tx_burst
#cgo nocallback veloce_alloc_bulk
#cgo nocallback rte_pktmbuf_free_bulk

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_memory.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_ethdev.h>
#include <rte_dev.h>

// Offsets of the rte_mbuf fields Go reads and writes itself. struct
// rte_mbuf is full of anonymous unions and bitfields that cgo cannot
// express, so Go works with these offsets and the widths asserted below.
enum {
	veloce_off_buf_addr = offsetof(struct rte_mbuf, buf_addr),
#if RTE_IOVA_AS_PA
	veloce_has_buf_iova = 1,
	veloce_off_buf_iova = offsetof(struct rte_mbuf, buf_iova),
#else
	veloce_has_buf_iova = 0,
	veloce_off_buf_iova = 0,
#endif
	veloce_off_data_off = offsetof(struct rte_mbuf, data_off),
	veloce_off_nb_segs = offsetof(struct rte_mbuf, nb_segs),
	veloce_off_ol_flags = offsetof(struct rte_mbuf, ol_flags),
	veloce_off_pkt_len = offsetof(struct rte_mbuf, pkt_len),
	veloce_off_data_len = offsetof(struct rte_mbuf, data_len),
	veloce_off_buf_len = offsetof(struct rte_mbuf, buf_len),
	veloce_off_shinfo = offsetof(struct rte_mbuf, shinfo),
	veloce_off_sh_refcnt = offsetof(struct rte_mbuf_ext_shared_info, refcnt),
};

#define VELOCE_FIELD_SIZE(t, f) sizeof(((t *)0)->f)
_Static_assert(VELOCE_FIELD_SIZE(struct rte_mbuf, buf_addr) == sizeof(void *), "buf_addr");
_Static_assert(VELOCE_FIELD_SIZE(struct rte_mbuf, data_off) == 2, "data_off");
_Static_assert(VELOCE_FIELD_SIZE(struct rte_mbuf, nb_segs) == 2, "nb_segs");
_Static_assert(VELOCE_FIELD_SIZE(struct rte_mbuf, ol_flags) == 8, "ol_flags");
_Static_assert(VELOCE_FIELD_SIZE(struct rte_mbuf, pkt_len) == 4, "pkt_len");
_Static_assert(VELOCE_FIELD_SIZE(struct rte_mbuf, data_len) == 2, "data_len");
_Static_assert(VELOCE_FIELD_SIZE(struct rte_mbuf, buf_len) == 2, "buf_len");
_Static_assert(VELOCE_FIELD_SIZE(struct rte_mbuf, shinfo) == sizeof(void *), "shinfo");
#if RTE_IOVA_AS_PA
_Static_assert(VELOCE_FIELD_SIZE(struct rte_mbuf, buf_iova) == 8, "buf_iova");
#endif
// Go updates the 16-bit shared-info refcnt with 32-bit atomics on the
// aligned word that holds it; the other half of that word is padding.
_Static_assert(VELOCE_FIELD_SIZE(struct rte_mbuf_ext_shared_info, refcnt) == 2, "refcnt");
_Static_assert(offsetof(struct rte_mbuf_ext_shared_info, refcnt) % 4 == 0, "refcnt alignment");
_Static_assert(sizeof(struct rte_mbuf_ext_shared_info) >=
	offsetof(struct rte_mbuf_ext_shared_info, refcnt) + 4, "refcnt word");

// Each wrapper returns a negative errno on failure: rte_errno is
// thread-local, so it must be read in the same C call, on the same thread.

static int veloce_eal_init(int argc, char **argv) {
	return rte_eal_init(argc, argv) < 0 ? -rte_errno : 0;
}

static struct rte_mempool *veloce_pool_create(const char *name, unsigned n,
		unsigned cache, uint16_t room, int *err) {
	struct rte_mempool *mp = rte_pktmbuf_pool_create(name, n, cache, 0, room, SOCKET_ID_ANY);
	*err = mp == NULL ? rte_errno : 0;
	return mp;
}

static int veloce_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **m, unsigned n) {
	return rte_pktmbuf_alloc_bulk(mp, m, n);
}

static uint16_t veloce_rx_burst(uint16_t port, uint16_t q, struct rte_mbuf **m, uint16_t n) {
	return rte_eth_rx_burst(port, q, m, n);
}

static uint16_t veloce_tx_burst(uint16_t port, uint16_t q, struct rte_mbuf **m, uint16_t n) {
	return rte_eth_tx_burst(port, q, m, n);
}

static int veloce_configure(uint16_t port, uint16_t nrx, uint16_t ntx, int rx_csum) {
	struct rte_eth_conf conf;
	memset(&conf, 0, sizeof conf);
	if (rx_csum)
		conf.rxmode.offloads = RTE_ETH_RX_OFFLOAD_UDP_CKSUM | RTE_ETH_RX_OFFLOAD_TCP_CKSUM;
	return rte_eth_dev_configure(port, nrx, ntx, &conf);
}

static struct rte_device *veloce_port_device(uint16_t port) {
	struct rte_eth_dev_info info;
	if (rte_eth_dev_info_get(port, &info) != 0)
		return NULL;
	return info.device;
}

static int veloce_link_up(uint16_t port) {
	struct rte_eth_link link;
	memset(&link, 0, sizeof link);
	if (rte_eth_link_get_nowait(port, &link) != 0)
		return 0;
	return link.link_status == RTE_ETH_LINK_UP;
}

static int veloce_thread_register(void) {
	return rte_thread_register() < 0 ? -rte_errno : 0;
}

static unsigned veloce_lcore_id(void) { return rte_lcore_id(); }

static int veloce_extmem_register(void *addr, size_t len, size_t pagesz) {
	return rte_extmem_register(addr, len, NULL, 0, pagesz) < 0 ? -rte_errno : 0;
}

static int veloce_extmem_unregister(void *addr, size_t len) {
	return rte_extmem_unregister(addr, len) < 0 ? -rte_errno : 0;
}

// An ExtBufDone is one shared-info struct. Its refcnt counts the owner's
// reference (dropped by veloce_extdone_release) plus one per mbuf attached
// and not yet freed. DPDK calls free_cb when it reaches zero, which
// happens only after the owner let go, so the struct outlives every mbuf
// that points at it.
static void veloce_extdone_free_cb(void *addr, void *opaque) {
	(void)addr;
	free(opaque);
}

static struct rte_mbuf_ext_shared_info *veloce_extdone_new(void) {
	struct rte_mbuf_ext_shared_info *sh = calloc(1, sizeof *sh);
	if (sh == NULL)
		return NULL;
	sh->free_cb = veloce_extdone_free_cb;
	sh->fcb_opaque = sh;
	rte_mbuf_ext_refcnt_set(sh, 1);
	return sh;
}

static void veloce_extdone_release(struct rte_mbuf_ext_shared_info *sh) {
	if (rte_mbuf_ext_refcnt_update(sh, -1) == 0)
		sh->free_cb(NULL, sh->fcb_opaque);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Field offsets and flags for the pure-Go mbuf accessors (mbuf_unsafe.go).
const (
	offBufAddr  = C.veloce_off_buf_addr
	hasBufIOVA  = C.veloce_has_buf_iova != 0 // DPDK built with RTE_IOVA_AS_PA
	offBufIOVA  = C.veloce_off_buf_iova
	offDataOff  = C.veloce_off_data_off
	offNbSegs   = C.veloce_off_nb_segs
	offOlFlags  = C.veloce_off_ol_flags
	offPktLen   = C.veloce_off_pkt_len
	offDataLen  = C.veloce_off_data_len
	offBufLen   = C.veloce_off_buf_len
	offShinfo   = C.veloce_off_shinfo
	offShRefcnt = C.veloce_off_sh_refcnt

	flagExternal = uint64(C.RTE_MBUF_F_EXTERNAL)
	flagIndirect = uint64(C.RTE_MBUF_F_INDIRECT)

	// Headroom is the space rte_pktmbuf_pool_create reserves in front of
	// each mbuf's data (RTE_PKTMBUF_HEADROOM).
	Headroom = C.RTE_PKTMBUF_HEADROOM

	// LcoreIDAny is LcoreID's value on a thread the EAL does not know.
	LcoreIDAny = uint32(C.LCORE_ID_ANY)

	pmdDir = C.RTE_EAL_PMD_PATH
)

// ErrUnavailable is returned by everything that needs the EAL before Init
// has succeeded.
var ErrUnavailable = errors.New("dpdk: EAL not initialised")

// Available reports whether this build has DPDK (it was built with
// -tags dpdk and cgo).
func Available() bool { return true }

func cerr(op string, errno C.int) error {
	if errno < 0 {
		errno = -errno
	}
	return &Error{Op: op, Errno: int(errno), Msg: C.GoString(C.rte_strerror(errno))}
}

var (
	initOnce sync.Once
	initErr  error
	initDone atomic.Bool
)

// Init initialises the EAL with args (EAL options, without argv[0]).
//
// rte_eal_init runs on a dedicated OS thread: a goroutine locked to its
// thread with runtime.LockOSThread and then parked for the life of the
// process. The EAL makes that thread its main lcore and pins it to the
// main lcore's CPUs (-l/--lcores), and only that thread: the threads the
// Go scheduler runs goroutines on keep their affinity. Give the EAL no
// worker lcores (-l 0, or --lcores=0@(0-N) to let the parked thread
// float): goroutines that poll ports register their own threads instead
// (RegisterThread), and worker lcore threads would sit idle.
//
// When args has no -d option and the directory DPDK was built to load
// drivers from (RTE_EAL_PMD_PATH, e.g. /usr/lib/x86_64-linux-gnu/dpdk/
// pmds-23.0 on Debian) exists, Init adds -d with it, so the vdev PMDs
// (net_af_packet, net_tap, net_ring) and the ring mempool driver are found.
//
// A process has one EAL: Init runs rte_eal_init only the first time it is
// called. Later calls ignore their args and return the first call's
// result. The argument strings are copied to C memory that is never freed
// (the EAL may keep pointers into it).
//
// Without hugepages, run with --no-huge -m 256 --no-shconf (see the
// package documentation for the full set and for hugepages).
func Init(args []string) error {
	initOnce.Do(func() {
		argv := append([]string{"veloce"}, args...)
		if !hasDriverOpt(args) {
			if st, err := os.Stat(pmdDir); err == nil && st.IsDir() {
				argv = append(argv, "-d", pmdDir)
			}
		}
		cargv := (**C.char)(C.calloc(C.size_t(len(argv)+1), C.size_t(unsafe.Sizeof((*C.char)(nil)))))
		for i, a := range argv {
			unsafe.Slice(cargv, len(argv)+1)[i] = C.CString(a)
		}
		res := make(chan C.int)
		go func() {
			runtime.LockOSThread()
			r := C.veloce_eal_init(C.int(len(argv)), cargv)
			res <- r
			if r < 0 {
				// The EAL may have pinned this thread before failing:
				// returning while locked makes the runtime discard it.
				return
			}
			select {} // this thread is the EAL's main lcore for good
		}()
		if r := <-res; r < 0 {
			initErr = cerr(fmt.Sprintf("rte_eal_init(%s)", strings.Join(argv[1:], " ")), r)
			return
		}
		initDone.Store(true)
	})
	return initErr
}

func hasDriverOpt(args []string) bool {
	for _, a := range args {
		if strings.HasPrefix(a, "-d") {
			return true
		}
	}
	return false
}

// Initialized reports whether Init has succeeded.
func Initialized() bool { return initDone.Load() }

// Mempool is a pool of packet mbufs. Free it only after every mbuf taken
// from it is back and every port using it is closed.
type Mempool struct {
	p *C.struct_rte_mempool
}

// NewMempool creates a packet mbuf pool (rte_pktmbuf_pool_create) named
// name (unique in the process) of n mbufs, each with dataRoom bytes of data
// room after Headroom bytes of headroom, with a per-lcore cache of cache
// mbufs (at most 512, and at most n/1.5) on any NUMA socket. The cache
// serves only threads the EAL knows (Init's and RegisterThread's).
func NewMempool(name string, n, cache, dataRoom int) (*Mempool, error) {
	if !Initialized() {
		return nil, ErrUnavailable
	}
	if n <= 0 || cache < 0 || dataRoom < 0 || dataRoom+Headroom > 0xffff {
		return nil, fmt.Errorf("dpdk: mempool %q: bad sizes n=%d cache=%d dataRoom=%d", name, n, cache, dataRoom)
	}
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	var errno C.int
	p := C.veloce_pool_create(cname, C.uint(n), C.uint(cache), C.uint16_t(dataRoom+Headroom), &errno)
	if p == nil {
		return nil, cerr(fmt.Sprintf("mempool %q (n=%d cache=%d dataRoom=%d)", name, n, cache, dataRoom), errno)
	}
	return &Mempool{p: p}, nil
}

// Free releases the pool (rte_mempool_free). It is safe to call twice; no
// other method may be called afterwards.
func (mp *Mempool) Free() {
	if mp.p != nil {
		C.rte_mempool_free(mp.p)
		mp.p = nil
	}
}

// AllocBulk fills mbufs with freshly reset mbufs (rte_pktmbuf_alloc_bulk):
// all of them, or none and ErrNoMbufs. One cgo call.
func (mp *Mempool) AllocBulk(mbufs []*Mbuf) error {
	if len(mbufs) == 0 {
		return nil
	}
	if C.veloce_alloc_bulk(mp.p, mbufArray(mbufs), C.uint(len(mbufs))) != 0 {
		return ErrNoMbufs
	}
	return nil
}

// InUse is how many mbufs are out of the pool (rte_mempool_in_use_count);
// mbufs sitting in per-lcore caches count as available.
func (mp *Mempool) InUse() int { return int(C.rte_mempool_in_use_count(mp.p)) }

// Avail is how many mbufs the pool could hand out (rte_mempool_avail_count).
func (mp *Mempool) Avail() int { return int(C.rte_mempool_avail_count(mp.p)) }

// mbufArray passes a []*Mbuf to C. Its backing array holds C pointers
// only, which the cgo pointer rules allow.
func mbufArray(mbufs []*Mbuf) **C.struct_rte_mbuf {
	return (**C.struct_rte_mbuf)(unsafe.Pointer(unsafe.SliceData(mbufs)))
}

// NewMbufs returns an array of n mbuf pointers (all nil) in C memory,
// for the burst calls: cgo's pointer check (cgocheck) walks every entry
// of a Go array passed to C, to see that it holds no Go pointer, but
// looks at a C array's address only. A burst of 32 through a Go array
// costs about as much in that walk as the PMD's own work (veloce-bench
// v2v's guests: a fifth of the process's samples). Free it with
// FreeMbufs once no burst call uses it; it needs no EAL.
func NewMbufs(n int) []*Mbuf {
	if n <= 0 {
		return nil
	}
	p := C.calloc(C.size_t(n), C.size_t(unsafe.Sizeof((*Mbuf)(nil))))
	if p == nil {
		panic("dpdk: out of C memory")
	}
	return unsafe.Slice((**Mbuf)(p), n)
}

// FreeMbufs releases an array from NewMbufs (not the mbufs it points
// to). a must not be used afterwards.
func FreeMbufs(a []*Mbuf) {
	if cap(a) > 0 {
		C.free(unsafe.Pointer(unsafe.SliceData(a[:1])))
	}
}

// FreeBulk returns mbufs (and any segments chained to them) to their pools
// (rte_pktmbuf_free_bulk); nil entries are skipped. One cgo call. The
// pointers in mbufs are dead afterwards.
func FreeBulk(mbufs []*Mbuf) {
	if len(mbufs) == 0 {
		return
	}
	C.rte_pktmbuf_free_bulk(mbufArray(mbufs), C.uint(len(mbufs)))
}

// ExtBufDone tracks mbufs attached to external buffers (AttachExtBuf) until
// DPDK frees them. It is a struct rte_mbuf_ext_shared_info in C memory
// whose reference count is the owner's reference plus one per attached mbuf
// (and per clone of one) not yet freed: Go increments it in AttachExtBuf,
// DPDK decrements it atomically in C when it frees such an mbuf, typically
// in the TxBurst that sent it or a later one on the same queue. There is no
// callback into Go. One ExtBufDone can track any number of buffers, up to
// 65534 mbufs in flight.
type ExtBufDone struct {
	sh unsafe.Pointer // *C.struct_rte_mbuf_ext_shared_info
}

// NewExtBufDone allocates an ExtBufDone (in C memory; see Free). It needs
// no EAL.
func NewExtBufDone() *ExtBufDone {
	sh := C.veloce_extdone_new()
	if sh == nil {
		panic("dpdk: out of C memory")
	}
	return &ExtBufDone{sh: unsafe.Pointer(sh)}
}

// Free drops the owner's reference. The C memory is released when the last
// mbuf attached with d is freed, or now if there is none, so Free is safe
// with mbufs still in flight; d must not be used afterwards. It must not
// race with AttachExtBuf on d.
func (d *ExtBufDone) Free() {
	if d.sh != nil {
		C.veloce_extdone_release((*C.struct_rte_mbuf_ext_shared_info)(d.sh))
		d.sh = nil
	}
}

// Port is an ethdev port opened by OpenPort.
type Port struct {
	id   uint16
	name string
	mu   sync.Mutex
	// dev is non-nil when OpenPort probed it, to remove on Close.
	dev    *C.struct_rte_device // +checklocks:mu
	closed bool                 // +checklocks:mu
}

var (
	openMu sync.Mutex
	// openPorts are the ports open, by id.
	//
	// +checklocks:openMu
	openPorts = map[uint16]bool{}
)

// OpenPort opens the ethdev port devargs names, e.g.
// "net_af_packet0,iface=veth0", "net_tap0,iface=vtap0" or "net_ring0". Its
// name is devargs up to the first comma. If no port has that name yet
// (one given to Init as --vdev has), OpenPort probes devargs
// (rte_dev_probe), and Close removes the device again. It then configures
// the port with cfg (zeroed rte_eth_conf: no offloads, no RSS), sets up its
// queues with cfg.Pool for receiving, and starts it.
//
// PMDs that use the kernel's network stack bind at probe time in the
// network namespace of the calling thread: to open net_af_packet or
// net_tap in a namespace, call OpenPort on a goroutine locked to a thread
// in it (internal/netns.Do). net_af_packet offers one queue pair unless
// devargs asks for more (qpairs=N).
func OpenPort(devargs string, cfg PortConfig) (*Port, error) {
	if !Initialized() {
		return nil, ErrUnavailable
	}
	if cfg.Pool == nil || cfg.Pool.p == nil {
		return nil, fmt.Errorf("dpdk: open port %q: PortConfig.Pool is required", devargs)
	}
	name, _, _ := strings.Cut(devargs, ",")
	name = strings.TrimSpace(name)
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))

	var id C.uint16_t
	probed := false
	if C.rte_eth_dev_get_port_by_name(cname, &id) != 0 {
		cargs := C.CString(devargs)
		r := C.rte_dev_probe(cargs)
		C.free(unsafe.Pointer(cargs))
		if r < 0 {
			return nil, probeErr(devargs, r)
		}
		probed = true
		if r := C.rte_eth_dev_get_port_by_name(cname, &id); r != 0 {
			return nil, cerr(fmt.Sprintf("probed %q but found no port named %q", devargs, name), r)
		}
	}
	p := &Port{id: uint16(id), name: name}
	if probed {
		p.dev = C.veloce_port_device(id)
	}
	openMu.Lock()
	if openPorts[p.id] {
		openMu.Unlock()
		return nil, fmt.Errorf("dpdk: open port %q: port %d is already open", devargs, p.id)
	}
	openPorts[p.id] = true
	openMu.Unlock()
	if err := p.setup(devargs, cfg); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// probeErr explains rte_dev_probe's two least helpful codes.
func probeErr(devargs string, r C.int) error {
	err := cerr(fmt.Sprintf("probe %q", devargs), r).(*Error)
	switch r {
	case -1: // a PMD's plain failure, not an errno
		err.Errno, err.Msg = 0, "the driver failed to attach it (the EAL log above says why)"
	case -C.EFAULT:
		err.Msg = "no bus or driver knows this device name (is its PMD loaded? see -d)"
	}
	return err
}

func (p *Port) setup(devargs string, cfg PortConfig) error {
	nrx, ntx := max(cfg.RxQueues, 1), max(cfg.TxQueues, 1)
	nrxd, ntxd := C.uint16_t(cfg.RxDesc), C.uint16_t(cfg.TxDesc)
	if nrxd == 0 {
		nrxd = 1024
	}
	if ntxd == 0 {
		ntxd = 1024
	}
	id := C.uint16_t(p.id)
	fail := func(what string, r C.int) error {
		return cerr(fmt.Sprintf("port %d (%q): %s", p.id, devargs, what), r)
	}
	csum := C.int(0)
	if cfg.RxChecksum {
		csum = 1
	}
	if r := C.veloce_configure(id, C.uint16_t(nrx), C.uint16_t(ntx), csum); r < 0 {
		return fail(fmt.Sprintf("configure %d rx, %d tx queues (rx checksum offload %v)", nrx, ntx, cfg.RxChecksum), r)
	}
	if r := C.rte_eth_dev_adjust_nb_rx_tx_desc(id, &nrxd, &ntxd); r < 0 {
		return fail("adjust descriptors", r)
	}
	if cfg.MTU > 0 {
		if r := C.rte_eth_dev_set_mtu(id, C.uint16_t(cfg.MTU)); r < 0 {
			return fail(fmt.Sprintf("set MTU %d", cfg.MTU), r)
		}
	}
	socket := C.uint(C.rte_eth_dev_socket_id(id)) // SOCKET_ID_ANY (-1) is fine
	for q := range nrx {
		if r := C.rte_eth_rx_queue_setup(id, C.uint16_t(q), nrxd, socket, nil, cfg.Pool.p); r < 0 {
			return fail(fmt.Sprintf("set up rx queue %d", q), r)
		}
	}
	for q := range ntx {
		if r := C.rte_eth_tx_queue_setup(id, C.uint16_t(q), ntxd, socket, nil); r < 0 {
			return fail(fmt.Sprintf("set up tx queue %d", q), r)
		}
	}
	if cfg.Promiscuous {
		if r := C.rte_eth_promiscuous_enable(id); r < 0 {
			return fail("enable promiscuous mode", r)
		}
	}
	if r := C.rte_eth_dev_start(id); r < 0 {
		return fail("start", r)
	}
	return nil
}

// ID is the ethdev port id.
func (p *Port) ID() uint16 { return p.id }

// Name is the port's device name (devargs up to the first comma).
func (p *Port) Name() string { return p.name }

// MAC is the port's MAC address.
func (p *Port) MAC() [6]byte {
	var a C.struct_rte_ether_addr
	C.rte_eth_macaddr_get(C.uint16_t(p.id), &a)
	return *(*[6]byte)(unsafe.Pointer(&a.addr_bytes))
}

// LinkUp reports the link status without waiting (rte_eth_link_get_nowait).
func (p *Port) LinkUp() bool { return C.veloce_link_up(C.uint16_t(p.id)) != 0 }

// RxBurst receives up to len(mbufs) packets from queue into mbufs and
// returns how many (rte_eth_rx_burst): one cgo call, no allocation. The
// received mbufs belong to the caller, who frees them. A queue must be
// polled by one thread at a time.
func (p *Port) RxBurst(queue uint16, mbufs []*Mbuf) int {
	n := min(len(mbufs), 0xffff)
	if n == 0 {
		return 0
	}
	return int(C.veloce_rx_burst(C.uint16_t(p.id), C.uint16_t(queue), mbufArray(mbufs), C.uint16_t(n)))
}

// TxBurst hands mbufs to queue (rte_eth_tx_burst) and returns how many the
// PMD took, from the front of mbufs; it frees those once sent. The rest
// still belong to the caller, to retry or free. One cgo call. A queue must
// be used by one thread at a time.
func (p *Port) TxBurst(queue uint16, mbufs []*Mbuf) int {
	n := min(len(mbufs), 0xffff)
	if n == 0 {
		return 0
	}
	return int(C.veloce_tx_burst(C.uint16_t(p.id), C.uint16_t(queue), mbufArray(mbufs), C.uint16_t(n)))
}

// Stats returns the port's basic counters (rte_eth_stats_get).
func (p *Port) Stats() (PortStats, error) {
	var s C.struct_rte_eth_stats
	if r := C.rte_eth_stats_get(C.uint16_t(p.id), &s); r < 0 {
		return PortStats{}, cerr(fmt.Sprintf("port %d (%q): stats", p.id, p.name), r)
	}
	return PortStats{
		IPackets: uint64(s.ipackets), OPackets: uint64(s.opackets),
		IBytes: uint64(s.ibytes), OBytes: uint64(s.obytes),
		IMissed: uint64(s.imissed), IErrors: uint64(s.ierrors), OErrors: uint64(s.oerrors),
		RxNoMbuf: uint64(s.rx_nombuf),
	}, nil
}

// Close stops and closes the port, and removes its device if OpenPort
// probed it, so the same devargs can be opened again. Mbufs the port held
// go back to their pool. It is idempotent; bursts must have stopped. A
// port created by Init's --vdev is closed for good (ethdev releases it).
func (p *Port) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	id := C.uint16_t(p.id)
	var errs []error
	if r := C.rte_eth_dev_stop(id); r < 0 {
		errs = append(errs, cerr(fmt.Sprintf("port %d (%q): stop", p.id, p.name), r))
	}
	if r := C.rte_eth_dev_close(id); r < 0 {
		errs = append(errs, cerr(fmt.Sprintf("port %d (%q): close", p.id, p.name), r))
	}
	if p.dev != nil {
		// checklocks takes cgo's pointer check (a closure) for a return
		// with p.mu held.
		if r := C.rte_dev_remove(p.dev); r < 0 { // +checklocksignore
			errs = append(errs, cerr(fmt.Sprintf("remove device %q", p.name), r))
		}
	}
	openMu.Lock()
	delete(openPorts, p.id)
	openMu.Unlock()
	return errors.Join(errs...)
}

// RegisterThread registers the calling OS thread with the EAL
// (rte_thread_register), giving it an lcore id, so mempool caches serve it.
// The caller must have locked its goroutine to the thread
// (runtime.LockOSThread) and must call UnregisterThread before unlocking.
// It leaves the thread's CPU affinity alone.
func RegisterThread() error {
	if !Initialized() {
		return ErrUnavailable
	}
	if r := C.veloce_thread_register(); r < 0 {
		return cerr("rte_thread_register", r)
	}
	return nil
}

// UnregisterThread releases the calling thread's lcore id
// (rte_thread_unregister).
func UnregisterThread() {
	if Initialized() {
		C.rte_thread_unregister()
	}
}

// LcoreID is the calling thread's lcore id (rte_lcore_id), LcoreIDAny if
// the EAL does not know the thread. Only meaningful on a locked goroutine.
func LcoreID() uint32 { return uint32(C.veloce_lcore_id()) }

// RegisterExtMem registers length bytes of external memory at addr (page
// aligned, a multiple of os.Getpagesize()) with the EAL
// (rte_extmem_register), with unknown IOVAs. Sending mbufs attached to
// such memory through a real NIC also needs it DMA-mapped for that device
// (rte_dev_dma_map, with IOVA = virtual address under --iova-mode=va);
// vdevs that copy (af_packet, tap) or pass pointers (ring) need neither.
func RegisterExtMem(addr unsafe.Pointer, length int) error {
	if !Initialized() {
		return ErrUnavailable
	}
	if r := C.veloce_extmem_register(addr, C.size_t(length), C.size_t(os.Getpagesize())); r < 0 {
		return cerr(fmt.Sprintf("rte_extmem_register(%p, %d)", addr, length), r)
	}
	return nil
}

// UnregisterExtMem undoes RegisterExtMem (rte_extmem_unregister).
func UnregisterExtMem(addr unsafe.Pointer, length int) error {
	if !Initialized() {
		return ErrUnavailable
	}
	if r := C.veloce_extmem_unregister(addr, C.size_t(length)); r < 0 {
		return cerr(fmt.Sprintf("rte_extmem_unregister(%p, %d)", addr, length), r)
	}
	return nil
}
