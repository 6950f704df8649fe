package backend

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/wire"
)

// routeDP is a datapath for the routing table alone: nothing is sent
// through it (the datapaths themselves are tested in their packages and
// over real links: plugins/rdma's VM test runs the RDMA routing end to
// end). It reaches the addresses in reach, which a test may change.
type routeDP struct {
	name  string
	reach atomic.Pointer[map[netip.Addr]bool]
}

func newRouteDP(name string, reach ...netip.Addr) *routeDP {
	d := &routeDP{name: name}
	d.set(reach...)
	return d
}

func (d *routeDP) set(reach ...netip.Addr) {
	m := map[netip.Addr]bool{}
	for _, a := range reach {
		m[a] = true
	}
	d.reach.Store(&m)
}

func (d *routeDP) Name() string                                        { return d.name }
func (d *routeDP) LocalAddr() netip.AddrPort                           { return netip.AddrPort{} }
func (d *routeDP) SendBatch(pkts []wire.Packet) (int, error)           { return len(pkts), nil }
func (d *routeDP) RecvBatch([]wire.Packet, time.Duration) (int, error) { return 0, nil }
func (d *routeDP) Close() error                                        { return nil }
func (d *routeDP) Reaches(a netip.Addr) bool                           { return (*d.reach.Load())[a] }
func (d *routeDP) ReachesNow(a netip.Addr) bool                        { return d.Reaches(a) }

// The policy's per-peer half (section "Streams and QoS"): an accelerated
// stream takes RDMA to the peers an RDMA device reaches, else another RDMA
// device, else DPDK, else AF_XDP, else UDP; reach is asked at each message.
func TestRouteFallsBackPerPeer(t *testing.T) {
	a, b, c, d := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.1.2"), netip.MustParseAddr("10.0.2.2"), netip.MustParseAddr("10.0.3.2")
	all := []netip.Addr{a, b, c, d}
	udpDP := newRouteDP(DatapathUDP, all...)
	xdpDP := newRouteDP(DatapathXDP, all...)
	dpdkDP := newRouteDP(DatapathDPDK, c)
	rdma0 := newRouteDP(DatapathRDMA, a)
	rdma1 := newRouteDP(DatapathRDMA, b)
	var peers []netip.AddrPort
	for _, x := range all {
		peers = append(peers, netip.AddrPortFrom(x, 7000))
	}
	rt := NewRuntime(RuntimeOptions{Remote: RemoteOptions{Datapath: udpDP, Accelerated: []Datapath{xdpDP, dpdkDP, rdma0, rdma1}, Peers: peers}})
	rm := rt.remote
	idx := func(dp Datapath) int {
		for _, st := range rm.dps {
			if st.dp == dp {
				return st.index
			}
		}
		t.Fatalf("no datapath %s", dp.Name())
		return -1
	}
	peer := func(x netip.Addr) *peer { return rm.peers.Load().byAddr[netip.AddrPortFrom(x, 7000)] }
	for _, tc := range []struct {
		stream Datapath
		to     netip.Addr
		want   Datapath
	}{
		{rdma0, a, rdma0},  // the stream's own device reaches the peer
		{rdma0, b, rdma1},  // another RDMA device does
		{rdma0, c, dpdkDP}, // no RDMA: DPDK before AF_XDP
		{rdma0, d, xdpDP},  // no RDMA, no DPDK
		{xdpDP, c, xdpDP},  // a stream on AF_XDP stays there where it reaches
		{udpDP, a, udpDP},  // not accelerated: UDP
		{dpdkDP, a, rdma0}, // DPDK does not reach a: RDMA first
	} {
		if got := rm.route(peer(tc.to), idx(tc.stream)); got != idx(tc.want) {
			t.Errorf("stream on %s to %v: datapath %s, want %s", tc.stream.Name(), tc.to, rm.dps[got].dp.Name(), tc.want.Name())
		}
	}
	// rdma0 finds out a has no RDMA after all, then AF_XDP stops reaching
	// it too: UDP carries the stream.
	rdma0.set()
	if got := rm.route(peer(a), idx(rdma0)); got != idx(xdpDP) {
		t.Errorf("after rdma0 lost a: %s, want xdp", rm.dps[got].dp.Name())
	}
	xdpDP.set(b, c, d)
	if got := rm.route(peer(a), idx(rdma0)); got != idx(udpDP) {
		t.Errorf("after xdp lost a: %s, want udp", rm.dps[got].dp.Name())
	}
	if n := testing.AllocsPerRun(100, func() { rm.route(peer(d), idx(rdma0)) }); n != 0 {
		t.Errorf("route allocates %v", n)
	}
}
