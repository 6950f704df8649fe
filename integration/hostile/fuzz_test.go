package hostile

import (
	"encoding/binary"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/veloce-io/veloce/vhostuser"
	vt "github.com/veloce-io/veloce/vhostuser/vhostusertest"
	"golang.org/x/sys/unix"
)

// FuzzSequence drives an in-process vhostuser.NetDevice over a real
// socketpair with a sequence of vhost-user messages decoded from the
// input (see step), with real memfds and eventfds as SCM_RIGHTS, and
// with guest-memory writes and kicks between messages, so that ring
// state, memory tables and feature negotiation are explored together.
// Whatever the sequence: the process must not crash, Serve must return
// once the frontend hangs up, and no descriptor may be left open.
//
// Guest memory is an unsealed memfd that a step may shrink (or grow back)
// while the device has it mapped, and another step may seal: the device
// absorbs the faults shrunk memory causes (it drops the frontend), so a
// crash here is a bug. SET_LOG_BASE gets a real but possibly short memfd.
//
//	go test -run '^$' -fuzz FuzzSequence -fuzztime 60s ./integration/hostile/
func FuzzSequence(f *testing.F) {
	testutilLinux(f)
	// Warm up what the runtime opens lazily (the netpoller), so that
	// runSequence's descriptor count compares like with like.
	if p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err == nil {
		fc := os.NewFile(uintptr(p[0]), "warm")
		if c, err := net.FileConn(fc); err == nil {
			c.Close()
		}
		fc.Close()
		unix.Close(p[1])
	}
	f.Fuzz(func(t *testing.T, seq []byte) { runSequence(t, seq) })
}

func testutilLinux(f *testing.F) {
	if runtime.GOOS != "linux" {
		f.Skip("needs Linux (memfd, SCM_RIGHTS)")
	}
}

func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

type echo struct{}

func (echo) HandleFrame(_ int, frame, reply []byte) int { return copy(reply, frame) }

const (
	fuzzMem   = 64 << 10
	fuzzUser  = 0x7f00_0000_0000
	maxSteps  = 64
	serveDone = 10 * time.Second
)

func runSequence(t *testing.T, seq []byte) {
	before := openFDs()
	dev, err := vhostuser.NewNetDevice(vhostuser.NetOptions{Handler: echo{}})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	be := fdConn(t, pair[0])
	fe := &vt.RawConn{Conn: fdConn(t, pair[1])}
	served := make(chan error, 1)
	go func() { served <- dev.Serve(be); be.Close() }()
	// Replies are drained and their descriptors closed, whatever comes.
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for {
			r, err := fe.ReadReply(time.Hour)
			for _, fd := range r.FDs {
				unix.Close(fd)
			}
			if err != nil {
				return
			}
		}
	}()

	g := newGuest(t)
	var closers []int
	defer func() {
		fe.Close()
		select {
		case err := <-served:
			_ = err // the device may refuse the sequence; that is fine
		case <-time.After(serveDone):
			t.Fatalf("Serve did not return within %v of the frontend hanging up: the device is wedged", serveDone)
		}
		<-drained
		unix.Munmap(g.mem)
		unix.Close(g.fd)
		for _, fd := range closers {
			unix.Close(fd)
		}
		if st := dev.State(); st.Connected || st.MemoryRegions != 0 {
			t.Errorf("after Serve: %+v", st)
		}
		// Descriptors closed on other goroutines (pollers, the runtime)
		// may lag a little: only a count that stays up is a leak.
		after := openFDs()
		for deadline := time.Now().Add(2 * time.Second); after > before && time.Now().Before(deadline); after = openFDs() {
			time.Sleep(10 * time.Millisecond)
		}
		if after > before {
			t.Errorf("%d descriptors leaked (%d before, %d after)", after-before, before, after)
		}
	}()
	eventfd := func() int {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			t.Fatal(err)
		}
		closers = append(closers, fd)
		return fd
	}
	var kicks [2]int
	kicks[0], kicks[1] = -1, -1
	r := reader{b: seq}
	send := func(req vhostuser.Request, payload []byte, fds ...int) bool {
		return fe.Send(req, vhostuser.FlagNeedReply, payload, fds...) == nil
	}
	region := vhostuser.MemoryRegion{Size: fuzzMem, UserAddr: fuzzUser}
	for range maxSteps {
		op, ok := r.byte()
		if !ok {
			return
		}
		alive := true
		switch op {
		case 'H': // QEMU-like handshake: everything offered is acked
			alive = fe.Send(vhostuser.GetFeatures, 0, nil) == nil &&
				send(vhostuser.SetOwner, nil) &&
				send(vhostuser.SetProtocolFeatures, vhostuser.AppendU64(nil, 1<<vhostuser.ProtocolFReplyAck|1<<vhostuser.ProtocolFLogShmfd|1<<vhostuser.ProtocolFConfigureMemSlots|1<<vhostuser.ProtocolFInflightShmfd)) &&
				send(vhostuser.SetFeatures, vhostuser.AppendU64(nil, uint64(vhostuser.Bit(vhostuser.FVersion1)|vhostuser.Bit(vhostuser.FProtocolFeatures)|vhostuser.Bit(vhostuser.FRingIndirectDesc)|vhostuser.Bit(vhostuser.FRingEventIdx)|vhostuser.Bit(vhostuser.NetFMrgRxbuf))))
		case 'M':
			alive = send(vhostuser.SetMemTable, vt.MemTablePayload(1, region), g.fd)
		case 'A':
			alive = send(vhostuser.AddMemReg, vt.MemRegPayload(region), g.fd)
		case 'D':
			alive = send(vhostuser.RemMemReg, vt.MemRegPayload(region))
		case 'R': // ring idx, log2 size, desc/avail/used offsets in 256-byte units
			b := r.bytes(5)
			if len(b) < 5 {
				return
			}
			idx := uint32(b[0] & 3)
			num := uint32(1) << (b[1] % 9)
			addr := vhostuser.VringAddr{Index: idx, Desc: fuzzUser + 256*uint64(b[2]), Avail: fuzzUser + 256*uint64(b[3]), Used: fuzzUser + 256*uint64(b[4])}
			kicks[idx&1] = eventfd()
			alive = send(vhostuser.SetVringNum, vhostuser.AppendVringState(nil, vhostuser.VringState{Index: idx, Num: num})) &&
				send(vhostuser.SetVringAddr, vhostuser.AppendVringAddr(nil, addr)) &&
				send(vhostuser.SetVringBase, vhostuser.AppendVringState(nil, vhostuser.VringState{Index: idx})) &&
				send(vhostuser.SetVringCall, vhostuser.AppendU64(nil, uint64(idx)), eventfd()) &&
				send(vhostuser.SetVringKick, vhostuser.AppendU64(nil, uint64(idx)), kicks[idx&1]) &&
				send(vhostuser.SetVringEnable, vhostuser.AppendVringState(nil, vhostuser.VringState{Index: idx, Num: 1}))
		case 'W': // guest writes: offset (u16), length, bytes
			off, ok1 := r.u16()
			n, ok2 := r.byte()
			data := r.bytes(int(n))
			if !ok1 || !ok2 {
				return
			}
			if g.size > 0 { // the test's own mapping faults past the end too
				copy(g.mem[int(off)%g.size:g.size], data)
			}
		case 'S': // the frontend truncates guest memory to n pages (0 to 16)
			n, _ := r.byte()
			if unix.Ftruncate(g.fd, int64(n%17)*4096) == nil {
				g.size = int(n%17) * 4096
			} // EPERM once sealed
		case 'Z': // seal it against shrinking, as QEMU's memfd backend does
			unix.FcntlInt(uintptr(g.fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK)
		case 'K':
			i, _ := r.byte()
			if fd := kicks[i&1]; fd >= 0 {
				vt.Kick(fd)
			}
		case 'L': // SET_LOG_BASE: memfd of n pages, claimed size and offset from the input
			n, _ := r.byte()
			b := r.bytes(8)
			if len(b) < 8 {
				return
			}
			fd := memfd(t, int64(n%16)*4096)
			closers = append(closers, fd)
			l := vhostuser.Log{Size: uint64(binary.LittleEndian.Uint32(b)), Offset: uint64(binary.LittleEndian.Uint32(b[4:])) &^ 4095}
			alive = send(vhostuser.SetLogBase, vhostuser.AppendLog(nil, l), fd)
		default: // a raw message: request op, flags, fd kind, size, payload
			b := r.bytes(3)
			if len(b) < 3 {
				return
			}
			payload := r.bytes(int(b[2]))
			flags := uint32(vhostuser.Version)
			if b[0]&1 != 0 {
				flags |= vhostuser.FlagNeedReply
			}
			if b[0]&2 != 0 {
				flags = uint32(b[0]) >> 2
			}
			size := uint32(len(payload))
			if b[0]&0x80 != 0 {
				size = uint32(b[0]) << 4 // a lie about the size
			}
			var fds []int
			switch b[1] % 5 {
			case 1:
				fds = []int{eventfd()}
			case 2:
				fds = []int{g.fd}
			case 3:
				fds = []int{eventfd(), eventfd()}
			case 4:
				p := make([]int, 2)
				unix.Pipe2(p, unix.O_CLOEXEC)
				closers = append(closers, p...)
				fds = p[:1]
			}
			alive = fe.WriteRaw(append(vt.Header(uint32(op), flags, size), payload...), fds...) == nil
		}
		if !alive {
			return // the device hung up
		}
	}
}

// guest is 64 KiB of guest RAM in a memfd that may be shrunk and sealed.
type guest struct {
	fd   int
	mem  []byte // mapped at fuzzMem bytes whatever the file's size
	size int    // the file's size: the test touches mem only below it
}

func newGuest(t *testing.T) guest {
	fd, err := unix.MemfdCreate("fuzz-guest", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, fuzzMem); err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(fd, 0, fuzzMem, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	return guest{fd: fd, mem: mem, size: fuzzMem}
}

func memfd(t *testing.T, size int64) int {
	fd, err := unix.MemfdCreate("fuzz-log", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	unix.Ftruncate(fd, size)
	return fd
}

func fdConn(t *testing.T, fd int) *net.UnixConn {
	f := os.NewFile(uintptr(fd), "fuzz-sock")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.UnixConn)
}

type reader struct{ b []byte }

func (r *reader) byte() (byte, bool) {
	if len(r.b) == 0 {
		return 0, false
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c, true
}

func (r *reader) bytes(n int) []byte {
	n = min(n, len(r.b))
	b := r.b[:n]
	r.b = r.b[n:]
	return b
}

func (r *reader) u16() (uint16, bool) {
	b := r.bytes(2)
	if len(b) < 2 {
		return 0, false
	}
	return binary.LittleEndian.Uint16(b), true
}
