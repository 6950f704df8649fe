package main

import (
	"encoding/xml"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/veloce-io/veloce/control"
	"libvirt.org/go/libvirtxml"
)

func init() { register(newLibvirtXMLCmd) }

// tcgNote is what libvirt-xml says on stderr: the XML itself carries no
// comments, so that it pastes and parses as it is.
const tcgNote = `velocectl: note: under TCG (no KVM), QEMU 7.2 crashes with a vhost-user NIC unless its MSI-X is off: give the device vectors=0 with <qemu:override> (libvirt-xml --tcg prints it; the <domain> element needs xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0')`

func newLibvirtXMLCmd(a *app) *cobra.Command {
	var tcg bool
	c := &cobra.Command{
		Use:     "libvirt-xml PORT [--tcg]",
		Short:   "Print the libvirt domain XML that attaches a VM to a port",
		GroupID: groupShow,
		Long: `Print the libvirt XML that attaches a VM to the port PORT, built with
libvirt.org/go/libvirtxml:

  - the <interface type='vhostuser'> element for the domain's <devices>: the
    port's socket, in the mode opposite to veloced's (veloced listens: libvirt's
    source mode is 'client'; veloced connects: 'server'), <model type='virtio'/>,
    <driver queues='N'/> for a multiqueue port, <rom enabled='no'/>, and the
    alias ua-veloce-PORT;
  - the <memoryBacking> element the domain needs (vhost-user maps guest memory:
    memfd, shared);
  - with --tcg, the <qemu:override> element (last in <domain>) that gives the
    device vectors=0, which QEMU 7.2 needs under TCG.

Elements are separated by an empty line; a note goes to stderr. Output is XML
whatever -o says.`,
		Example: `  velocectl libvirt-xml vm0
  velocectl libvirt-xml vm0 --tcg > vm0-net.xml`,
		Args:              argsRange(1, 1, "PORT (the port the VM attaches to)"),
		ValidArgsFunction: a.completePorts(false),
		RunE: func(c *cobra.Command, args []string) error {
			if a.output == "json" {
				return usageErrorf(c, "-o json: libvirt-xml prints XML; leave -o out")
			}
			ports, err := a.ports(args)
			if err != nil {
				return err
			}
			frags, err := libvirtFragments(ports[0], tcg)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, strings.Join(frags, "\n\n"))
			fmt.Fprintln(a.stderr, tcgNote)
			return nil
		},
	}
	c.Flags().BoolVar(&tcg, "tcg", false, "also print the <qemu:override> that turns the NIC's MSI-X off (QEMU 7.2 under TCG)")
	return c
}

// libvirtAlias is the user alias (libvirt wants "ua-" and [A-Za-z0-9_-])
// the interface gets, for <qemu:override> to name it.
func libvirtAlias(port string) string {
	return "ua-veloce-" + strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, port)
}

// libvirtFragments returns the XML elements that attach a VM to p: the
// interface, the memory backing and, with tcg, the QEMU override.
func libvirtFragments(p control.PortInfo, tcg bool) ([]string, error) {
	mode := "client" // veloced listens
	if p.Mode == "client" {
		mode = "server"
	}
	iface := libvirtxml.DomainInterface{
		Source: &libvirtxml.DomainInterfaceSource{VHostUser: &libvirtxml.DomainInterfaceSourceVHostUser{
			Chardev: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Path: p.Socket, Mode: mode}},
		}},
		Model: &libvirtxml.DomainInterfaceModel{Type: "virtio"},
		ROM:   &libvirtxml.DomainROM{Enabled: "no"},
		Alias: &libvirtxml.DomainAlias{Name: libvirtAlias(p.Name)},
	}
	if p.MaxQueues > 1 {
		iface.Driver = &libvirtxml.DomainInterfaceDriver{Queues: uint(p.MaxQueues)}
	}
	ifaceXML, err := iface.Marshal()
	if err != nil {
		return nil, fmt.Errorf("libvirt interface XML: %w", err)
	}
	mb := libvirtxml.DomainMemoryBacking{
		MemorySource: &libvirtxml.DomainMemorySource{Type: "memfd"},
		MemoryAccess: &libvirtxml.DomainMemoryAccess{Mode: "shared"},
	}
	mbXML, err := xml.MarshalIndent(struct {
		XMLName xml.Name `xml:"memoryBacking"`
		libvirtxml.DomainMemoryBacking
	}{DomainMemoryBacking: mb}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("libvirt memoryBacking XML: %w", err)
	}
	frags := []string{ifaceXML, string(mbXML)}
	if tcg {
		ov := libvirtxml.DomainQEMUOverride{Devices: []libvirtxml.DomainQEMUOverrideDevice{{
			Alias: libvirtAlias(p.Name),
			Frontend: libvirtxml.DomainQEMUOverrideFrontend{Properties: []libvirtxml.DomainQEMUOverrideProperty{
				{Name: "vectors", Type: "unsigned", Value: "0"},
			}},
		}}}
		ovXML, err := xml.MarshalIndent(&ov, "", "  ")
		if err != nil {
			return nil, fmt.Errorf("libvirt qemu:override XML: %w", err)
		}
		frags = append(frags, string(ovXML))
	}
	return frags, nil
}
