//go:build !rdma || !cgo

package rdma

import "net/netip"

// This build has no verbs: the same API, whose constructors return
// ErrUnavailable.

// Available reports whether this build has the verbs binding: it has not.
func Available() bool { return false }

// Context is an open RDMA device; this build cannot open one.
type Context struct{}

// Open returns ErrUnavailable.
func Open(name string) (*Context, error) { return nil, ErrUnavailable }

func (c *Context) Name() string                                { return "" }
func (c *Context) Close() error                                { return nil }
func (c *Context) QueryPort(port uint8) (PortAttr, error)      { return PortAttr{}, ErrUnavailable }
func (c *Context) QueryGID(port uint8, index int) (GID, error) { return GID{}, ErrUnavailable }
func (c *Context) AllocPD() (*PD, error)                       { return nil, ErrUnavailable }
func (c *Context) NewCompChannel() (*CompChannel, error)       { return nil, ErrUnavailable }
func (c *Context) NewCQ(cqe int, ch *CompChannel) (*CQ, error) { return nil, ErrUnavailable }
func (c *Context) RoCEv2GID(port uint8, ip netip.Addr) (int, GID, error) {
	return 0, GID{}, ErrUnavailable
}

// PD is a protection domain.
type PD struct{}

func (pd *PD) Close() error                                         { return nil }
func (pd *PD) RegisterMemory(m *Memory, access Access) (*MR, error) { return nil, ErrUnavailable }
func (pd *PD) NewSRQ(maxWR int) (*SRQ, error)                       { return nil, ErrUnavailable }
func (pd *PD) NewRCQP(opts QPOptions) (*QP, error)                  { return nil, ErrUnavailable }

// MR is a registered memory region.
type MR struct{}

func (mr *MR) LKey() uint32 { return 0 }
func (mr *MR) RKey() uint32 { return 0 }
func (mr *MR) Addr() uint64 { return 0 }
func (mr *MR) Close() error { return nil }

// CompChannel is a completion channel.
type CompChannel struct{}

func (ch *CompChannel) Fd() int                 { return -1 }
func (ch *CompChannel) GetEvents() (int, error) { return 0, ErrUnavailable }
func (ch *CompChannel) Close() error            { return nil }

// CQ is a completion queue.
type CQ struct{}

func (cq *CQ) Poll(wcs []WC) (int, error) { return 0, ErrUnavailable }
func (cq *CQ) ReqNotify() error           { return ErrUnavailable }
func (cq *CQ) Close() error               { return nil }

// SRQ is a shared receive queue.
type SRQ struct{}

func (s *SRQ) PostRecv(wrs []WorkRequest) (int, error) { return 0, ErrUnavailable }
func (s *SRQ) Close() error                            { return nil }

// QP is a queue pair.
type QP struct{}

func (qp *QP) Num() uint32                             { return 0 }
func (qp *QP) State() (QPState, error)                 { return 0, ErrUnavailable }
func (qp *QP) ToInit(port uint8, access Access) error  { return ErrUnavailable }
func (qp *QP) ToRTR(a RTRAttr) error                   { return ErrUnavailable }
func (qp *QP) ToRTS(a RTSAttr) error                   { return ErrUnavailable }
func (qp *QP) ToError() error                          { return ErrUnavailable }
func (qp *QP) PostSend(wrs []WorkRequest) (int, error) { return 0, ErrUnavailable }
func (qp *QP) PostRecv(wrs []WorkRequest) (int, error) { return 0, ErrUnavailable }
func (qp *QP) Close() error                            { return nil }
