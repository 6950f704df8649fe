package backend

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/veloce-io/veloce/internal/netstack"
	"github.com/veloce-io/veloce/internal/pkt"
)

// Link peer defaults, applied by NewLinkPeer to zero option fields.
const (
	// DefaultServicePort is the UDP port guestlib talks to.
	DefaultServicePort = 7077
	// DefaultLeaseTime is the DHCP lease handed to guests. Leases are
	// stateless (the same address every time), so the length only sets how
	// often a guest renews.
	DefaultLeaseTime = 24 * time.Hour
	// InfiniteLease, as LinkPeerOptions.LeaseTime, hands out a lease that
	// never expires (RFC 2131's 0xffffffff) and omits renewal and rebinding
	// times.
	InfiniteLease = time.Duration(math.MaxUint32) * time.Second
	// DatagramHeaderLen is the size of the Ethernet, IPv4 and UDP headers
	// PutDatagram writes before the payload: a payload built in place at
	// b[DatagramHeaderLen:] is not copied.
	DatagramHeaderLen = pkt.EthernetHeaderLen + pkt.IPv4MinHeaderLen + pkt.UDPHeaderLen
)

var (
	// DefaultServiceMAC is the service MAC address, the same on every daemon.
	// Treat it as read-only.
	DefaultServiceMAC = net.HardwareAddr{0x02, 0x56, 0x4c, 0x4f, 0x43, 0x01}
	// DefaultServiceIP is the service address the link peer answers at.
	DefaultServiceIP = netip.AddrFrom4([4]byte{169, 254, 77, 1})
	// DefaultGuestIP is the address and prefix DHCP hands the guest.
	DefaultGuestIP = netip.PrefixFrom(netip.AddrFrom4([4]byte{169, 254, 77, 2}), 24)
)

// Errors returned by the link peer.
var (
	// ErrInvalidOptions is wrapped by NewLinkPeer's errors for options that
	// cannot work.
	ErrInvalidOptions = errors.New("invalid options")
	// ErrShortBuffer means a destination buffer is too small for the frame.
	ErrShortBuffer = netstack.ErrShortBuffer
	// ErrNotIPv4 means an address given for the link is not an IPv4 address.
	ErrNotIPv4 = netstack.ErrNotIPv4
)

const (
	dhcpServerPort = 67
	dhcpClientPort = 68
)

// LinkPeerOptions configures a LinkPeer. The zero value of each field selects
// its default.
type LinkPeerOptions struct {
	// ServiceMAC is the link peer's MAC address; it must be a 6-byte unicast
	// address. Keep it identical on every daemon so that migrated guests'
	// neighbour entries stay valid. Default DefaultServiceMAC.
	ServiceMAC net.HardwareAddr
	// ServiceIP is the IPv4 address the link peer answers ARP, ICMP echo and
	// DHCP at, and where guests send their datagrams. It must lie inside
	// GuestIP's prefix, so that guests reach it without a route. Default
	// DefaultServiceIP.
	ServiceIP netip.Addr
	// GuestIP is the IPv4 address and prefix DHCP hands the guest. The
	// prefix must hold ServiceIP and be /31 or shorter; the address must
	// differ from ServiceIP and, below /31, from the network and broadcast
	// addresses. Default DefaultGuestIP.
	GuestIP netip.Prefix
	// ServicePort is the UDP port on ServiceIP whose datagrams are
	// delivered to the runtime. It may not be a DHCP port (67, 68). Default
	// DefaultServicePort.
	ServicePort uint16
	// LeaseTime is the DHCP lease time, at least one second; InfiniteLease
	// means forever. Default DefaultLeaseTime.
	LeaseTime time.Duration
	// MTU, when non-zero, is offered to the guest with the DHCP Interface
	// MTU option (26); it must be at least 68. Zero leaves the guest's MTU
	// alone.
	MTU uint16
	// TrustGuestChecksums skips verifying the UDP and ICMP checksums of the
	// guest's frames. Set it when the device model negotiated
	// VIRTIO_NET_F_CSUM: the guest then sends partial checksums. IPv4 header
	// checksums are always verified (virtio has no offload for them).
	TrustGuestChecksums bool
	// Logger receives the leases handed out (info the first time for a
	// guest MAC, debug for renewals) and refusals (warn); nil discards.
	// Give it the port's fields (Logger.With).
	Logger *slog.Logger
}

// Verdict says what LinkPeer.Handle did with a frame. The link peer is
// internal/netstack's host with DHCP and the learned guest MAC on top: the
// DPDK datapath parses and builds frames with the same code.
type Verdict = netstack.Verdict

// Verdicts.
const (
	// VerdictDropped means the frame was counted and dropped; Result.Reason
	// says why.
	VerdictDropped = netstack.VerdictDropped
	// VerdictReplied means a reply frame was written to the reply buffer,
	// for the caller to put on the guest's RX queue.
	VerdictReplied = netstack.VerdictReplied
	// VerdictDeliver means the frame holds a UDP datagram for the service
	// address and port; Result.Src and Result.Payload describe it.
	VerdictDeliver = netstack.VerdictDeliver
)

// DropReason says why LinkPeer.Handle dropped a frame.
type DropReason = netstack.DropReason

// Drop reasons (see internal/netstack).
const (
	DropNone        = netstack.DropNone
	DropNotForUs    = netstack.DropNotForUs
	DropMalformed   = netstack.DropMalformed
	DropChecksum    = netstack.DropChecksum
	DropUnsupported = netstack.DropUnsupported
	DropFragment    = netstack.DropFragment
	DropIgnored     = netstack.DropIgnored
	DropNoRoom      = netstack.DropNoRoom
	numDropReasons  = netstack.NumDropReasons
)

// Result is the detailed outcome of LinkPeer.Handle.
type Result = netstack.Result

// LinkPeerStats is a snapshot of a LinkPeer's counters. Each counts frames.
type LinkPeerStats struct {
	// Replied, Delivered and Dropped count frames by verdict.
	Replied, Delivered, Dropped uint64
	// ARPReplies, EchoReplies and DHCPReplies break Replied down.
	ARPReplies, EchoReplies, DHCPReplies uint64
	// DroppedBy breaks Dropped down, indexed by DropReason.
	DroppedBy [numDropReasons]uint64
}

// LinkPeer answers one guest on its point-to-point link. Create it with
// NewLinkPeer. Handle, PutDatagram, GratuitousARP, Learned and Stats are
// safe for concurrent use (one caller per virtqueue, say); Handle takes no
// locks and, except for DHCP, does not allocate.
type LinkPeer struct {
	opts LinkPeerOptions // with defaults applied; read-only
	host *netstack.Host

	mac      pkt.MAC
	ip       [4]byte
	guest    [4]byte
	mask     [4]byte
	bcast    [4]byte // directed broadcast of the guest's prefix
	hasBcast bool    // false for /31
	port     uint16

	// learned holds the guest's MAC in the low 48 bits and learnedValid
	// once one was seen.
	learned atomic.Uint64

	replied, delivered, dropped atomic.Uint64
	dhcp                        atomic.Uint64
	// leased is the MAC of the last guest given a lease (as learned), so
	// that its renewals log at debug.
	leased    atomic.Uint64
	droppedBy [numDropReasons]atomic.Uint64
}

const learnedValid = 1 << 63

// NewLinkPeer returns a link peer configured by opts, with defaults applied
// to zero fields. Errors wrap ErrInvalidOptions.
func NewLinkPeer(opts LinkPeerOptions) (*LinkPeer, error) {
	if opts.ServiceMAC == nil {
		opts.ServiceMAC = DefaultServiceMAC
	}
	if !opts.ServiceIP.IsValid() {
		opts.ServiceIP = DefaultServiceIP
	}
	if !opts.GuestIP.IsValid() {
		opts.GuestIP = DefaultGuestIP
	}
	if opts.ServicePort == 0 {
		opts.ServicePort = DefaultServicePort
	}
	if opts.LeaseTime == 0 {
		opts.LeaseTime = DefaultLeaseTime
	}
	invalid := func(format string, args ...any) (*LinkPeer, error) {
		return nil, fmt.Errorf("new link peer: "+format+": %w", append(args, ErrInvalidOptions)...)
	}

	p := &LinkPeer{port: opts.ServicePort}
	mac, ok := pkt.MACFrom(opts.ServiceMAC)
	if !ok || mac.IsMulticast() || mac.IsZero() {
		return invalid("service MAC %v is not a unicast MAC-48 address", opts.ServiceMAC)
	}
	p.mac = mac
	opts.ServiceMAC = mac.HardwareAddr() // own the copy

	opts.ServiceIP = opts.ServiceIP.Unmap()
	sip := opts.ServiceIP
	if !sip.Is4() || sip.IsUnspecified() || sip.IsMulticast() || sip == netip.AddrFrom4(netstack.LimitedBroadcast) {
		return invalid("service IP %v is not a unicast IPv4 address", sip)
	}
	p.ip = sip.As4()

	g := opts.GuestIP
	g = netip.PrefixFrom(g.Addr().Unmap(), g.Bits())
	opts.GuestIP = g
	if !g.Addr().Is4() || g.Bits() < 1 || g.Bits() > 31 {
		return invalid("guest IP %v is not an IPv4 prefix between /1 and /31", g)
	}
	if !g.Contains(sip) {
		return invalid("guest prefix %v does not hold service IP %v", g, sip)
	}
	if g.Addr() == sip {
		return invalid("guest IP %v is the service IP", g.Addr())
	}
	p.guest = g.Addr().As4()
	m := net.CIDRMask(g.Bits(), 32)
	copy(p.mask[:], m)
	network := g.Masked().Addr().As4()
	for i := range p.bcast {
		p.bcast[i] = network[i] | ^p.mask[i]
	}
	if g.Bits() <= 30 {
		p.hasBcast = true
		if p.guest == network || p.guest == p.bcast {
			return invalid("guest IP %v is the network or broadcast address of its prefix", g.Addr())
		}
		if p.ip == network || p.ip == p.bcast {
			return invalid("service IP %v is the network or broadcast address of %v", sip, g)
		}
	}

	if opts.ServicePort == dhcpServerPort || opts.ServicePort == dhcpClientPort {
		return invalid("service port %d is a DHCP port", opts.ServicePort)
	}
	if opts.LeaseTime < time.Second || opts.LeaseTime > InfiniteLease {
		return invalid("lease time %v is not between 1s and InfiniteLease", opts.LeaseTime)
	}
	if opts.MTU != 0 && opts.MTU < 68 {
		return invalid("MTU %d is below the IPv4 minimum of 68", opts.MTU)
	}
	host, err := netstack.New(netstack.Config{MAC: mac, Addr: netip.PrefixFrom(sip, g.Bits()),
		AcceptBroadcast: true, TrustChecksums: opts.TrustGuestChecksums})
	if err != nil {
		return invalid("%v", err)
	}
	p.host = host
	p.opts = opts
	return p, nil
}

// Options returns the options in effect, defaults applied.
func (p *LinkPeer) Options() LinkPeerOptions {
	o := p.opts
	o.ServiceMAC = p.mac.HardwareAddr()
	return o
}

// Learned returns the guest's MAC address, learned from the source address
// of the frames it sent, or nil before the first frame.
func (p *LinkPeer) Learned() net.HardwareAddr {
	v := p.learned.Load()
	if v&learnedValid == 0 {
		return nil
	}
	m := unpackMAC(v)
	return m.HardwareAddr()
}

func (p *LinkPeer) learn(m pkt.MAC) {
	if m.IsMulticast() || m.IsZero() {
		return
	}
	v := packMAC(m) | learnedValid
	if p.learned.Load() != v { // avoid dirtying the cache line per frame
		p.learned.Store(v)
	}
}

// guestMAC returns the learned guest MAC, or broadcast before one is known.
func (p *LinkPeer) guestMAC() pkt.MAC {
	v := p.learned.Load()
	if v&learnedValid == 0 {
		return pkt.BroadcastMAC
	}
	return unpackMAC(v)
}

func packMAC(m pkt.MAC) uint64 {
	return uint64(m[0])<<40 | uint64(m[1])<<32 | uint64(m[2])<<24 | uint64(m[3])<<16 | uint64(m[4])<<8 | uint64(m[5])
}

func unpackMAC(v uint64) pkt.MAC {
	return pkt.MAC{byte(v >> 40), byte(v >> 32), byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
}

// Stats returns a snapshot of the counters. Counters are read one by one, so
// a snapshot taken while frames flow may be off by the frames in flight.
func (p *LinkPeer) Stats() LinkPeerStats {
	s := LinkPeerStats{
		Replied:     p.replied.Load(),
		Delivered:   p.delivered.Load(),
		Dropped:     p.dropped.Load(),
		DHCPReplies: p.dhcp.Load(),
	}
	s.ARPReplies, s.EchoReplies = p.host.Replies()
	for i := range s.DroppedBy {
		s.DroppedBy[i] = p.droppedBy[i].Load()
	}
	return s
}

// Handle processes one frame the guest sent (without its virtio-net header)
// and returns the verdict and, for VerdictReplied, the length of the reply
// frame written to reply. When res is not nil it receives the details:
// the drop reason, or the source and payload of a datagram to deliver.
//
// reply may be frame itself (the reply is then built in place) but must not
// overlap it otherwise. ARP and ICMP echo replies are never longer than the
// request; DHCP replies take 342 bytes or a little more. A reply buffer of
// 1514 bytes always suffices; with too short a buffer the frame is dropped
// with DropNoRoom.
//
// Handle does not allocate, except to answer DHCP. It updates the learned
// guest MAC from every well-formed frame with a unicast source address.
func (p *LinkPeer) Handle(frame, reply []byte, res *Result) (Verdict, int) {
	var r Result
	if res == nil {
		res = &r
	}
	*res = Result{}
	p.handle(frame, reply, res)
	switch res.Verdict {
	case VerdictReplied:
		p.replied.Add(1)
	case VerdictDeliver:
		p.delivered.Add(1)
	default:
		p.dropped.Add(1)
		if res.Reason >= numDropReasons || res.Reason == DropNone {
			res.Reason = DropMalformed // unreachable; keeps the index in range
		}
		p.droppedBy[res.Reason].Add(1)
	}
	return res.Verdict, res.ReplyLen
}

func (p *LinkPeer) handle(frame, reply []byte, res *Result) {
	p.host.Handle(frame, reply, res)
	p.learn(res.SrcMAC)
	if res.Verdict != VerdictDeliver {
		return
	}
	switch {
	case res.DstPort == dhcpServerPort && res.Src.Port() == dhcpClientPort:
		p.handleDHCP(res.SrcMAC, res.Payload, reply, res)
	case !res.Broadcast && res.DstPort == p.port:
	default:
		res.Drop(DropNotForUs)
	}
}

// handleDHCP answers DHCPDISCOVER, DHCPREQUEST and DHCPINFORM (RFC 2131).
// It allocates: DHCP is not on the hot path.
func (p *LinkPeer) handleDHCP(src pkt.MAC, payload, reply []byte, res *Result) {
	req, err := dhcpv4.FromBytes(payload)
	if err != nil {
		res.Drop(DropMalformed)
		return
	}
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		res.Drop(DropMalformed)
		return
	}
	if req.HWType != iana.HWTypeEthernet || len(req.ClientHWAddr) != 6 {
		res.Drop(DropUnsupported)
		return
	}
	guest := net.IP(p.guest[:])
	ciaddr := req.ClientIPAddr.To4()
	if ciaddr == nil {
		ciaddr = net.IPv4zero.To4()
	}

	var typ dhcpv4.MessageType
	lease := true
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		typ = dhcpv4.MessageTypeOffer
	case dhcpv4.MessageTypeRequest:
		if sid := req.ServerIdentifier(); sid != nil && !sid.Equal(net.IP(p.ip[:])) {
			// SELECTING another server's offer.
			res.Drop(DropNotForUs)
			return
		}
		want := req.RequestedIPAddress() // SELECTING, INIT-REBOOT
		if want == nil {
			want = ciaddr // RENEWING, REBINDING
		}
		if want.Equal(guest) {
			typ = dhcpv4.MessageTypeAck
		} else {
			typ = dhcpv4.MessageTypeNak
		}
	case dhcpv4.MessageTypeInform:
		typ, lease = dhcpv4.MessageTypeAck, false
	case dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeDecline:
		res.Drop(DropIgnored)
		return
	default:
		res.Drop(DropUnsupported)
		return
	}

	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(typ),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(p.ip[:]))),
	}
	if typ == dhcpv4.MessageTypeNak {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptMessage("requested address is not this guest's")))
	} else {
		if lease {
			mods = append(mods, dhcpv4.WithYourIP(guest), dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(p.opts.LeaseTime)))
			if p.opts.LeaseTime != InfiniteLease {
				mods = append(mods,
					dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(p.opts.LeaseTime/2)),
					dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(p.opts.LeaseTime/8*7)))
			}
		}
		mods = append(mods, dhcpv4.WithNetmask(net.IPMask(p.mask[:])))
		if p.hasBcast {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptBroadcastAddress(net.IP(p.bcast[:]))))
		}
		if p.opts.MTU != 0 {
			mods = append(mods, dhcpv4.WithGeneric(dhcpv4.OptionInterfaceMTU, []byte{byte(p.opts.MTU >> 8), byte(p.opts.MTU)}))
		}
	}
	resp, err := dhcpv4.NewReplyFromRequest(req, mods...)
	if err != nil {
		res.Drop(DropMalformed)
		return
	}

	// Where the reply goes (RFC 2131, 4.1; no relays on this link).
	dstIP, dstMAC := netstack.LimitedBroadcast, pkt.BroadcastMAC
	switch {
	case typ == dhcpv4.MessageTypeNak:
	case !ciaddr.IsUnspecified():
		dstIP, dstMAC = [4]byte(ciaddr), src
	case req.IsBroadcast():
	default:
		chaddr, _ := pkt.MACFrom(req.ClientHWAddr) // length checked above
		dstIP, dstMAC = p.guest, chaddr
	}
	n, err := p.host.PutUDPFrame(reply, dstMAC, dstIP, dhcpServerPort, dhcpClientPort, resp.ToBytes())
	if err != nil {
		res.Drop(DropNoRoom)
		return
	}
	p.dhcp.Add(1)
	res.Replied(n)
	p.logDHCP(typ, req, lease)
}

// logDHCP logs a DHCP answer: the first lease a guest MAC gets at info,
// its renewals and offers at debug, refusals at warn.
func (p *LinkPeer) logDHCP(typ dhcpv4.MessageType, req *dhcpv4.DHCPv4, lease bool) {
	log := p.opts.Logger
	if log == nil {
		return
	}
	mac := req.ClientHWAddr.String()
	guest := netip.AddrFrom4(p.guest)
	switch {
	case typ == dhcpv4.MessageTypeNak:
		log.Warn("DHCP request refused", "guest_mac", mac, "requested_ip", req.RequestedIPAddress().String(), "guest_ip", guest,
			"hint", "the guest asks for an address this port does not hand out (a lease from another daemon or an old --guest-ip); it gets the right one once it restarts DHCP")
	case typ == dhcpv4.MessageTypeAck && lease:
		m, _ := pkt.MACFrom(req.ClientHWAddr)
		key := learnedValid | macBits(m)
		if p.leased.Swap(key) == key {
			log.Debug("DHCP lease renewed", "guest_mac", mac, "guest_ip", guest, "lease", p.opts.LeaseTime)
			return
		}
		log.Info("DHCP lease", "guest_mac", mac, "guest_ip", guest, "lease", p.opts.LeaseTime, "service_ip", p.opts.ServiceIP)
	default:
		log.Debug("DHCP "+typ.String(), "guest_mac", mac, "guest_ip", guest)
	}
}

// macBits packs a MAC into the low 48 bits of a word.
func macBits(m pkt.MAC) uint64 {
	var v uint64
	for _, b := range m {
		v = v<<8 | uint64(b)
	}
	return v
}

// PutDatagram writes to b an Ethernet/IPv4/UDP frame carrying payload from
// the service address and port to dst, a guest address and port (usually a
// Result.Src), and returns the frame's length. The Ethernet destination is
// the learned guest MAC, or broadcast before one is known. A payload built
// in place at b[DatagramHeaderLen:] is not copied.
//
// It returns ErrNotIPv4 when dst is not IPv4, and ErrShortBuffer when b
// cannot hold the frame or the payload exceeds what IPv4 can carry. It does
// not allocate.
func (p *LinkPeer) PutDatagram(b []byte, dst netip.AddrPort, payload []byte) (int, error) {
	a := dst.Addr().Unmap()
	if !a.Is4() {
		return 0, ErrNotIPv4
	}
	return p.host.PutUDPFrame(b, p.guestMAC(), a.As4(), p.port, dst.Port(), payload)
}

// PutDatagramNoChecksum is PutDatagram with no UDP checksum (0), for a
// frame the guest is told is valid (vhostuser.RXMessage.DataValid).
func (p *LinkPeer) PutDatagramNoChecksum(b []byte, dst netip.AddrPort, payload []byte) (int, error) {
	a := dst.Addr().Unmap()
	if !a.Is4() {
		return 0, ErrNotIPv4
	}
	return p.host.PutUDPFrameNoChecksum(b, p.guestMAC(), a.As4(), p.port, dst.Port(), payload)
}

// GratuitousARP writes to b a broadcast ARP announcement (RFC 5227, 3) of
// the service address at the service MAC and returns its length. A
// destination daemon sends it after a live migration so that the guest
// refreshes its neighbour entry for the service address. It returns
// ErrShortBuffer when b is shorter than 42 bytes.
func (p *LinkPeer) GratuitousARP(b []byte) (int, error) {
	return p.host.GratuitousARP(b)
}
