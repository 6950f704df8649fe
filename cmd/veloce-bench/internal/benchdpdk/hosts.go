package benchdpdk

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
	"github.com/veloce-io/veloce/internal/netns"
)

// The link's addressing. The userspace stacks (raw DPDK and the DPDK
// plugin, never open at the same time) own 10.97.1.0/24 on the veth ends;
// the kernel has 10.97.2.0/24 on the same ends for kernel UDP. Each side
// ignores the other's addresses: the kernel drops IPv4 for addresses it
// does not have (forwarding is off in a new namespace) and does not answer
// ARP for them, and netstack drops what is not for its address.
var (
	dpdkAddrA = netip.MustParsePrefix("10.97.1.1/24")
	dpdkAddrB = netip.MustParsePrefix("10.97.1.2/24")
	kernAddrA = netip.MustParsePrefix("10.97.2.1/24")
	kernAddrB = netip.MustParsePrefix("10.97.2.2/24")
)

// LinkMTU is the veth's MTU: a MaxSize message with the Veloce wire
// header and UDP/IPv4 headers (under 1500 bytes of IPv4) is one frame, for all
// three paths; net_af_packet's 2048-byte frames and the DPDK plugin's
// 2048-byte mbufs hold it.
const LinkMTU = 2000

// hosts are two namespaces joined by one veth pair (va in a, vb in b).
type hosts struct {
	a, b       *benchutil.Netns
	va, vb     string
	macA, macB net.HardwareAddr
}

// newHosts creates the namespaces and the veth: MTU LinkMTU, no IPv6
// address generation (no neighbour discovery chatter on the link), fixed
// MACs, the kernel addresses, and permanent neighbour entries both ways,
// so the first kernel-UDP datagrams do not wait for ARP (see netns.Veth).
// On error it removes what it made.
func newHosts() (*hosts, error) {
	pid := os.Getpid()
	seq := hostSeq.Add(1)
	a, b, err := benchutil.NewPair("network namespaces, DPDK", fmt.Sprintf("vbdpdk-%d-%d-a", pid, seq), fmt.Sprintf("vbdpdk-%d-%d-b", pid, seq))
	if err != nil {
		return nil, err
	}
	tag := fmt.Sprintf("%d%d", pid%100000, seq)
	h := &hosts{a: a, b: b, va: netns.IfName("vdpa" + tag), vb: netns.IfName("vdpb" + tag),
		macA: net.HardwareAddr{0x02, 0x76, 0x01, byte(seq), byte(pid), 0x01}, macB: net.HardwareAddr{0x02, 0x76, 0x01, byte(seq), byte(pid), 0x02}}
	if err := netns.AddVeth(netns.Veth{
		A:   netns.VethEnd{NS: a.Name, Name: h.va, MAC: h.macA, Addr: kernAddrA},
		B:   netns.VethEnd{NS: b.Name, Name: h.vb, MAC: h.macB, Addr: kernAddrB},
		MTU: LinkMTU, NoIPv6: true,
	}); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

var hostSeq atomic.Uint32

// close deletes both namespaces (the veth goes with them).
func (h *hosts) close() error { return benchutil.DelPair(h.a, h.b) }
