package dpdk

import (
	"errors"
	"syscall"
)

// Mbuf is a DPDK packet buffer (struct rte_mbuf). A *Mbuf always points into
// C memory (a mempool); Go code never creates one and never dereferences it
// except through this package's accessors, which read and write its fields
// at offsets taken from the C headers when the package was compiled.
type Mbuf struct{ _ [0]byte }

// PortConfig says how OpenPort configures a port. Zero values take the
// defaults given below.
type PortConfig struct {
	Pool               *Mempool // mbufs for received packets; required
	RxQueues, TxQueues uint16   // default 1
	RxDesc, TxDesc     uint16   // default 1024 (the PMD may round them)
	Promiscuous        bool
	MTU                int // 0: leave the PMD's
	// RxChecksum asks for the RX checksum offloads (UDP and TCP): the PMD
	// then marks what it knows to be valid (a virtio port negotiates
	// VIRTIO_NET_F_GUEST_CSUM and takes the device's DATA_VALID). A PMD
	// without them fails OpenPort.
	RxChecksum bool
}

// PortStats are a port's basic counters (struct rte_eth_stats).
type PortStats struct {
	IPackets, OPackets, IBytes, OBytes  uint64
	IMissed, IErrors, OErrors, RxNoMbuf uint64
}

// ErrNoMbufs is AllocBulk's error when the pool cannot supply all the mbufs
// asked for (none are taken then).
var ErrNoMbufs = errors.New("dpdk: mempool exhausted")

// Error is a DPDK call that failed: Op says which and on what, Errno is the
// (positive) errno or rte_errno it reported and Msg its rte_strerror.
// errors.Is(err, syscall.ENODEV) and the like work for system errnos.
type Error struct {
	Op    string
	Errno int
	Msg   string
}

func (e *Error) Error() string { return "dpdk: " + e.Op + ": " + e.Msg }

// Unwrap returns the errno as a syscall.Errno, or nil for DPDK's own codes
// (rte_errno 1000 and up).
func (e *Error) Unwrap() error {
	if e.Errno > 0 && e.Errno < 1000 {
		return syscall.Errno(e.Errno)
	}
	return nil
}
