package backend

import (
	"net/netip"
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

// TestNoOptionIgnoredSilently (issue 13, item 1): a stream whose options
// are not all honoured on its datapath carries a warning, returned by
// CreateStream and listed by Streams; one whose options are all honoured
// carries none.
func TestNoOptionIgnoredSilently(t *testing.T) {
	rt := NewRuntime(RuntimeOptions{})
	s := rt.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
	for _, tc := range []struct {
		name string
		opts StreamOptions
		warn []string // substrings; none: no warning
	}{
		{"best effort", StreamOptions{}, nil},
		{"reliable is honoured", StreamOptions{Reliable: true}, nil},
		{"frugal alone is honoured", StreamOptions{Frugal: true}, nil},
		{"time-sensitive without a schedule", StreamOptions{TimeSensitive: true}, []string{"802.1Qbv", "--tsn-schedule", "FIFO"}},
		{"both warnings", StreamOptions{Acceleration: true, TimeSensitive: true}, []string{"no accelerated datapath", "; ", "802.1Qbv"}},
	} {
		st, err := s.CreateStream(tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		if (st.Warning == "") != (len(tc.warn) == 0) {
			t.Errorf("%s: warning %q", tc.name, st.Warning)
		}
		for _, w := range tc.warn {
			if !strings.Contains(st.Warning, w) {
				t.Errorf("%s: warning %q lacks %q", tc.name, st.Warning, w)
			}
		}
		var listed string
		for _, info := range rt.Streams() {
			if info.Stream == st.ID {
				listed = info.Warning
			}
		}
		if listed != st.Warning {
			t.Errorf("%s: Streams shows %q, CreateStream returned %q", tc.name, listed, st.Warning)
		}
	}
}
