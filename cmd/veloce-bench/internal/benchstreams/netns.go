package benchstreams

import (
	"fmt"
	"os"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
)

// veth links a and b with a veth pair named va and vb, addressed aAddr
// and bAddr (CIDR), both up.
func veth(a *benchutil.Netns, va, aAddr string, b *benchutil.Netns, vb, bAddr string) error {
	if err := benchutil.IP("link", "add", va, "netns", a.Name, "type", "veth", "peer", "name", vb, "netns", b.Name); err != nil {
		return err
	}
	return benchutil.RunSteps(
		benchutil.Step{NS: a, Args: []string{"addr", "add", aAddr, "dev", va}},
		benchutil.Step{NS: b, Args: []string{"addr", "add", bAddr, "dev", vb}},
		benchutil.Step{NS: a, Args: []string{"link", "set", va, "up"}},
		benchutil.Step{NS: b, Args: []string{"link", "set", vb, "up"}},
	)
}

// hosts are the two namespaces joined by a veth.
type hosts struct {
	a, b         *benchutil.Netns
	addrA, addrB string // without prefix length
}

// newHosts creates the two namespaces and the veth between them; on error
// whatever was created is removed again.
func newHosts() (*hosts, error) {
	pid := os.Getpid()
	a, b, err := benchutil.NewPair("network namespaces", fmt.Sprintf("vbench-%d-a", pid), fmt.Sprintf("vbench-%d-b", pid))
	if err != nil {
		return nil, err
	}
	h := &hosts{a: a, b: b, addrA: "10.99.77.1", addrB: "10.99.77.2"}
	va, vb := benchutil.IfName(fmt.Sprintf("vsa%d", pid)), benchutil.IfName(fmt.Sprintf("vsb%d", pid))
	if err := veth(a, va, h.addrA+"/24", b, vb, h.addrB+"/24"); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

// close deletes both namespaces.
func (h *hosts) close() error { return benchutil.DelPair(h.a, h.b) }
