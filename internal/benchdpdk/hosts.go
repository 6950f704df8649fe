package benchdpdk

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"

	vnetns "github.com/veloce-io/veloce/internal/netns"
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

// netns is a network namespace the bench created with ip netns add: one
// of the two "hosts". del removes it, and the veth end inside it.
type netns struct{ name string }

func newNetns(name string) (*netns, error) {
	if err := ipCmd("netns", "add", name); err != nil {
		return nil, err
	}
	n := &netns{name: name}
	if err := n.ip("link", "set", "lo", "up"); err != nil {
		n.del()
		return nil, err
	}
	return n, nil
}

func (n *netns) ip(args ...string) error { return ipCmd(append([]string{"-n", n.name}, args...)...) }
func (n *netns) del() error              { return ipCmd("netns", "del", n.name) }

// do runs f on an OS thread inside the namespace: sockets and DPDK ports
// (net_af_packet binds at probe time) opened by f belong to it.
func (n *netns) do(f func() error) error { return vnetns.Do(n.name, f) }

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// hosts are two namespaces joined by one veth pair (va in a, vb in b).
type hosts struct {
	a, b       *netns
	va, vb     string
	macA, macB string
}

// newHosts creates the namespaces and the veth: MTU LinkMTU, no IPv6
// address generation (no neighbour discovery chatter on the link), the
// kernel addresses, and permanent neighbour entries both ways, so the
// first kernel-UDP datagrams do not wait for ARP (Linux queues a few and
// drops the oldest while it resolves). On error it removes what it made.
func newHosts() (*hosts, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root (network namespaces, DPDK)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("needs ip(8) (iproute2): %w", err)
	}
	pid := os.Getpid()
	seq := hostSeq.Add(1)
	a, err := newNetns(fmt.Sprintf("vbdpdk-%d-%d-a", pid, seq))
	if err != nil {
		return nil, err
	}
	b, err := newNetns(fmt.Sprintf("vbdpdk-%d-%d-b", pid, seq))
	if err != nil {
		a.del()
		return nil, err
	}
	tag := fmt.Sprintf("%d%d", pid%100000, seq)
	h := &hosts{a: a, b: b, va: trim15("vdpa" + tag), vb: trim15("vdpb" + tag),
		macA: fmt.Sprintf("02:76:01:%02x:%02x:01", seq&0xff, pid&0xff), macB: fmt.Sprintf("02:76:01:%02x:%02x:02", seq&0xff, pid&0xff)}
	mtu := fmt.Sprint(LinkMTU)
	if err := ipCmd("link", "add", h.va, "address", h.macA, "mtu", mtu, "netns", a.name, "type", "veth",
		"peer", "name", h.vb, "address", h.macB, "mtu", mtu, "netns", b.name); err != nil {
		h.close()
		return nil, err
	}
	for _, step := range []struct {
		n    *netns
		args []string
	}{
		{a, []string{"link", "set", h.va, "addrgenmode", "none"}},
		{b, []string{"link", "set", h.vb, "addrgenmode", "none"}},
		{a, []string{"addr", "add", kernAddrA.String(), "dev", h.va}},
		{b, []string{"addr", "add", kernAddrB.String(), "dev", h.vb}},
		{a, []string{"link", "set", h.va, "up"}},
		{b, []string{"link", "set", h.vb, "up"}},
		{a, []string{"neigh", "replace", kernAddrB.Addr().String(), "lladdr", h.macB, "dev", h.va, "nud", "permanent"}},
		{b, []string{"neigh", "replace", kernAddrA.Addr().String(), "lladdr", h.macA, "dev", h.vb, "nud", "permanent"}},
	} {
		if err := step.n.ip(step.args...); err != nil {
			h.close()
			return nil, err
		}
	}
	return h, nil
}

var hostSeq atomic.Uint32

func trim15(s string) string { return s[:min(len(s), 15)] } // IFNAMSIZ-1

// close deletes both namespaces (the veth goes with them).
func (h *hosts) close() error { return errors.Join(h.a.del(), h.b.del()) }
