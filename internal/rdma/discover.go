package rdma

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/Mellanox/rdmamap"
)

// Discovery works from sysfs and netlink (github.com/Mellanox/rdmamap) and
// needs neither cgo nor the verbs library, so it works in every build.

// SysfsDir is where the kernel lists RDMA devices.
const SysfsDir = "/sys/class/infiniband"

// DeviceNames lists the RDMA devices the kernel has (none without RDMA).
func DeviceNames() []string { return rdmamap.GetRdmaDeviceList() }

// DeviceForNetdev returns the RDMA device whose port sits on the network
// interface netdev (for RoCE: the netdev in the port's GID attributes). It
// returns an error wrapping ErrNoDevice when there is none.
func DeviceForNetdev(netdev string) (string, error) {
	if len(DeviceNames()) == 0 {
		return "", fmt.Errorf("rdma: device for %s: %w (the kernel has no RDMA devices)", netdev, ErrNoDevice)
	}
	d, err := rdmamap.GetRdmaDeviceForNetdevice(netdev)
	if err != nil || d == "" {
		return "", fmt.Errorf("rdma: device for %s: %w (%v)", netdev, ErrNoDevice, err)
	}
	return d, nil
}

// NetdevForAddr returns the network interface that has the address ip.
func NetdevForAddr(ip netip.Addr) (string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return "", fmt.Errorf("rdma: interfaces: %w", err)
	}
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if x, ok := netip.AddrFromSlice(n.IP); ok && x.Unmap() == ip.Unmap() {
					return ifc.Name, nil
				}
			}
		}
	}
	return "", fmt.Errorf("rdma: no interface has %v: %w", ip, ErrNoDevice)
}

// GIDType returns the type of GID table entry index of device dev's port
// ("RoCE v2", "IB/RoCE v1") from sysfs; empty entries have none (an error).
func GIDType(dev string, port uint8, index int) (string, error) {
	b, err := os.ReadFile(filepath.Join(SysfsDir, dev, "ports", fmt.Sprint(port), "gid_attrs", "types", fmt.Sprint(index)))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// GIDForAddr returns the GID RoCE v2 uses for ip: ip itself for IPv6,
// the IPv4-mapped address for IPv4.
func GIDForAddr(ip netip.Addr) GID {
	return GID(netip.AddrFrom16(ip.As16()).As16())
}

// DeviceNetdevs returns the network interfaces under device dev's ports
// (for RoCE, the netdevs its GID table entries are on), each once, in
// port and table order; none for an InfiniBand device or one not found.
func DeviceNetdevs(dev string) []string {
	var out []string
	for _, port := range rdmamap.GetPorts(dev) {
		files, _ := filepath.Glob(filepath.Join(SysfsDir, dev, "ports", port, "gid_attrs", "ndevs", "*"))
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				continue // an empty table entry reads as EINVAL
			}
			if n := strings.TrimSpace(string(b)); n != "" && !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	return out
}

// Candidate is an RDMA device and an IPv4 address (with its prefix) on
// one of its netdevs: what the RDMA datapath needs to come up.
type Candidate struct {
	Device string
	Netdev string
	Addr   netip.Prefix
}

// Candidates lists, for every RDMA device, the IPv4 addresses of its
// netdevs; when only is valid, just that address (the daemon's listen
// address). The GID table is checked when the device is opened (a
// RoCE v2 entry for the address must exist).
func Candidates(only netip.Addr) []Candidate {
	var out []Candidate
	for _, dev := range DeviceNames() {
		for _, nd := range DeviceNetdevs(dev) {
			ifc, err := net.InterfaceByName(nd)
			if err != nil {
				continue
			}
			addrs, _ := ifc.Addrs()
			for _, a := range addrs {
				n, ok := a.(*net.IPNet)
				if !ok {
					continue
				}
				ip, ok := netip.AddrFromSlice(n.IP)
				if !ok || !ip.Unmap().Is4() {
					continue
				}
				ip = ip.Unmap()
				if only.IsValid() && ip != only.Unmap() {
					continue
				}
				bits, _ := n.Mask.Size()
				out = append(out, Candidate{Device: dev, Netdev: nd, Addr: netip.PrefixFrom(ip, bits)})
			}
		}
	}
	return out
}

// GIDIndex returns the index of the RoCE v2 entry for ip in device dev's
// port GID table, read from sysfs (what perftest's -x wants). It returns
// an error wrapping ErrNoGID when there is none.
func GIDIndex(dev string, port uint8, ip netip.Addr) (int, error) {
	want := GIDForAddr(ip)
	dir := filepath.Join(SysfsDir, dev, "ports", fmt.Sprint(port), "gids")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("rdma: GID table of %s port %d: %w", dev, port, err)
	}
	for i := range len(ents) {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprint(i)))
		if err != nil {
			continue
		}
		g, err := ParseGID(strings.TrimSpace(string(b)))
		if err != nil || g != want {
			continue
		}
		if t, err := GIDType(dev, port, i); err == nil && t == "RoCE v2" {
			return i, nil
		}
	}
	return 0, fmt.Errorf("rdma: %s port %d, %v: %w", dev, port, ip, ErrNoGID)
}

// ParseGID parses a GID as sysfs writes it (eight groups of four hex
// digits, "0000:0000:0000:0000:0000:ffff:0a4d:0001") or any IPv6 form.
func ParseGID(s string) (GID, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is6() && !a.Is4In6() {
		return GID{}, fmt.Errorf("rdma: bad GID %q", s)
	}
	return GID(a.As16()), nil
}
