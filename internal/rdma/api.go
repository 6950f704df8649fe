package rdma

import (
	"errors"
	"fmt"
	"syscall"
)

// Errors.
var (
	// ErrUnavailable is returned by every constructor in a build without
	// the binding (no -tags rdma, or no cgo).
	ErrUnavailable = errors.New("rdma: not available (built without -tags rdma and cgo)")
	// ErrNoDevice means no RDMA device matched (by name, netdev or
	// address).
	ErrNoDevice = errors.New("rdma: no such RDMA device")
	// ErrNoGID means the port's GID table has no RoCE v2 entry for the
	// address (is the address on the device's netdev?).
	ErrNoGID = errors.New("rdma: no RoCE v2 GID for the address")
	// ErrClosed means the object was closed.
	ErrClosed = errors.New("rdma: closed")
)

// Error is a verbs call that failed: Op says which and on what, Errno is
// the errno it reported. errors.Is(err, syscall.ENOMEM) and the like work.
type Error struct {
	Op    string
	Errno syscall.Errno
}

func (e *Error) Error() string { return fmt.Sprintf("rdma: %s: %v", e.Op, e.Errno) }

// Unwrap returns the errno.
func (e *Error) Unwrap() error { return e.Errno }

// GID is a port's global identifier: for RoCE v2 an IPv6 address, or an
// IPv4-mapped one (::ffff:a.b.c.d) for an IPv4 address.
type GID [16]byte

// PortState is a port's logical state (enum ibv_port_state).
type PortState uint32

// Port states.
const (
	PortDown   PortState = 1
	PortInit   PortState = 2
	PortArmed  PortState = 3
	PortActive PortState = 4
)

// MTU is a path MTU as verbs encodes it (enum ibv_mtu).
type MTU uint32

// MTUs.
const (
	MTU256  MTU = 1
	MTU512  MTU = 2
	MTU1024 MTU = 3
	MTU2048 MTU = 4
	MTU4096 MTU = 5
)

// Bytes returns the MTU in bytes (0 for an invalid value).
func (m MTU) Bytes() int {
	if m < MTU256 || m > MTU4096 {
		return 0
	}
	return 128 << m
}

// PortAttr are the parts of a port's attributes (struct ibv_port_attr)
// the plugin uses.
type PortAttr struct {
	State       PortState
	MaxMTU      MTU
	ActiveMTU   MTU
	GIDTableLen int
	// LinkLayer is 1 for InfiniBand, 2 for Ethernet (RoCE).
	LinkLayer uint8
}

// Access are memory-region and QP access flags (enum ibv_access_flags).
type Access int

// Access flags.
const (
	AccessLocalWrite  Access = 1
	AccessRemoteWrite Access = 2
	AccessRemoteRead  Access = 4
)

// QPState is a queue pair's state (enum ibv_qp_state).
type QPState uint32

// QP states.
const (
	QPReset QPState = 0
	QPInit  QPState = 1
	QPRTR   QPState = 2
	QPRTS   QPState = 3
	QPSQD   QPState = 4
	QPSQE   QPState = 5
	QPError QPState = 6
)

var qpStateNames = [...]string{"RESET", "INIT", "RTR", "RTS", "SQD", "SQE", "ERR"}

func (s QPState) String() string {
	if int(s) < len(qpStateNames) {
		return qpStateNames[s]
	}
	return fmt.Sprintf("QPState(%d)", uint32(s))
}

// SendFlags are a send work request's flags (enum ibv_send_flags).
type SendFlags uint32

// Send flags.
const (
	// SendSignaled asks for a completion (the QP is created with
	// sq_sig_all off).
	SendSignaled SendFlags = 2
	// SendSolicited sets the solicited-event bit.
	SendSolicited SendFlags = 4
	// SendInline copies the data into the work request; the buffer need
	// not be registered, up to the QP's inline limit.
	SendInline SendFlags = 8
)

// WorkRequest is one send or receive work request with one scatter/gather
// entry: WRID comes back in its completion; Addr and Len are a buffer
// inside a registered region whose local key is LKey. Arrays of them are
// plain Go memory, read by the post calls during the call only and built
// into the C library's work-request chain there (one cgo call a chain).
type WorkRequest struct {
	WRID  uint64
	Addr  uint64
	Len   uint32
	LKey  uint32
	Flags SendFlags // sends only
	_     uint32
}

// WCStatus is a completion's status (enum ibv_wc_status).
type WCStatus uint32

// Completion statuses the plugin tells apart (the others are errors too).
const (
	WCSuccess       WCStatus = 0
	WCLocLenErr     WCStatus = 1
	WCLocProtErr    WCStatus = 4
	WCFlushErr      WCStatus = 5
	WCRemAccessErr  WCStatus = 10
	WCRetryExcErr   WCStatus = 12
	WCRNRRetryExcEr WCStatus = 13
)

var wcStatusNames = [...]string{"success", "local length error", "local QP operation error", "local EE context operation error",
	"local protection error", "work request flushed", "memory window bind error", "bad response", "local access error",
	"remote invalid request", "remote access error", "remote operation error", "transport retry counter exceeded",
	"RNR retry counter exceeded", "local RDD violation", "remote invalid RD request", "remote aborted", "invalid EE context number",
	"invalid EE context state", "fatal error", "response timeout", "general error", "tag matching error", "tag matching rendezvous error"}

func (s WCStatus) String() string {
	if int(s) < len(wcStatusNames) {
		return wcStatusNames[s]
	}
	return fmt.Sprintf("WCStatus(%d)", uint32(s))
}

// WCOpcode is what a completion completed (enum ibv_wc_opcode).
type WCOpcode uint32

// Completion opcodes.
const (
	WCSend WCOpcode = 0
	WCRecv WCOpcode = 128
)

// WC is one work completion, the parts of struct ibv_wc the plugin reads.
// CQ.Poll fills a []WC in one call.
type WC struct {
	WRID      uint64
	Status    WCStatus
	Opcode    WCOpcode
	ByteLen   uint32
	QPNum     uint32
	VendorErr uint32
	_         uint32
}

// QPOptions configure PD.NewRCQP.
type QPOptions struct {
	// SendCQ and RecvCQ take the QP's completions; required (may be the
	// same CQ).
	SendCQ, RecvCQ *CQ
	// SRQ, when set, supplies the QP's receive buffers; the QP then has
	// no receive queue of its own.
	SRQ *SRQ
	// MaxSendWR is the send queue's depth; default 256.
	MaxSendWR int
	// MaxRecvWR is the receive queue's depth without an SRQ; default 256.
	MaxRecvWR int
	// MaxInline is the largest inline send; 0 for none.
	MaxInline int
}

// RTRAttr are what a QP needs of its peer to go to RTR (ready to
// receive): the peer's QP number, first PSN and GID, and the path.
type RTRAttr struct {
	Port      uint8  // local port, usually 1
	DestQPN   uint32 // the peer's QP number
	RQPSN     uint32 // the peer's first send PSN (24 bits)
	DestGID   GID    // the peer's GID
	SGIDIndex int    // the local GID table index to send from
	MTU       MTU    // path MTU, at most both ports' active MTU
	// MinRNRTimer is the RNR NAK timer code (enum, 12 = 0.64 ms); default 12.
	MinRNRTimer uint8
	// HopLimit is the IP TTL; default 64.
	HopLimit uint8
}

// RTSAttr are what a QP needs to go from RTR to RTS (ready to send).
type RTSAttr struct {
	SQPSN uint32 // the local first send PSN (24 bits), given to the peer
	// Timeout is the local ACK timeout code: 4.096 µs << Timeout; default 14 (67 ms).
	Timeout uint8
	// RetryCount is how often a send is retried before the QP fails with
	// WCRetryExcErr (at most 7); default 7.
	RetryCount uint8
	// RNRRetry is how often an RNR NAK is retried; 7 (default) retries forever.
	RNRRetry uint8
}
