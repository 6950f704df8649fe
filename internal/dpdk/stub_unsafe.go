//go:build !dpdk || !cgo

package dpdk

import (
	"errors"
	"unsafe"
)

// This build has no DPDK: the same API, where everything that would need
// the EAL returns ErrUnavailable.

// ErrUnavailable is returned by every constructor in a build without DPDK.
var ErrUnavailable = errors.New("dpdk: not available (built without -tags dpdk and cgo)")

// Headroom is RTE_PKTMBUF_HEADROOM in DPDK's default configuration.
const Headroom = 128

// LcoreIDAny is LcoreID's value on a thread the EAL does not know.
const LcoreIDAny = ^uint32(0)

// Available reports whether this build has DPDK: it has not.
func Available() bool { return false }

// Init returns ErrUnavailable.
func Init(args []string) error { return ErrUnavailable }

// Initialized returns false.
func Initialized() bool { return false }

// Mempool is a packet mbuf pool; this build cannot make one.
type Mempool struct{}

// NewMempool returns ErrUnavailable.
func NewMempool(name string, n, cache, dataRoom int) (*Mempool, error) {
	return nil, ErrUnavailable
}

func (mp *Mempool) Free()                         {}
func (mp *Mempool) AllocBulk(mbufs []*Mbuf) error { return ErrUnavailable }
func (mp *Mempool) InUse() int                    { return 0 }
func (mp *Mempool) Avail() int                    { return 0 }

// FreeBulk does nothing: this build has no mbufs.
func FreeBulk(mbufs []*Mbuf) {}
func NewMbufs(n int) []*Mbuf { return make([]*Mbuf, max(n, 0)) }
func FreeMbufs(a []*Mbuf)    {}

func (m *Mbuf) Data() []byte                                               { return nil }
func (m *Mbuf) Room() []byte                                               { return nil }
func (m *Mbuf) SetLen(n int)                                               {}
func (m *Mbuf) Len() int                                                   { return 0 }
func (m *Mbuf) AttachExtBuf(buf unsafe.Pointer, length int, d *ExtBufDone) {}

// ExtBufDone tracks mbufs attached to external buffers.
type ExtBufDone struct{}

func NewExtBufDone() *ExtBufDone      { return &ExtBufDone{} }
func (d *ExtBufDone) Pending() uint32 { return 0 }
func (d *ExtBufDone) Free()           {}

// Port is an ethdev port; this build cannot open one.
type Port struct{}

// OpenPort returns ErrUnavailable.
func OpenPort(devargs string, cfg PortConfig) (*Port, error) { return nil, ErrUnavailable }

func (p *Port) ID() uint16                              { return 0 }
func (p *Port) Name() string                            { return "" }
func (p *Port) MAC() [6]byte                            { return [6]byte{} }
func (p *Port) LinkUp() bool                            { return false }
func (p *Port) RxBurst(queue uint16, mbufs []*Mbuf) int { return 0 }
func (p *Port) TxBurst(queue uint16, mbufs []*Mbuf) int { return 0 }
func (p *Port) Stats() (PortStats, error)               { return PortStats{}, ErrUnavailable }
func (p *Port) Close() error                            { return nil }

// RegisterThread returns ErrUnavailable.
func RegisterThread() error { return ErrUnavailable }
func UnregisterThread()     {}
func LcoreID() uint32       { return LcoreIDAny }

// RegisterExtMem returns ErrUnavailable.
func RegisterExtMem(addr unsafe.Pointer, length int) error   { return ErrUnavailable }
func UnregisterExtMem(addr unsafe.Pointer, length int) error { return ErrUnavailable }

// ErrExtMemBusy is ExtMem.Free's error while mbufs attached to it are out.
var ErrExtMemBusy = errors.New("dpdk: external memory still attached to mbufs in flight")

// ExtMem is a region of slots to send from without copying; this build
// cannot make one.
type ExtMem struct{}

// NewExtMem returns ErrUnavailable.
func NewExtMem(n, stride int) (*ExtMem, error) { return nil, ErrUnavailable }

func (x *ExtMem) Bytes() []byte                            { return nil }
func (x *ExtMem) Stride() int                              { return 0 }
func (x *ExtMem) Len() int                                 { return 0 }
func (x *ExtMem) Slot(b []byte) (i, off int, ok bool)      { return 0, 0, false }
func (x *ExtMem) Busy(i int) bool                          { return false }
func (x *ExtMem) InFlight() int                            { return 0 }
func (x *ExtMem) Free() error                              { return nil }
func (m *Mbuf) AttachExtMem(x *ExtMem, i, off, length int) {}
func (p *Port) DMAMap(x *ExtMem) error                     { return ErrUnavailable }
func (p *Port) DMAUnmap(x *ExtMem) error                   { return ErrUnavailable }

// IOVAIsVA returns false.
func IOVAIsVA() bool        { return false }
func (p *Port) Bus() string { return "" }
