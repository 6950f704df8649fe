package backend

import (
	"cmp"
	"context"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/internal/fleet"
)

// The directory sources of RemoteInfo.Directory and PeerInfo.Source.
const (
	// DirectoryStatic: the peer is a RemoteOptions.Peers (--peer)
	// address, its channels learned from its directory datagrams.
	DirectoryStatic = "static"
	// DirectoryEtcd: the peer and its channels come from the fleet
	// directory in etcd (RemoteOptions.Etcd).
	DirectoryEtcd = "etcd"
)

// fleetEntry is a peer learned from etcd.
type fleetEntry struct {
	rev   int64 // store revision of its last write
	addr  netip.AddrPort
	boot  uint64
	chans []uint32
}

// fleetSelf is this daemon's entry for the registry: its node id, boot id,
// datapath addresses (those peers can reach: unspecified ones are left
// out) and channels.
func (rm *remote) fleetSelf() fleet.Node {
	n := fleet.Node{ID: rm.rt.opts.NodeID, Boot: strconv.FormatUint(rm.boot, 16), Channels: rm.rt.remoteChannels()}
	for _, st := range rm.dps {
		if a := st.dp.LocalAddr(); a.IsValid() && !a.Addr().IsUnspecified() && a.Port() != 0 && !slices.Contains(n.Addrs, a) {
			n.Addrs = append(n.Addrs, a)
		}
	}
	return n
}

// startFleet starts the registry (RemoteOptions.Etcd) and the goroutine
// that publishes the local channel set to it; it returns at once.
func (rm *remote) startFleet(ctx context.Context) error {
	o := *rm.opts.Etcd
	o.Self = rm.fleetSelf()
	if len(o.Self.Addrs) == 0 {
		rm.rt.log.Warn("fleet directory: no datapath has a specific address (--listen 0.0.0.0?): peers learn this daemon but cannot reach it")
	}
	o.OnEvent = rm.fleetEvent
	if o.Logger == nil {
		o.Logger = rm.rt.log
	}
	reg, err := fleet.New(o)
	if err != nil {
		return err
	}
	rm.registry.Store(reg)
	reg.Start(ctx)
	return nil
}

// publishFleet keeps the registry's channel set current until ctx ends
// (the registry coalesces the puts).
func (rm *remote) publishFleet(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-rm.fleetChanged:
			rm.registry.Load().SetChannels(rm.rt.remoteChannels())
		}
	}
}

// fleetEvent takes a registry event: the peer table is rebuilt with the
// node's entry added, changed or removed.
func (rm *remote) fleetEvent(ev fleet.Event) {
	rm.peersMu.Lock()
	defer rm.peersMu.Unlock()
	switch ev.Kind {
	case fleet.Removed:
		delete(rm.fleet, ev.Node.ID)
		rm.rt.log.Info("fleet directory: peer left", "node", ev.Node.ID)
	default:
		addr, ok := rm.pickAddr(ev.Node.Addrs)
		if !ok {
			delete(rm.fleet, ev.Node.ID)
			rm.rt.log.Warn("fleet directory: a peer without an address this daemon reaches", "node", ev.Node.ID)
			break
		}
		if ev.Kind == fleet.Added {
			rm.rt.log.Info("fleet directory: peer joined", "node", ev.Node.ID, "addr", addr, "channels", len(ev.Node.Channels))
		}
		rm.fleet[ev.Node.ID] = fleetEntry{rev: ev.Revision, addr: addr, boot: ev.Node.BootID(), chans: ev.Node.Channels}
	}
	rm.rebuildLocked()
}

// pickAddr returns the first of a node's addresses that one of this
// daemon's datapaths reaches.
func (rm *remote) pickAddr(addrs []netip.AddrPort) (netip.AddrPort, bool) {
	for _, a := range addrs {
		for _, st := range rm.dps {
			if r, ok := st.dp.(Reacher); !ok || r.Reaches(a.Addr()) {
				return a, true
			}
		}
	}
	return netip.AddrPort{}, false
}

// tablePeer returns t's peer at a, adding it: old's (which keeps its
// state) or a new one.
func (rm *remote) tablePeer(t, old *peerTable, a netip.AddrPort) *peer {
	if p := t.byAddr[a]; p != nil {
		return p
	}
	var p *peer
	if old != nil {
		p = old.byAddr[a]
	}
	if p == nil {
		p = newRemotePeer(a, rm.dps)
		if len(p.via) == 0 {
			rm.rt.log.Warn("no datapath reaches peer", "peer", a)
		}
	}
	t.list = append(t.list, p)
	t.byAddr[a] = p
	return p
}

// rebuildLocked builds the peer table from the static peers and the
// fleet entries (under peersMu). An etcd entry wins over the datagram
// directory for the same address: its channels are the peer's, its
// boot id decides restarts, and directory datagrams from it are ignored.
// Peers that stay keep their state; one that is only static again
// waits for its next directory datagram.
//
// +checklocks:rm.peersMu
func (rm *remote) rebuildLocked() {
	old := rm.peers.Load()
	t := &peerTable{byAddr: make(map[netip.AddrPort]*peer, len(rm.static)+len(rm.fleet))}
	for _, a := range rm.static {
		rm.tablePeer(t, old, a)
	}
	inFleet := map[netip.AddrPort]bool{}
	type idEntry struct {
		id uint32
		e  fleetEntry
	}
	entries := make([]idEntry, 0, len(rm.fleet))
	for id, e := range rm.fleet {
		entries = append(entries, idEntry{id, e})
	}
	// Two entries with one address are a daemon restarted with another
	// node id (the default is random) whose old key has not expired yet:
	// the later written wins.
	slices.SortFunc(entries, func(a, b idEntry) int {
		if c := cmp.Compare(b.e.rev, a.e.rev); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})
	now := time.Now().UnixNano()
	for _, ie := range entries {
		id, e := ie.id, ie.e
		if inFleet[e.addr] {
			continue
		}
		inFleet[e.addr] = true
		p := rm.tablePeer(t, old, e.addr)
		p.fromFleet.Store(true)
		if old := p.boot.Swap(e.boot); old != 0 && old != e.boot {
			p.restarts.Add(1)
			rm.rel.peerRestarted(p) // reliable windows start over (reliable.go)
			rm.rt.log.Info("peer restarted (a new boot id in etcd)", "peer", p.addr, "node", id)
		}
		p.node.Store(id)
		p.expiredMark.Store(false)
		if cur := p.channels.Load(); !slices.Equal(*cur, e.chans) {
			list := slices.Clone(e.chans)
			p.channels.Store(&list)
			p.seen.Store(now)
		} else if p.seen.Load() == 0 {
			p.seen.Store(now)
		}
	}
	empty := []uint32{}
	for _, p := range t.list {
		if !inFleet[p.addr] && p.fromFleet.Swap(false) {
			// Left etcd but a static peer: forget what etcd said.
			p.channels.Store(&empty)
			p.seen.Store(0)
			p.boot.Store(0)
			p.gen.Store(0)
		}
	}
	rm.peers.Store(t)
}

// DirectoryInfo says where the daemon's peers and their channels come
// from (velocectl remote).
type DirectoryInfo = control.DirectoryInfo

// EtcdInfo is the fleet directory's health.
type EtcdInfo = control.EtcdInfo

func (rm *remote) directoryInfo() DirectoryInfo {
	d := DirectoryInfo{Sources: []string{}}
	rm.peersMu.Lock()
	static := len(rm.static) > 0
	rm.peersMu.Unlock()
	if static {
		d.Sources = append(d.Sources, DirectoryStatic)
	}
	if rm.opts.Etcd != nil {
		d.Sources = append(d.Sources, DirectoryEtcd)
		e := &EtcdInfo{Endpoints: slices.Clone(rm.opts.Etcd.Endpoints), Prefix: rm.opts.Etcd.Prefix}
		if e.Prefix == "" {
			e.Prefix = fleet.DefaultPrefix
		}
		if reg := rm.registry.Load(); reg != nil {
			h := reg.Health()
			e.Key, e.Connected, e.LastError, e.Revision, e.Nodes = reg.Key(), h.Connected, h.LastError, h.Revision, h.Nodes
			e.Puts, e.Events, e.PutBytes, e.ReadBytes = h.Puts, h.Events, h.PutBytes, h.ReadBytes
		}
		d.Etcd = e
	}
	return d
}
