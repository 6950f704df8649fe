package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"text/tabwriter"

	"github.com/veloce-io/veloce/control"
)

// The AF_XDP part of velocectl remote: the interface, the socket's mode
// and the program's, and the counters, from the stats as the client
// decodes them (a map). (cmd/veloced's TestXDPDaemonShowsModeAndDetaches
// runs velocectl's client against a real XDP daemon.)
func TestRemoteShowsXDP(t *testing.T) {
	raw := `{"interface":"eth1","queue":2,"mode":"copy","attach":"native","busy_poll":true,"rx_packets":1000,"rx_bytes":64000,
		"tx_packets":2000,"tx_bytes":128000,"dropped":{"checksum":3,"other-port":4},"kernel_dropped":5,"rx_ring_full":6,"fill_ring_empty":7,
		"tx_full":8,"too_long":9,"unresolved":10,"solicits":11,"neighbours":1,"sleeps":12,"kicks":13}`
	var stats any
	if err := json.Unmarshal([]byte(raw), &stats); err != nil {
		t.Fatal(err)
	}
	info := control.RemoteInfo{Datapaths: []control.DatapathInfo{{Name: "udp", Addr: "10.0.0.1:7000"}, {Name: "xdp", Addr: "10.77.0.1:7000", Stats: stats}}}
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	printXDP(tw, info)
	tw.Flush()
	out := b.String()
	for _, want := range []string{"XDP INTERFACE", "eth1           2      10.77.0.1:7000  copy  native  true       1000  2000  7        5",
		"eth1: 2000 sent (128000 bytes), 1000 received (64000 bytes); dropped: checksum 3, other-port 4",
		"6 RX ring full, 7 fill ring empty", "8 TX full, 9 too long, 10 unresolved", "12 sleeps, 13 kicks"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
	b.Reset()
	printXDP(tw, control.RemoteInfo{Datapaths: []control.DatapathInfo{{Name: "udp"}}})
	tw.Flush()
	if b.Len() != 0 {
		t.Errorf("output without XDP: %q", b.String())
	}
}
