package backend

import (
	"slices"
)

// StreamOptions are a stream's QoS hints (the INSANE paper, section 5.2).
type StreamOptions struct {
	// Acceleration asks for a kernel-bypass datapath.
	Acceleration bool `json:"acceleration"`
	// Frugal says resource use matters (no core spinning on DPDK).
	Frugal bool `json:"frugal"`
	// TimeSensitive schedules the stream by the 802.1Qbv gate schedule
	// instead of FIFO.
	TimeSensitive bool `json:"time_sensitive"`
	// Reliable asks for reliable, in-order delivery.
	Reliable bool `json:"reliable"`
}

// Datapath names, as plugins report them.
const (
	DatapathUDP  = "udp"
	DatapathRDMA = "rdma"
	DatapathDPDK = "dpdk"
	DatapathXDP  = "xdp"
)

// Policy maps a stream's options to one of the datapaths the host has. An
// operator may replace the default (RuntimeOptions.Policy).
type Policy interface {
	// Choose returns the datapath for opts among available (never empty:
	// kernel UDP is always there) and, when the choice falls short of
	// what opts asked for, a warning the application is shown.
	Choose(opts StreamOptions, available []string) (datapath, warning string)
}

// DefaultPolicy is the paper's mapping: no acceleration -> UDP;
// acceleration -> RDMA if the host has it, else DPDK when resources do not
// matter, else AF_XDP; nothing accelerated -> UDP with a warning.
type DefaultPolicy struct{}

var _ Policy = DefaultPolicy{}

// Choose implements Policy.
func (DefaultPolicy) Choose(opts StreamOptions, available []string) (string, string) {
	if !opts.Acceleration {
		return DatapathUDP, ""
	}
	prefs := []string{DatapathRDMA, DatapathDPDK, DatapathXDP}
	if opts.Frugal {
		prefs = []string{DatapathRDMA, DatapathXDP, DatapathDPDK}
	}
	for _, p := range prefs {
		if slices.Contains(available, p) {
			if opts.Frugal && p == DatapathDPDK {
				return p, "resource use should be frugal, but DPDK (polling cores) is the only accelerated datapath on this host"
			}
			return p, ""
		}
	}
	return DatapathUDP, "acceleration requested, but this host has no accelerated datapath (RDMA, DPDK, AF_XDP): using kernel UDP"
}
