package backend

import (
	"net/netip"
	"slices"
)

// Routing: a stream's messages take its datapath (the policy's choice) to
// every peer that datapath reaches. To a peer it does not reach — a peer
// without an RDMA device, say — they take, in order, another datapath of
// the same name (a second RDMA device), then the first accelerated one that
// reaches the peer, RDMA before DPDK before AF_XDP, and last the peer's
// first datapath (the default, kernel UDP, when it reaches the peer).
// Reach is settled when a peer is added (Reacher), and asked again at
// every message of a LiveReacher: the RDMA datapath learns which peers
// have RDMA by trying them.

// LiveReacher is a datapath whose reach changes while it runs, cheap to
// ask (no system call, no allocation): the runtime asks it at every
// message to a peer it reached when the peer was added.
type LiveReacher interface {
	ReachesNow(addr netip.Addr) bool
}

// accelOrder is the fallback order among accelerated datapaths.
var accelOrder = []string{DatapathRDMA, DatapathDPDK, DatapathXDP}

// buildRoutes fills each datapath's reacher and fallback list.
func (rm *remote) buildRoutes() {
	for _, st := range rm.dps {
		st.live, _ = st.dp.(LiveReacher)
		st.fallback = st.fallback[:0]
		for _, o := range rm.dps {
			if o != st && o.dp.Name() == st.dp.Name() {
				st.fallback = append(st.fallback, o.index)
			}
		}
		if !slices.Contains(accelOrder, st.dp.Name()) {
			continue // a stream on UDP stays on its peers' first datapath
		}
		for _, name := range accelOrder {
			for _, o := range rm.dps {
				if o != st && o.dp.Name() == name && name != st.dp.Name() {
					st.fallback = append(st.fallback, o.index)
				}
			}
		}
	}
}

// route returns the index of the datapath a message of a stream on
// datapath want (-1: none of this host's) takes to p, which has at least
// one datapath. It takes no lock and does not allocate.
func (rm *remote) route(p *peer, want int) int {
	if want >= 0 && want < len(rm.dps) {
		if rm.reachesNow(p, want) {
			return want
		}
		for _, v := range rm.dps[want].fallback {
			if rm.reachesNow(p, v) {
				return v
			}
		}
	}
	return p.via[0]
}

// reachesNow reports whether datapath i reaches p: it did when p was
// added, and, for a LiveReacher, still does.
func (rm *remote) reachesNow(p *peer, i int) bool {
	if !slices.Contains(p.via, i) {
		return false
	}
	r := rm.dps[i].live
	return r == nil || r.ReachesNow(p.addr.Addr())
}
