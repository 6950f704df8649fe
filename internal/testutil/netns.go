package testutil

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/veloce-io/veloce/internal/netns"
)

// Netns is a network namespace a test created (internal/netns, bound at
// /run/netns/NAME, so ip netns exec NAME works): one of the project's
// test hosts. It is deleted when the test ends.
type Netns struct {
	Name string
}

var netnsSeq atomic.Uint32

// NewNetns creates a namespace with lo up. It needs root.
func NewNetns(t testing.TB) *Netns {
	t.Helper()
	RequiresRoot(t)
	n := &Netns{Name: fmt.Sprintf("veloce-%d-%d", os.Getpid(), netnsSeq.Add(1))}
	if err := netns.Create(n.Name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := netns.Delete(n.Name); err != nil {
			t.Error(err)
		}
	})
	return n
}

// Do runs f on an OS thread inside the namespace (see internal/netns).
func (n *Netns) Do(f func() error) error { return netns.Do(n.Name, f) }

// AddAddr gives dev in the namespace the address cidr ("10.0.0.1/24").
func (n *Netns) AddAddr(t testing.TB, dev, cidr string) {
	t.Helper()
	if err := netns.AddAddr(n.Name, dev, netip.MustParsePrefix(cidr)); err != nil {
		t.Fatal(err)
	}
}

var vethSeq atomic.Uint32

// vethEnds names a new veth pair and gives it fixed MACs (see
// netns.Veth for why).
func vethEnds(a, b *Netns) (ea, eb netns.VethEnd) {
	n := vethSeq.Add(1)
	pid := os.Getpid() % 100000
	mac := func(end byte) net.HardwareAddr { return net.HardwareAddr{0x02, 0x76, 0x00, byte(n >> 8), byte(n), end} }
	return netns.VethEnd{NS: a.Name, Name: fmt.Sprintf("vva%d-%d", pid, n), MAC: mac(1)},
		netns.VethEnd{NS: b.Name, Name: fmt.Sprintf("vvb%d-%d", pid, n), MAC: mac(2)}
}

// Veth links a and b with a veth pair, addressed aAddr and bAddr (CIDR),
// both up, with fixed MACs and permanent neighbour entries both ways: the
// first datagrams of a test must not wait for ARP (Linux queues a few and
// drops the oldest of them while it resolves).
func Veth(t testing.TB, a *Netns, aAddr string, b *Netns, bAddr string) {
	t.Helper()
	ea, eb := vethEnds(a, b)
	ea.Addr, eb.Addr = netip.MustParsePrefix(aAddr), netip.MustParsePrefix(bAddr)
	if err := netns.AddVeth(netns.Veth{A: ea, B: eb}); err != nil {
		t.Fatal(err)
	}
}

// BareVeth links a and b with a veth pair that has no IPv4 addresses, for
// a userspace stack (DPDK's net_af_packet) to own an end, and returns the
// two interface names. The kernel then drops what arrives for addresses it
// does not have, so only the userspace stack answers.
func BareVeth(t testing.TB, a, b *Netns) (va, vb string) {
	t.Helper()
	ea, eb := vethEnds(a, b)
	if err := netns.AddVeth(netns.Veth{A: ea, B: eb}); err != nil {
		t.Fatal(err)
	}
	return ea.Name, eb.Name
}

// NoTxChecksum turns transmit checksum offload off on dev in ns. A veth
// leaves UDP checksums to "hardware" that does not exist, so a userspace
// stack reading the peer end (net_af_packet) sees partial checksums;
// with offload off the kernel computes them as a wire would carry them.
func NoTxChecksum(t testing.TB, ns *Netns, dev string) {
	t.Helper()
	if err := netns.NoTxChecksum(ns.Name, dev); err != nil {
		t.Fatal(err)
	}
}

// Run runs a command and fails the test with its output if it fails.
func Run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// Netlink is a netlink handle inside n; the caller closes it.
func (n *Netns) Netlink(t testing.TB) *netlink.Handle {
	t.Helper()
	h, err := netns.Handle(n.Name)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// XDPAttached reports whether dev in n has an XDP program attached.
func (n *Netns) XDPAttached(t testing.TB, dev string) bool {
	t.Helper()
	on, err := netns.XDPAttached(n.Name, dev)
	if err != nil {
		t.Fatal(err)
	}
	return on
}

// Bridge is a Linux bridge in a namespace (the hub) that other
// namespaces join through veth pairs: a test's LAN of hosts.
type Bridge struct {
	hub  *Netns
	name string
}

// NewBridge creates bridge br0 in hub, up, with the address cidr (empty:
// none).
func NewBridge(t testing.TB, hub *Netns, cidr string) *Bridge {
	t.Helper()
	b := &Bridge{hub: hub, name: "br0"}
	Run(t, "ip", "-n", hub.Name, "link", "add", b.name, "type", "bridge")
	Run(t, "ip", "-n", hub.Name, "link", "set", b.name, "up")
	if cidr != "" {
		hub.AddAddr(t, b.name, cidr)
	}
	return b
}

// Attach links n to the bridge with a veth pair whose end in n has the
// address cidr, and returns that end's name.
func (b *Bridge) Attach(t testing.TB, n *Netns, cidr string) string {
	t.Helper()
	vh, vn := BareVeth(t, b.hub, n)
	Run(t, "ip", "-n", b.hub.Name, "link", "set", vh, "master", b.name)
	Run(t, "ip", "-n", b.hub.Name, "link", "set", vh, "up")
	Run(t, "ip", "-n", n.Name, "link", "set", vn, "up")
	n.AddAddr(t, vn, cidr)
	return vn
}
