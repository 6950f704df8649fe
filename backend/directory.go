package backend

import (
	"slices"
	"time"

	"github.com/veloce-io/veloce/internal/wire"
)

// The datagram directory (static --peer peers; etcd's peers learn this
// daemon from etcd) costs O(peers) small datagrams per interval in a
// steady fleet, whatever the number of channels:
//   - when the local list changes, every peer gets the full directory at
//     once (fragments of wire.MaxDirectoryChannels, a new generation);
//   - each DirectoryInterval, a peer that speaks digests gets one
//     wire.Digest naming the generation (node, boot, generation, total);
//     it refreshes the directory it holds, or, when it does not hold that
//     generation complete (a lost fragment, its own restart, an expiry),
//     it answers with a digest with Want set and gets the full directory;
//   - a peer that never sent a digest (an older release) gets the full
//     directory every interval, as before, plus a digest (which it counts
//     as a bad version and ignores);
//   - a peer seen with a new boot id gets the full directory at once.
//
// Both asks are rate-limited to one per peer per quarter interval, so a
// flood of digests (a replay, or spoofing without --peer-key) makes at
// most four full directories per interval go to a configured peer.

// directoryNow returns the local directory's list and its generation,
// which changes only when the list does.
func (rm *remote) directoryNow() (uint64, []uint32) {
	chans := rm.rt.remoteChannels() // sorted; only channels peers may reach (tenants.go)
	rm.dirMu.Lock()
	defer rm.dirMu.Unlock()
	if g := rm.generation.Load(); g != 0 && slices.Equal(chans, rm.dirList) {
		return g, rm.dirList
	}
	rm.dirList = chans
	return rm.generation.Add(1), chans
}

// sendDirectory sends, on st, the full directory to the peers that need
// it and digests to the others (tick: the interval's round; else a
// change or an ask). It runs on st's sender goroutine.
func (rm *remote) sendDirectory(st *datapathState, buf []byte, seal *wire.Sealer, tick bool) {
	gen, chans := rm.directoryNow()
	changed := gen != st.sentGen
	st.sentGen = gen
	now := time.Now().UnixNano()
	quarter := int64(rm.opts.DirectoryInterval / 4)
	st.full, st.digest, st.want = st.full[:0], st.digest[:0], st.want[:0]
	for _, p := range rm.peers.Load().list {
		// Peers learned from etcd learn this daemon from etcd too.
		if !slices.Contains(p.via, st.index) || p.fromFleet.Load() {
			continue
		}
		speaks := p.digests.Load()
		asked := p.wantFull.Load() && now-p.lastFull.Load() >= quarter
		full := changed || asked || (tick && !speaks)
		if full {
			if asked {
				p.wantFull.Store(false)
			}
			p.lastFull.Store(now)
			st.full = append(st.full, p)
		}
		switch {
		case p.wantTheirs.Swap(false):
			st.want = append(st.want, p)
		case tick && (!speaks || !full):
			st.digest = append(st.digest, p)
		}
	}
	if len(st.full) > 0 {
		rm.sendFull(st, buf, seal, gen, chans, st.full)
	}
	if len(st.digest) > 0 {
		rm.sendDigest(st, buf, seal, wire.Digest{Node: rm.rt.opts.NodeID, Generation: gen, Boot: rm.boot, Total: uint32(len(chans))}, st.digest)
	}
	if len(st.want) > 0 {
		rm.sendDigest(st, buf, seal, wire.Digest{Node: rm.rt.opts.NodeID, Generation: gen, Boot: rm.boot, Total: uint32(len(chans)), Want: true}, st.want)
	}
}

// sendFull sends generation gen's list chans to the peers to, as
// fragments of at most wire.MaxDirectoryChannels channels.
func (rm *remote) sendFull(st *datapathState, buf []byte, seal *wire.Sealer, gen uint64, chans []uint32, to []*peer) {
	total := max(1, (len(chans)+wire.MaxDirectoryChannels-1)/wire.MaxDirectoryChannels)
	pkts := make([]wire.Packet, 0, len(to))
	for frag := 0; frag < total; frag++ {
		part := chans[min(frag*wire.MaxDirectoryChannels, len(chans)):min((frag+1)*wire.MaxDirectoryChannels, len(chans))]
		d := wire.Directory{Node: rm.rt.opts.NodeID, Generation: gen, Boot: rm.boot, Channels: part}
		n, err := d.Marshal(buf[wire.HeaderLen:])
		if err != nil {
			continue
		}
		h := wire.Header{Kind: wire.KindDirectory, FragIndex: uint16(frag), FragCount: uint16(total), PayloadLen: uint16(n),
			Source: wire.NewSourceID(rm.rt.opts.NodeID, 0), Seq: gen}
		pkts = rm.directoryTo(st, buf, seal, h, n, to, pkts)
	}
}

// sendDigest sends d to the peers to.
func (rm *remote) sendDigest(st *datapathState, buf []byte, seal *wire.Sealer, d wire.Digest, to []*peer) {
	n, err := d.Marshal(buf[wire.HeaderLen:])
	if err != nil {
		return
	}
	h := wire.Header{Kind: wire.KindDirectory, FragCount: 1, PayloadLen: uint16(n), Source: wire.NewSourceID(rm.rt.opts.NodeID, 0), Seq: d.Generation}
	rm.directoryTo(st, buf, seal, h, n, to, make([]wire.Packet, 0, len(to)))
}

// directoryTo seals the directory datagram in buf (header h, payload of
// n bytes after the header) once and sends it to the peers to; pkts is
// scratch, returned for reuse.
func (rm *remote) directoryTo(st *datapathState, buf []byte, seal *wire.Sealer, h wire.Header, n int, to []*peer, pkts []wire.Packet) []wire.Packet {
	m, err := h.MarshalPacket(buf, buf[wire.HeaderLen:wire.HeaderLen+n])
	if err != nil {
		return pkts
	}
	one := wire.Packet{Buf: buf, N: m}
	rm.seal(seal, &one) // one datagram for every peer: the tag does not cover the destination
	pkts = pkts[:0]
	for _, p := range to {
		pkts = append(pkts, wire.Packet{Addr: p.addr, Buf: buf, N: one.N})
	}
	var k int
	if l := st.loop.Load(); l != nil {
		k, _ = l.sendBatch(pkts) // the datapath's sender, or the polling thread, may be sending
	} else {
		k, _ = st.dp.SendBatch(pkts)
	}
	rm.dirMsgs.Add(uint64(k))
	rm.dirBytes.Add(uint64(k * one.N))
	return pkts
}

// digest takes a directory digest from peer p: the directory it names is
// current (the one held: it stays valid), or this daemon asks for it;
// Want asks for this daemon's.
func (rx *receiveState) digest(p *peer, payload []byte) {
	rm := rx.rm
	d, err := wire.ParseDigest(payload)
	if err != nil {
		rm.reject(p, err)
		return
	}
	p.digests.Store(true)
	if d.Want {
		rx.askFull(p)
	}
	switch boot, gen := p.boot.Load(), p.gen.Load(); {
	case d.Boot == boot && d.Generation < gen:
		rm.stale.Add(1)
		p.stale.Add(1)
	case d.Boot == boot && d.Generation == gen && rx.pending[p.addr] == nil:
		p.seen.Store(time.Now().UnixNano())
		p.expiredMark.Store(false)
	default:
		now := time.Now().UnixNano()
		if now-p.lastWant.Load() >= int64(rm.opts.DirectoryInterval/4) {
			p.lastWant.Store(now)
			p.wantTheirs.Store(true)
			rx.kick()
		}
	}
}

// askFull makes p get this daemon's full directory (at once, within the
// rate limit).
func (rx *receiveState) askFull(p *peer) {
	p.wantFull.Store(true)
	rx.kick()
}

// kick wakes this datapath's directory sender.
func (rx *receiveState) kick() {
	select {
	case rx.rm.dps[rx.index].dirChanged <- struct{}{}:
	default:
	}
}

// directoryTraffic returns the directory datagrams sent and their bytes.
func (rm *remote) directoryTraffic() (msgs, bytes uint64) {
	return rm.dirMsgs.Load(), rm.dirBytes.Load()
}
