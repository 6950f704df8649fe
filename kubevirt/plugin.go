package kubevirt

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"

	"libvirt.org/go/libvirtxml"

	"github.com/veloce-io/veloce/control"
)

// Defaults.
const (
	// DefaultBinding is the binding plugin's name in the KubeVirt CR and
	// in VMI interfaces (binding: {name: veloce}).
	DefaultBinding = "veloce"
	// DefaultSocketDir is where QEMU, in virt-launcher's compute
	// container, creates the vhost-user sockets.
	DefaultSocketDir = "/var/run/veloce/vms"
	// HookSocketDir is where virt-launcher looks for hook sidecars'
	// sockets.
	HookSocketDir = "/var/run/kubevirt-hooks"
	// AliasPrefix is KubeVirt's prefix for the libvirt alias of a VMI
	// interface (user-defined aliases start with "ua-").
	AliasPrefix = "ua-"
	// maxSocketPath is the longest unix socket path (sun_path less the
	// terminating NUL).
	maxSocketPath = 107
)

// Errors.
var (
	// ErrBadDomain is a domain XML that does not parse.
	ErrBadDomain = errors.New("kubevirt: domain XML does not parse")
	// ErrBadVMI is a VMI that does not parse as JSON.
	ErrBadVMI = errors.New("kubevirt: VMI JSON does not parse")
	// ErrModel is an interface with a model other than virtio.
	ErrModel = errors.New("kubevirt: vhost-user interfaces are virtio only")
)

// Options configure the plugin.
type Options struct {
	// Binding is the binding name VMI interfaces use; default
	// DefaultBinding.
	Binding string
	// SocketDir is the socket directory as QEMU sees it; default
	// DefaultSocketDir.
	SocketDir string
	// HostSocketDir is the same directory as veloced sees it (its
	// hostPath); default SocketDir. Used only with Control.
	HostSocketDir string
	// Control, if set, is the veloced the plugin registers ports with
	// (add-port --client at OnDefineDomain, del-port at Shutdown).
	Control *control.Client
	// Queues caps the queue pairs of a multiqueue interface (the VMI's
	// networkInterfaceMultiqueue: one per vCPU); default 8.
	Queues int
	// Logger receives the plugin's events; nil discards.
	Logger *slog.Logger
}

// Plugin mutates domains; it is safe for concurrent use.
type Plugin struct {
	opts Options

	mu sync.Mutex
	// ports are the ports registered with veloced.
	ports map[string]bool // +checklocks:mu
}

// New returns a plugin.
func New(opts Options) *Plugin {
	if opts.Binding == "" {
		opts.Binding = DefaultBinding
	}
	if opts.SocketDir == "" {
		opts.SocketDir = DefaultSocketDir
	}
	if opts.HostSocketDir == "" {
		opts.HostSocketDir = opts.SocketDir
	}
	if opts.Queues <= 0 {
		opts.Queues = 8
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Plugin{opts: opts, ports: map[string]bool{}}
}

// vmi is the part of a VirtualMachineInstance the plugin reads.
type vmi struct {
	Metadata struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec struct {
		Domain struct {
			CPU *struct {
				Cores   uint32 `json:"cores"`
				Sockets uint32 `json:"sockets"`
				Threads uint32 `json:"threads"`
			} `json:"cpu"`
			Devices struct {
				Interfaces []struct {
					Name       string `json:"name"`
					MacAddress string `json:"macAddress"`
					Model      string `json:"model"`
					Binding    *struct {
						Name string `json:"name"`
					} `json:"binding"`
				} `json:"interfaces"`
				NetworkInterfaceMultiqueue *bool `json:"networkInterfaceMultiqueue"`
			} `json:"devices"`
		} `json:"domain"`
	} `json:"spec"`
}

// Port is one vhost-user interface the plugin put into a domain.
type Port struct {
	// Name is the veloced port name (the socket's base name less .sock).
	Name string
	// Interface is the VMI interface's name.
	Interface string
	// Socket is the socket path as QEMU sees it.
	Socket string
	// HostSocket is the socket path as veloced sees it.
	HostSocket string
	// Queues is the interface's queue pairs.
	Queues int
}

var plainName = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]*$`)

// SocketName is the socket file name for a VMI interface:
// NAMESPACE_VMI_IFACE.sock, or vm-HASH.sock (a SHA-256 of the three
// names) when a name has other characters than [a-z0-9.-] or the path in
// dir would be too long for a unix socket.
func SocketName(dir, namespace, name, iface string) string {
	n := namespace + "_" + name + "_" + iface + ".sock"
	if plainName.MatchString(namespace) && plainName.MatchString(name) && plainName.MatchString(iface) &&
		len(filepath.Join(dir, n)) <= maxSocketPath {
		return n
	}
	h := sha256.Sum256([]byte(namespace + "\x00" + name + "\x00" + iface))
	return "vm-" + hex.EncodeToString(h[:12]) + ".sock"
}

// Mutate returns domainXML with the VMI's Veloce interfaces as vhost-user
// interfaces and shared memfd memory, and the ports it made. A VMI with
// no Veloce interface leaves the domain as it was (and no ports). It
// returns ErrBadDomain, ErrBadVMI or ErrModel (wrapped) for input it
// cannot use.
func (p *Plugin) Mutate(domainXML, vmiJSON []byte) ([]byte, []Port, error) {
	var v vmi
	if err := json.Unmarshal(vmiJSON, &v); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadVMI, err)
	}
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(string(domainXML)); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadDomain, err)
	}
	queues := 1
	devs := &v.Spec.Domain.Devices
	if mq := devs.NetworkInterfaceMultiqueue; mq != nil && *mq {
		vcpus := uint64(1)
		if c := v.Spec.Domain.CPU; c != nil {
			vcpus = uint64(max(c.Cores, 1)) * uint64(max(c.Sockets, 1)) * uint64(max(c.Threads, 1))
			if c.Cores > 1<<16 || c.Sockets > 1<<16 || c.Threads > 1<<16 {
				vcpus = uint64(p.opts.Queues)
			}
		}
		queues = int(min(vcpus, uint64(p.opts.Queues)))
	}
	var ports []Port
	for _, ifc := range devs.Interfaces {
		if ifc.Binding == nil || ifc.Binding.Name != p.opts.Binding {
			continue
		}
		if ifc.Model != "" && ifc.Model != "virtio" {
			return nil, nil, fmt.Errorf("interface %s: model %q: %w (drop the model or set it to virtio)", ifc.Name, ifc.Model, ErrModel)
		}
		sock := SocketName(p.opts.SocketDir, v.Metadata.Namespace, v.Metadata.Name, ifc.Name)
		port := Port{Name: strings.TrimSuffix(sock, ".sock"), Interface: ifc.Name,
			Socket: path.Join(p.opts.SocketDir, sock), HostSocket: path.Join(p.opts.HostSocketDir, sock), Queues: queues}
		ports = append(ports, port)
		di := libvirtxml.DomainInterface{
			Alias: &libvirtxml.DomainAlias{Name: AliasPrefix + ifc.Name},
			Model: &libvirtxml.DomainInterfaceModel{Type: "virtio"},
			Source: &libvirtxml.DomainInterfaceSource{VHostUser: &libvirtxml.DomainInterfaceSourceVHostUser{
				Chardev: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Path: port.Socket, Mode: "server"}},
			}},
		}
		if queues > 1 {
			di.Driver = &libvirtxml.DomainInterfaceDriver{Queues: uint(queues)}
		}
		if ifc.MacAddress != "" {
			di.MAC = &libvirtxml.DomainInterfaceMAC{Address: ifc.MacAddress}
		}
		if dom.Devices == nil {
			dom.Devices = &libvirtxml.DomainDeviceList{}
		}
		replaced := false
		for i := range dom.Devices.Interfaces {
			old := &dom.Devices.Interfaces[i]
			if old.Alias != nil && old.Alias.Name == di.Alias.Name {
				// Keep what KubeVirt placed (PCI address, boot order, ACPI index).
				di.Address, di.Boot, di.ACPI = old.Address, old.Boot, old.ACPI
				if di.MAC == nil {
					di.MAC = old.MAC
				}
				*old = di
				replaced = true
				break
			}
		}
		if !replaced {
			dom.Devices.Interfaces = append(dom.Devices.Interfaces, di)
		}
	}
	if len(ports) == 0 {
		return domainXML, nil, nil
	}
	if dom.MemoryBacking == nil {
		dom.MemoryBacking = &libvirtxml.DomainMemoryBacking{}
	}
	dom.MemoryBacking.MemorySource = &libvirtxml.DomainMemorySource{Type: "memfd"}
	dom.MemoryBacking.MemoryAccess = &libvirtxml.DomainMemoryAccess{Mode: "shared"}
	out, err := dom.Marshal()
	if err != nil {
		return nil, nil, fmt.Errorf("marshal domain: %w", err)
	}
	return []byte(out), ports, nil
}

// OnDefineDomain is the hook: Mutate, then (with Options.Control) the
// ports' registration with veloced. A VMI without a Veloce interface
// passes unchanged.
func (p *Plugin) OnDefineDomain(ctx context.Context, domainXML, vmiJSON []byte) ([]byte, error) {
	out, ports, err := p.Mutate(domainXML, vmiJSON)
	if err != nil {
		p.opts.Logger.Error("define domain", "err", err)
		return nil, err
	}
	for _, port := range ports {
		p.opts.Logger.Info("vhost-user interface", "interface", port.Interface, "socket", port.Socket, "port", port.Name, "queues", port.Queues)
		if p.opts.Control == nil {
			continue
		}
		_, err := p.opts.Control.AddPort(ctx, control.AddPortRequest{Name: port.Name, Socket: port.HostSocket, Client: true, Queues: port.Queues})
		if err != nil {
			var ae *control.APIError
			// A sidecar restarted in the same pod finds its ports there.
			if !errors.As(err, &ae) || !strings.Contains(ae.Message, "port exists") {
				return nil, fmt.Errorf("register port %s with veloced at %s: %w (is veloced running, and its control socket mounted into this sidecar?)", port.Name, p.opts.Control.Socket(), err)
			}
		}
		p.mu.Lock()
		p.ports[port.Name] = true
		p.mu.Unlock()
	}
	return out, nil
}

// Shutdown removes the ports OnDefineDomain registered with veloced
// (nothing without Options.Control). It returns the first error.
func (p *Plugin) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	var ports []string
	for name := range p.ports {
		ports = append(ports, name)
	}
	clear(p.ports)
	p.mu.Unlock()
	sort.Strings(ports)
	var first error
	for _, name := range ports {
		if _, err := p.opts.Control.DelPort(ctx, control.DelPortRequest{Name: name}); err != nil && first == nil {
			first = fmt.Errorf("remove port %s from veloced: %w", name, err)
		}
		p.opts.Logger.Info("port removed", "port", name)
	}
	return first
}
