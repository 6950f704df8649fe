package hostile

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veloce-io/veloce/vhostuser"
	vt "github.com/veloce-io/veloce/vhostuser/vhostusertest"
	"golang.org/x/sys/unix"
)

// TestHostileFrontend attacks port 1 of a real veloced, one class per
// subtest; after each class harness.check asserts that port 2, the
// control API, port 1 itself and the daemon's descriptor table are fine.
func TestHostileFrontend(t *testing.T) {
	gate(t)
	classes := []struct {
		name string
		run  func(t *testing.T, h *harness)
		cpu  bool // log the daemon's idle CPU after the class
	}{
		{"MessageFraming", messageFraming, false},
		{"MemoryTables", memoryTables, false},
		{"WrongFDKinds", wrongFDKinds, true},
		{"ShrinkingMemory", shrinkingMemory, false},
		{"LogAndInflightFDs", logAndInflight, false},
		{"RingsAndDescriptors", ringsAndDescriptors, true},
		{"PackedRingsAndDescriptors", packedRingsAndDescriptors, true},
		{"Floods", floods, true},
	}
	for _, c := range classes {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			c.run(t, h)
			if c.cpu {
				h.logCPU(t, 5*time.Second)
			}
			h.check(t)
		})
	}
}

// attack runs one attack of a class as its own subtest.
func (h *harness) attack(t *testing.T, name string, f func(t *testing.T)) {
	t.Run(name, func(t *testing.T) {
		defer h.afterCase(t) // also after t.Fatal
		f(t)
	})
}

// attacker connects to port 1 and negotiates features (REPLY_ACK among
// them), sending no memory.
func (h *harness) attacker(t *testing.T, opts vt.NetPeerOptions) *vt.NetPeer {
	t.Helper()
	p, err := vt.DialNetPeer(t, h.d.p1, opts)
	if err != nil {
		t.Fatalf("connect to port 1: %v", err)
	}
	if err := p.Handshake(); err != nil {
		t.Fatalf("handshake on port 1: %v", err)
	}
	return p
}

// running brings port 1 up with a well-behaved setup and checks one ARP.
func (h *harness) running(t *testing.T, opts vt.NetPeerOptions) *vt.NetPeer {
	t.Helper()
	p, err := vt.NewNetPeer(t, h.d.p1, opts)
	if err != nil {
		t.Fatalf("bring port 1 up: %v", err)
	}
	if err := p.ARP(arpWithin); err != nil {
		t.Fatalf("port 1 before the attack: %v", err)
	}
	return p
}

// ---- message framing and values ----

func messageFraming(t *testing.T, h *harness) {
	for _, a := range vt.FramingAttacks() {
		h.attack(t, a.Name, func(t *testing.T) {
			c, err := vt.DialRaw(t, h.d.p1)
			if err != nil {
				t.Fatal(err)
			}
			var fds []int
			if a.FDs != nil {
				fds = a.FDs(t)
			}
			if err := c.WriteRaw(a.Msg, fds...); err != nil {
				t.Logf("send: %v", err)
			}
			if a.Tail != nil {
				c.WriteRaw(a.Tail)
			}
			switch {
			case a.Incomplete:
				// The daemon may wait for the rest; meanwhile the control
				// plane must not.
				if _, err := h.d.ports(controlWithin); err != nil {
					t.Errorf("control API with a partial message pending: %v", err)
				}
			case a.Legal:
				if !c.Responsive(replyWithin) {
					t.Errorf("well-formed message: the daemon stopped serving the connection")
				}
			default:
				if !c.WaitHangup(replyWithin) {
					t.Errorf("daemon neither refused nor hung up within %v", replyWithin)
				}
			}
			c.Close()
		})
	}
}

// ---- memory tables ----

func memoryTables(t *testing.T, h *harness) {
	const mib = 1 << 20
	type region = vhostuser.MemoryRegion
	ua := uint64(0x7f00_0000_0000)
	// refused: the table is sent by SET_MEM_TABLE with one memfd of 1 MiB
	// per region; it must be refused (NACK or hang-up).
	for _, tc := range []struct {
		name    string
		regions []region
	}{
		{"overlapping guest ranges", []region{{GuestAddr: 0, Size: mib, UserAddr: ua}, {GuestAddr: mib / 2, Size: mib, UserAddr: ua + 4*mib}}},
		{"identical regions twice", []region{{GuestAddr: 0, Size: mib, UserAddr: ua}, {GuestAddr: 0, Size: mib, UserAddr: ua}}},
		{"overlapping user ranges", []region{{GuestAddr: 0, Size: mib, UserAddr: ua}, {GuestAddr: 4 * mib, Size: mib, UserAddr: ua + mib/2}}},
		{"zero size", []region{{GuestAddr: 0, Size: 0, UserAddr: ua}}},
		{"size 2^62", []region{{GuestAddr: 0, Size: 1 << 62, UserAddr: ua}}},
		{"size ~0", []region{{GuestAddr: 0, Size: ^uint64(0), UserAddr: ua}}},
		{"guest address overflows", []region{{GuestAddr: ^uint64(0) - 4095, Size: mib, UserAddr: ua}}},
		{"user address overflows", []region{{GuestAddr: 0, Size: mib, UserAddr: ^uint64(0) - 4095}}},
		{"mmap offset overflows", []region{{GuestAddr: 0, Size: mib, UserAddr: ua, MmapOffset: ^uint64(0) - 4095}}},
		{"mmap offset unaligned", []region{{GuestAddr: 0, Size: mib, UserAddr: ua, MmapOffset: 1}}},
	} {
		h.attack(t, "SET_MEM_TABLE "+tc.name, func(t *testing.T) {
			p := h.attacker(t, vt.NetPeerOptions{})
			fds := make([]int, len(tc.regions))
			for i := range fds {
				fds[i] = vt.Memfd(t, mib)
			}
			o, err := p.C.Ask(vhostuser.SetMemTable, vt.MemTablePayload(uint32(len(tc.regions)), tc.regions...), replyWithin, fds...)
			if err != nil {
				t.Fatal(err)
			}
			if !o.Refused() {
				t.Errorf("daemon %v a memory table it cannot use safely", o)
			}
			p.C.Close()
		})
	}
	// Regions the daemon can mmap but not touch: larger than the file, or
	// starting past its end. Accepting them is the bug; the rings placed
	// in them make the daemon touch the missing pages.
	for _, tc := range []struct {
		name string
		r    region
	}{
		{"region larger than its file", region{GuestAddr: 0, Size: 64 * mib, UserAddr: ua}},
		{"mmap offset beyond the file", region{GuestAddr: 0, Size: mib, UserAddr: ua, MmapOffset: 1 << 30}},
	} {
		for _, how := range []vhostuser.Request{vhostuser.SetMemTable, vhostuser.AddMemReg} {
			h.attack(t, how.String()+" "+tc.name, func(t *testing.T) {
				p := h.attacker(t, vt.NetPeerOptions{})
				fd := vt.Memfd(t, mib)
				payload := vt.MemTablePayload(1, tc.r)
				if how == vhostuser.AddMemReg {
					payload = vt.MemRegPayload(tc.r)
				}
				o, err := p.C.Ask(how, payload, replyWithin, fd)
				if err != nil {
					t.Fatal(err)
				}
				if o.Refused() {
					return
				}
				t.Errorf("daemon %v a region past the end of its file", o)
				// Rings at guest address 0 (in the file for the first case,
				// past it for the second); a TX buffer at 2 MiB, past the
				// file in both.
				if err := p.SetupRings(t); err != nil {
					t.Logf("rings: %v", err)
					return
				}
				p.TX.SetDesc(0, 2*mib, 64, 0, 0)
				if tc.r.MmapOffset == 0 {
					p.TX.Offer(0)
				}
				p.KickTX()
				p.C.Responsive(replyWithin)
				p.C.Close()
			})
		}
	}
	h.attack(t, "SET_MEM_TABLE with 33 regions", func(t *testing.T) {
		p := h.attacker(t, vt.NetPeerOptions{})
		var rs []region
		for i := range uint64(33) {
			rs = append(rs, region{GuestAddr: i * mib, Size: 4096, UserAddr: ua + i*mib})
		}
		fd := vt.Memfd(t, 4096)
		fds := make([]int, 32)
		for i := range fds {
			fds[i] = fd
		}
		o, err := p.C.Ask(vhostuser.SetMemTable, vt.MemTablePayload(33, rs...), replyWithin, fds...)
		if err != nil {
			t.Fatal(err)
		}
		if !o.Refused() {
			t.Errorf("daemon %v 33 regions", o)
		}
	})
	h.attack(t, "ADD_MEM_REG past GET_MAX_MEM_SLOTS", func(t *testing.T) {
		p := h.attacker(t, vt.NetPeerOptions{})
		max, err := p.Get(vhostuser.GetMaxMemSlots)
		if err != nil {
			t.Fatal(err)
		}
		fd := vt.Memfd(t, 4096)
		accepted := 0
		for i := range max + 10 {
			o, err := p.C.Ask(vhostuser.AddMemReg, vt.MemRegPayload(region{GuestAddr: i * 8192, Size: 4096, UserAddr: ua + i*8192}), replyWithin, fd)
			if err != nil || o == vt.Silent {
				t.Fatalf("region %d: %v %v", i, o, err)
			}
			if o == vt.HungUp {
				break
			}
			if o == vt.Acked {
				accepted++
			}
		}
		t.Logf("GET_MAX_MEM_SLOTS %d, %d regions accepted", max, accepted)
		if uint64(accepted) > max {
			t.Errorf("accepted %d regions, more than the %d slots announced", accepted, max)
		}
		if n := h.d.fds(); n > h.baseline+int(max)+fdSlack {
			t.Errorf("daemon holds %d descriptors for %d regions of one memfd (baseline %d)", n, accepted, h.baseline)
		}
	})
	h.attack(t, "ADD_MEM_REG the same region 1000 times then REM_MEM_REG 1001", func(t *testing.T) {
		p := h.attacker(t, vt.NetPeerOptions{})
		fd := vt.Memfd(t, mib)
		r := region{GuestAddr: 0, Size: mib, UserAddr: ua}
		for i := range 1000 {
			if o, err := p.C.Ask(vhostuser.AddMemReg, vt.MemRegPayload(r), replyWithin, fd); err != nil || o != vt.Acked {
				t.Fatalf("ADD_MEM_REG %d: %v %v", i, o, err)
			}
		}
		if n := h.d.fds(); n > h.baseline+fdSlack+2 {
			t.Errorf("daemon holds %d descriptors after 1000 ADD_MEM_REGs of one region (baseline %d)", n, h.baseline)
		}
		var last vt.Outcome
		for i := range 1001 {
			o, err := p.C.Ask(vhostuser.RemMemReg, vt.MemRegPayload(r), replyWithin, fd)
			if err != nil || o == vt.Silent {
				t.Fatalf("REM_MEM_REG %d: %v %v", i, o, err)
			}
			if last = o; o == vt.HungUp {
				break
			}
		}
		if !last.Refused() {
			t.Errorf("REM_MEM_REG of a region no longer mapped: %v", last)
		}
	})
	for _, tc := range []struct {
		name string
		r    region
	}{
		{"REM_MEM_REG of a region never added", region{GuestAddr: 64 * mib, Size: mib, UserAddr: ua + 64*mib}},
		{"REM_MEM_REG of part of a region", region{GuestAddr: 0, Size: mib / 2, UserAddr: ua}},
		{"ADD_MEM_REG overlapping the region", region{GuestAddr: mib / 2, Size: mib, UserAddr: ua + 8*mib}},
		{"ADD_MEM_REG zero size", region{GuestAddr: 8 * mib, Size: 0, UserAddr: ua + 8*mib}},
		{"ADD_MEM_REG guest address overflows", region{GuestAddr: ^uint64(0) - 4095, Size: mib, UserAddr: ua + 8*mib}},
	} {
		h.attack(t, tc.name, func(t *testing.T) {
			p := h.attacker(t, vt.NetPeerOptions{})
			if err := p.SetMemory(); err != nil { // region 0..1 MiB
				t.Fatal(err)
			}
			req := vhostuser.AddMemReg
			if tc.name[:3] == "REM" {
				req = vhostuser.RemMemReg
			}
			o, err := p.C.Ask(req, vt.MemRegPayload(tc.r), replyWithin, vt.Memfd(t, mib))
			if err != nil {
				t.Fatal(err)
			}
			if !o.Refused() {
				t.Errorf("daemon %v it", o)
			}
		})
	}
}

// ---- file descriptors of the wrong kind ----

func wrongFDKinds(t *testing.T, h *harness) {
	// Each kind comes with poke, which makes the daemon's end readable
	// (what a kick from the frontend would be for that kind of file).
	write8 := func(fd int) func() { return func() { unix.Write(fd, make([]byte, 8)) } }
	kinds := []struct {
		name string
		fd   func(t *testing.T) (fd int, poke func())
	}{
		{"unix socket", func(t *testing.T) (int, func()) { a, b := vt.SocketPair(t); return a, write8(b) }},
		{"pipe read end", func(t *testing.T) (int, func()) { r, w := vt.Pipe(t); return r, write8(w) }},
		{"pipe write end", func(t *testing.T) (int, func()) { _, w := vt.Pipe(t); return w, func() {} }},
		{"pipe read end, writer closed", func(t *testing.T) (int, func()) { r, w := vt.Pipe(t); unix.Close(w); return r, func() {} }},
		{"regular file", func(t *testing.T) (int, func()) { return vt.RegularFile(t, 0), func() {} }},
		{"/dev/zero", func(t *testing.T) (int, func()) { return vt.DevZero(t), func() {} }},
		{"memfd", func(t *testing.T) (int, func()) { return vt.Memfd(t, 4096), func() {} }},
	}
	for _, k := range kinds {
		for _, role := range []string{"kick", "call"} {
			h.attack(t, k.name+" as "+role, func(t *testing.T) {
				opts := vt.NetPeerOptions{}
				var pokes []func()
				f := func(int) int { fd, poke := k.fd(t); pokes = append(pokes, poke); return fd }
				if role == "kick" {
					opts.KickFD = f
				} else {
					opts.CallFD = f
				}
				p, err := vt.NewNetPeer(t, h.d.p1, opts)
				if err != nil {
					// Refused, as it must be: check it was for the fd's kind.
					h.expectLastError(t, vhostuser.ErrBadFD.Error())
					return
				}
				t.Errorf("daemon accepted a %s as %s", k.name, role)
				// Traffic: the daemon reads the kicks / writes the calls.
				for i := range 3 {
					if role == "kick" {
						for _, poke := range pokes {
							poke()
						}
					}
					if err := p.ARP(replyWithin); err != nil {
						t.Logf("ARP %d with a %s %s fd: %v", i, k.name, role, err)
					}
				}
				// A port whose poller is stuck on the fd no longer serves
				// its own frontend's control messages either.
				if !p.C.Responsive(replyWithin) {
					t.Errorf("port 1 wedged: GET_FEATURES unanswered within %v with a %s %s fd", replyWithin, k.name, role)
				}
				p.C.Close()
			})
		}
	}
	h.attack(t, "pipe as err fd", func(t *testing.T) {
		p := h.attacker(t, vt.NetPeerOptions{})
		_, w := vt.Pipe(t)
		o, err := p.C.Ask(vhostuser.SetVringErr, vhostuser.AppendU64(nil, 0), replyWithin, w)
		if err != nil {
			t.Fatal(err)
		}
		if !o.Refused() {
			t.Fatalf("daemon %v a pipe as err fd", o)
		}
		h.expectLastError(t, vhostuser.ErrBadFD.Error())
	})
	for _, k := range []struct {
		name string
		fd   func(t *testing.T) int
	}{
		{"pipe", func(t *testing.T) int { r, _ := vt.Pipe(t); return r }},
		{"unix socket", func(t *testing.T) int { return vt.SocketFD(t) }},
		{"eventfd", func(t *testing.T) int { return vt.Eventfd(t) }},
		{"empty regular file", func(t *testing.T) int { return vt.RegularFile(t, 0) }},
	} {
		for _, how := range []vhostuser.Request{vhostuser.SetMemTable, vhostuser.AddMemReg} {
			h.attack(t, k.name+" as memory by "+how.String(), func(t *testing.T) {
				p := h.attacker(t, vt.NetPeerOptions{})
				r := vhostuser.MemoryRegion{Size: 1 << 20, UserAddr: 0x7f00_0000_0000}
				payload := vt.MemTablePayload(1, r)
				if how == vhostuser.AddMemReg {
					payload = vt.MemRegPayload(r)
				}
				o, err := p.C.Ask(how, payload, replyWithin, k.fd(t))
				if err != nil {
					t.Fatal(err)
				}
				if !o.Refused() {
					t.Errorf("daemon %v a %s as guest memory", o, k.name)
				}
			})
		}
	}
}

// ---- shrinking memory ----

func shrinkingMemory(t *testing.T, h *harness) {
	for _, addMemReg := range []bool{false, true} {
		how := "SET_MEM_TABLE"
		if addMemReg {
			how = "ADD_MEM_REG"
		}
		opts := vt.NetPeerOptions{AddMemReg: addMemReg, ErrFD: true}
		// The daemon survives, drops that frontend (hangs up), signals its
		// rings' err eventfds and says why.
		dropped := func(t *testing.T, p *vt.NetPeer) {
			t.Helper()
			if !p.C.WaitHangup(replyWithin) {
				t.Errorf("daemon kept serving a frontend whose memory faulted")
			}
			for i := range 2 {
				if !p.ErrSignalled(i, replyWithin) {
					t.Errorf("ring %d's err eventfd not signalled", i)
				}
			}
			h.expectLastError(t, "memory file shrunk")
			p.C.Close()
		}
		h.attack(t, how+" memfd shrunk to 0 while idle, then kicked", func(t *testing.T) {
			p := h.running(t, opts)
			if err := p.Shrink(0); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second) // idle: the pollers sleep on the kick
			if dead, how := h.d.dead(); dead {
				t.Errorf("daemon died while idle on shrunk memory: %s", how)
				return
			}
			p.KickTX()
			dropped(t, p)
		})
		h.attack(t, how+" memfd shrunk below the buffers while the port runs", func(t *testing.T) {
			p := h.running(t, opts)
			// Offer 64 frames and kick; shrink to just the rings while the
			// daemon walks them. The buffers are in the cut part.
			for range 64 {
				p.TX.AddChain(vt.Buf{Data: append(make([]byte, vt.NetHeaderLen), vt.ARPRequest(p.Opts.ServiceIP)...)})
			}
			p.KickTX()
			if err := p.Shrink(16 << 10); err != nil {
				t.Fatal(err)
			}
			// And one more buffer offered past the new end (the rings are
			// still in the file, so the test can write them).
			p.TX.SetDesc(100, 512<<10, 64, 0, 0)
			p.TX.Offer(100)
			p.KickTX()
			dropped(t, p)
		})
	}
}

// ---- log and inflight descriptors ----

func logAndInflight(t *testing.T, h *harness) {
	logAll := vhostuser.Bit(vhostuser.FLogAll)
	base := vhostuser.Bit(vhostuser.FVersion1) | vhostuser.Bit(vhostuser.FProtocolFeatures) | vhostuser.Bit(vhostuser.FRingIndirectDesc) | logAll
	for _, tc := range []struct {
		name    string
		logSize int64
		log     vhostuser.Log
	}{
		// Guest RAM at 1 GiB: its bitmap starts at byte 32768.
		{"SET_LOG_BASE fd smaller than the claimed size", 4096, vhostuser.Log{Size: 1 << 20}},
		{"SET_LOG_BASE offset beyond the fd", 4096, vhostuser.Log{Size: 1 << 20, Offset: 1 << 20}},
	} {
		h.attack(t, tc.name, func(t *testing.T) {
			p := h.running(t, vt.NetPeerOptions{GuestAddr: 1 << 30, Features: base, LogUsed: true})
			fd := vt.Memfd(t, tc.logSize)
			if err := p.C.Send(vhostuser.SetLogBase, 0, vhostuser.AppendLog(nil, tc.log), fd); err != nil {
				t.Fatal(err)
			}
			if _, err := p.C.ReadReply(replyWithin); err != nil {
				t.Logf("SET_LOG_BASE refused: %v", err)
				return
			}
			t.Errorf("daemon accepted a %d-byte log fd described as %+v", tc.logSize, tc.log)
			// Migration starts: every guest write is logged.
			if o, _ := p.C.Ask(vhostuser.SetFeatures, vhostuser.AppendU64(nil, uint64(p.Opts.Features|logAll)), replyWithin); o != vt.Acked {
				t.Logf("SET_FEATURES LOG_ALL: %v", o)
				return
			}
			p.ARP(replyWithin)
			p.C.Close()
		})
	}
	h.attack(t, "GET_INFLIGHT_FD then the daemon's memfd truncated", func(t *testing.T) {
		p, err := vt.NewNetPeer(t, h.d.p1, vt.NetPeerOptions{BeforeRings: func(p *vt.NetPeer) error {
			fd, size, err := p.GetInflightFD(t, 2, 256)
			if err != nil {
				return err
			}
			t.Logf("inflight area of %d bytes", size)
			if err := unix.Ftruncate(fd, 0); err == nil {
				t.Errorf("the frontend could truncate the daemon's inflight memfd (not sealed)")
			}
			return nil
		}})
		if err != nil {
			t.Fatalf("well-behaved setup after GET_INFLIGHT_FD: %v", err)
		}
		if err := p.ARP(arpWithin); err != nil {
			t.Errorf("port 1 with an inflight area: %v", err)
		}
		p.C.Close()
	})
	need := 2 * vhostuser.InflightQueueSize(256)
	for _, tc := range []struct {
		name string
		fd   func(t *testing.T) int
		in   vhostuser.Inflight
	}{
		{"SET_INFLIGHT_FD with a short fd", func(t *testing.T) int { return vt.Memfd(t, 4096) }, vhostuser.Inflight{MmapSize: need, NumQueues: 2, QueueSize: 256}},
		{"SET_INFLIGHT_FD with an empty fd", func(t *testing.T) int { return vt.Memfd(t, 0) }, vhostuser.Inflight{MmapSize: need, NumQueues: 2, QueueSize: 256}},
		{"SET_INFLIGHT_FD offset beyond the fd", func(t *testing.T) int { return vt.Memfd(t, int64(need)) }, vhostuser.Inflight{MmapSize: need, MmapOffset: 1 << 30, NumQueues: 2, QueueSize: 256}},
		{"SET_INFLIGHT_FD size 2^40", func(t *testing.T) int { return vt.Memfd(t, int64(need)) }, vhostuser.Inflight{MmapSize: 1 << 40, NumQueues: 2, QueueSize: 256}},
		{"SET_INFLIGHT_FD with a pipe", func(t *testing.T) int { r, _ := vt.Pipe(t); return r }, vhostuser.Inflight{MmapSize: need, NumQueues: 2, QueueSize: 256}},
	} {
		h.attack(t, tc.name, func(t *testing.T) {
			p, err := vt.NewNetPeer(t, h.d.p1, vt.NetPeerOptions{BeforeRings: func(p *vt.NetPeer) error {
				return p.Ask(vhostuser.SetInflightFD, vt.InflightPayload(tc.in), tc.fd(t))
			}})
			if err != nil {
				t.Logf("refused: %v", err)
				return
			}
			t.Errorf("daemon accepted SET_INFLIGHT_FD %+v", tc.in)
			p.ARP(replyWithin)
			p.C.Close()
		})
	}
	packedInflight(t, h)
}

// packedInflight: on packed rings the inflight region is laid out for
// packed queues and sealed; a region handed back that cannot be a
// device's state is refused (at SET_INFLIGHT_FD for its headers, when the
// rings start for its chains); one the frontend truncates under running
// rings drops only that frontend.
func packedInflight(t *testing.T, h *harness) {
	h.attack(t, "packed: GET_INFLIGHT_FD then the daemon's memfd truncated", func(t *testing.T) {
		p, err := vt.NewNetPeer(t, h.d.p1, vt.NetPeerOptions{Packed: true, BeforeRings: func(p *vt.NetPeer) error {
			fd, size, err := p.GetInflightFD(t, 2, 256)
			if err != nil {
				return err
			}
			if want := 2 * vhostuser.InflightQueueSizePacked(256); size != want {
				t.Errorf("inflight area of %d bytes on packed rings, want %d", size, want)
			}
			if err := unix.Ftruncate(fd, 0); err == nil {
				t.Errorf("the frontend could truncate the daemon's inflight memfd (not sealed)")
			}
			return nil
		}})
		if err != nil {
			t.Fatalf("well-behaved packed setup after GET_INFLIGHT_FD: %v", err)
		}
		if err := p.ARP(arpWithin); err != nil {
			t.Errorf("port 1 with a packed inflight area: %v", err)
		}
		p.C.Close()
	})
	const qs = 256
	size := int(2 * vhostuser.InflightQueueSizePacked(qs))
	in := vhostuser.Inflight{MmapSize: uint64(size), NumQueues: 2, QueueSize: qs}
	le := func(b []byte, off int, v uint16) { b[off], b[off+1] = byte(v), byte(v>>8) }
	header := func(q []byte) { le(q, 8, 1); le(q, 10, qs) } // version 1, desc_num
	for _, tc := range []struct {
		name     string
		scribble func(q []byte) // queue 0's part
	}{
		{"version 9", func(q []byte) { le(q, 8, 9) }},
		{"another queue size", func(q []byte) { le(q, 8, 1); le(q, 10, 64) }},
		{"free list head beyond the queue", func(q []byte) { header(q); le(q, 12, 0xffff); le(q, 14, 0xffff) }},
		{"used index beyond the queue", func(q []byte) { header(q); le(q, 12, 1); le(q, 14, 1); le(q, 16, 4000); le(q, 18, 4000) }},
		{"a chain that loops", func(q []byte) {
			header(q)
			le(q, 12, 2)
			le(q, 14, 2)                      // free list from entry 2 (ends at 0: empty links)
			q[32] = 1                         // entry 0 in flight
			le(q, 32+2, 1)                    // next: 1
			le(q, 32+6, 3)                    // 3 descriptors
			le(q, 32+18, vhostuser.DescFNext) // NEXT
			le(q, 64+2, 0)                    // entry 1 -> entry 0
			le(q, 64+18, vhostuser.DescFNext) // NEXT
			for i := 2; i < qs; i++ {
				le(q, 32+32*i+2, uint16(i+1))
			}
		}},
		{"a chain naming buffer id 60000", func(q []byte) {
			header(q)
			le(q, 12, 1)
			le(q, 14, 1)
			q[32] = 1      // entry 0 in flight
			le(q, 32+6, 1) // one descriptor
			le(q, 32+16, 60000)
			for i := 1; i < qs; i++ {
				le(q, 32+32*i+2, uint16(i+1))
			}
		}},
	} {
		h.attack(t, "packed: SET_INFLIGHT_FD with "+tc.name, func(t *testing.T) {
			fd := vt.Memfd(t, int64(size))
			m, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			if err != nil {
				t.Fatal(err)
			}
			tc.scribble(m)
			unix.Munmap(m)
			p, err := vt.NewNetPeer(t, h.d.p1, vt.NetPeerOptions{Packed: true, BeforeRings: func(p *vt.NetPeer) error {
				return p.Ask(vhostuser.SetInflightFD, vt.InflightPayload(in), fd)
			}})
			if err != nil {
				t.Logf("refused: %v", err)
				return
			}
			if err := p.ARP(replyWithin); err == nil {
				t.Errorf("daemon ran packed rings on a region with %s", tc.name)
			}
			p.C.Close()
		})
	}
	h.attack(t, "packed: inflight region truncated under running rings", func(t *testing.T) {
		fd := vt.Memfd(t, int64(size))
		p, err := vt.NewNetPeer(t, h.d.p1, vt.NetPeerOptions{Packed: true, BeforeRings: func(p *vt.NetPeer) error {
			return p.Ask(vhostuser.SetInflightFD, vt.InflightPayload(in), fd)
		}})
		if err != nil {
			t.Fatalf("well-behaved packed setup with the frontend's own region: %v", err)
		}
		if err := p.ARP(arpWithin); err != nil {
			t.Fatalf("port 1 on its own inflight region: %v", err)
		}
		if err := unix.Ftruncate(fd, 0); err != nil {
			t.Fatal(err)
		}
		err = p.ARP(replyWithin)
		t.Logf("ARP after the truncation: %v", err)
		p.C.Close()
	})
}

// ---- rings and descriptors ----

func ringsAndDescriptors(t *testing.T, h *harness) {
	ringAttacks(t, h, vt.RingAttacks(), vt.NetPeerOptions{ErrFD: true})
}

// packedRingsAndDescriptors: the same guarantees with packed virtqueues
// (VIRTIO_F_RING_PACKED negotiated on port 1).
func packedRingsAndDescriptors(t *testing.T, h *harness) {
	ringAttacks(t, h, vt.PackedRingAttacks(), vt.NetPeerOptions{ErrFD: true, Packed: true})
}

func ringAttacks(t *testing.T, h *harness, attacks []vt.RingAttack, opts vt.NetPeerOptions) {
	for _, a := range attacks {
		h.attack(t, a.Name, func(t *testing.T) {
			p := h.running(t, opts)
			if err := p.SettleTX(replyWithin); err != nil {
				t.Fatalf("before the attack: %v", err)
			}
			a.Do(p)
			p.KickTX()
			if a.BreaksRing {
				// A broken ring drops the frontend, like a fault: hang-up,
				// err eventfd, the reason shown.
				if !p.C.WaitHangup(replyWithin) {
					t.Errorf("daemon kept serving a frontend that broke its ring")
				}
				if !p.ErrSignalled(1, replyWithin) {
					t.Errorf("TX ring's err eventfd not signalled")
				}
				h.expectLastError(t, "ring 1 broken")
				p.C.Close()
				return
			}
			if !p.C.Responsive(replyWithin) {
				t.Errorf("port 1's control path stopped answering after the malformed chain")
			}
			// A malformed chain is returned with length 0; the ring goes on.
			if err := p.ARP(arpWithin); err != nil {
				t.Errorf("port 1 no longer answers its frontend after one malformed chain: %v", err)
			}
			p.C.Close()
		})
	}
}

// ---- floods ----

func floods(t *testing.T, h *harness) {
	// The control plane and port 2 must not wait for a frontend that does
	// not read its replies.
	duringFlood := func(t *testing.T) {
		t.Helper()
		if _, err := h.d.ports(controlWithin); err != nil {
			t.Errorf("control API during the flood: %v", err)
		}
		if err := h.good.ARP(arpWithin); err != nil {
			t.Errorf("port 2 during the flood: %v", err)
		}
	}
	for _, req := range []vhostuser.Request{vhostuser.SetStatus, vhostuser.GetFeatures} {
		h.attack(t, "20000 "+req.String()+" with NEED_REPLY, replies never read", func(t *testing.T) {
			p := h.attacker(t, vt.NetPeerOptions{})
			var payload []byte
			if req == vhostuser.SetStatus {
				payload = vhostuser.AppendU64(nil, 0)
			}
			m := append(vt.Header(uint32(req), vhostuser.Version|vhostuser.FlagNeedReply, uint32(len(payload))), payload...)
			var batch []byte
			for range 100 {
				batch = append(batch, m...)
			}
			var sent atomic.Int64
			var wg sync.WaitGroup
			wg.Go(func() {
				p.C.Conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
				for range 200 {
					if _, err := p.C.Conn.Write(batch); err != nil {
						return
					}
					sent.Add(100)
				}
			})
			wg.Wait() // all sent, or the daemon stopped reading (deadline)
			t.Logf("%d requests sent before the daemon stopped reading", sent.Load())
			duringFlood(t)
			p.C.Close()
		})
	}
	h.attack(t, "kick storm", func(t *testing.T) {
		p := h.running(t, vt.NetPeerOptions{})
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
					vt.Kick(p.Kick[1])
					vt.Kick(p.Kick[0])
				}
			}
		})
		duringFlood(t)
		close(stop)
		wg.Wait()
		p.C.Close()
	})
	h.attack(t, "always-readable kick (pipe with its writer closed)", func(t *testing.T) {
		p, err := vt.NewNetPeer(t, h.d.p1, vt.NetPeerOptions{KickFD: func(int) int {
			r, w := vt.Pipe(t)
			unix.Close(w)
			return r
		}})
		if err != nil {
			h.expectLastError(t, vhostuser.ErrBadFD.Error())
			duringFlood(t)
			return
		}
		t.Errorf("daemon accepted a pipe as kick fd")
		duringFlood(t)
		c, err := h.d.cpuOver(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("daemon CPU over 5 s with an always-readable kick: %v", c)
		if c > time.Second {
			t.Errorf("an always-readable kick fd makes the daemon spin: %v CPU in 5 s", c)
		}
		p.C.Close()
	})
	h.attack(t, "200 connections held open on port 1", func(t *testing.T) {
		var cs []*vt.RawConn
		for range 200 {
			c, err := vt.DialRaw(t, h.d.p1)
			if err != nil {
				t.Logf("connection %d: %v", len(cs), err)
				break
			}
			cs = append(cs, c)
		}
		duringFlood(t)
		for _, c := range cs {
			c.Close()
		}
	})
}

// TestIdleCPU: idle ports cost (almost) no CPU: < 0.1 s over 10 s, with
// no frontend on port 1 and with one whose rings are up but quiet.
func TestIdleCPU(t *testing.T) {
	gate(t)
	const window, budget = 10 * time.Second, 100 * time.Millisecond
	h := newHarness(t)
	idle := func(t *testing.T, what string) {
		c, err := h.d.cpuOver(window)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("daemon CPU over %v, %s: %v", window, what, c)
		if c >= budget {
			t.Errorf("%s: daemon used %v CPU over %v idle (budget %v)", what, c, window, budget)
		}
	}
	t.Run("port2RunningPort1Waiting", func(t *testing.T) { idle(t, "port 2 running, port 1 waiting") })
	t.Run("bothPortsRunning", func(t *testing.T) {
		p := h.running(t, vt.NetPeerOptions{})
		idle(t, "both ports running, no traffic")
		p.C.Close()
	})
	// A guest driver keeps its RX queue full of buffers and, idle, sends
	// nothing: a poller must not stay awake for buffers it has nothing
	// to put in.
	for _, eventIdx := range []bool{false, true} {
		name, feat := "rxBuffersPostedNoEventIdx", vhostuser.Features(0)
		if eventIdx {
			name = "rxBuffersPostedEventIdx"
			feat = vhostuser.Bit(vhostuser.FVersion1) | vhostuser.Bit(vhostuser.FProtocolFeatures) |
				vhostuser.Bit(vhostuser.FRingIndirectDesc) | vhostuser.Bit(vhostuser.FRingEventIdx)
		}
		t.Run(name, func(t *testing.T) {
			p := h.running(t, vt.NetPeerOptions{Features: feat})
			if err := p.PostRX(128); err != nil {
				t.Fatal(err)
			}
			idle(t, "port 1 with 128 RX buffers posted, no traffic")
			p.C.Close()
		})
	}
}
