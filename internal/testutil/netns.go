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
// both up.
func Veth(t testing.TB, a *Netns, aAddr string, b *Netns, bAddr string) {
	t.Helper()
	va, vb := "va"+strings.TrimPrefix(a.Name, "veloce-"), "vb"+strings.TrimPrefix(b.Name, "veloce-")
	va, vb = va[:min(len(va), 15)], vb[:min(len(vb), 15)]
	Run(t, "ip", "link", "add", va, "netns", a.Name, "type", "veth", "peer", "name", vb, "netns", b.Name)
	a.IP(t, "addr", "add", aAddr, "dev", va)
	b.IP(t, "addr", "add", bAddr, "dev", vb)
	a.IP(t, "link", "set", va, "up")
	b.IP(t, "link", "set", vb, "up")
}

// Do runs f on an OS thread inside the namespace (see internal/netns).
func (n *Netns) Do(f func() error) error { return netns.Do(n.Name, f) }

// Run runs a command and fails the test with its output if it fails.
func Run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}
