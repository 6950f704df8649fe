package vhostusertest

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"golang.org/x/sys/unix"
)

// FramingAttack is one malformed message, sent on a fresh connection
// before any handshake. A backend must refuse it by hanging up (or, for
// a request it may legally ignore, by answering nothing it should not).
type FramingAttack struct {
	Name string
	// Msg is sent in one sendmsg; Tail, if set, in a second one.
	Msg, Tail []byte
	// FDs, if set, returns descriptors to send with Msg.
	FDs func(tb testing.TB) []int
	// Incomplete: the message is cut short; the backend may legitimately
	// wait for the rest, so the test hangs up itself.
	Incomplete bool
	// Legal: the message is well-formed after all (an odd but valid way
	// to send it); the backend must accept it and keep serving.
	Legal bool
}

func eventfds(n int) func(tb testing.TB) []int {
	return func(tb testing.TB) []int {
		fds := make([]int, n)
		for i := range fds {
			fds[i] = Eventfd(tb)
		}
		return fds
	}
}

func msg(req vhostuser.Request, flags uint32, payload []byte) []byte {
	return append(Header(uint32(req), flags, uint32(len(payload))), payload...)
}

// FramingAttacks is the catalogue of message framing and value attacks
// (vhost-user.rst, "Message Specification").
func FramingAttacks() []FramingAttack {
	v := uint32(vhostuser.Version)
	u64 := vhostuser.AppendU64(nil, 0)
	return []FramingAttack{
		{Name: "truncated header", Msg: Header(1, v, 0)[:6], Incomplete: true},
		{Name: "size larger than the payload", Msg: append(Header(uint32(vhostuser.SetFeatures), v, 8), 1, 2, 3), Incomplete: true},
		{Name: "size larger than the payload (GET_CONFIG)", Msg: append(Header(uint32(vhostuser.GetConfig), v, 20), make([]byte, 12)...), Incomplete: true},
		{Name: "size larger than the max", Msg: Header(uint32(vhostuser.SetFeatures), v, 1<<30)},
		{Name: "size 0xffffffff", Msg: Header(uint32(vhostuser.SetMemTable), v, 0xffffffff)},
		{Name: "unknown request 0", Msg: Header(0, v, 0)},
		{Name: "unknown request 44", Msg: Header(44, v, 0)},
		{Name: "unknown request 0xffffffff", Msg: Header(0xffffffff, v, 8), Tail: u64},
		{Name: "version 0", Msg: msg(vhostuser.GetFeatures, 0, nil)},
		{Name: "version 2", Msg: msg(vhostuser.GetFeatures, 2, nil)},
		{Name: "version 3 with every flag", Msg: msg(vhostuser.GetFeatures, 0xffffffff, nil)},
		{Name: "reply flag on a request", Msg: msg(vhostuser.GetFeatures, v|vhostuser.FlagReply, nil)},
		{Name: "SET_FEATURES with 4 bytes", Msg: msg(vhostuser.SetFeatures, v, make([]byte, 4))},
		{Name: "SET_VRING_ADDR with 8 bytes", Msg: msg(vhostuser.SetVringAddr, v, make([]byte, 8))},
		{Name: "GET_FEATURES with a payload", Msg: msg(vhostuser.GetFeatures, v, u64)},
		{Name: "SET_MEM_TABLE claiming 2 regions, carrying 1", Msg: msg(vhostuser.SetMemTable, v, MemTablePayload(2, vhostuser.MemoryRegion{Size: 4096})), FDs: eventfds(2)},
		{Name: "SET_MEM_TABLE claiming 0 regions", Msg: msg(vhostuser.SetMemTable, v, MemTablePayload(0, vhostuser.MemoryRegion{Size: 4096}))},
		{Name: "SET_MEM_TABLE claiming 1000 regions", Msg: msg(vhostuser.SetMemTable, v, MemTablePayload(1000, vhostuser.MemoryRegion{Size: 4096})), FDs: eventfds(1)},
		{Name: "GET_CONFIG size field lies", Msg: msg(vhostuser.GetConfig, v, binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(make([]byte, 0, 12), 0), 0xffff0000))},
		{Name: "too many fds (64) on GET_FEATURES", Msg: msg(vhostuser.GetFeatures, v, nil), FDs: eventfds(64)},
		{Name: "too many fds (253) on SET_OWNER", Msg: msg(vhostuser.SetOwner, v, nil), FDs: eventfds(253)},
		{Name: "fd on GET_FEATURES", Msg: msg(vhostuser.GetFeatures, v, nil), FDs: eventfds(1)},
		{Name: "3 fds on SET_FEATURES", Msg: msg(vhostuser.SetFeatures, v, u64), FDs: eventfds(3)},
		{Name: "2 fds on SET_VRING_KICK", Msg: msg(vhostuser.SetVringKick, v, u64), FDs: eventfds(2)},
		{Name: "fd on SET_VRING_KICK with NOFD", Msg: msg(vhostuser.SetVringKick, v, vhostuser.AppendU64(nil, vhostuser.VringNoFD)), FDs: eventfds(1)},
		{Name: "fds split over header and payload", Msg: Header(uint32(vhostuser.SetVringCall), v, 8), Tail: u64, FDs: eventfds(1), Legal: true},
		{Name: "vring index 255", Msg: msg(vhostuser.SetVringNum, v, vhostuser.AppendVringState(nil, vhostuser.VringState{Index: 255, Num: 256}))},
		{Name: "vring size 0", Msg: msg(vhostuser.SetVringNum, v, vhostuser.AppendVringState(nil, vhostuser.VringState{Index: 0, Num: 0}))},
		{Name: "vring size 65536", Msg: msg(vhostuser.SetVringNum, v, vhostuser.AppendVringState(nil, vhostuser.VringState{Index: 0, Num: 1 << 16}))},
		{Name: "features never offered", Msg: msg(vhostuser.SetFeatures, v, vhostuser.AppendU64(nil, ^uint64(0)))},
		{Name: "SET_VRING_ENDIAN", Msg: msg(vhostuser.SetVringEndian, v, vhostuser.AppendVringState(nil, vhostuser.VringState{}))},
	}
}

// RingAttack writes a malformed chain into the TX (or RX) ring of a
// running NetPeer and offers it; the caller kicks.
type RingAttack struct {
	Name string
	// Do writes into guest memory and the available ring.
	Do func(p *NetPeer)
	// BreaksRing: the attack legitimately marks the ring broken (the
	// port may stop serving this frontend; it must serve the next).
	BreaksRing bool
}

// RingAttacks is the catalogue of descriptor attacks (virtio 1.1, 2.6).
func RingAttacks() []RingAttack {
	const (
		next     = vhostuser.DescFNext
		write    = vhostuser.DescFWrite
		indirect = 4 // VIRTQ_DESC_F_INDIRECT
	)
	buf := func(p *NetPeer) uint64 { return p.TX.alloc(4096) }
	return []RingAttack{
		{Name: "descriptor loop", Do: func(p *NetPeer) {
			a := buf(p)
			p.TX.SetDesc(0, a, 64, next, 1)
			p.TX.SetDesc(1, a, 64, next, 0)
			p.TX.Offer(0)
		}},
		{Name: "self loop", Do: func(p *NetPeer) {
			p.TX.SetDesc(3, buf(p), 64, next, 3)
			p.TX.Offer(3)
		}},
		{Name: "next out of the table", Do: func(p *NetPeer) {
			p.TX.SetDesc(0, buf(p), 64, next, 0xffff)
			p.TX.Offer(0)
		}},
		{Name: "head out of the table", Do: func(p *NetPeer) { p.TX.Offer(0xfff0) }},
		{Name: "chain longer than the queue (indirect)", Do: func(p *NetPeer) {
			n := 4 * uint64(p.TX.Size)
			tbl := p.TX.alloc(16 * n)
			a := buf(p)
			for i := range n {
				PutDesc(p.G.Bytes(tbl+16*i, 16), a, 1, next, uint16(i+1))
			}
			p.TX.SetDesc(0, tbl, uint32(16*n), indirect, 0)
			p.TX.Offer(0)
		}},
		{Name: "address outside guest memory", Do: func(p *NetPeer) {
			p.TX.SetDesc(0, 0xdead_0000_0000, 64, 0, 0)
			p.TX.Offer(0)
		}},
		{Name: "address wrapping around 2^64", Do: func(p *NetPeer) {
			p.TX.SetDesc(0, ^uint64(0)-15, 64, 0, 0)
			p.TX.Offer(0)
		}},
		{Name: "absurd length", Do: func(p *NetPeer) {
			p.TX.SetDesc(0, buf(p), 0xffffffff, 0, 0)
			p.TX.Offer(0)
		}},
		{Name: "length running past the region end", Do: func(p *NetPeer) {
			end := p.G.Region.GuestAddr + p.G.Region.Size
			p.TX.SetDesc(0, end-16, 4096, 0, 0)
			p.TX.Offer(0)
		}},
		{Name: "zero-length descriptors", Do: func(p *NetPeer) {
			a := buf(p)
			for i := range uint16(8) {
				p.TX.SetDesc(i, a, 0, next, i+1)
			}
			p.TX.SetDesc(8, a, 0, 0, 0)
			p.TX.Offer(0)
		}},
		{Name: "writable descriptor on TX", Do: func(p *NetPeer) {
			p.TX.SetDesc(0, buf(p), 64, write, 0)
			p.TX.Offer(0)
		}},
		{Name: "indirect table pointing at itself", Do: func(p *NetPeer) {
			tbl := buf(p)
			PutDesc(p.G.Bytes(tbl, 16), tbl, 16, indirect, 0)
			p.TX.SetDesc(0, tbl, 16, indirect, 0)
			p.TX.Offer(0)
		}},
		{Name: "indirect entry chaining to itself", Do: func(p *NetPeer) {
			tbl := buf(p)
			PutDesc(p.G.Bytes(tbl, 16), tbl, 16, next, 0)
			p.TX.SetDesc(0, tbl, 16, indirect, 0)
			p.TX.Offer(0)
		}},
		{Name: "indirect table of absurd length", Do: func(p *NetPeer) {
			p.TX.SetDesc(0, buf(p), 0xfffffff0, indirect, 0)
			p.TX.Offer(0)
		}},
		{Name: "indirect table outside memory", Do: func(p *NetPeer) {
			p.TX.SetDesc(0, 0x4000_0000_0000, 64, indirect, 0)
			p.TX.Offer(0)
		}},
		{Name: "RX buffer outside guest memory", Do: func(p *NetPeer) {
			p.RX.SetDesc(0, 0xdead_0000_0000, 1526, write, 0)
			p.RX.Offer(0)
			p.TX.AddChain(Buf{Data: append(make([]byte, NetHeaderLen), ARPRequest(p.Opts.ServiceIP)...)})
		}},
		{Name: "RX buffer read-only", Do: func(p *NetPeer) {
			p.RX.SetDesc(0, buf(p), 1526, 0, 0)
			p.RX.Offer(0)
			p.TX.AddChain(Buf{Data: append(make([]byte, NetHeaderLen), ARPRequest(p.Opts.ServiceIP)...)})
		}},
		{Name: "avail index jumps by more than the queue", BreaksRing: true, Do: func(p *NetPeer) {
			p.TX.SetAvailIdx(p.TX.AvailIdx() + 3*p.TX.Size)
		}},
		{Name: "avail index runs backwards", BreaksRing: true, Do: func(p *NetPeer) {
			p.TX.AddChain(Buf{Data: append(make([]byte, NetHeaderLen), ARPRequest(p.Opts.ServiceIP)...)})
			p.KickTX()
			p.TX.SetAvailIdx(p.TX.AvailIdx() - 10)
		}},
	}
}

// PackedRingAttacks is the catalogue of descriptor attacks on packed
// virtqueues (virtio 1.2, 2.8), for a NetPeer with NetPeerOptions.Packed:
// the split catalogue's loops, addresses, lengths and indirect tables in
// the packed layout, and descriptors whose AVAIL/USED bits disagree with
// the wrap counter. Every malformed chain is one the device must return
// with length 0 (or leave alone, for one that is not available) and go on.
func PackedRingAttacks() []RingAttack {
	const (
		next     = vhostuser.DescFNext
		write    = vhostuser.DescFWrite
		indirect = vhostuser.DescFIndirect
	)
	type D = PackedDesc
	buf := func(p *NetPeer) uint64 { return p.PTX.Alloc(4096) }
	// id is the buffer id of the attack chains: one the peer's own
	// chains (ids from 0) do not have in flight.
	id := func(p *NetPeer) uint16 { return p.Opts.QueueSize - 1 }
	arp := func(p *NetPeer) []byte { return append(make([]byte, NetHeaderLen), ARPRequest(p.Opts.ServiceIP)...) }
	table := func(p *NetPeer, entries ...D) (gpa uint64, n uint32) {
		gpa = buf(p)
		for i, e := range entries {
			b := p.G.Bytes(gpa+uint64(vhostuser.DescSize*i), vhostuser.DescSize)
			PutDesc(b, e.Addr, e.Len, 0, e.ID)
			binary.LittleEndian.PutUint16(b[14:16], e.Flags)
		}
		return gpa, uint32(vhostuser.DescSize * len(entries))
	}
	return []RingAttack{
		{Name: "packed: chain never ends (every descriptor chained)", Do: func(p *NetPeer) {
			a := buf(p)
			ds := make([]D, p.Opts.QueueSize)
			for i := range ds {
				ds[i] = D{Addr: a, Len: 64, Flags: next}
			}
			p.PTX.AddRawChain(id(p), ds...)
			// The chain takes the whole ring: the next chain goes where
			// the device writes this one's used entry, so wait for it.
			p.KickTX()
			p.AwaitTXUsed(p.Opts.Timeout)
		}},
		{Name: "packed: next into a descriptor not available", Do: func(p *NetPeer) {
			a := buf(p)
			p.PTX.AddRawChain(id(p), D{Addr: a, Len: 64, Flags: next}, D{Addr: a, Len: 64, Flags: next})
			// Wait for the device to return it: a chain written after it
			// would complete it (it would then be one long chain).
			p.KickTX()
			p.AwaitTXUsed(p.Opts.Timeout)
		}},
		{Name: "packed: address outside guest memory", Do: func(p *NetPeer) {
			p.PTX.AddRawChain(id(p), D{Addr: 0xdead_0000_0000, Len: 64})
		}},
		{Name: "packed: address wrapping around 2^64", Do: func(p *NetPeer) {
			p.PTX.AddRawChain(id(p), D{Addr: ^uint64(0) - 15, Len: 64})
		}},
		{Name: "packed: absurd length", Do: func(p *NetPeer) {
			p.PTX.AddRawChain(id(p), D{Addr: buf(p), Len: 0xffffffff})
		}},
		{Name: "packed: length running past the region end", Do: func(p *NetPeer) {
			end := p.G.Region.GuestAddr + p.G.Region.Size
			p.PTX.AddRawChain(id(p), D{Addr: end - 16, Len: 4096})
		}},
		{Name: "packed: zero-length descriptors", Do: func(p *NetPeer) {
			a := buf(p)
			p.PTX.AddRawChain(id(p), D{Addr: a, Flags: next}, D{Addr: a, Flags: next}, D{Addr: a})
		}},
		{Name: "packed: writable descriptor on TX", Do: func(p *NetPeer) {
			p.PTX.AddRawChain(id(p), D{Addr: buf(p), Len: 64, Flags: write})
		}},
		{Name: "packed: readable after writable", Do: func(p *NetPeer) {
			a := buf(p)
			p.PTX.AddRawChain(id(p), D{Addr: a, Len: 64, Flags: write | next}, D{Addr: a, Len: 64})
		}},
		{Name: "packed: buffer id beyond the queue size", Do: func(p *NetPeer) {
			p.PTX.AddRawChain(0xffff, D{Addr: buf(p), Len: 0xffffffff})
		}},
		{Name: "packed: indirect in indirect", Do: func(p *NetPeer) {
			inner, n := table(p, D{Addr: buf(p), Len: 64})
			outer, m := table(p, D{Addr: inner, Len: n, Flags: indirect})
			p.PTX.AddRawChain(id(p), D{Addr: outer, Len: m, Flags: indirect})
		}},
		{Name: "packed: indirect table pointing at itself", Do: func(p *NetPeer) {
			tbl := buf(p)
			b := p.G.Bytes(tbl, vhostuser.DescSize)
			PutDesc(b, tbl, vhostuser.DescSize, 0, 0)
			binary.LittleEndian.PutUint16(b[14:16], indirect)
			p.PTX.AddRawChain(id(p), D{Addr: tbl, Len: vhostuser.DescSize, Flags: indirect})
		}},
		{Name: "packed: indirect with next", Do: func(p *NetPeer) {
			tbl, n := table(p, D{Addr: buf(p), Len: 64})
			p.PTX.AddRawChain(id(p), D{Addr: tbl, Len: n, Flags: indirect | next}, D{Addr: buf(p), Len: 64})
		}},
		{Name: "packed: indirect table of absurd length", Do: func(p *NetPeer) {
			p.PTX.AddRawChain(id(p), D{Addr: buf(p), Len: 0xfffffff0, Flags: indirect})
		}},
		{Name: "packed: indirect table of odd length", Do: func(p *NetPeer) {
			tbl, _ := table(p, D{Addr: buf(p), Len: 64})
			p.PTX.AddRawChain(id(p), D{Addr: tbl, Len: 17, Flags: indirect})
		}},
		{Name: "packed: indirect table outside memory", Do: func(p *NetPeer) {
			p.PTX.AddRawChain(id(p), D{Addr: 0x4000_0000_0000, Len: 64, Flags: indirect})
		}},
		{Name: "packed: indirect entry outside memory", Do: func(p *NetPeer) {
			tbl, n := table(p, D{Addr: buf(p), Len: 64}, D{Addr: 0xdead_0000_0000, Len: 64})
			p.PTX.AddRawChain(id(p), D{Addr: tbl, Len: n, Flags: indirect})
		}},
		{Name: "packed: head marked used (AVAIL = USED = wrap)", Do: func(p *NetPeer) {
			w := p.PTX.Wrap()
			p.PTX.Poke(D{Addr: buf(p), Len: 64, ID: id(p)}, w, w)
		}},
		{Name: "packed: head with the previous lap's wrap counter", Do: func(p *NetPeer) {
			w := p.PTX.Wrap()
			p.PTX.Poke(D{Addr: buf(p), Len: 64, ID: id(p)}, !w, w)
		}},
		{Name: "packed: head with neither AVAIL nor USED", Do: func(p *NetPeer) {
			p.PTX.Poke(D{Addr: buf(p), Len: 64, ID: id(p)}, false, false)
		}},
		{Name: "packed: RX buffer outside guest memory", Do: func(p *NetPeer) {
			p.PRX.AddRawChain(id(p), D{Addr: 0xdead_0000_0000, Len: 1526, Flags: write})
			p.AddTX(arp(p))
		}},
		{Name: "packed: RX buffer read-only", Do: func(p *NetPeer) {
			p.PRX.AddRawChain(id(p), D{Addr: p.PRX.Alloc(1526), Len: 1526})
			p.AddTX(arp(p))
		}},
		{Name: "packed: RX chain of more segments than a frame takes", Do: func(p *NetPeer) {
			a := p.PRX.Alloc(64)
			ds := make([]D, p.Opts.QueueSize-8) // leave room for the RX buffers in flight
			for i := range ds {
				ds[i] = D{Addr: a, Len: 64, Flags: write | next}
			}
			ds[len(ds)-1].Flags = write
			p.PRX.AddRawChain(id(p), ds...)
			p.AddTX(arp(p))
		}},
	}
}

// Shrink truncates the guest's memfd to size bytes while the backend
// has it mapped. After it the test must not touch G.Mem past size (its
// own mapping faults too): only kick.
func (p *NetPeer) Shrink(size int64) error {
	if err := unix.Ftruncate(p.G.fd, size); err != nil {
		return fmt.Errorf("shrink guest memfd: %w", err)
	}
	return nil
}

// InflightPayload encodes a GET/SET_INFLIGHT_FD payload.
func InflightPayload(in vhostuser.Inflight) []byte { return vhostuser.AppendInflight(nil, in) }

// GetInflightFD asks the backend for its inflight area and returns the
// memfd it sent (owned by the test's cleanup) and the size it claims.
func (p *NetPeer) GetInflightFD(tb testing.TB, queues, size uint16) (int, uint64, error) {
	if err := p.C.Send(vhostuser.GetInflightFD, 0, InflightPayload(vhostuser.Inflight{NumQueues: queues, QueueSize: size})); err != nil {
		return -1, 0, err
	}
	r, err := p.C.ReadReply(p.Opts.Timeout)
	if err != nil {
		return -1, 0, fmt.Errorf("GET_INFLIGHT_FD: %w", err)
	}
	for _, fd := range r.FDs {
		tb.Cleanup(func() { unix.Close(fd) })
	}
	if len(r.FDs) != 1 || len(r.Payload) < 8 {
		return -1, 0, fmt.Errorf("GET_INFLIGHT_FD: %d fds, %d-byte payload", len(r.FDs), len(r.Payload))
	}
	return r.FDs[0], binary.LittleEndian.Uint64(r.Payload), nil
}
