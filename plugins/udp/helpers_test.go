package udp

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/internal/wire"
)

// newPlugin opens a Plugin on listen and closes it when the test ends.
func newPlugin(t testing.TB, listen string, opts Options) *Plugin {
	t.Helper()
	opts.Listen = netip.MustParseAddrPort(listen)
	p, err := New(opts)
	if err != nil {
		t.Fatalf("New(%s): %v", listen, err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

// fillMessage writes a data message of total size n (at least
// wire.HeaderLen) into b: header for (src, seq) and a payload whose bytes
// derive from src and seq, so checkMessage can verify it.
func fillMessage(t testing.TB, b []byte, src wire.SourceID, seq uint64, n int) int {
	t.Helper()
	h := wire.Header{Kind: wire.KindData, FragCount: 1, Channel: 7, Source: src, Seq: seq}
	payload := b[wire.HeaderLen:n]
	for i := range payload {
		payload[i] = byte(uint64(i) + seq*31 + uint64(src))
	}
	m, err := h.MarshalPacket(b, payload)
	if err != nil || m != n {
		t.Fatalf("MarshalPacket = %d, %v", m, err)
	}
	return m
}

// checkMessage parses a datagram made by fillMessage and returns its
// header, or an error describing what is wrong with it.
func checkMessage(b []byte) (wire.Header, error) {
	h, payload, err := wire.Parse(b)
	if err != nil {
		return h, fmt.Errorf("parse %d bytes: %w", len(b), err)
	}
	for i, c := range payload {
		if want := byte(uint64(i) + h.Seq*31 + uint64(h.Source)); c != want {
			return h, fmt.Errorf("source %#x seq %d: payload byte %d is %#x, want %#x", uint64(h.Source), h.Seq, i, c, want)
		}
	}
	return h, nil
}

// recvAll receives until want datagrams have arrived or nothing arrives for
// a while, and returns copies of them.
func recvAll(t testing.TB, p *Plugin, want int) []wire.Packet {
	t.Helper()
	pkts := make([]wire.Packet, 64)
	for i := range pkts {
		pkts[i].Buf = make([]byte, 65536)
	}
	var got []wire.Packet
	idle := 0
	for len(got) < want && idle < 20 {
		n, err := p.RecvBatch(pkts, 250*time.Millisecond)
		if err != nil {
			t.Fatalf("RecvBatch: %v", err)
		}
		if n == 0 {
			idle++
		}
		for _, r := range pkts[:n] {
			got = append(got, wire.Packet{Addr: r.Addr, Buf: bytes.Clone(r.Buf[:r.N]), N: r.N})
		}
	}
	if len(got) != want {
		t.Fatalf("received %d datagrams, want %d", len(got), want)
	}
	return got
}

// netns is a network namespace a test created; it is deleted when the
// test ends.
type netns struct {
	name string
}

func requireNetns(t *testing.T) {
	t.Helper()
	testutil.RequiresRoot(t)
	testutil.RequiresCommand(t, "ip", "iproute2")
}

func newNetns(t *testing.T, suffix string) *netns {
	t.Helper()
	n := &netns{name: fmt.Sprintf("veloce-udp-%d-%s", os.Getpid(), suffix)}
	run(t, "ip", "netns", "add", n.name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.name, err, out)
		}
	})
	n.ip(t, "link", "set", "lo", "up")
	return n
}

// ip runs "ip -n NAME args...".
func (n *netns) ip(t *testing.T, args ...string) {
	t.Helper()
	run(t, "ip", append([]string{"-n", n.name}, args...)...)
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// newPlugin opens a Plugin whose socket lives in the namespace. Only the
// socket creation runs there, on a locked OS thread that returns to its
// namespace afterwards.
func (n *netns) newPlugin(t *testing.T, listen string, opts Options) *Plugin {
	t.Helper()
	var p *Plugin
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open("/run/netns/"+n.name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open netns %s: %w", n.name, err)
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", n.name, err)
			return
		}
		opts.Listen = netip.MustParseAddrPort(listen)
		p, err = New(opts)
		if serr := unix.Setns(orig, unix.CLONE_NEWNET); serr != nil {
			// Leave the thread locked: it dies with this goroutine
			// instead of running other goroutines in the wrong namespace.
			errc <- fmt.Errorf("leave netns %s: %w", n.name, serr)
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		if p != nil {
			p.Close()
		}
		t.Fatalf("New(%s) in %s: %v", listen, n.name, err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}
