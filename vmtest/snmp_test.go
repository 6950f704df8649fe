package vmtest

import "testing"

func TestUDPCounters(t *testing.T) {
	out := "noise\n Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\r\n" +
		"Udp: 223624 0 9739 240506 9739 15 0 0 0\n==veloce== exit\n"
	c := UDPCounters(out)
	if c["InDatagrams"] != 223624 || c["RcvbufErrors"] != 9739 || c["SndbufErrors"] != 15 || len(c) != 9 {
		t.Fatalf("counters %v", c)
	}
	for _, bad := range []string{"", "Udp: a b\n", "Udp: a b\nUdp: 1\n", "Udp: 1 2\n"} {
		if c := UDPCounters(bad); c != nil {
			t.Errorf("%q: %v, want none", bad, c)
		}
	}
}
