package kubevirt_test

import (
	"os"
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"

	"github.com/veloce-io/veloce/kubevirt"
)

// FuzzMutate: any domain and VMI either fail with an error or give a
// domain that parses, with memfd shared memory whenever a port was made,
// and every port's socket inside the socket directory.
func FuzzMutate(f *testing.F) {
	dom, err := os.ReadFile("testdata/domain.xml")
	if err != nil {
		f.Fatal(err)
	}
	vmi, err := os.ReadFile("testdata/vmi.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(dom, vmi)
	f.Add([]byte("<domain type='kvm'><name>x</name></domain>"), []byte(`{"metadata":{"name":"a/b","namespace":".."},"spec":{"domain":{"devices":{"interfaces":[{"name":"../x","binding":{"name":"veloce"}}]}}}}`))
	f.Add([]byte("<domain/>"), []byte(`{"spec":{"domain":{"cpu":{"cores":4294967295,"sockets":4294967295},"devices":{"networkInterfaceMultiqueue":true,"interfaces":[{"name":"a","binding":{"name":"veloce"}}]}}}}`))
	p := kubevirt.New(kubevirt.Options{})
	f.Fuzz(func(t *testing.T, dom, vmi []byte) {
		out, ports, err := p.Mutate(dom, vmi)
		if err != nil {
			return
		}
		if len(ports) == 0 {
			return
		}
		var d libvirtxml.Domain
		if err := d.Unmarshal(string(out)); err != nil {
			t.Fatalf("mutated domain does not parse: %v", err)
		}
		if d.MemoryBacking == nil || d.MemoryBacking.MemorySource == nil || d.MemoryBacking.MemorySource.Type != "memfd" {
			t.Fatalf("no memfd backing: %+v", d.MemoryBacking)
		}
		for _, port := range ports {
			rest, ok := strings.CutPrefix(port.Socket, kubevirt.DefaultSocketDir+"/")
			if !ok || strings.Contains(rest, "/") || len(port.Socket) > 107 {
				t.Fatalf("socket %q outside %s or too long", port.Socket, kubevirt.DefaultSocketDir)
			}
			if port.Queues < 1 || port.Queues > 8 {
				t.Fatalf("queues %d", port.Queues)
			}
		}
	})
}
