package vhostusertest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/veloce-io/veloce/vhostuser"
	"golang.org/x/sys/unix"
)

// NetPeerOptions configure a NetPeer. The zero value is a well-behaved
// QEMU-like frontend with 1 MiB of guest RAM at guest address 0.
type NetPeerOptions struct {
	// GuestAddr is the guest physical address of the RAM; default 0.
	GuestAddr uint64
	// Size is the RAM size; default 1 MiB (at least 128 KiB).
	Size uint64
	// QueueSize is the size of both rings; default 256.
	QueueSize uint16
	// Features are the virtio features acked; default VERSION_1,
	// PROTOCOL_FEATURES and INDIRECT_DESC.
	Features vhostuser.Features
	// Protocol are the protocol features acked; default REPLY_ACK,
	// LOG_SHMFD, CONFIGURE_MEM_SLOTS and INFLIGHT_SHMFD. REPLY_ACK is
	// always added: the peer checks every step.
	Protocol vhostuser.Features
	// AddMemReg hands the RAM over with ADD_MEM_REG instead of
	// SET_MEM_TABLE.
	AddMemReg bool
	// LogUsed sets VHOST_VRING_F_LOG on both rings.
	LogUsed bool
	// KickFD and CallFD, when set, give the descriptor to send as ring
	// i's kick or call instead of a fresh eventfd (the hostile kinds).
	KickFD, CallFD func(ring int) int
	// ErrFD sends each ring an err eventfd (SET_VRING_ERR), kept in
	// NetPeer.Err, for the backend to signal when it drops the rings.
	ErrFD bool
	// BeforeRings runs after the memory is set and before the rings are:
	// GET_INFLIGHT_FD, SET_LOG_BASE and the like go there.
	BeforeRings func(p *NetPeer) error
	// ServiceIP is the address ARP asks for; default 169.254.77.1.
	ServiceIP netip.Addr
	// Timeout bounds each control reply; default 5 s.
	Timeout time.Duration
	// Packed negotiates VIRTIO_F_RING_PACKED and lays both rings out as
	// packed virtqueues: NetPeer.PRX and PTX drive them, RX and TX are
	// nil.
	Packed bool
}

// NetPeer is a virtio-net frontend with one queue pair (RX ring 0, TX
// ring 1) in a Guest, speaking to a backend's socket: the well-behaved
// port of the hostile suite, and the starting point of the attacks that
// need a running port.
type NetPeer struct {
	C      *RawConn
	G      *Guest
	RX, TX *Driver
	// PRX and PTX are the rings with NetPeerOptions.Packed (else nil).
	PRX, PTX *PackedDriver
	// Kick and Call are the descriptors sent for rings 0 and 1 (owned by
	// the test's cleanup).
	Kick, Call [2]int
	// Err are the rings' err eventfds with NetPeerOptions.ErrFD, else -1.
	Err  [2]int
	Opts NetPeerOptions

	rxBufs map[uint16]uint64 // posted RX head -> buffer address
	txOut  int               // AddTX chains the device has not returned
}

// Guest MAC and address of every NetPeer.
var (
	PeerMAC = [6]byte{0x52, 0x54, 0x00, 0x68, 0x6f, 0x73}
	PeerIP  = netip.AddrFrom4([4]byte{169, 254, 77, 2})
)

// NetHeaderLen is struct virtio_net_hdr with VERSION_1.
const NetHeaderLen = 12

// NewNetPeer connects to path and brings the port up: handshake,
// memory, rings, enable. Every step asks for REPLY_ACK and must get 0.
func NewNetPeer(tb testing.TB, path string, opts NetPeerOptions) (*NetPeer, error) {
	tb.Helper()
	p, err := DialNetPeer(tb, path, opts)
	if err != nil {
		return nil, err
	}
	if err := p.Handshake(); err != nil {
		p.C.Close()
		return nil, err
	}
	if err := p.SetMemory(); err != nil {
		p.C.Close()
		return nil, err
	}
	if opts.BeforeRings != nil {
		if err := opts.BeforeRings(p); err != nil {
			p.C.Close()
			return nil, err
		}
	}
	if err := p.SetupRings(tb); err != nil {
		p.C.Close()
		return nil, err
	}
	return p, nil
}

// DialNetPeer connects and lays out guest RAM and rings, sending nothing.
func DialNetPeer(tb testing.TB, path string, opts NetPeerOptions) (*NetPeer, error) {
	tb.Helper()
	if opts.Size < 128<<10 {
		opts.Size = 1 << 20
	}
	if opts.QueueSize == 0 {
		opts.QueueSize = 256
	}
	if opts.Features == 0 {
		opts.Features = vhostuser.Bit(vhostuser.FVersion1) | vhostuser.Bit(vhostuser.FProtocolFeatures) | vhostuser.Bit(vhostuser.FRingIndirectDesc)
	}
	if opts.Protocol == 0 {
		opts.Protocol = vhostuser.Bit(vhostuser.ProtocolFLogShmfd) | vhostuser.Bit(vhostuser.ProtocolFConfigureMemSlots) | vhostuser.Bit(vhostuser.ProtocolFInflightShmfd)
	}
	opts.Protocol |= vhostuser.Bit(vhostuser.ProtocolFReplyAck)
	if opts.Packed {
		opts.Features |= vhostuser.Bit(vhostuser.FRingPacked)
	}
	if !opts.ServiceIP.IsValid() {
		opts.ServiceIP = netip.AddrFrom4([4]byte{169, 254, 77, 1})
	}
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Second
	}
	c, err := DialRaw(tb, path)
	if err != nil {
		return nil, err
	}
	g := NewGuest(tb, opts.GuestAddr, 0x7f00_0000_0000+opts.GuestAddr, opts.Size)
	p := &NetPeer{C: c, G: g, Opts: opts, rxBufs: map[uint16]uint64{}}
	base := opts.GuestAddr
	ringBytes := uint64(opts.QueueSize) * 32 // desc+avail+used fit in 32 B per entry
	data := base + 2*ringBytes
	half := (base + opts.Size - data) / 2
	if opts.Packed {
		p.PRX = NewPackedDriver(g, base, opts.QueueSize, data, data+half)
		p.PTX = NewPackedDriver(g, base+ringBytes, opts.QueueSize, data+half, base+opts.Size)
		return p, nil
	}
	p.RX = NewDriver(g, base, opts.QueueSize, 0, 0)
	p.TX = NewDriver(g, base+ringBytes, opts.QueueSize, 0, 0)
	p.RX.ResetData(data)
	p.RX.dataEnd = data + half
	p.TX.ResetData(data + half)
	p.TX.dataEnd = base + opts.Size
	return p, nil
}

// Ask sends one request with NEED_REPLY and requires it to be accepted.
func (p *NetPeer) Ask(req vhostuser.Request, payload []byte, fds ...int) error {
	o, err := p.C.Ask(req, payload, p.Opts.Timeout, fds...)
	if err != nil {
		return fmt.Errorf("%v: %w", req, err)
	}
	if o != Acked {
		return fmt.Errorf("%v: %v", req, o)
	}
	return nil
}

// Get sends a request that has a reply of its own and returns its u64.
func (p *NetPeer) Get(req vhostuser.Request) (uint64, error) {
	if err := p.C.Send(req, 0, nil); err != nil {
		return 0, fmt.Errorf("%v: %w", req, err)
	}
	r, err := p.C.ReadReply(p.Opts.Timeout)
	if err != nil {
		return 0, fmt.Errorf("%v: %w", req, err)
	}
	return r.U64()
}

// Handshake negotiates features as QEMU does (vhost_user_backend_init).
func (p *NetPeer) Handshake() error {
	offered, err := p.Get(vhostuser.GetFeatures)
	if err != nil {
		return err
	}
	if err := p.C.Send(vhostuser.SetOwner, 0, nil); err != nil {
		return err
	}
	proto, err := p.Get(vhostuser.GetProtocolFeatures)
	if err != nil {
		return err
	}
	p.Opts.Protocol &= vhostuser.Features(proto)
	if err := p.C.Send(vhostuser.SetProtocolFeatures, 0, vhostuser.AppendU64(nil, uint64(p.Opts.Protocol))); err != nil {
		return err
	}
	p.Opts.Features &= vhostuser.Features(offered)
	if p.Opts.Packed && !p.Opts.Features.Has(vhostuser.FRingPacked) {
		return errors.New("the backend does not offer VIRTIO_F_RING_PACKED")
	}
	return p.Ask(vhostuser.SetFeatures, vhostuser.AppendU64(nil, uint64(p.Opts.Features)))
}

// SetMemory hands the guest RAM over (SET_MEM_TABLE or ADD_MEM_REG).
func (p *NetPeer) SetMemory() error {
	fd := p.G.fd
	if p.Opts.AddMemReg {
		return p.Ask(vhostuser.AddMemReg, MemRegPayload(p.G.Region), fd)
	}
	return p.Ask(vhostuser.SetMemTable, MemTablePayload(1, p.G.Region), fd)
}

// SetupRings sets up and enables both rings.
func (p *NetPeer) SetupRings(tb testing.TB) error {
	for i := range 2 {
		idx := uint32(i)
		addr, base := p.ringAddr(i)
		if err := p.Ask(vhostuser.SetVringNum, vhostuser.AppendVringState(nil, vhostuser.VringState{Index: idx, Num: uint32(p.Opts.QueueSize)})); err != nil {
			return err
		}
		if err := p.Ask(vhostuser.SetVringAddr, vhostuser.AppendVringAddr(nil, addr)); err != nil {
			return err
		}
		if err := p.Ask(vhostuser.SetVringBase, vhostuser.AppendVringState(nil, vhostuser.VringState{Index: idx, Num: base})); err != nil {
			return err
		}
		p.Kick[i], p.Call[i] = -1, -1
		if p.Opts.KickFD != nil {
			p.Kick[i] = p.Opts.KickFD(i)
		} else {
			p.Kick[i] = Eventfd(tb)
		}
		if p.Opts.CallFD != nil {
			p.Call[i] = p.Opts.CallFD(i)
		} else {
			p.Call[i] = Eventfd(tb)
		}
		if err := p.Ask(vhostuser.SetVringCall, vhostuser.AppendU64(nil, uint64(idx)), p.Call[i]); err != nil {
			return err
		}
		p.Err[i] = -1
		if p.Opts.ErrFD {
			p.Err[i] = Eventfd(tb)
			if err := p.Ask(vhostuser.SetVringErr, vhostuser.AppendU64(nil, uint64(idx)), p.Err[i]); err != nil {
				return err
			}
		}
		if err := p.Ask(vhostuser.SetVringKick, vhostuser.AppendU64(nil, uint64(idx)), p.Kick[i]); err != nil {
			return err
		}
	}
	for i := range 2 {
		if err := p.Ask(vhostuser.SetVringEnable, vhostuser.AppendVringState(nil, vhostuser.VringState{Index: uint32(i), Num: 1})); err != nil {
			return err
		}
	}
	return nil
}

// ringAddr returns ring i's SET_VRING_ADDR and SET_VRING_BASE values.
func (p *NetPeer) ringAddr(i int) (vhostuser.VringAddr, uint32) {
	if p.Opts.Packed {
		d := [2]*PackedDriver{p.PRX, p.PTX}[i]
		return d.Addr(uint32(i), p.Opts.LogUsed), d.Base()
	}
	d := [2]*Driver{p.RX, p.TX}[i]
	return d.Addr(uint32(i), p.Opts.LogUsed), 0
}

// addRX posts one receive buffer on the RX ring.
func (p *NetPeer) addRX() {
	var id uint16
	var addrs []uint64
	if p.Opts.Packed {
		id, addrs = p.PRX.AddChain(Buf{WriteLen: NetHeaderLen + 1514})
	} else {
		id, addrs = p.RX.AddChain(Buf{WriteLen: NetHeaderLen + 1514})
	}
	p.rxBufs[id] = addrs[0]
}

// AddTX makes frame (virtio-net header included) available on the TX
// ring, split or packed.
func (p *NetPeer) AddTX(frame []byte) {
	p.txOut++
	if p.Opts.Packed {
		p.PTX.AddChain(Buf{Data: frame})
	} else {
		p.TX.AddChain(Buf{Data: frame})
	}
}

// usedTX takes one used entry off the TX ring.
func (p *NetPeer) usedTX() bool {
	var ok bool
	if p.Opts.Packed {
		_, _, ok = p.PTX.Used()
	} else {
		_, _, ok = p.TX.Used()
	}
	if ok && p.txOut > 0 {
		p.txOut--
	}
	return ok
}

// AwaitTXUsed waits up to timeout for one used entry on the TX ring and
// takes it; it reports whether one came.
func (p *NetPeer) AwaitTXUsed(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for !p.usedTX() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// ErrTXNotReturned: the device kept TX chains past the timeout.
var ErrTXNotReturned = errors.New("TX chains not returned within the timeout")

// SettleTX waits up to timeout until the device has returned every chain
// AddTX made available. A packed ring's used entries overwrite the
// descriptors in place, so a test writing raw descriptors waits for this
// first: the device's late write would land in the middle of them.
func (p *NetPeer) SettleTX(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		for p.usedTX() {
		}
		if p.txOut == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return ErrTXNotReturned
		}
		time.Sleep(time.Millisecond)
	}
}

// usedRX takes one used entry off the RX ring.
func (p *NetPeer) usedRX() (id uint16, n uint32, ok bool) {
	if p.Opts.Packed {
		return p.PRX.Used()
	}
	i, n, ok := p.RX.Used()
	return uint16(i), n, ok
}

// ErrSignalled waits up to timeout for the backend to signal ring i's err
// eventfd (NetPeerOptions.ErrFD).
func (p *NetPeer) ErrSignalled(i int, timeout time.Duration) bool {
	if p.Err[i] < 0 {
		return false
	}
	fds := []unix.PollFd{{Fd: int32(p.Err[i]), Events: unix.POLLIN}}
	n, _ := unix.Poll(fds, int(timeout/time.Millisecond))
	return n > 0
}

// PostRX offers n receive buffers and kicks the RX ring, as a guest
// driver does when it fills its RX queue.
func (p *NetPeer) PostRX(n int) error {
	for range n {
		p.addRX()
	}
	return Kick(p.Kick[0])
}

// KickTX notifies the TX ring.
func (p *NetPeer) KickTX() error { return Kick(p.Kick[1]) }

// ARPRequest is a who-has for target from the peer's MAC and address.
func ARPRequest(target netip.Addr) []byte {
	b := make([]byte, 0, 42)
	b = append(b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	b = append(b, PeerMAC[:]...)
	b = append(b, 0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01)
	b = append(b, PeerMAC[:]...)
	ip := PeerIP.As4()
	b = append(b, ip[:]...)
	b = append(b, 0, 0, 0, 0, 0, 0)
	t := target.As4()
	return append(b, t[:]...)
}

// IsARPReply reports whether frame answers ARPRequest(target).
func IsARPReply(frame []byte, target netip.Addr) bool {
	if len(frame) < 42 || frame[12] != 0x08 || frame[13] != 0x06 || binary.BigEndian.Uint16(frame[20:]) != 2 {
		return false
	}
	t := target.As4()
	return [4]byte(frame[28:32]) == t && [6]byte(frame[32:38]) == PeerMAC && [4]byte(frame[38:42]) == PeerIP.As4()
}

// ErrNoARPReply: the backend did not answer within the timeout.
var ErrNoARPReply = errors.New("no ARP reply on the RX ring")

// ARP posts RX buffers, sends an ARP request for the service address on
// the TX ring, kicks, and waits up to timeout for the reply on the RX
// ring. Gratuitous ARPs and other frames on the way are skipped.
func (p *NetPeer) ARP(timeout time.Duration) error {
	for range 2 {
		p.addRX()
	}
	p.AddTX(append(make([]byte, NetHeaderLen), ARPRequest(p.Opts.ServiceIP)...))
	if err := p.KickTX(); err != nil && p.Opts.KickFD == nil {
		return fmt.Errorf("kick TX: %w", err) // a hostile kick fd: the caller kicks its own way
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for p.usedTX() {
		}
		for {
			id, n, ok := p.usedRX()
			if !ok {
				break
			}
			gpa, known := p.rxBufs[id]
			delete(p.rxBufs, id)
			if known && n > NetHeaderLen && n <= NetHeaderLen+1514 && IsARPReply(p.G.Bytes(gpa+NetHeaderLen, uint64(n)-NetHeaderLen), p.Opts.ServiceIP) {
				return nil
			}
		}
		p.waitCall(50 * time.Millisecond)
	}
	return ErrNoARPReply
}

// waitCall waits for the RX call eventfd (or just sleeps if the call fd
// is not an eventfd the test may read).
func (p *NetPeer) waitCall(d time.Duration) {
	if p.Opts.CallFD != nil || p.Call[0] < 0 {
		time.Sleep(5 * time.Millisecond)
		return
	}
	fds := []unix.PollFd{{Fd: int32(p.Call[0]), Events: unix.POLLIN}}
	if n, _ := unix.Poll(fds, int(d/time.Millisecond)); n > 0 {
		var b [8]byte
		unix.Read(p.Call[0], b[:])
	}
}
