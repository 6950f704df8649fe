package benchdpdk

import (
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
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

// LinkMTU is the veth's MTU: a 1500-byte message with the Veloce wire
// header and UDP/IPv4 headers (1560 bytes of IPv4) is one frame, for all
// three paths; net_af_packet's 2048-byte frames and the DPDK plugin's
// 2048-byte mbufs hold it.
const LinkMTU = 2000

// hosts are two namespaces joined by one veth pair (va in a, vb in b).
type hosts struct {
	a, b       *benchutil.Netns
	va, vb     string
	macA, macB string
}

// newHosts creates the namespaces and the veth: MTU LinkMTU, no IPv6
// address generation (no neighbour discovery chatter on the link), the
// kernel addresses, and permanent neighbour entries both ways, so the
// first kernel-UDP datagrams do not wait for ARP (Linux queues a few and
// drops the oldest while it resolves). On error it removes what it made.
func newHosts() (*hosts, error) {
	pid := os.Getpid()
	seq := hostSeq.Add(1)
	a, b, err := benchutil.NewPair("network namespaces, DPDK", fmt.Sprintf("vbdpdk-%d-%d-a", pid, seq), fmt.Sprintf("vbdpdk-%d-%d-b", pid, seq))
	if err != nil {
		return nil, err
	}
	tag := fmt.Sprintf("%d%d", pid%100000, seq)
	h := &hosts{a: a, b: b, va: benchutil.IfName("vdpa" + tag), vb: benchutil.IfName("vdpb" + tag),
		macA: fmt.Sprintf("02:76:01:%02x:%02x:01", seq&0xff, pid&0xff), macB: fmt.Sprintf("02:76:01:%02x:%02x:02", seq&0xff, pid&0xff)}
	mtu := fmt.Sprint(LinkMTU)
	if err := benchutil.IP("link", "add", h.va, "address", h.macA, "mtu", mtu, "netns", a.Name, "type", "veth",
		"peer", "name", h.vb, "address", h.macB, "mtu", mtu, "netns", b.Name); err != nil {
		h.close()
		return nil, err
	}
	if err := benchutil.RunSteps(
		benchutil.Step{NS: a, Args: []string{"link", "set", h.va, "addrgenmode", "none"}},
		benchutil.Step{NS: b, Args: []string{"link", "set", h.vb, "addrgenmode", "none"}},
		benchutil.Step{NS: a, Args: []string{"addr", "add", kernAddrA.String(), "dev", h.va}},
		benchutil.Step{NS: b, Args: []string{"addr", "add", kernAddrB.String(), "dev", h.vb}},
		benchutil.Step{NS: a, Args: []string{"link", "set", h.va, "up"}},
		benchutil.Step{NS: b, Args: []string{"link", "set", h.vb, "up"}},
		benchutil.Step{NS: a, Args: []string{"neigh", "replace", kernAddrB.Addr().String(), "lladdr", h.macB, "dev", h.va, "nud", "permanent"}},
		benchutil.Step{NS: b, Args: []string{"neigh", "replace", kernAddrA.Addr().String(), "lladdr", h.macA, "dev", h.vb, "nud", "permanent"}},
	); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

var hostSeq atomic.Uint32

// close deletes both namespaces (the veth goes with them).
func (h *hosts) close() error { return benchutil.DelPair(h.a, h.b) }
