package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"text/tabwriter"

	"github.com/veloce-io/veloce/control"
)

// The RDMA part of velocectl remote: the device, each peer's queue pair
// with its state, QPN and PSN, and the counters, from the stats as the
// client decodes them (a map). (The VM test in plugins/rdma runs velocectl
// remote against real RDMA daemons.)
func TestRemoteShowsRDMA(t *testing.T) {
	raw := `{"device":"rxe0","netdev":"veth0","device_port":1,"gid_index":1,"gid":"::ffff:10.77.0.1","mtu":1024,"peers":2,"connected":1,
		"tx_messages":200000,"rx_messages":7,"connects":1,"qp_failures":0,"sleeps":3,
		"queue_pairs":[{"peer":"10.77.0.2:7000","qpn":17,"peer_qpn":18,"psn":4660,"peer_psn":22136,"state":"RTS"},{"peer":"10.77.0.3:7000","state":"no-rdma"}]}`
	var stats any
	if err := json.Unmarshal([]byte(raw), &stats); err != nil {
		t.Fatal(err)
	}
	info := control.RemoteInfo{Datapaths: []control.DatapathInfo{{Name: "udp", Addr: "10.77.0.1:7000"}, {Name: "rdma", Addr: "10.77.0.1:7000", Stats: stats}}}
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	printRDMA(tw, info)
	tw.Flush()
	out := b.String()
	for _, want := range []string{"RDMA DEVICE", "veth0", "::ffff:10.77.0.1", "10.77.0.2:7000  RTS", "17", "0x1234", "18", "0x5678",
		"10.77.0.3:7000  no-rdma", "rxe0: 200000 sent, 7 received", "1 connects"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
	b.Reset()
	printRDMA(tw, control.RemoteInfo{Datapaths: []control.DatapathInfo{{Name: "udp"}}})
	tw.Flush()
	if b.Len() != 0 {
		t.Errorf("output without RDMA: %q", b.String())
	}
}
