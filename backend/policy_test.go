package backend

import (
	"strings"
	"testing"
)

func TestDefaultPolicy(t *testing.T) {
	all := []string{DatapathUDP, DatapathRDMA, DatapathDPDK, DatapathXDP}
	for _, tc := range []struct {
		name      string
		opts      StreamOptions
		available []string
		want      string
		warn      string
	}{
		{"no acceleration", StreamOptions{}, all, DatapathUDP, ""},
		{"rdma first", StreamOptions{Acceleration: true}, all, DatapathRDMA, ""},
		{"dpdk when resources do not matter", StreamOptions{Acceleration: true}, []string{DatapathUDP, DatapathDPDK, DatapathXDP}, DatapathDPDK, ""},
		{"xdp when frugal", StreamOptions{Acceleration: true, Frugal: true}, []string{DatapathUDP, DatapathDPDK, DatapathXDP}, DatapathXDP, ""},
		{"xdp for acceleration without rdma or dpdk", StreamOptions{Acceleration: true}, []string{DatapathUDP, DatapathXDP}, DatapathXDP, ""},
		{"xdp for frugal acceleration without rdma or dpdk", StreamOptions{Acceleration: true, Frugal: true}, []string{DatapathUDP, DatapathXDP}, DatapathXDP, ""},
		{"dpdk for frugal, warned", StreamOptions{Acceleration: true, Frugal: true}, []string{DatapathUDP, DatapathDPDK}, DatapathDPDK, "frugal"},
		{"nothing accelerated: udp, warned", StreamOptions{Acceleration: true}, []string{DatapathUDP}, DatapathUDP, "no accelerated datapath"},
	} {
		got, warn := DefaultPolicy{}.Choose(tc.opts, tc.available)
		if got != tc.want || (tc.warn == "") != (warn == "") || !strings.Contains(warn, tc.warn) {
			t.Errorf("%s: got %s %q, want %s %q", tc.name, got, warn, tc.want, tc.warn)
		}
	}
}
