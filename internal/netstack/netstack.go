// Package netstack is Veloce's userspace IPv4 host: one address on one
// Ethernet link that answers ARP and ICMP echo, takes UDP datagrams, keeps
// a table of its neighbours and builds the frames it sends.
//
// It is the one implementation behind both ends that speak Ethernet
// without the kernel: the vhost-user link peer each VM talks to
// (backend.LinkPeer adds DHCP and the guest's learned MAC on top) and the
// DPDK datapath (plugins/dpdk), so a frame is parsed and built the same way
// whichever side of the host it crosses. The parsing itself is
// internal/pkt's.
//
// Handle, PutUDPFrame, PutARPRequest and the neighbour table are safe for
// concurrent use; Handle takes no lock and does not allocate.
package netstack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/internal/cow"
	"github.com/veloce-io/veloce/internal/pkt"
)

// UDPFrameHeaderLen is the size of the Ethernet, IPv4 and UDP headers
// PutUDPFrame writes before the payload: a payload built in place at
// b[UDPFrameHeaderLen:] is not copied.
const UDPFrameHeaderLen = pkt.EthernetHeaderLen + pkt.IPv4MinHeaderLen + pkt.UDPHeaderLen

// Errors.
var (
	// ErrShortBuffer means a destination buffer is too small for the frame.
	ErrShortBuffer = errors.New("buffer too short for frame")
	// ErrNotIPv4 means an address is not an IPv4 address.
	ErrNotIPv4 = errors.New("not an IPv4 address")
)

// LimitedBroadcast is 255.255.255.255.
var LimitedBroadcast = [4]byte{255, 255, 255, 255}

// Verdict says what Handle did with a frame.
type Verdict uint8

// Verdicts.
const (
	// VerdictDropped means the frame was dropped; Result.Reason says why.
	VerdictDropped Verdict = iota
	// VerdictReplied means a reply frame was written to the reply buffer
	// for the caller to send.
	VerdictReplied
	// VerdictDeliver means the frame holds a UDP datagram for this host;
	// Result.Src, DstPort, Broadcast and Payload describe it.
	VerdictDeliver
)

var verdictNames = [...]string{
	VerdictDropped: "dropped",
	VerdictReplied: "replied",
	VerdictDeliver: "deliver",
}

// String returns the verdict's name.
func (v Verdict) String() string {
	if int(v) < len(verdictNames) {
		return verdictNames[v]
	}
	return fmt.Sprintf("Verdict(%d)", uint8(v))
}

// DropReason says why a frame was dropped.
type DropReason uint8

// Drop reasons.
const (
	// DropNone is the reason of frames that were not dropped.
	DropNone DropReason = iota
	// DropNotForUs: addressed elsewhere (another MAC, IPv4 address or UDP
	// port, or ARP for another address).
	DropNotForUs
	// DropMalformed: a header or message failed to parse.
	DropMalformed
	// DropChecksum: an IPv4, UDP or ICMP checksum did not verify.
	DropChecksum
	// DropUnsupported: well formed but not handled (IPv6, TCP, VLAN tags,
	// ICMP other than echo request, ARP for other hardware or protocols).
	DropUnsupported
	// DropFragment: an IPv4 fragment addressed to this host.
	DropFragment
	// DropIgnored: understood, needs no answer (ARP replies, which are
	// learned when the host keeps neighbours).
	DropIgnored
	// DropNoRoom: a reply was due but the reply buffer was too small.
	DropNoRoom
	// NumDropReasons is the number of drop reasons, for counter arrays.
	NumDropReasons
)

var dropReasonNames = [...]string{
	DropNone:        "none",
	DropNotForUs:    "not-for-us",
	DropMalformed:   "malformed",
	DropChecksum:    "checksum",
	DropUnsupported: "unsupported",
	DropFragment:    "fragment",
	DropIgnored:     "ignored",
	DropNoRoom:      "no-room",
}

// String returns the reason's name, as shown in statistics.
func (r DropReason) String() string {
	if r < NumDropReasons {
		return dropReasonNames[r]
	}
	return fmt.Sprintf("DropReason(%d)", uint8(r))
}

// Result is the detailed outcome of Handle.
type Result struct {
	// Verdict is what happened to the frame.
	Verdict Verdict
	// Reason says why a dropped frame was dropped; DropNone otherwise.
	Reason DropReason
	// ReplyLen is the length of the reply frame when Verdict is
	// VerdictReplied.
	ReplyLen int
	// SrcMAC is the frame's Ethernet source once its Ethernet header
	// parsed (zero before).
	SrcMAC pkt.MAC
	// Src is the datagram's source address and port, DstPort its
	// destination port, and Broadcast whether it was sent to a broadcast
	// address rather than to this host's, when Verdict is VerdictDeliver.
	Src       netip.AddrPort
	DstPort   uint16
	Broadcast bool
	// Payload is the UDP payload when Verdict is VerdictDeliver: a view of
	// the frame, valid as long as the frame buffer is.
	Payload []byte
	// UDP is the parsed UDP header of a delivered datagram.
	UDP pkt.UDP
}

// Drop records a drop reason in res.
func (res *Result) Drop(r DropReason) { res.Verdict, res.Reason = VerdictDropped, r }

// Replied records a reply of n bytes in res.
func (res *Result) Replied(n int) { res.Verdict, res.ReplyLen = VerdictReplied, n }

// ParseDrop maps an internal/pkt parse error to a drop reason.
func ParseDrop(err error) DropReason {
	switch err {
	case pkt.ErrChecksum:
		return DropChecksum
	case pkt.ErrUnsupported:
		return DropUnsupported
	default:
		return DropMalformed
	}
}

// Config describes a Host.
type Config struct {
	// MAC is the host's unicast Ethernet address.
	MAC pkt.MAC
	// Addr is the host's IPv4 address and the prefix of its link.
	Addr netip.Prefix
	// AcceptBroadcast makes UDP datagrams to the limited broadcast address
	// and to the prefix's directed broadcast deliverable (DHCP needs them).
	AcceptBroadcast bool
	// TrustChecksums skips verifying UDP and ICMP checksums (the sender
	// offloaded them, as a virtio guest with VIRTIO_NET_F_CSUM does). IPv4
	// header checksums are always verified.
	TrustChecksums bool
	// Neighbours is the size of the neighbour table (learned from ARP); 0
	// keeps none, for a point-to-point link whose one neighbour the caller
	// tracks itself.
	Neighbours int
}

// Host is one IPv4 address on an Ethernet link.
type Host struct {
	mac      pkt.MAC
	ip       [4]byte
	prefix   netip.Prefix
	bcast    [4]byte
	hasBcast bool
	cfg      Config

	arpReplies  atomic.Uint64
	echoReplies atomic.Uint64

	// neigh is the neighbour table, used only when cfg.Neighbours > 0. It
	// is copy-on-write: Handle and senders read it without a lock; its
	// writer (Learn's check-evict-store) holds neighMu.
	neighMu sync.Mutex
	neigh   cow.Map[[4]byte, pkt.MAC] // +checklocksignore
	// learnedN counts Learn's stores (nothing reads it yet).
	learnedN atomic.Uint64 // +checklocks:neighMu
}

// New returns the host cfg describes.
func New(cfg Config) (*Host, error) {
	if cfg.MAC.IsMulticast() || cfg.MAC.IsZero() {
		return nil, fmt.Errorf("netstack: MAC %v is not unicast", cfg.MAC.HardwareAddr())
	}
	a := cfg.Addr.Addr().Unmap()
	if !a.Is4() || a.IsUnspecified() || a.IsMulticast() || a.As4() == LimitedBroadcast {
		return nil, fmt.Errorf("netstack: address %v is not a unicast IPv4 address", cfg.Addr.Addr())
	}
	if cfg.Addr.Bits() < 0 || cfg.Addr.Bits() > 32 {
		return nil, fmt.Errorf("netstack: prefix length %d is not between 0 and 32", cfg.Addr.Bits())
	}
	cfg.Addr = netip.PrefixFrom(a, cfg.Addr.Bits())
	h := &Host{mac: cfg.MAC, ip: a.As4(), prefix: cfg.Addr.Masked(), cfg: cfg}
	if cfg.Addr.Bits() <= 30 {
		network := h.prefix.Addr().As4()
		mask := net.CIDRMask(cfg.Addr.Bits(), 32)
		for i := range h.bcast {
			h.bcast[i] = network[i] | ^mask[i]
		}
		h.hasBcast = true
	}
	return h, nil
}

// MAC returns the host's Ethernet address.
func (h *Host) MAC() pkt.MAC { return h.mac }

// IP returns the host's IPv4 address.
func (h *Host) IP() [4]byte { return h.ip }

// Prefix returns the host's link prefix (masked).
func (h *Host) Prefix() netip.Prefix { return h.prefix }

// OnLink reports whether ip is on the host's link.
func (h *Host) OnLink(ip netip.Addr) bool { return h.prefix.Contains(ip.Unmap()) }

// Broadcast returns the prefix's directed broadcast address, and false for
// /31 and /32 prefixes, which have none.
func (h *Host) Broadcast() ([4]byte, bool) { return h.bcast, h.hasBcast }

// Replies returns how many ARP and ICMP echo replies Handle wrote.
func (h *Host) Replies() (arp, echo uint64) { return h.arpReplies.Load(), h.echoReplies.Load() }

// Handle processes one received frame (without any virtio-net header) and
// fills res: a reply written to reply (ARP and ICMP echo), a UDP datagram
// for the caller, or a drop with its reason. reply may be frame itself (the
// reply is then built in place) but must not overlap it otherwise; ARP and
// echo replies are never longer than the request.
func (h *Host) Handle(frame, reply []byte, res *Result) {
	*res = Result{}
	eth, err := pkt.ParseEthernet(frame)
	if err != nil {
		res.Drop(ParseDrop(err))
		return
	}
	res.SrcMAC = eth.Src
	if eth.Dst != h.mac && !eth.Dst.IsMulticast() {
		res.Drop(DropNotForUs)
		return
	}
	if eth.Tags != 0 {
		res.Drop(DropUnsupported)
		return
	}
	switch eth.Type {
	case pkt.EtherTypeARP:
		h.handleARP(&eth, reply, res)
	case pkt.EtherTypeIPv4:
		h.handleIPv4(&eth, reply, res)
	default:
		res.Drop(DropUnsupported)
	}
}

func (h *Host) handleARP(eth *pkt.Ethernet, reply []byte, res *Result) {
	a, err := pkt.ParseARP(eth.Payload)
	if err != nil {
		res.Drop(ParseDrop(err))
		return
	}
	if a.Op != pkt.ARPRequest && a.Op != pkt.ARPReply {
		res.Drop(DropUnsupported)
		return
	}
	// Learn who asks for us or answers us (RFC 826's merge, limited to
	// conversations with this host), and refresh what we know already.
	if !a.SenderMAC.IsMulticast() && !a.SenderMAC.IsZero() && a.SenderIP != ([4]byte{}) &&
		(a.TargetIP == h.ip || h.knows(a.SenderIP)) {
		h.Learn(netip.AddrFrom4(a.SenderIP), a.SenderMAC)
	}
	switch {
	case a.Op == pkt.ARPReply:
		res.Drop(DropIgnored)
		return
	case a.TargetIP != h.ip:
		res.Drop(DropNotForUs)
		return
	case a.SenderMAC.IsMulticast():
		res.Drop(DropMalformed)
		return
	}
	// A probe (sender 0.0.0.0) for our address is answered too: it tells
	// the prober the address is taken (RFC 5227).
	rep := pkt.ARPReplyTo(&a, h.mac)
	n, err := pkt.PutARPFrame(reply, a.SenderMAC, &rep)
	if err != nil {
		res.Drop(DropNoRoom)
		return
	}
	h.arpReplies.Add(1)
	res.Replied(n)
}

func (h *Host) handleIPv4(eth *pkt.Ethernet, reply []byte, res *Result) {
	ip, err := pkt.ParseIPv4(eth.Payload)
	if err != nil {
		res.Drop(ParseDrop(err))
		return
	}
	toUs := ip.Dst == h.ip
	if !toUs && !(h.cfg.AcceptBroadcast && (ip.Dst == LimitedBroadcast || (h.hasBcast && ip.Dst == h.bcast))) {
		res.Drop(DropNotForUs)
		return
	}
	if ip.IsFragment() {
		res.Drop(DropFragment)
		return
	}
	switch {
	case ip.Protocol == pkt.ProtocolUDP:
		h.handleUDP(&ip, toUs, res)
	case !toUs:
		res.Drop(DropNotForUs)
	case ip.Protocol == pkt.ProtocolICMP:
		h.handleICMP(eth, &ip, reply, res)
	default:
		res.Drop(DropUnsupported)
	}
}

func (h *Host) handleICMP(eth *pkt.Ethernet, ip *pkt.IPv4, reply []byte, res *Result) {
	var m pkt.ICMPv4
	var err error
	if h.cfg.TrustChecksums {
		m, err = pkt.ParseICMPv4NoChecksum(ip.Payload)
	} else {
		m, err = pkt.ParseICMPv4(ip.Payload)
	}
	if err != nil {
		res.Drop(ParseDrop(err))
		return
	}
	if m.Type != pkt.ICMPEchoRequest || m.Code != 0 {
		res.Drop(DropUnsupported)
		return
	}
	const hdrs = pkt.EthernetHeaderLen + pkt.IPv4MinHeaderLen
	if len(reply) < hdrs+pkt.ICMPv4HeaderLen+len(m.Payload) {
		res.Drop(DropNoRoom)
		return
	}
	// Payload first: when reply is frame, the headers below overwrite the
	// request's headers, never its payload before it has moved.
	il, err := pkt.PutICMPv4Echo(reply[hdrs:], pkt.ICMPEchoReply, m.ID(), m.Seq(), m.Payload)
	if err != nil {
		res.Drop(DropNoRoom)
		return
	}
	ih := pkt.IPv4Header{Src: h.ip, Dst: ip.Src, Protocol: pkt.ProtocolICMP, TOS: ip.TOS}
	if _, err := pkt.PutIPv4Header(reply[pkt.EthernetHeaderLen:], &ih, il); err != nil {
		res.Drop(DropNoRoom)
		return
	}
	pkt.PutEthernetHeader(reply, eth.Src, h.mac, pkt.EtherTypeIPv4)
	h.echoReplies.Add(1)
	res.Replied(hdrs + il)
}

func (h *Host) handleUDP(ip *pkt.IPv4, toUs bool, res *Result) {
	u, err := pkt.ParseUDP(ip.Payload)
	if err != nil {
		res.Drop(ParseDrop(err))
		return
	}
	if !h.cfg.TrustChecksums && !u.ChecksumValid(ip.Src, ip.Dst) {
		res.Drop(DropChecksum)
		return
	}
	res.Verdict = VerdictDeliver
	res.Src = netip.AddrPortFrom(netip.AddrFrom4(ip.Src), u.SrcPort)
	res.DstPort = u.DstPort
	res.Broadcast = !toUs
	res.Payload = u.Payload
	res.UDP = u
}

// PutUDPFrame writes to b an Ethernet/IPv4/UDP frame from this host's
// address and srcPort to dstIP:dstPort at dstMAC, and returns its length. A
// payload built in place at b[UDPFrameHeaderLen:] is not copied. It does
// not allocate.
func (h *Host) PutUDPFrame(b []byte, dstMAC pkt.MAC, dstIP [4]byte, srcPort, dstPort uint16, payload []byte) (int, error) {
	return h.putUDPFrame(b, dstMAC, dstIP, srcPort, dstPort, payload, false)
}

// PutUDPFrameNoChecksum is PutUDPFrame with a zero UDP checksum ("none
// computed", which IPv4 allows): for a receiver told the frame is valid
// some other way (a virtio guest's VIRTIO_NET_HDR_F_DATA_VALID).
func (h *Host) PutUDPFrameNoChecksum(b []byte, dstMAC pkt.MAC, dstIP [4]byte, srcPort, dstPort uint16, payload []byte) (int, error) {
	return h.putUDPFrame(b, dstMAC, dstIP, srcPort, dstPort, payload, true)
}

func (h *Host) putUDPFrame(b []byte, dstMAC pkt.MAC, dstIP [4]byte, srcPort, dstPort uint16, payload []byte, noCsum bool) (int, error) {
	if len(b) < UDPFrameHeaderLen+len(payload) {
		return 0, ErrShortBuffer
	}
	const ipOff = pkt.EthernetHeaderLen
	const udpOff = ipOff + pkt.IPv4MinHeaderLen
	uh := pkt.UDPv4Header{Src: h.ip, Dst: dstIP, SrcPort: srcPort, DstPort: dstPort, NoChecksum: noCsum}
	ul, err := pkt.PutUDPv4(b[udpOff:], &uh, payload)
	if err != nil {
		return 0, ErrShortBuffer // ErrTooLong: a payload over 65507 bytes
	}
	ih := pkt.IPv4Header{Src: h.ip, Dst: dstIP, Protocol: pkt.ProtocolUDP}
	if _, err := pkt.PutIPv4Header(b[ipOff:], &ih, ul); err != nil {
		return 0, ErrShortBuffer
	}
	pkt.PutEthernetHeader(b, dstMAC, h.mac, pkt.EtherTypeIPv4)
	return udpOff + ul, nil
}

// PutARPRequest writes to b a broadcast ARP request for target and returns
// its length (padded to the Ethernet minimum).
func (h *Host) PutARPRequest(b []byte, target netip.Addr) (int, error) {
	t := target.Unmap()
	if !t.Is4() {
		return 0, ErrNotIPv4
	}
	if len(b) < pkt.MinFrameLen {
		return 0, ErrShortBuffer
	}
	a := pkt.ARP{Op: pkt.ARPRequest, SenderMAC: h.mac, SenderIP: h.ip, TargetIP: t.As4()}
	n, err := pkt.PutARPFrame(b, pkt.BroadcastMAC, &a)
	if err != nil {
		return 0, ErrShortBuffer
	}
	return pkt.PadFrame(b, n), nil
}

// GratuitousARP writes to b a broadcast ARP announcement (RFC 5227, 3) of
// the host's address and returns its length. It returns ErrShortBuffer
// when b is shorter than 42 bytes.
func (h *Host) GratuitousARP(b []byte) (int, error) {
	a := pkt.ARP{Op: pkt.ARPRequest, SenderMAC: h.mac, SenderIP: h.ip, TargetIP: h.ip}
	n, err := pkt.PutARPFrame(b, pkt.BroadcastMAC, &a)
	if err != nil {
		return 0, ErrShortBuffer
	}
	return n, nil
}

// Neighbour returns the MAC address learned for ip.
func (h *Host) Neighbour(ip netip.Addr) (pkt.MAC, bool) {
	if !ip.Unmap().Is4() {
		return pkt.MAC{}, false
	}
	return h.neigh.Lookup(ip.Unmap().As4())
}

func (h *Host) knows(ip [4]byte) bool {
	_, ok := h.neigh.Lookup(ip)
	return ok
}

// Learn records that ip is at mac, if the host keeps neighbours and ip is
// on its link. A full table forgets an arbitrary entry. Learning a known
// mapping costs no write.
func (h *Host) Learn(ip netip.Addr, mac pkt.MAC) {
	if h.cfg.Neighbours <= 0 || !ip.Unmap().Is4() || !h.OnLink(ip) {
		return
	}
	k := ip.Unmap().As4()
	if old, ok := h.neigh.Lookup(k); ok && old == mac {
		return
	}
	h.neighMu.Lock()
	defer h.neighMu.Unlock()
	if _, ok := h.neigh.Lookup(k); !ok && h.neigh.Len() >= h.cfg.Neighbours {
		for a := range h.neigh.All() {
			h.neigh.Delete(a)
			break
		}
	}
	h.neigh.Store(k, mac)
	h.learnedN.Add(1)
}

// Neighbours returns a copy of the neighbour table.
func (h *Host) Neighbours() map[netip.Addr]pkt.MAC {
	out := map[netip.Addr]pkt.MAC{}
	for a, v := range h.neigh.All() {
		out[netip.AddrFrom4(a)] = v
	}
	return out
}

// Resolver paces ARP requests for unresolved neighbours: one per address
// per Interval for as long as the address stays unresolved. Packets for
// an address wait (the caller holds them) for its first Timeout; after
// that they are given up at once, so one silent neighbour holds up the
// caller's queue only once, while requests keep going out in case it
// comes back.
type Resolver struct {
	// Interval and Timeout are set before first use, then read-only.
	Interval time.Duration // +checklocksignore
	Timeout  time.Duration // +checklocksignore

	mu      sync.Mutex
	pending map[[4]byte]*pendingARP // +checklocks:mu
}

type pendingARP struct {
	first, last time.Time
}

// Want says, for an address with no neighbour entry, whether to send an ARP
// request now (send) and whether to give up on the packets waiting for it
// (fail).
func (r *Resolver) Want(ip netip.Addr, now time.Time) (send, fail bool) {
	k := ip.Unmap().As4()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending == nil {
		r.pending = map[[4]byte]*pendingARP{}
	}
	p := r.pending[k]
	if p == nil {
		r.pending[k] = &pendingARP{first: now, last: now}
		return true, false
	}
	if now.Sub(p.last) >= r.Interval {
		p.last = now
		send = true
	}
	return send, now.Sub(p.first) > r.Timeout
}

// Resolved forgets ip's pending state.
func (r *Resolver) Resolved(ip netip.Addr) {
	r.mu.Lock()
	delete(r.pending, ip.Unmap().As4())
	r.mu.Unlock()
}
