package netns_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/internal/netns"
	"github.com/veloce-io/veloce/internal/testutil"
)

func newNS(t *testing.T, suffix string) string {
	t.Helper()
	testutil.RequiresRoot(t)
	name := fmt.Sprintf("vnetns-%d-%s", os.Getpid(), suffix)
	if err := netns.Create(name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := netns.Delete(name); err != nil {
			t.Error(err)
		}
	})
	return name
}

func linkIn(t *testing.T, ns, dev string) (*netlink.Handle, netlink.Link) {
	t.Helper()
	n, err := vnetns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	h, err := netlink.NewHandleAt(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	l, err := h.LinkByName(dev)
	if err != nil {
		t.Fatalf("%s in %s: %v", dev, ns, err)
	}
	return h, l
}

// Two hosts joined by a veth get what the tests and benchmarks rely on:
// each end in its namespace, up, with its MAC, MTU and address, a
// permanent neighbour entry for the other end, no IPv6 link-local
// address; and a datagram crosses the link.
func TestVethJoinsTwoHosts(t *testing.T) {
	a, b := newNS(t, "a"), newNS(t, "b")
	macA, macB := net.HardwareAddr{2, 0x76, 0xee, 0, 0, 1}, net.HardwareAddr{2, 0x76, 0xee, 0, 0, 2}
	v := netns.Veth{
		A:   netns.VethEnd{NS: a, Name: netns.IfName(fmt.Sprintf("vnta%d", os.Getpid())), MAC: macA, Addr: netip.MustParsePrefix("10.96.0.1/24")},
		B:   netns.VethEnd{NS: b, Name: netns.IfName(fmt.Sprintf("vntb%d", os.Getpid())), MAC: macB, Addr: netip.MustParsePrefix("10.96.0.2/24")},
		MTU: 2000, NoIPv6: true,
	}
	if err := netns.AddVeth(v); err != nil {
		t.Fatal(err)
	}
	for _, e := range []struct {
		end  netns.VethEnd
		peer netns.VethEnd
	}{{v.A, v.B}, {v.B, v.A}} {
		h, l := linkIn(t, e.end.NS, e.end.Name)
		at := l.Attrs()
		if at.HardwareAddr.String() != e.end.MAC.String() || at.MTU != 2000 || at.Flags&net.FlagUp == 0 {
			t.Errorf("%s: mac %s mtu %d flags %v", e.end.Name, at.HardwareAddr, at.MTU, at.Flags)
		}
		addrs, err := h.AddrList(l, unix.AF_UNSPEC)
		if err != nil {
			t.Fatal(err)
		}
		if len(addrs) != 1 || addrs[0].IPNet.String() != e.end.Addr.String() {
			t.Errorf("%s: addresses %v, want only %s (no IPv6 link-local)", e.end.Name, addrs, e.end.Addr)
		}
		neighs, err := h.NeighList(at.Index, unix.AF_INET)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, n := range neighs {
			if n.IP.Equal(e.peer.Addr.Addr().AsSlice()) {
				found = true
				if n.State != netlink.NUD_PERMANENT || n.HardwareAddr.String() != e.peer.MAC.String() {
					t.Errorf("%s: neighbour %s state %#x lladdr %s, want permanent %s", e.end.Name, n.IP, n.State, n.HardwareAddr, e.peer.MAC)
				}
			}
		}
		if !found {
			t.Errorf("%s: no neighbour entry for %s: %v", e.end.Name, e.peer.Addr, neighs)
		}
	}

	var rx *net.UDPConn
	if err := netns.Do(b, func() (err error) {
		rx, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 96, 0, 2), Port: 7000})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	if err := netns.Do(a, func() error {
		c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(10, 96, 0, 2), Port: 7000})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("hello"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, from, err := rx.ReadFromUDP(buf)
	if err != nil || string(buf[:n]) != "hello" || !from.IP.Equal(net.IPv4(10, 96, 0, 1)) {
		t.Errorf("received %q from %v: %v", buf[:n], from, err)
	}
}

// A bare veth has no addresses; NoTxChecksum turns its transmit checksum
// offload off (a userspace stack on the peer then sees whole checksums),
// and AddAddr addresses it later.
func TestBareVethNoTxChecksumAddAddr(t *testing.T) {
	a, b := newNS(t, "c"), newNS(t, "d")
	va, vb := netns.IfName(fmt.Sprintf("vntc%d", os.Getpid())), netns.IfName(fmt.Sprintf("vntd%d", os.Getpid()))
	if err := netns.AddVeth(netns.Veth{A: netns.VethEnd{NS: a, Name: va}, B: netns.VethEnd{NS: b, Name: vb}}); err != nil {
		t.Fatal(err)
	}
	if on, err := netns.TxChecksum(b, vb); err != nil || !on {
		t.Fatalf("a new veth's tx checksum offload: on=%v, %v (want on)", on, err)
	}
	if err := netns.NoTxChecksum(b, vb); err != nil {
		t.Fatal(err)
	}
	if on, err := netns.TxChecksum(b, vb); err != nil || on {
		t.Errorf("after NoTxChecksum: on=%v, %v", on, err)
	}
	if err := netns.AddAddr(b, vb, netip.MustParsePrefix("10.96.1.2/24")); err != nil {
		t.Fatal(err)
	}
	h, l := linkIn(t, b, vb)
	addrs, err := h.AddrList(l, unix.AF_INET)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "10.96.1.2/24" {
		t.Errorf("addresses %v, %v", addrs, err)
	}
}

// Create refuses a name that is taken, Delete one that is not there, and
// Do a namespace that does not exist.
func TestCreateDeleteErrors(t *testing.T) {
	name := newNS(t, "e")
	if err := netns.Create(name); err == nil {
		t.Error("Create of an existing name succeeded")
	}
	if err := netns.Delete(name + "-none"); err == nil {
		t.Error("Delete of a missing name succeeded")
	}
	if err := netns.Do(name+"-none", func() error { return nil }); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Do in a missing namespace: %v, want ENOENT", err)
	}
}
