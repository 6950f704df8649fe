package benchutil

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	vnetns "github.com/veloce-io/veloce/internal/netns"
)

// Netns is a network namespace a bench created with ip netns add: one of
// its two "hosts". Del removes it, and the veth end inside it.
type Netns struct{ Name string }

// NewNetns creates a namespace with lo up.
func NewNetns(name string) (*Netns, error) {
	if err := IP("netns", "add", name); err != nil {
		return nil, err
	}
	n := &Netns{Name: name}
	if err := n.IP("link", "set", "lo", "up"); err != nil {
		n.Del()
		return nil, err
	}
	return n, nil
}

// IP runs ip(8) with args inside the namespace.
func (n *Netns) IP(args ...string) error { return IP(append([]string{"-n", n.Name}, args...)...) }

// Del deletes the namespace; the veth end inside it goes with it.
func (n *Netns) Del() error { return IP("netns", "del", n.Name) }

// Do runs f on an OS thread inside the namespace (see internal/netns):
// sockets and DPDK ports opened by f belong to it.
func (n *Netns) Do(f func() error) error { return vnetns.Do(n.Name, f) }

// IP runs ip(8) with args; its output is in the error.
func IP(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// NewPair creates the namespaces nameA and nameB, after checking that
// this process is root and has ip(8); why says what root is needed for
// ("network namespaces"). On error it removes what it made.
func NewPair(why, nameA, nameB string) (a, b *Netns, err error) {
	if os.Geteuid() != 0 {
		return nil, nil, fmt.Errorf("needs root (%s)", why)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, nil, fmt.Errorf("needs ip(8) (iproute2): %w", err)
	}
	if a, err = NewNetns(nameA); err != nil {
		return nil, nil, err
	}
	if b, err = NewNetns(nameB); err != nil {
		a.Del()
		return nil, nil, err
	}
	return a, b, nil
}

// DelPair deletes a and b (and the veth between them).
func DelPair(a, b *Netns) error { return errors.Join(a.Del(), b.Del()) }

// Step is one ip(8) command inside a namespace.
type Step struct {
	NS   *Netns
	Args []string
}

// RunSteps runs steps in order and stops at the first that fails.
func RunSteps(steps ...Step) error {
	for _, s := range steps {
		if err := s.NS.IP(s.Args...); err != nil {
			return err
		}
	}
	return nil
}

// IfName is name cut to what a Linux interface name holds (IFNAMSIZ-1).
func IfName(name string) string { return name[:min(len(name), 15)] }
