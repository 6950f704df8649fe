// Package rdmatest builds the soft-RoCE topology the RDMA tests and
// benchmark use inside a VM (Debian's generic kernel with rdma_rxe; see
// plugins/rdma's TestRDMAInVM and veloce-bench rdma): one kernel with a
// veth pair, veth0 (A) and veth1 (B), and a soft-RoCE device on each end
// (rxe0, rxe1).
//
// Not two network namespaces: Debian 12's kernel (6.1) opens rxe's UDP
// socket and routes its packets in the initial namespace only, so an rxe
// device on a veth end inside another namespace neither sends nor
// receives. Instead policy routing makes each device's packets leave by
// its own veth (rules "oif vethN lookup 10N" ahead of the local table),
// and accept_local lets the other end take them: the two devices talk
// over the wire, not through the kernel's loopback.
package rdmatest

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Topology says which addresses go where.
type Topology struct {
	// A and B are veth0's and veth1's addresses, with the link prefix.
	A, B netip.Prefix
	// Extra are further addresses on veth1 (no device of their own:
	// rxe1's GID table lists them too).
	Extra []netip.Prefix
}

func sysctl(path, v string) error {
	return os.WriteFile("/proc/sys/"+path, []byte(v), 0o644)
}

// Setup makes the veth pair, the routing and the rxe devices. It needs
// root, the veth, rdma_rxe and ib_uverbs modules loaded, and a kernel
// where nothing of the kind exists yet (a fresh VM).
func Setup(tp Topology) error {
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "veth0"}, PeerName: "veth1"}); err != nil {
		return fmt.Errorf("add veth: %w", err)
	}
	links := map[string]netlink.Link{}
	for i, e := range []struct {
		dev  string
		addr netip.Prefix
	}{{"veth0", tp.A}, {"veth1", tp.B}} {
		l, err := netlink.LinkByName(e.dev)
		if err != nil {
			return err
		}
		links[e.dev] = l
		a, _ := netlink.ParseAddr(e.addr.String())
		if err := netlink.AddrAdd(l, a); err != nil {
			return fmt.Errorf("addr %s: %w", e.dev, err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		for _, k := range []string{"rp_filter=0", "accept_local=1"} {
			kv := strings.Split(k, "=")
			if err := sysctl("net/ipv4/conf/"+e.dev+"/"+kv[0], kv[1]); err != nil {
				return err
			}
		}
		table := 100 + i
		r := netlink.NewRule()
		r.Priority, r.OifName, r.Table, r.Family = table, e.dev, table, unix.AF_INET
		if err := netlink.RuleAdd(r); err != nil {
			return fmt.Errorf("rule oif %s: %w", e.dev, err)
		}
		_, subnet, _ := net.ParseCIDR(e.addr.Masked().String())
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: subnet, Table: table, Scope: netlink.SCOPE_LINK,
			Src: net.IP(e.addr.Addr().AsSlice())}); err != nil {
			return fmt.Errorf("route table %d: %w", table, err)
		}
	}
	for _, x := range tp.Extra {
		a, _ := netlink.ParseAddr(x.String())
		if err := netlink.AddrAdd(links["veth1"], a); err != nil {
			return fmt.Errorf("addr %v on veth1: %w", x, err)
		}
	}
	sysctl("net/ipv4/conf/all/rp_filter", "0")
	sysctl("net/ipv4/conf/all/accept_local", "1")
	// The local table after the oif rules.
	r := netlink.NewRule()
	r.Priority, r.Table, r.Family = 1000, unix.RT_TABLE_LOCAL, unix.AF_INET
	if err := netlink.RuleAdd(r); err != nil {
		return fmt.Errorf("rule local: %w", err)
	}
	r = netlink.NewRule()
	r.Priority, r.Table, r.Family = 0, unix.RT_TABLE_LOCAL, unix.AF_INET
	if err := netlink.RuleDel(r); err != nil {
		return fmt.Errorf("del rule 0: %w", err)
	}
	// Permanent neighbours: no ARP between two local addresses.
	for dev, peer := range map[string]struct {
		dev  string
		addr netip.Prefix
	}{"veth0": {"veth1", tp.B}, "veth1": {"veth0", tp.A}} {
		if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: links[dev].Attrs().Index, State: netlink.NUD_PERMANENT, Family: unix.AF_INET,
			IP: net.IP(peer.addr.Addr().AsSlice()), HardwareAddr: links[peer.dev].Attrs().HardwareAddr}); err != nil {
			return fmt.Errorf("neighbour on %s: %w", dev, err)
		}
	}
	for i, dev := range []string{"veth0", "veth1"} {
		if err := netlink.RdmaLinkAdd(fmt.Sprintf("rxe%d", i), "rxe", dev); err != nil {
			mods, _ := os.ReadFile("/proc/modules")
			var names []string
			for _, l := range strings.Split(string(mods), "\n") {
				if f := strings.Fields(l); len(f) > 0 {
					names = append(names, f[0])
				}
			}
			return fmt.Errorf("rdma link add rxe%d netdev %s: %w (modules: %s)", i, dev, err, strings.Join(names, " "))
		}
	}
	return nil
}
