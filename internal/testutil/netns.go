package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/veloce-io/veloce/internal/netns"
)

// Netns is a network namespace a test created (ip netns add): one of the
// project's test hosts. It is deleted when the test ends.
type Netns struct {
	Name string
}

var netnsSeq atomic.Uint32

// NewNetns creates a namespace with lo up. It needs root and ip(8).
func NewNetns(t testing.TB) *Netns {
	t.Helper()
	RequiresRoot(t)
	RequiresCommand(t, "ip", "iproute2")
	n := &Netns{Name: fmt.Sprintf("veloce-%d-%d", os.Getpid(), netnsSeq.Add(1))}
	Run(t, "ip", "netns", "add", n.Name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.Name, err, out)
		}
	})
	n.IP(t, "link", "set", "lo", "up")
	return n
}

// IP runs ip(8) inside the namespace.
func (n *Netns) IP(t testing.TB, args ...string) {
	t.Helper()
	Run(t, "ip", append([]string{"-n", n.Name}, args...)...)
}

// Veth links a and b with a veth pair, addressed aAddr and bAddr (CIDR),
// both up, with permanent neighbour entries both ways: the first
// datagrams of a test must not wait for ARP (Linux queues a few and drops
// the oldest of them while it resolves).
func Veth(t testing.TB, a *Netns, aAddr string, b *Netns, bAddr string) {
	t.Helper()
	n := vethSeq.Add(1)
	va, vb := fmt.Sprintf("vva%d-%d", os.Getpid()%100000, n), fmt.Sprintf("vvb%d-%d", os.Getpid()%100000, n)
	macA, macB := fmt.Sprintf("02:76:00:%02x:%02x:01", n>>8&0xff, n&0xff), fmt.Sprintf("02:76:00:%02x:%02x:02", n>>8&0xff, n&0xff)
	Run(t, "ip", "link", "add", va, "address", macA, "netns", a.Name, "type", "veth", "peer", "name", vb, "address", macB, "netns", b.Name)
	a.IP(t, "addr", "add", aAddr, "dev", va)
	b.IP(t, "addr", "add", bAddr, "dev", vb)
	a.IP(t, "link", "set", va, "up")
	b.IP(t, "link", "set", vb, "up")
	a.IP(t, "neigh", "replace", strings.Split(bAddr, "/")[0], "lladdr", macB, "dev", va, "nud", "permanent")
	b.IP(t, "neigh", "replace", strings.Split(aAddr, "/")[0], "lladdr", macA, "dev", vb, "nud", "permanent")
}

var vethSeq atomic.Uint32

// Do runs f on an OS thread inside the namespace (see internal/netns).
func (n *Netns) Do(f func() error) error { return netns.Do(n.Name, f) }

// Run runs a command and fails the test with its output if it fails.
func Run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// BareVeth links a and b with a veth pair that has no IPv4 addresses, for
// a userspace stack (DPDK's net_af_packet) to own an end, and returns the
// two interface names. The kernel then drops what arrives for addresses it
// does not have, so only the userspace stack answers.
func BareVeth(t testing.TB, a, b *Netns) (va, vb string) {
	t.Helper()
	n := vethSeq.Add(1)
	va, vb = fmt.Sprintf("vva%d-%d", os.Getpid()%100000, n), fmt.Sprintf("vvb%d-%d", os.Getpid()%100000, n)
	macA, macB := fmt.Sprintf("02:76:00:%02x:%02x:01", n>>8&0xff, n&0xff), fmt.Sprintf("02:76:00:%02x:%02x:02", n>>8&0xff, n&0xff)
	Run(t, "ip", "link", "add", va, "address", macA, "netns", a.Name, "type", "veth", "peer", "name", vb, "address", macB, "netns", b.Name)
	a.IP(t, "link", "set", va, "up")
	b.IP(t, "link", "set", vb, "up")
	return va, vb
}

// NoTxChecksum turns transmit checksum offload off on dev in ns. A veth
// leaves UDP checksums to "hardware" that does not exist, so a userspace
// stack reading the peer end (net_af_packet) sees partial checksums;
// with offload off the kernel computes them as a wire would carry them.
func NoTxChecksum(t testing.TB, ns *Netns, dev string) {
	t.Helper()
	RequiresCommand(t, "ethtool", "ethtool")
	Run(t, "ip", "netns", "exec", ns.Name, "ethtool", "-K", dev, "tx", "off")
}
