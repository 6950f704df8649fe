// Package netns makes and enters named network namespaces and the veth
// links between them: the project's test hosts, for tests
// (internal/testutil) and benchmarks (cmd/veloce-bench). It is the one
// implementation; everything goes through netlink
// (github.com/vishvananda/netlink) and the namespaces are bound at
// /run/netns/NAME exactly as ip netns add binds them, so ip netns exec
// NAME can run a program inside one.
//
// Create and Delete make and remove a namespace; AddVeth links two with a
// veth pair (fixed MACs, addresses, up, permanent neighbour entries);
// AddAddr and NoTxChecksum adjust one end; Do and DoFd run a function
// on an OS thread inside a namespace. All need root (CAP_SYS_ADMIN and
// CAP_NET_ADMIN).
package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RunDir is where named namespaces are bound, as iproute2 binds them.
const RunDir = "/run/netns"

// Create creates the network namespace name, bound at RunDir/name, with
// its loopback up. It fails if the name is taken.
func Create(name string) error {
	if err := sharedRunDir(); err != nil {
		return err
	}
	return onThread(func() error {
		ns, err := vnetns.NewNamed(name) // moves this thread into it
		if err != nil {
			return fmt.Errorf("create netns %s: %w", name, err)
		}
		defer ns.Close()
		if err := linkUp("lo"); err != nil {
			return errors.Join(fmt.Errorf("set lo up in netns %s: %w", name, err), vnetns.DeleteNamed(name))
		}
		return nil
	})
}

// linkUp sets dev up in the calling thread's namespace.
func linkUp(dev string) error {
	l, err := netlink.LinkByName(dev)
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

// Delete removes the namespace name. The namespace itself (and every
// interface in it, such as a veth end, which takes its peer along) goes
// when nothing holds it any more: a process or socket still inside keeps
// it alive.
func Delete(name string) error {
	if err := vnetns.DeleteNamed(name); err != nil {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

var runDir struct {
	mu     sync.Mutex
	shared bool // +checklocks:mu
}

// sharedRunDir makes RunDir a mount point with shared propagation, as ip
// netns add does, so a namespace bound there later shows in (and its
// removal reaches) mount namespaces copied from this one, such as ip
// netns exec's.
func sharedRunDir() error {
	runDir.mu.Lock()
	defer runDir.mu.Unlock()
	if runDir.shared {
		return nil
	}
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", RunDir, err)
	}
	err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point yet
		if err = unix.Mount(RunDir, RunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err == nil {
			err = unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		}
	}
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w", RunDir, err)
	}
	runDir.shared = true
	return nil
}

// path is where namespace name is bound.
func path(name string) string { return filepath.Join(RunDir, name) }

// Do runs f on an OS thread inside namespace name: sockets f opens belong
// to that namespace for good, whichever goroutine uses them later. The
// thread returns to its own namespace afterwards; if it cannot, it stays
// locked and dies with its goroutine rather than run other goroutines in
// the wrong namespace.
func Do(name string, f func() error) error {
	target, err := unix.Open(path(name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer unix.Close(target)
	return DoFd(target, f)
}

// Self opens the calling thread's network namespace, for DoFd. The caller
// should have locked its goroutine to its thread (as Do's f runs).
func Self() (int, error) {
	return unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
}

// DoFd runs f on an OS thread inside the network namespace open at fd
// (from Self or RunDir/NAME), then returns the thread to its own.
func DoFd(target int, f func() error) error {
	return onThread(func() error {
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("enter netns: %w", err)
		}
		return f()
	})
}

// onThread runs f on a fresh goroutine locked to its OS thread; f may
// move the thread to another network namespace, and onThread moves it
// back afterwards. A thread that cannot go back stays locked, so it ends
// with its goroutine.
func onThread(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		own, err := Self()
		if err != nil {
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer unix.Close(own)
		ferr := f()
		if err := unix.Setns(own, unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
