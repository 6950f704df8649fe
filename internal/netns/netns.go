// Package netns runs code inside a named network namespace (one made with
// ip netns add, bound at /run/netns/NAME): the project's test hosts, for
// tests and benchmarks.
package netns

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs f on an OS thread inside namespace name: sockets f opens belong
// to that namespace for good, whichever goroutine uses them later. The
// thread returns to its own namespace afterwards; if it cannot, it stays
// locked and dies with its goroutine rather than run other goroutines in
// the wrong namespace.
func Do(name string, f func() error) error {
	target, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
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
// (from Self or /run/netns/NAME), then returns the thread to its own.
func DoFd(target int, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		own, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(own)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		ferr := f()
		if err := unix.Setns(own, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("leave netns: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
