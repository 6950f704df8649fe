package backend

import (
	"slices"

	"github.com/veloce-io/veloce/control"
)

// StreamOptions are a stream's QoS hints (the INSANE paper, section 5.2).
type StreamOptions = control.StreamOptions

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

// honoured reports, for each QoS option, whether the runtime acts on it
// on a datapath (DESIGN.md, "Streams and QoS"; issue 13): an option asked
// for and not honoured gives the stream a warning (returned to the
// application, logged once, shown in velocectl streams), whatever the
// Policy chose. Acceleration and Frugal are the policy's own choice (its
// warning covers them); Reliable is carried by the runtime's
// acknowledgements (reliable.go) on every datagram datapath and by RC on
// RDMA; TimeSensitive is honoured when the daemon has a gate schedule
// (scheduled: RemoteOptions.Schedule; the runtime's TX scheduler gates
// every datapath, txsched.go). When a datapath starts honouring an option,
// change this function and its test.
func unhonoured(opts StreamOptions, datapath string, scheduled bool) string {
	if opts.TimeSensitive && !scheduled {
		return "time-sensitive scheduling needs an 802.1Qbv gate schedule (veloced --tsn-schedule), and this daemon has none: the stream is sent FIFO on " + datapath
	}
	return ""
}

// joinWarnings joins non-empty warnings with "; ".
func joinWarnings(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "; " + b
}
