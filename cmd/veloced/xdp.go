package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/plugins/xdp"
)

// xdpOpts are the AF_XDP datapath's flags (plugins/xdp).
type xdpOpts struct {
	iface    string        // --xdp IFACE[:QUEUE]
	addr     string        // --xdp-addr
	mode     string        // --xdp-mode
	attach   string        // --xdp-attach
	busyPoll time.Duration // --xdp-busy-poll
}

// xdpHint is what an operator can do when XDP does not come up.
const xdpHint = "run veloced as root (or with CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF), check that no other XDP program holds the interface (ip link show IFACE), try --xdp-attach generic or --xdp-mode copy, or drop --xdp"

func xdpFlags(fs *flag.FlagSet) *xdpOpts {
	o := &xdpOpts{}
	fs.StringVar(&o.iface, "xdp", "", "AF_XDP datapath on this network interface and RX/TX queue (IFACE or IFACE:QUEUE, default queue 0), e.g. eth1 or eth1:2. Streams asking for acceleration and frugal resource use (or acceleration where the host has no RDMA or DPDK) leave and enter through it; an XDP program passes every frame but the datapath's UDP port to the kernel, so ARP, ping and ssh keep working on the interface. If XDP cannot attach, veloced logs why and such streams fall back to kernel UDP with the policy's warning")
	fs.StringVar(&o.addr, "xdp-addr", "", "the AF_XDP datapath's IPv4 address and link prefix (e.g. 10.0.1.1/24); default: the interface's first IPv4 address. Its UDP port is --listen's, or 7000. Give an address the kernel has on the interface (the kernel answers ARP for it)")
	fs.StringVar(&o.mode, "xdp-mode", "auto", "AF_XDP socket mode: auto (zero-copy where the driver supports it, else copy), copy, or zerocopy (fail, and fall back to UDP, where the driver cannot)")
	fs.StringVar(&o.attach, "xdp-attach", "auto", "where the XDP program runs: auto (in the driver, else generic), native (driver only) or generic (after the driver, any interface)")
	fs.DurationVar(&o.busyPoll, "xdp-busy-poll", 0, "busy polling for time-sensitive deployments: SO_PREFER_BUSY_POLL and SO_BUSY_POLL for this long (e.g. 50us), and the polling thread spins that long before sleeping; 0 (default): the thread sleeps in poll(2) as soon as it is idle (frugal)")
	return o
}

// enabled reports whether --xdp was given.
func (o *xdpOpts) enabled() bool { return o.iface != "" }

// options turns the flags into plugin options; errors name the flag.
func (o *xdpOpts) options(port uint16, log *slog.Logger) (xdp.Options, error) {
	opts := xdp.Options{Port: port, Logger: log}
	if !o.enabled() {
		for name, set := range map[string]bool{"--xdp-addr": o.addr != "", "--xdp-mode": o.mode != "auto", "--xdp-attach": o.attach != "auto", "--xdp-busy-poll": o.busyPoll != 0} {
			if set {
				return opts, fmt.Errorf("%s needs --xdp IFACE[:QUEUE]", name)
			}
		}
		return opts, nil
	}
	name, queue, hasQueue := strings.Cut(o.iface, ":")
	if name == "" || strings.ContainsAny(name, "/ \t") || len(name) > 15 {
		return opts, fmt.Errorf("--xdp %q: want an interface name (at most 15 characters) and an optional :QUEUE, e.g. eth1 or eth1:2", o.iface)
	}
	opts.Interface = name
	if hasQueue {
		q, err := strconv.ParseUint(queue, 10, 16)
		if err != nil {
			return opts, fmt.Errorf("--xdp %q: queue %q is not a number from 0 to 65535", o.iface, queue)
		}
		opts.Queue = int(q)
	}
	if o.addr != "" {
		pa, err := netip.ParsePrefix(o.addr)
		if err != nil || !pa.Addr().Unmap().Is4() {
			return opts, fmt.Errorf("--xdp-addr %q: want an IPv4 address with its prefix, e.g. 10.0.1.1/24", o.addr)
		}
		opts.Addr = netip.PrefixFrom(pa.Addr().Unmap(), pa.Bits())
	}
	switch o.mode {
	case "auto":
		opts.Bind = xdp.BindAuto
	case "copy":
		opts.Bind = xdp.BindCopy
	case "zerocopy", "zero-copy":
		opts.Bind = xdp.BindZeroCopy
	default:
		return opts, fmt.Errorf("--xdp-mode %q: want auto, copy or zerocopy", o.mode)
	}
	switch o.attach {
	case "auto":
		opts.Attach = xdp.AttachAuto
	case "native", "driver":
		opts.Attach = xdp.AttachNative
	case "generic", "skb":
		opts.Attach = xdp.AttachGeneric
	default:
		return opts, fmt.Errorf("--xdp-attach %q: want auto, native or generic", o.attach)
	}
	if o.busyPoll < 0 {
		return opts, fmt.Errorf("--xdp-busy-poll %v: negative; give 0 (off) or a duration such as 50us", o.busyPoll)
	}
	if o.busyPoll > 0 && o.busyPoll < time.Microsecond {
		return opts, fmt.Errorf("--xdp-busy-poll %v: below the kernel's unit (1us); give 0 (off) or a duration such as 50us", o.busyPoll)
	}
	if o.busyPoll > time.Second {
		return opts, fmt.Errorf("--xdp-busy-poll %v: more than 1s of spinning per poll; give a duration such as 50us", o.busyPoll)
	}
	opts.BusyPoll = o.busyPoll
	return opts, nil
}

// apply starts the AF_XDP datapath --xdp asks for and adds it to
// opts.Runtime.Remote.Accelerated. port is the UDP port of the daemon's
// wire (--listen's, or 7000). A bad flag is an error naming it; when the
// system cannot give XDP (no permission, no driver support, the program
// rejected, no such interface), apply logs why and returns nil: streams
// asking for acceleration then fall back to UDP with the policy's warning.
// The daemon's runtime closes the plugin at shutdown, which detaches the
// program.
func (o *xdpOpts) apply(opts *backend.DaemonOptions, port uint16, log *slog.Logger) error {
	xo, err := o.options(port, log)
	if err != nil || !o.enabled() {
		return err
	}
	p, err := xdp.New(xo)
	if err != nil {
		var ue *xdp.UnavailableError
		if errors.As(err, &ue) {
			log.Warn("AF_XDP datapath unavailable; streams asking for acceleration will use another accelerated datapath or kernel UDP",
				"interface", ue.Interface, "step", ue.Reason, "err", ue.Err, "hint", xdpHint)
			return nil
		}
		// Options the plugin refused (no address on the interface, ...).
		return fmt.Errorf("--xdp %s: %w (give --xdp-addr when the interface has no IPv4 address)", o.iface, err)
	}
	st := p.Stats()
	log.Info("AF_XDP datapath", "interface", st.Interface, "queue", st.Queue, "addr", p.LocalAddr(),
		"mode", st.Mode, "attach", st.Attach, "busy_poll", st.BusyPoll)
	opts.Runtime.Remote.Accelerated = append(opts.Runtime.Remote.Accelerated, p)
	return nil
}
