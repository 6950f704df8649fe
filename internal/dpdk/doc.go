// Package dpdk is the project's cgo binding to the few DPDK calls its DPDK
// datapath plugin needs: the EAL, packet mempools, mbufs, ethdev ports and
// zero-copy external buffers.
//
// # Why its own binding
//
// The datapath needs about thirty DPDK functions, and needs them fast: the
// per-packet work must not cross into C at all. A general binding would
// bring a large API surface (and a dependency) for little of which is
// used, and would still have to be audited for per-packet cgo calls and
// for Go pointers kept in C memory. This one is small enough to read in
// one sitting and follows the rules below throughout.
//
// # Where it sits
//
// The binding is private mechanics (internal/dpdk); the datapath users
// configure is the public plugin, plugins/dpdk, which is pure Go over this
// package. That is the split cilium/ebpf makes between its public packages
// and internal/sys: the plugin's API can stay small and stable while the
// binding follows DPDK's releases, and nothing outside the module can come
// to depend on the C-level API. An RDMA binding (internal/rdma, tag rdma)
// follows the same pattern. Every file that uses cgo or unsafe is named
// *_unsafe.go: dpdk_unsafe.go (the cgo binding), mbuf_unsafe.go (the
// pure-Go mbuf accessors), extmem_unsafe.go (slots in external memory)
// and stub_unsafe.go (the stub, whose API carries
// unsafe.Pointer for external buffers).
//
// # Builds
//
// The real binding needs -tags dpdk, cgo and libdpdk (pkg-config libdpdk;
// on Debian 12 the dpdk, dpdk-dev and libdpdk-dev packages, DPDK 22.11).
// Every other build gets a stub with the same API, whose Available returns
// false and whose constructors return ErrUnavailable, so the pure-Go build
// (CGO_ENABLED=0) compiles and the plugin reports itself unavailable.
//
//	go test -tags dpdk ./internal/dpdk/   # as root
//
// # Threads
//
// A process has one EAL. Init runs rte_eal_init on a goroutine locked to
// its OS thread and parked for good: the EAL makes that thread its main
// lcore and pins it, and no other goroutine ever runs there, so the
// threads the Go scheduler uses keep their CPU affinity. (That thread may
// be the process's main thread, so /proc/PID/status shows its affinity.)
// Give the EAL no worker lcores: pollers here are goroutines, not
// rte_eal_remote_launch functions, so worker lcore threads would only sit
// blocked, pinned. Use -l 0, or --lcores=0@(0-N) to let the parked thread
// float.
//
// Pollers are goroutines: each locks itself to its thread
// (runtime.LockOSThread), calls RegisterThread so the EAL gives the thread
// an lcore id and mempool caches serve it, and owns its queues: one rx and
// one tx queue per poller thread, as DPDK requires (burst calls on one
// queue must not run concurrently). Unregistered threads work too, without
// mempool caches. Control calls (OpenPort, Close, Stats, NewMempool) may
// come from any goroutine; OpenPort binds kernel-backed PMDs
// (net_af_packet, net_tap) in the network namespace of the calling thread.
//
// # One cgo call per burst
//
// RxBurst, TxBurst, AllocBulk and FreeBulk each make one cgo call for the
// whole burst (about 40 ns here) and allocate nothing. Everything done per
// packet is pure Go: Data, Room, SetLen, Len, AttachExtBuf and
// AttachExtMem read and write struct rte_mbuf through unsafe pointer
// arithmetic, at field offsets the C compiler computed (offsetof) when the
// package was built, since the struct's anonymous unions and bitfields are
// beyond cgo. The C side asserts the field widths Go assumes.
//
// # Memory
//
// Go memory is never handed to DPDK, and no Go pointer is ever stored in C
// memory. A []*Mbuf holds C pointers only, so the burst calls pass its
// backing array to C as the cgo rules allow, and cgocheck verifies it on
// every call. Mbufs live in C memory (the mempools); the slices Data and
// Room return point into it and die with the mbuf. External buffers for
// zero-copy sending (AttachExtBuf) must be C or mmap'd memory, left
// untouched until their ExtBufDone says DPDK has freed every mbuf
// attached to them. Their IOVA is their virtual address: right for the
// vdevs, while a real NIC also needs the memory registered (RegisterExtMem)
// and DMA-mapped for the device, with --iova-mode=va.
//
// ExtMem does all of that for a region of fixed-size slots (mmap'd,
// registered, DMAMap for a port's device) and gives every slot its own
// shared-info record, so its owner can tell slot by slot when DPDK is done
// (Busy: an atomic load, no callback into Go) and reuse a slot only then.
// It is what the runtime's remote slots live in (plugins/dpdk SlotMemory).
//
// # EAL arguments
//
// Without hugepages (as in tests and CI):
//
//	--no-huge -m 256 --no-shconf --no-pci --no-telemetry -l 0 --log-level=*:error
//
// DPDK 22.11 refuses --in-memory together with --no-huge (which implies
// legacy memory); --no-shconf is what keeps the EAL from writing shared
// config files under /var/run/dpdk. Add --vdev=... to create ports at
// Init, or let OpenPort probe them. With hugepages (2 MiB pages reserved,
// e.g. echo 1024 > /proc/sys/vm/nr_hugepages, and hugetlbfs mounted at
// /dev/hugepages), drop --no-huge and -m and use
//
//	--in-memory --no-telemetry -l 0
//
// (--in-memory: no files in hugetlbfs or /var/run/dpdk; add --socket-mem
// to cap the memory), and for real NICs bound to vfio-pci drop --no-pci
// and give -a <PCI address> for each port to use.
//
// When the arguments have no -d, Init adds -d with the directory DPDK was
// built to load PMDs from (RTE_EAL_PMD_PATH), if it exists. Debian's
// shared-library EAL loads that directory by itself too; the explicit -d
// keeps other builds working.
package dpdk
