package backend

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
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
			rm.fleetMu.Lock()
			rm.registry.Load().SetChannels(rm.rt.remoteChannelsExcept(rm.fleetHidden))
			rm.fleetMu.Unlock()
		}
	}
}

// A migrated port's sinks move in the fleet directory in one etcd
// transaction, so that at every revision of the store exactly one of the
// two daemons' entries lists their channels (peers send to one of them,
// never to neither):
//   - on the destination, an imported port is hidden (fleetHide): its
//     sinks stay out of this daemon's entry during the hand-off, while the
//     source still lists them and forwards what it gets;
//   - at commit, the source tells its registry which channels leave
//     (fleetLeaving; they stay in its entry until the move) and sends them
//     with its node id in the commit frame (commitBody);
//   - the destination unhides the port and writes both entries in one
//     transaction (fleetMoveIn → fleet.Registry.Move), conditional on
//     neither having changed since it read them;
//   - the source's own writes are conditional too: one refused because
//     the move rewrote its entry learns that the channels left, and later
//     puts leave them out until its sinks are gone (fleet.Registry.Leaving).
//
// Without etcd on either side, or etcd down, or the move refused too
// often, it falls back to the ordered updates: the destination lists the
// channels at commit, the source drops them when its sessions close,
// ForwardGrace later (both list them meanwhile, never neither).

// fleetHide leaves p's sinks out of this daemon's entry in etcd (p is
// being imported), or puts them back (hide false: the import was undone,
// or committed without a move).
func (rm *remote) fleetHide(p *Port, hide bool) {
	if rm == nil || rm.opts.Etcd == nil {
		return
	}
	rm.fleetMu.Lock()
	if hide {
		rm.fleetHidden[p] = true
	} else {
		delete(rm.fleetHidden, p)
	}
	rm.fleetMu.Unlock()
	select {
	case rm.fleetChanged <- struct{}{}:
	default:
	}
}

// fleetLeaving returns the channels only p's sinks give this daemon (they
// leave when p's guest has migrated) and tells the registry they are
// about to move (nil: no registry). leaving(nil) ends it.
func (rm *remote) fleetLeaving(p *Port) []uint32 {
	if rm == nil {
		return nil
	}
	reg := rm.registry.Load()
	if reg == nil {
		return nil
	}
	rm.fleetMu.Lock()
	defer rm.fleetMu.Unlock()
	skip := map[*Port]bool{p: true}
	for q := range rm.fleetHidden {
		skip[q] = true
	}
	chans := fleet.Without(rm.rt.remoteChannelsExcept(rm.fleetHidden), rm.rt.remoteChannelsExcept(skip))
	reg.Leaving(chans)
	return chans
}

// fleetLeft ends fleetLeaving once p's sinks are gone: the registry gets
// the channel set without them first, so that no put after can list
// them again.
func (rm *remote) fleetLeft() {
	if rm == nil {
		return
	}
	if reg := rm.registry.Load(); reg != nil {
		rm.fleetMu.Lock()
		reg.SetChannels(rm.rt.remoteChannelsExcept(rm.fleetHidden))
		reg.Leaving(nil)
		rm.fleetMu.Unlock()
	}
}

// fleetMoveIn is the commit of p's import: p's sinks join this daemon's
// entry, and leave node from's (the channels leaving) in the same
// transaction. ok false: no move was asked (no etcd here, or the source
// sent none); an error: the move failed and the ordered updates follow.
func (rm *remote) fleetMoveIn(ctx context.Context, p *Port, from uint32, leaving []uint32, ask bool) (bool, error) {
	if rm == nil || rm.opts.Etcd == nil {
		return false, nil
	}
	rm.fleetMu.Lock()
	defer rm.fleetMu.Unlock()
	delete(rm.fleetHidden, p)
	reg := rm.registry.Load()
	chans := rm.rt.remoteChannelsExcept(rm.fleetHidden)
	if reg == nil || !ask {
		if reg != nil {
			reg.SetChannels(chans)
		}
		return false, nil
	}
	return true, reg.Move(ctx, from, leaving, chans)
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

// The commit frame's body tells the destination the move to write:
// version (1 byte, commitBodyVersion), the source's node id (u32), the
// number of leaving channels (u32) and the channels (u32 each, strictly
// ascending), little-endian. An empty body (a source without etcd, or
// of an older release) asks for no move.
const commitBodyVersion = 1

// errBadCommitBody is returned (wrapped) by parseCommitBody.
var errBadCommitBody = errors.New("bad migration commit body")

// commitBody encodes a move from node with the leaving channels (sorted).
func commitBody(node uint32, leaving []uint32) []byte {
	le := binary.LittleEndian
	b := make([]byte, 0, 9+4*len(leaving))
	b = append(b, commitBodyVersion)
	b = le.AppendUint32(b, node)
	b = le.AppendUint32(b, uint32(len(leaving)))
	for _, c := range leaving {
		b = le.AppendUint32(b, c)
	}
	return b
}

// parseCommitBody decodes a commit frame's body: ask false for an empty
// one, an error wrapping errBadCommitBody for anything malformed (another
// version, a wrong length, more than fleet.MaxChannels channels, not
// ascending).
func parseCommitBody(b []byte) (node uint32, leaving []uint32, ask bool, err error) {
	if len(b) == 0 {
		return 0, nil, false, nil
	}
	if b[0] != commitBodyVersion {
		return 0, nil, false, fmt.Errorf("%w: version %d, this daemon reads %d", errBadCommitBody, b[0], commitBodyVersion)
	}
	if len(b) < 9 {
		return 0, nil, false, fmt.Errorf("%w: %d bytes, want at least 9", errBadCommitBody, len(b))
	}
	le := binary.LittleEndian
	node, n := le.Uint32(b[1:]), le.Uint32(b[5:])
	if n > fleet.MaxChannels {
		return 0, nil, false, fmt.Errorf("%w: %d channels, more than %d", errBadCommitBody, n, fleet.MaxChannels)
	}
	if uint64(len(b)) != 9+4*uint64(n) {
		return 0, nil, false, fmt.Errorf("%w: %d bytes for %d channels", errBadCommitBody, len(b), n)
	}
	leaving = make([]uint32, n)
	for i := range leaving {
		leaving[i] = le.Uint32(b[9+4*i:])
		if i > 0 && leaving[i] <= leaving[i-1] {
			return 0, nil, false, fmt.Errorf("%w: channels not ascending at %d", errBadCommitBody, i)
		}
	}
	return node, leaving, true, nil
}
