package vhostuser_test

import (
	"errors"
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
)

// TestCloudHypervisorMessageSequence replays, over a real socket with real
// descriptors, the requests a rust-vmm frontend (Cloud Hypervisor's
// vhost-user-net) sends to bring a device up, in the shapes it encodes
// them, and checks each is read and decoded.
func TestCloudHypervisorMessageSequence(t *testing.T) {
	be, fe := vhostusertest.NewPair(t)
	g := vhostusertest.NewGuest(t, 0, 0x7f00_0000_0000, 1<<20)
	need := uint32(vhostuser.FlagNeedReply)
	type step struct {
		req     vhostuser.Request
		flags   uint32
		payload []byte
		fds     []int
		check   func(t *testing.T, m vhostuser.Message, fds *vhostuser.FDSet)
	}
	efd := eventfd(t)
	steps := []step{
		{req: vhostuser.GetFeatures},
		{req: vhostuser.GetProtocolFeatures},
		{req: vhostuser.SetProtocolFeatures, payload: u64(1<<vhostuser.ProtocolFMQ | 1<<vhostuser.ProtocolFReplyAck | 1<<vhostuser.ProtocolFConfigureMemSlots)},
		{req: vhostuser.SetOwner, flags: need},
		{req: vhostuser.GetQueueNum},
		{req: vhostuser.GetMaxMemSlots},
		{req: vhostuser.SetFeatures, flags: need, payload: u64(1<<vhostuser.FVersion1 | 1<<vhostuser.FProtocolFeatures)},
		{req: vhostuser.AddMemReg, flags: need, payload: vhostuser.AppendMemRegion(nil, g.Region), fds: []int{g.DupFD(t)}, check: func(t *testing.T, m vhostuser.Message, fds *vhostuser.FDSet) {
			r, err := m.MemRegion()
			if err != nil || r != g.Region || fds.Len() != 1 {
				t.Fatalf("ADD_MEM_REG = %+v, %v, %d fds", r, err, fds.Len())
			}
			mem := vhostuser.NewMemory()
			defer mem.Close()
			if err := mem.AddRegion(r, fds.Take(0)); err != nil {
				t.Fatal(err)
			}
		}},
		{req: vhostuser.SetVringNum, flags: need, payload: vhostuser.AppendVringState(nil, vhostuser.VringState{Index: 0, Num: 256})},
		{req: vhostuser.SetVringAddr, flags: need, payload: vhostuser.AppendVringAddr(nil, vhostuser.VringAddr{Desc: g.Region.UserAddr, Avail: g.Region.UserAddr + 4096, Used: g.Region.UserAddr + 8192})},
		{req: vhostuser.SetVringBase, flags: need, payload: vhostuser.AppendVringState(nil, vhostuser.VringState{})},
		{req: vhostuser.SetVringCall, flags: need, payload: u64(0), fds: []int{efd}},
		{req: vhostuser.SetVringKick, flags: need, payload: u64(0), fds: []int{efd}},
		{req: vhostuser.SetVringEnable, flags: need, payload: vhostuser.AppendVringState(nil, vhostuser.VringState{Index: 0, Num: 1})},
		{req: vhostuser.GetInflightFD, payload: vhostuser.AppendInflight(nil, vhostuser.Inflight{NumQueues: 2, QueueSize: 256})},
		{req: vhostuser.SetLogBase, payload: vhostuser.AppendLog(nil, vhostuser.Log{Size: 32}), fds: []int{efd}},
		{req: vhostuser.SetDeviceStateFD, payload: vhostuser.AppendDeviceStateTransfer(nil, vhostuser.DeviceStateTransfer{Direction: vhostuser.TransferSave}), fds: []int{efd}},
		{req: vhostuser.CheckDeviceState},
		{req: vhostuser.GetVringBase, payload: vhostuser.AppendVringState(nil, vhostuser.VringState{Index: 0})},
		{req: vhostuser.RemMemReg, flags: need, payload: vhostuser.AppendMemRegion(nil, g.Region)},
	}
	buf := make([]byte, vhostuser.MaxMessageSize)
	for _, s := range steps {
		if err := fe.Send(s.req, s.flags, s.payload, s.fds...); err != nil {
			t.Fatal(err)
		}
		m, fds, err := vhostuser.ReadMessage(be, buf)
		if err != nil {
			t.Fatalf("%v: %v", s.req, err)
		}
		if m.Request != s.req || fds.Len() != len(s.fds) || m.NeedReply() != (s.flags&need != 0) {
			t.Fatalf("%v: got %v with %d fds", s.req, m.Request, fds.Len())
		}
		if s.check != nil {
			s.check(t, m, &fds)
		}
		fds.Close()
	}
}

func TestFeatures(t *testing.T) {
	f := vhostuser.Bit(vhostuser.FVersion1) | vhostuser.Bit(vhostuser.NetFMrgRxbuf) | vhostuser.Bit(vhostuser.FProtocolFeatures)
	if !f.Has(vhostuser.FVersion1) || !f.Has(vhostuser.NetFMrgRxbuf) || f.Has(vhostuser.FRingPacked) || !f.Has(30) {
		t.Errorf("Has on %#x wrong", uint64(f))
	}
	if uint64(f) != 1<<32|1<<15|1<<30 {
		t.Errorf("mask %#x", uint64(f))
	}
}

func TestNewMemoryFromTableOwnsFDs(t *testing.T) {
	a, b := memfd(t, 4096), memfd(t, 4096)
	_, err := vhostuser.NewMemoryFromTable([]vhostuser.MemoryRegion{{Size: 4096, UserAddr: 1 << 40}}, owns(t, a, b))
	if !errors.Is(err, vhostuser.ErrBadRegion) || fdIsOpen(a) || fdIsOpen(b) {
		t.Errorf("count mismatch: %v, fds open %v %v", err, fdIsOpen(a), fdIsOpen(b))
	}
	a, b = memfd(t, 4096), memfd(t, 4096)
	// The second region overlaps the first: both fds end up closed.
	_, err = vhostuser.NewMemoryFromTable([]vhostuser.MemoryRegion{{Size: 4096, UserAddr: 1 << 40}, {Size: 4096, UserAddr: 1 << 41}}, owns(t, a, b))
	if !errors.Is(err, vhostuser.ErrRegionOverlap) || fdIsOpen(a) || fdIsOpen(b) {
		t.Errorf("overlap: %v, fds open %v %v", err, fdIsOpen(a), fdIsOpen(b))
	}
	m, err := vhostuser.NewMemoryFromTable([]vhostuser.MemoryRegion{{GuestAddr: 1 << 20, Size: 4096, UserAddr: 1 << 40}, {Size: 4096, UserAddr: 1 << 41}}, owns(t, memfd(t, 4096), memfd(t, 4096)))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if r := m.Regions(); len(r) != 2 || r[0].GuestAddr != 0 || r[1].GuestAddr != 1<<20 {
		t.Errorf("Regions = %+v", r)
	}
}

func TestChainScatterGather(t *testing.T) {
	e := newRing(t, 16, nil)
	e.d.AddChain(vhostusertest.Buf{Data: []byte("abc")}, vhostusertest.Buf{Data: []byte("defg")}, vhostusertest.Buf{WriteLen: 3}, vhostusertest.Buf{WriteLen: 5})
	if e.r.Pending() != 1 {
		t.Errorf("Pending = %d", e.r.Pending())
	}
	c := e.pop(t)
	small := make([]byte, 5)
	if n := c.Gather(small); n != 5 || string(small) != "abcde" {
		t.Errorf("Gather = %d %q", n, small)
	}
	if n := c.Scatter([]byte("XYZW"), 2); n != 4 {
		t.Errorf("Scatter = %d", n)
	}
	if n := c.Scatter([]byte("0123456789"), 0); n != 8 {
		t.Errorf("Scatter overflowing = %d, want 8", n)
	}
	w := c.Writable()
	if string(w[0])+string(w[1]) != "01234567" {
		t.Errorf("writable = %q %q", w[0], w[1])
	}
	if e.r.Size() != 16 || e.r.LastAvailIdx() != 1 || e.r.Pending() != 0 {
		t.Errorf("Size %d LastAvailIdx %d Pending %d", e.r.Size(), e.r.LastAvailIdx(), e.r.Pending())
	}
}
