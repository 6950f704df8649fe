package netns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Veth describes a veth pair between two named namespaces, for AddVeth.
//
// Test hosts get fixed MACs and, when both ends have an address,
// permanent neighbour entries both ways: the first datagrams of a test
// or a benchmark must not wait for ARP, because Linux queues only a few
// datagrams per unresolved neighbour and drops the oldest of them while it
// resolves, which a test sees as loss and a benchmark as a slow first
// round trip. Fixed MACs also keep frames, captures and a userspace
// stack's view of the link (DPDK's net_af_packet owns an end) the same
// from run to run.
type Veth struct {
	// A and B are the two ends.
	A, B VethEnd
	// MTU of both ends; 0 leaves the kernel's default (1500).
	MTU int
	// NoIPv6 turns IPv6 address generation off on both ends (addrgenmode
	// none): no link-local address, so no neighbour discovery or router
	// solicitations on the link besides what the test sends.
	NoIPv6 bool
}

// VethEnd is one end of a Veth.
type VethEnd struct {
	// NS is the name of the namespace the end lives in (under RunDir).
	NS string
	// Name is the interface's name, at most 15 bytes (IfName cuts one).
	Name string
	// MAC is the end's address; nil lets the kernel pick a random one.
	MAC net.HardwareAddr
	// Addr is the end's IPv4 address and prefix; the zero Prefix gives
	// the end none (a userspace stack on the other side then gets no
	// answer from the kernel for its own addresses).
	Addr netip.Prefix
}

// IfName is name cut to what a Linux interface name holds (IFNAMSIZ-1).
func IfName(name string) string { return name[:min(len(name), unix.IFNAMSIZ-1)] }

// AddVeth creates the pair with one end in each namespace, gives each end
// its MTU and address, sets both up and waits until both pass frames,
// and, when both have an address, adds a permanent neighbour entry on
// each end for the other. On error the pair is removed again.
func AddVeth(v Veth) (err error) {
	ha, err := Handle(v.A.NS)
	if err != nil {
		return err
	}
	defer ha.Close()
	hb, err := Handle(v.B.NS)
	if err != nil {
		return err
	}
	defer hb.Close()
	nsA, err := vnetns.GetFromName(v.A.NS)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", v.A.NS, err)
	}
	defer nsA.Close()
	nsB, err := vnetns.GetFromName(v.B.NS)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", v.B.NS, err)
	}
	defer nsB.Close()
	link := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: v.A.Name, HardwareAddr: v.A.MAC, MTU: v.MTU, Namespace: netlink.NsFd(nsA)},
		PeerName:  v.B.Name, PeerHardwareAddr: v.B.MAC, PeerMTU: uint32(v.MTU), PeerNamespace: netlink.NsFd(nsB),
	}
	if err := netlink.LinkAdd(link); err != nil {
		return fmt.Errorf("add veth %s (netns %s) - %s (netns %s): %w", v.A.Name, v.A.NS, v.B.Name, v.B.NS, err)
	}
	la, err := ha.LinkByName(v.A.Name)
	if err != nil {
		return fmt.Errorf("find veth %s in netns %s: %w", v.A.Name, v.A.NS, err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, ha.LinkDel(la)) // takes the peer along
		}
	}()
	lb, err := hb.LinkByName(v.B.Name)
	if err != nil {
		return fmt.Errorf("find veth %s in netns %s: %w", v.B.Name, v.B.NS, err)
	}
	ends := []struct {
		h    *netlink.Handle
		l    netlink.Link
		end  VethEnd
		peer VethEnd
		mac  net.HardwareAddr // the peer's, as the kernel has it
	}{{ha, la, v.A, v.B, lb.Attrs().HardwareAddr}, {hb, lb, v.B, v.A, la.Attrs().HardwareAddr}}
	for _, e := range ends {
		if v.NoIPv6 {
			if err := e.h.LinkSetIP6AddrGenMode(e.l, 1 /* IN6_ADDR_GEN_MODE_NONE */); err != nil {
				return fmt.Errorf("set addrgenmode none on %s: %w", e.end.Name, err)
			}
		}
		if e.end.Addr.IsValid() {
			if err := addAddr(e.h, e.l, e.end.Addr); err != nil {
				return err
			}
		}
		if err := e.h.LinkSetUp(e.l); err != nil {
			return fmt.Errorf("set %s up in netns %s: %w", e.end.Name, e.end.NS, err)
		}
	}
	for _, e := range ends {
		if err := waitRunning(e.h, e.end); err != nil {
			return err
		}
	}
	if !v.A.Addr.IsValid() || !v.B.Addr.IsValid() {
		return nil
	}
	for _, e := range ends {
		n := &netlink.Neigh{LinkIndex: e.l.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
			IP: e.peer.Addr.Addr().AsSlice(), HardwareAddr: e.mac}
		if err := e.h.NeighSet(n); err != nil {
			return fmt.Errorf("add neighbour %s on %s: %w", e.peer.Addr.Addr(), e.end.Name, err)
		}
	}
	return nil
}

// waitRunning waits until end is operationally up with its queueing
// discipline attached. Setting a link up only starts that: the kernel's
// link watcher turns the carrier on and replaces the "noop" qdisc, which
// drops every frame, a moment later (longer on a loaded machine), and a
// test that sends right away would lose its first datagrams.
func waitRunning(h *netlink.Handle, end VethEnd) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := h.LinkByName(end.Name)
		if err != nil {
			return fmt.Errorf("find %s in netns %s: %w", end.Name, end.NS, err)
		}
		qs, err := h.QdiscList(l)
		if err != nil {
			return fmt.Errorf("list qdiscs of %s: %w", end.Name, err)
		}
		running := l.Attrs().OperState == netlink.OperUp && len(qs) > 0
		for _, q := range qs {
			running = running && q.Type() != "noop"
		}
		if running {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for %s in netns %s to run: still %s, qdiscs %v", end.Name, end.NS, l.Attrs().OperState, qs)
		}
		time.Sleep(time.Millisecond)
	}
}

// AddAddr gives dev in namespace ns the IPv4 (or IPv6) address addr.
func AddAddr(ns, dev string, addr netip.Prefix) error {
	h, err := Handle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("find %s in netns %s: %w", dev, ns, err)
	}
	return addAddr(h, l, addr)
}

func addAddr(h *netlink.Handle, l netlink.Link, addr netip.Prefix) error {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), addr.Addr().BitLen())}}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("add address %s to %s: %w", addr, l.Attrs().Name, err)
	}
	return nil
}

// NoTxChecksum turns transmit checksum offload off on dev in namespace ns
// (ethtool -K dev tx off). A veth leaves UDP checksums to "hardware" that
// does not exist, so a userspace stack reading the peer end
// (net_af_packet) sees partial checksums; with offload off the kernel
// computes them as a wire would carry them.
func NoTxChecksum(ns, dev string) error {
	return Do(ns, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open ethtool socket: %w", err)
		}
		defer unix.Close(fd)
		if err := ethtoolValue(fd, dev, unix.ETHTOOL_STXCSUM, 0); err != nil {
			return fmt.Errorf("turn tx checksum offload off on %s: %w", dev, err)
		}
		return nil
	})
}

// txChecksum reports whether dev in ns has transmit checksum offload on.
func txChecksum(ns, dev string) (on bool, err error) {
	err = Do(ns, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open ethtool socket: %w", err)
		}
		defer unix.Close(fd)
		v, err := ethtoolGet(fd, dev, unix.ETHTOOL_GTXCSUM)
		on = v != 0
		return err
	})
	return on, err
}

// Handle is a netlink handle inside namespace ns; the caller closes it.
func Handle(ns string) (*netlink.Handle, error) {
	n, err := vnetns.GetFromName(ns)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer n.Close()
	h, err := netlink.NewHandleAt(n)
	if err != nil {
		return nil, fmt.Errorf("open netlink in netns %s: %w", ns, err)
	}
	return h, nil
}

// XDPAttached reports whether dev in namespace ns has an XDP program
// attached (netlink's IFLA_XDP, what `ip link` shows as "xdp").
func XDPAttached(ns, dev string) (bool, error) {
	h, err := Handle(ns)
	if err != nil {
		return false, err
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		return false, fmt.Errorf("netns %s: %s: %w", ns, dev, err)
	}
	x := l.Attrs().Xdp
	return x != nil && (x.Attached || x.ProgId != 0), nil
}
