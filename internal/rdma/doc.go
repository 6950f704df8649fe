// Package rdma is the project's cgo binding to the verbs calls its RDMA
// datapath plugin needs (libibverbs from Debian's rdma-core): devices,
// ports and GIDs, protection domains, memory regions, completion queues
// and channels, shared receive queues, and reliable-connected queue pairs
// with their state transitions and work-request chains.
//
// It follows internal/dpdk: private mechanics under a public plugin
// (plugins/rdma), the real binding behind the build tag `rdma` and cgo
// (verbs_unsafe.go, the only file with cgo or unsafe), and a pure-Go stub
// with the same API otherwise (stub.go), whose Available returns false and
// whose constructors return ErrUnavailable. Device discovery (discover.go:
// which RDMA device sits on which netdev, the GID types) reads sysfs and
// netlink through github.com/Mellanox/rdmamap and works in every build.
//
// # Builds
//
//	go test -tags rdma ./internal/rdma/   # libibverbs-dev; pkg-config libibverbs
//
// The tests that need a device (soft-RoCE: the generic Debian kernel's
// rdma_rxe) run inside a VM: see plugins/rdma.
//
// # One cgo call per batch
//
// CQ.Poll moves up to 256 completions per call into a []WC; QP.PostSend,
// QP.PostRecv and SRQ.PostRecv post a whole []WorkRequest as one chain per
// call. The chains are built in C memory that each queue allocates once
// (struct ibv_send_wr / ibv_recv_wr / ibv_sge arrays), from the Go slices,
// which C reads only during the call; none of these allocate. WC and
// WorkRequest mirror C structs whose sizes are checked at compile time.
//
// # Memory
//
// No Go pointer is ever kept by C. Memory regions are registered over
// Memory (anonymous mmap, outside the Go heap): the device keeps those
// addresses, and a WorkRequest names a buffer by address (MR.Addr plus an
// offset) and local key. Slices of a Memory stay valid until it is closed;
// close the region before the memory.
//
// # Sleeping
//
// A CQ made with a CompChannel raises an event on the channel's fd (made
// non-blocking) after ReqNotify. A poller sleeps in poll(2) on Fd, then
// calls GetEvents (which acknowledges them), ReqNotify, and polls the CQ
// once more before trusting it empty.
package rdma
