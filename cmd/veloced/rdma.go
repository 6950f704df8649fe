package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/veloce-io/veloce/backend"
	irdma "github.com/veloce-io/veloce/internal/rdma"
	"github.com/veloce-io/veloce/plugins/rdma"
)

// rdmaOpts are the RDMA datapath's flags.
type rdmaOpts struct {
	dev  string // --rdma: DEVICE, auto or none
	addr string // --rdma-addr
	cpu  int    // --rdma-cpu
}

// rdmaProbeInterval is how often peers without a queue pair are tried.
const rdmaProbeInterval = time.Second

const rdmaHint = "load soft-RoCE (modprobe rdma_rxe; rdma link add rxe0 type rxe netdev eth0) or give the RDMA NIC's netdev an IPv4 address, or use --rdma none"

func rdmaFlags(fs *flag.FlagSet) *rdmaOpts {
	o := &rdmaOpts{}
	fs.StringVar(&o.dev, "rdma", "none", "RDMA datapath: an RDMA device (e.g. rxe0, mlx5_0), auto (every device whose netdev has the daemon's address: --rdma-addr, --listen's, or all the netdevs' IPv4 addresses) or none. Streams asking for acceleration go to peers an RDMA device reaches over RC queue pairs (set up over TCP on the datapath's address and --listen's port, or 7000). A named device that cannot start is an error; with auto, veloced warns and such streams use DPDK, AF_XDP or UDP")
	fs.StringVar(&o.addr, "rdma-addr", "", "the RDMA datapath's IPv4 address and prefix on the device's netdev (e.g. 10.0.2.1/24), when --listen's address is not on it; peers in the prefix are tried over RDMA")
	fs.IntVar(&o.cpu, "rdma-cpu", -1, "pin the RDMA polling thread to this CPU; -1: unpinned")
	return o
}

// enabled reports whether --rdma asks for RDMA.
func (o *rdmaOpts) enabled() bool { return o.dev != "" && o.dev != "none" }

// apply starts the RDMA datapaths --rdma asks for and adds them to
// opts.Runtime.Remote.Accelerated (after --peer is parsed: each datapath
// probes the peers in its subnet for RDMA every rdmaProbeInterval until
// ctx ends). listen is --listen's value. It returns an error naming the
// flag for a bad value or a named device that cannot start; with auto,
// it logs why no RDMA datapath came up and returns nil.
func (o *rdmaOpts) apply(ctx context.Context, opts *backend.DaemonOptions, listen string, log *slog.Logger) error {
	if !o.enabled() {
		if o.addr != "" {
			return errors.New("--rdma-addr needs --rdma DEVICE or --rdma auto")
		}
		return nil
	}
	if o.cpu < -1 || o.cpu >= runtime.NumCPU() {
		return fmt.Errorf("--rdma-cpu: %d is not a CPU of this machine (0-%d)", o.cpu, runtime.NumCPU()-1)
	}
	auto := o.dev == "auto"
	port := uint16(rdma.DefaultPort)
	var only netip.Addr // the daemon's address, when it has one
	if listen != "" {
		la, err := netip.ParseAddrPort(listen)
		if err != nil {
			return fmt.Errorf("--listen: %w", err)
		}
		port = la.Port()
		if !la.Addr().IsUnspecified() {
			only = la.Addr().Unmap()
		}
	}
	var fixed netip.Prefix
	if o.addr != "" {
		var err error
		if fixed, err = netip.ParsePrefix(o.addr); err != nil || !fixed.Addr().Unmap().Is4() {
			return fmt.Errorf("--rdma-addr %q: want an IPv4 address with its prefix, e.g. 10.0.2.1/24", o.addr)
		}
		only = fixed.Addr().Unmap()
	}
	if !rdma.Available() {
		if auto {
			log.Warn("RDMA unavailable: this veloced was built without RDMA (-tags rdma, cgo: make build); streams asking for acceleration use DPDK, AF_XDP or kernel UDP")
			return nil
		}
		return fmt.Errorf("--rdma %s: this veloced was built without RDMA (-tags rdma and cgo); build it with make build, or use --rdma none", o.dev)
	}
	cands := irdma.Candidates(only)
	if fixed.IsValid() {
		// The operator's prefix wins over the netdev's.
		for i := range cands {
			cands[i].Addr = fixed
		}
	}
	if !auto {
		cands = slices.DeleteFunc(cands, func(c irdma.Candidate) bool { return c.Device != o.dev })
	}
	if len(cands) == 0 {
		devs := irdma.DeviceNames()
		where := "the netdevs' IPv4 addresses"
		if only.IsValid() {
			where = only.String()
		}
		switch {
		case len(devs) == 0 && auto:
			log.Warn("no RDMA device: streams asking for acceleration use DPDK, AF_XDP or kernel UDP; " + rdmaHint)
			return nil
		case len(devs) == 0:
			return fmt.Errorf("--rdma %s: no RDMA device on this host: %s", o.dev, rdmaHint)
		case auto:
			log.Warn("no RDMA device has the daemon's address: streams asking for acceleration use DPDK, AF_XDP or kernel UDP",
				"address", where, "devices", strings.Join(devs, ","), "hint", "give --rdma-addr, or --listen an address on an RDMA device's netdev")
			return nil
		case !slices.Contains(devs, o.dev):
			return fmt.Errorf("--rdma %s: no such RDMA device (this host has %s); name one of them, or use --rdma auto", o.dev, strings.Join(devs, ", "))
		default:
			return fmt.Errorf("--rdma %s: its netdev (%s) has no IPv4 address %s; give it one, or --rdma-addr, or --listen an address on it",
				o.dev, dash(strings.Join(irdma.DeviceNetdevs(o.dev), ",")), where)
		}
	}
	started := map[string]bool{}
	for _, c := range cands {
		if started[c.Device] {
			continue // one datapath per device: its first address
		}
		p, err := rdma.New(rdma.Options{Addr: c.Addr, Device: c.Device, Port: port, CPU: o.cpu, Logger: log})
		if err != nil {
			if !auto {
				return fmt.Errorf("--rdma %s: %w; %s", o.dev, err, rdmaHint)
			}
			log.Warn("RDMA device unusable; streams asking for acceleration use other datapaths for its peers", "device", c.Device, "addr", c.Addr, "err", err)
			continue
		}
		started[c.Device] = true
		opts.Runtime.Remote.Accelerated = append(opts.Runtime.Remote.Accelerated, p)
		go p.ProbePeers(ctx, slices.Clone(opts.Runtime.Remote.Peers), rdmaProbeInterval)
		log.Info("RDMA datapath", "device", c.Device, "netdev", c.Netdev, "addr", p.LocalAddr(), "subnet", c.Addr.Masked())
	}
	if len(started) == 0 {
		log.Warn("no RDMA device could start: streams asking for acceleration use DPDK, AF_XDP or kernel UDP", "hint", rdmaHint)
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
