package benchutil

import (
	"errors"
	"fmt"
	"os"

	"github.com/veloce-io/veloce/internal/netns"
)

// Netns is a network namespace a bench created (internal/netns): one of
// its two "hosts". Del removes it, and the veth end inside it.
type Netns struct{ Name string }

// NewNetns creates a namespace with lo up.
func NewNetns(name string) (*Netns, error) {
	if err := netns.Create(name); err != nil {
		return nil, err
	}
	return &Netns{Name: name}, nil
}

// Del deletes the namespace; the veth end inside it goes with it.
func (n *Netns) Del() error { return netns.Delete(n.Name) }

// Do runs f on an OS thread inside the namespace (see internal/netns):
// sockets and DPDK ports opened by f belong to it.
func (n *Netns) Do(f func() error) error { return netns.Do(n.Name, f) }

// NewPair creates the namespaces nameA and nameB, after checking that
// this process is root; why says what root is needed for ("network
// namespaces"). On error it removes what it made.
func NewPair(why, nameA, nameB string) (a, b *Netns, err error) {
	if os.Geteuid() != 0 {
		return nil, nil, fmt.Errorf("needs root (%s)", why)
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
