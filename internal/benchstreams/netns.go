package benchstreams

import (
	"errors"
	"fmt"
	vnetns "github.com/veloce-io/veloce/internal/netns"
	"os"
	"os/exec"
	"strings"
)

// netns is a network namespace the bench created with ip netns add: one
// of the two "hosts". del removes it (and the veth end inside it).
type netns struct {
	name string
}

// newNetns creates a namespace with lo up.
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

func (n *netns) ip(args ...string) error {
	return ipCmd(append([]string{"-n", n.name}, args...)...)
}

// del deletes the namespace; the veth pair goes with it.
func (n *netns) del() error {
	return ipCmd("netns", "del", n.name)
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// veth links a and b with a veth pair named va and vb, addressed aAddr
// and bAddr (CIDR), both up.
func veth(a *netns, va, aAddr string, b *netns, vb, bAddr string) error {
	if err := ipCmd("link", "add", va, "netns", a.name, "type", "veth", "peer", "name", vb, "netns", b.name); err != nil {
		return err
	}
	for _, step := range []struct {
		n    *netns
		args []string
	}{
		{a, []string{"addr", "add", aAddr, "dev", va}},
		{b, []string{"addr", "add", bAddr, "dev", vb}},
		{a, []string{"link", "set", va, "up"}},
		{b, []string{"link", "set", vb, "up"}},
	} {
		if err := step.n.ip(step.args...); err != nil {
			return err
		}
	}
	return nil
}

// do runs f on an OS thread inside the namespace (see internal/netns).
func (n *netns) do(f func() error) error { return vnetns.Do(n.name, f) }

// hosts are the two namespaces joined by a veth.
type hosts struct {
	a, b         *netns
	addrA, addrB string // without prefix length
}

// newHosts creates the two namespaces and the veth between them; on error
// whatever was created is removed again.
func newHosts() (*hosts, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("needs root (network namespaces)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("needs ip(8) (iproute2): %w", err)
	}
	pid := os.Getpid()
	a, err := newNetns(fmt.Sprintf("vbench-%d-a", pid))
	if err != nil {
		return nil, err
	}
	b, err := newNetns(fmt.Sprintf("vbench-%d-b", pid))
	if err != nil {
		a.del()
		return nil, err
	}
	h := &hosts{a: a, b: b, addrA: "10.99.77.1", addrB: "10.99.77.2"}
	va, vb := fmt.Sprintf("vsa%d", pid), fmt.Sprintf("vsb%d", pid)
	va, vb = va[:min(len(va), 15)], vb[:min(len(vb), 15)]
	if err := veth(a, va, h.addrA+"/24", b, vb, h.addrB+"/24"); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

// close deletes both namespaces.
func (h *hosts) close() error {
	return errors.Join(h.a.del(), h.b.del())
}
