package benchstreams

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
	"github.com/veloce-io/veloce/internal/netns"
)

// hosts are the two namespaces joined by a veth.
type hosts struct {
	a, b         *benchutil.Netns
	addrA, addrB string // without prefix length
}

// newHosts creates the two namespaces and the veth between them (fixed
// MACs, permanent neighbour entries: see netns.Veth); on error whatever
// was created is removed again.
func newHosts() (*hosts, error) {
	pid := os.Getpid()
	a, b, err := benchutil.NewPair("network namespaces", fmt.Sprintf("vbench-%d-a", pid), fmt.Sprintf("vbench-%d-b", pid))
	if err != nil {
		return nil, err
	}
	h := &hosts{a: a, b: b, addrA: "10.99.77.1", addrB: "10.99.77.2"}
	mac := func(end byte) net.HardwareAddr {
		return net.HardwareAddr{0x02, 0x76, 0x02, byte(pid >> 8), byte(pid), end}
	}
	if err := netns.AddVeth(netns.Veth{
		A: netns.VethEnd{NS: a.Name, Name: netns.IfName(fmt.Sprintf("vsa%d", pid)), MAC: mac(1), Addr: netip.MustParsePrefix(h.addrA + "/24")},
		B: netns.VethEnd{NS: b.Name, Name: netns.IfName(fmt.Sprintf("vsb%d", pid)), MAC: mac(2), Addr: netip.MustParsePrefix(h.addrB + "/24")},
	}); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

// close deletes both namespaces.
func (h *hosts) close() error { return benchutil.DelPair(h.a, h.b) }
