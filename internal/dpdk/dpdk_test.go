//go:build dpdk && cgo

package dpdk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/veloce-io/veloce/internal/testutil"
	"golang.org/x/sys/unix"
)

// The EAL is one per process: TestMain initialises it once, with the
// arguments that work without hugepages, and the tests share it.
var (
	ealErr       error
	affinityPre  unix.CPUSet // of the thread TestMain ran on, before Init
	testEALArgs  []string
	portSeq      atomic.Uint32
	testEthType  = uint16(0x88b5) // IEEE local experimental: nothing else sends it
	waitDelivery = 2 * time.Second
)

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		ealErr = errors.New("not root")
	} else {
		_ = unix.SchedGetaffinity(0, &affinityPre)
		testEALArgs = ealArgs(affinityPre)
		ealErr = Init(testEALArgs)
	}
	os.Exit(m.Run())
}

// ealArgs: no hugepages (--no-huge -m; --in-memory is refused with
// --no-huge in 22.11, --no-shconf keeps /var/run/dpdk empty), no PCI scan,
// no telemetry socket, quiet, and one lcore whose (parked) thread may run
// on any CPU this process may use.
func ealArgs(cpus unix.CPUSet) []string {
	var list []string
	for c := 0; c < 1024; c++ {
		if cpus.IsSet(c) {
			list = append(list, fmt.Sprint(c))
		}
	}
	if len(list) == 0 {
		list = []string{"0"}
	}
	return []string{"--no-huge", "-m", "256", "--no-shconf", "--no-pci", "--no-telemetry",
		"--lcores=0@(" + strings.Join(list, ",") + ")", "--log-level=*:error"}
}

// needEAL skips without root outside CI, and fails when the EAL did not
// come up as root: that is a real failure.
func needEAL(t testing.TB) {
	t.Helper()
	testutil.RequiresRoot(t)
	if ealErr != nil {
		t.Fatalf("EAL: %v", ealErr)
	}
}

func newPool(t testing.TB, n, cache int) *Mempool {
	t.Helper()
	mp, err := NewMempool(fmt.Sprintf("t%d", portSeq.Add(1)), n, cache, 2048)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mp.Free)
	return mp
}

func openPort(t testing.TB, devargs string, pool *Mempool) *Port {
	t.Helper()
	p, err := OpenPort(devargs, PortConfig{Pool: pool, Promiscuous: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p
}

func ringPort(t testing.TB, pool *Mempool) *Port {
	return openPort(t, fmt.Sprintf("net_ring_t%d", portSeq.Add(1)), pool)
}

// vethPorts makes two namespaces joined by a veth pair and opens an
// net_af_packet port on each end, probed from inside its namespace.
func vethPorts(t testing.TB, pool *Mempool) (a, b *Port) {
	t.Helper()
	nsA, nsB := testutil.NewNetns(t), testutil.NewNetns(t)
	testutil.Veth(t, nsA, "192.0.2.1/24", nsB, "192.0.2.2/24")
	open := func(ns *testutil.Netns) *Port {
		var p *Port
		err := ns.Do(func() error {
			ifs, err := net.Interfaces()
			if err != nil {
				return err
			}
			for _, ifc := range ifs {
				if ifc.Flags&net.FlagLoopback != 0 {
					continue
				}
				p = openPort(t, fmt.Sprintf("net_af_packet%d,iface=%s", portSeq.Add(1), ifc.Name), pool)
				if got := p.MAC(); !bytes.Equal(got[:], ifc.HardwareAddr) {
					return fmt.Errorf("port %s: MAC %x, interface %s has %s", p.Name(), got, ifc.Name, ifc.HardwareAddr)
				}
				return nil
			}
			return errors.New("no veth in namespace " + ns.Name)
		})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	return open(nsA), open(nsB)
}

// frame writes test frame seq (60 to 123 bytes) into b and returns its
// length.
func frame(b []byte, dst, src [6]byte, seq uint32) int {
	n := 60 + int(seq%64)
	copy(b[0:6], dst[:])
	copy(b[6:12], src[:])
	binary.BigEndian.PutUint16(b[12:], testEthType)
	binary.BigEndian.PutUint32(b[14:], seq)
	for i := 18; i < n; i++ {
		b[i] = byte(seq) ^ byte(i)
	}
	return n
}

// parseFrame returns a test frame's sequence number; ours is false for
// other traffic (IPv6 router solicitations and the like on a veth).
func parseFrame(b []byte) (seq uint32, ours bool, err error) {
	if len(b) < 18 || binary.BigEndian.Uint16(b[12:]) != testEthType {
		return 0, false, nil
	}
	seq = binary.BigEndian.Uint32(b[14:])
	if want := 60 + int(seq%64); len(b) != want {
		return seq, true, fmt.Errorf("frame %d: %d bytes, want %d", seq, len(b), want)
	}
	for i := 18; i < len(b); i++ {
		if b[i] != byte(seq)^byte(i) {
			return seq, true, fmt.Errorf("frame %d: byte %d is %#x, want %#x", seq, i, b[i], byte(seq)^byte(i))
		}
	}
	return seq, true, nil
}

// sendAll transmits all of mbufs, retrying what the PMD did not take yet.
func sendAll(t testing.TB, p *Port, mbufs []*Mbuf) {
	t.Helper()
	deadline := time.Now().Add(waitDelivery)
	for off := 0; off < len(mbufs); {
		off += p.TxBurst(0, mbufs[off:])
		if off < len(mbufs) {
			if time.Now().After(deadline) {
				FreeBulk(mbufs[off:])
				t.Fatalf("port %s took %d of %d frames in %v", p.Name(), off, len(mbufs), waitDelivery)
			}
			time.Sleep(20 * time.Microsecond)
		}
	}
}

// lockAndRegister locks the test's goroutine to its thread and registers
// that with the EAL, as a poller would.
func lockAndRegister(t testing.TB) {
	t.Helper()
	runtime.LockOSThread()
	if err := RegisterThread(); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	if LcoreID() == LcoreIDAny {
		t.Fatal("registered thread has no lcore id")
	}
	t.Cleanup(func() {
		UnregisterThread()
		runtime.UnlockOSThread()
	})
}

// TestAFPacketVeth sends 10,000 numbered frames through a veth pair
// between two namespaces, net_af_packet on both ends, and expects every
// one, intact and in order, and nothing else. Sending proceeds a burst at
// a time and waits for the burst to arrive, so the kernel's queues never
// overflow: a lost, duplicated, reordered or corrupted frame fails.
func TestAFPacketVeth(t *testing.T) {
	needEAL(t)
	pool := newPool(t, 4095, 128)
	pa, pb := vethPorts(t, pool)
	for deadline := time.Now().Add(waitDelivery); !pa.LinkUp() || !pb.LinkUp(); {
		if time.Now().After(deadline) {
			t.Fatalf("link down: %s %v, %s %v", pa.Name(), pa.LinkUp(), pb.Name(), pb.LinkUp())
		}
		time.Sleep(10 * time.Millisecond)
	}
	lockAndRegister(t)

	const total = 10000
	dst, src := pb.MAC(), pa.MAC()
	tx, rx := make([]*Mbuf, 32), make([]*Mbuf, 32)
	sent, got := 0, 0
	for got < total {
		k := min(len(tx), total-sent)
		if err := pool.AllocBulk(tx[:k]); err != nil {
			t.Fatalf("after %d frames: %v", sent, err)
		}
		for i, m := range tx[:k] {
			m.SetLen(frame(m.Room(), dst, src, uint32(sent+i)))
		}
		sendAll(t, pa, tx[:k])
		sent += k
		deadline := time.Now().Add(waitDelivery)
		for got < sent {
			n := pb.RxBurst(0, rx)
			for _, m := range rx[:n] {
				seq, ours, err := parseFrame(m.Data())
				if err == nil && ours && seq != uint32(got) {
					err = fmt.Errorf("received frame %d, want %d", seq, got)
				}
				if err != nil {
					FreeBulk(rx[:n])
					t.Fatal(err)
				}
				if ours {
					got++
				}
			}
			FreeBulk(rx[:n])
			if n == 0 {
				if time.Now().After(deadline) {
					t.Fatalf("received %d of %d frames sent (lost)", got, sent)
				}
				runtime.Gosched()
			}
		}
	}
	for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
		n := pb.RxBurst(0, rx)
		for _, m := range rx[:n] {
			if seq, ours, _ := parseFrame(m.Data()); ours {
				t.Errorf("extra frame %d after all %d", seq, total)
			}
		}
		FreeBulk(rx[:n])
	}
	sa, err := pa.Stats()
	if err != nil {
		t.Fatal(err)
	}
	sb, err := pb.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if sa.OPackets != total || sb.IPackets < total {
		t.Errorf("stats: %s sent %d, %s received %d; want %d", pa.Name(), sa.OPackets, pb.Name(), sb.IPackets, total)
	}
	if n := pool.InUse(); n != 0 {
		t.Errorf("%d mbufs still in use after the run", n)
	}
	t.Logf("%s -> %s: %d frames; stats %+v / %+v", pa.Name(), pb.Name(), total, sa, sb)
}

func TestMempoolAccounting(t *testing.T) {
	needEAL(t)
	pool := newPool(t, 64, 0)
	all := make([]*Mbuf, 64)
	if err := pool.AllocBulk(all); err != nil {
		t.Fatal(err)
	}
	if pool.InUse() != 64 || pool.Avail() != 0 {
		t.Fatalf("after taking all: in use %d, avail %d", pool.InUse(), pool.Avail())
	}
	m := all[0]
	if m.Len() != 0 || len(m.Data()) != 0 || len(m.Room()) != 2048 {
		t.Errorf("fresh mbuf: Len %d, Data %d bytes, Room %d bytes; want 0, 0, 2048", m.Len(), len(m.Data()), len(m.Room()))
	}
	if err := pool.AllocBulk(make([]*Mbuf, 1)); !errors.Is(err, ErrNoMbufs) {
		t.Fatalf("AllocBulk on an empty pool: %v, want ErrNoMbufs", err)
	}
	FreeBulk(all[:10])
	if err := pool.AllocBulk(make([]*Mbuf, 11)); !errors.Is(err, ErrNoMbufs) {
		t.Fatalf("AllocBulk of 11 with 10 left: %v, want ErrNoMbufs", err)
	}
	if pool.InUse() != 54 {
		t.Fatalf("a failed AllocBulk took mbufs: in use %d, want 54", pool.InUse())
	}
	FreeBulk(all[10:])
	if pool.InUse() != 0 || pool.Avail() != 64 {
		t.Fatalf("after FreeBulk: in use %d, avail %d; want 0, 64", pool.InUse(), pool.Avail())
	}

	// The same through a registered thread's cache, which counts as
	// available.
	cached := newPool(t, 255, 32)
	lockAndRegister(t)
	for range 3 {
		if err := cached.AllocBulk(all); err != nil {
			t.Fatal(err)
		}
		if cached.InUse() != 64 {
			t.Fatalf("in use %d, want 64", cached.InUse())
		}
		FreeBulk(all)
	}
	if cached.InUse() != 0 {
		t.Fatalf("cached pool: in use %d after FreeBulk", cached.InUse())
	}
}

// TestExtBuf sends a frame from mmap'd memory, zero-copy: through
// net_ring the receiver gets the very same bytes and the ExtBufDone stays
// pending until the receiver frees the mbuf; through net_af_packet (which
// copies) it is done once TxBurst returns, and the peer sees the bytes.
func TestExtBuf(t *testing.T) {
	needEAL(t)
	pool := newPool(t, 255, 0)
	mem, err := unix.Mmap(-1, 0, 2*os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	buf := unsafe.Pointer(unsafe.SliceData(mem))
	if err := RegisterExtMem(buf, len(mem)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := UnregisterExtMem(buf, len(mem)); err != nil {
			t.Error(err)
		}
	})
	d := NewExtBufDone()
	defer d.Free()
	one, rx := make([]*Mbuf, 1), make([]*Mbuf, 4)

	t.Run("ring", func(t *testing.T) {
		rp := ringPort(t, pool)
		n := frame(mem, [6]byte{2}, [6]byte{4}, 7)
		if err := pool.AllocBulk(one); err != nil {
			t.Fatal(err)
		}
		one[0].AttachExtBuf(buf, n, d)
		if d.Pending() != 1 || one[0].Len() != n || &one[0].Data()[0] != &mem[0] {
			t.Fatalf("after attach: pending %d, len %d", d.Pending(), one[0].Len())
		}
		sendAll(t, rp, one)
		if d.Pending() != 1 {
			t.Fatalf("pending %d while the frame sits in the ring, want 1", d.Pending())
		}
		if got := rp.RxBurst(0, rx); got != 1 {
			t.Fatalf("ring gave %d frames, want 1", got)
		}
		if data := rx[0].Data(); &data[0] != &mem[0] || len(data) != n {
			t.Fatalf("received %d bytes at %p, want %d at %p (zero copy)", len(data), &data[0], n, &mem[0])
		}
		FreeBulk(rx[:1])
		if d.Pending() != 0 {
			t.Fatalf("pending %d after the receiver freed the mbuf, want 0", d.Pending())
		}
		if pool.InUse() != 0 {
			t.Fatalf("%d mbufs in use: freeing the external mbuf did not return it", pool.InUse())
		}
	})

	t.Run("af_packet", func(t *testing.T) {
		pa, pb := vethPorts(t, pool)
		n := frame(mem[100:], pb.MAC(), pa.MAC(), 42)
		if err := pool.AllocBulk(one); err != nil {
			t.Fatal(err)
		}
		one[0].AttachExtBuf(unsafe.Add(buf, 100), n, d)
		sendAll(t, pa, one)
		for deadline := time.Now().Add(waitDelivery); d.Pending() != 0; {
			if time.Now().After(deadline) {
				t.Fatalf("pending %d: the PMD never freed the sent mbuf", d.Pending())
			}
			time.Sleep(time.Millisecond)
		}
		for deadline := time.Now().Add(waitDelivery); ; {
			k := pb.RxBurst(0, rx)
			found := false
			for _, m := range rx[:k] {
				if seq, ours, err := parseFrame(m.Data()); ours {
					if err != nil || seq != 42 || !bytes.Equal(m.Data(), mem[100:100+n]) {
						t.Errorf("received frame %d (%v): % x", seq, err, m.Data())
					}
					found = true
				}
			}
			FreeBulk(rx[:k])
			if found {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the frame sent from external memory never arrived")
			}
			time.Sleep(100 * time.Microsecond)
		}
	})

	t.Run("free-in-flight", func(t *testing.T) {
		// Free before DPDK lets go: the shared info must outlive it.
		rp := ringPort(t, pool)
		d2 := NewExtBufDone()
		if err := pool.AllocBulk(one); err != nil {
			t.Fatal(err)
		}
		one[0].AttachExtBuf(buf, 64, d2)
		sendAll(t, rp, one)
		d2.Free()
		if d2.Pending() != 0 {
			t.Fatal("a freed ExtBufDone reports pending mbufs")
		}
		if rp.RxBurst(0, rx) != 1 {
			t.Fatal("ring lost the frame")
		}
		FreeBulk(rx[:1]) // releases d2's C memory
	})
}

// TestNoAllocs: the burst path and the per-packet accessors allocate
// nothing.
func TestNoAllocs(t *testing.T) {
	needEAL(t)
	pool := newPool(t, 1023, 0)
	rp := ringPort(t, pool)
	tx, rx := make([]*Mbuf, 32), make([]*Mbuf, 32)
	var sum int
	if a := testing.AllocsPerRun(200, func() {
		if pool.AllocBulk(tx) != nil {
			panic("pool empty")
		}
		sent := rp.TxBurst(0, tx)
		FreeBulk(tx[sent:])
		FreeBulk(rx[:rp.RxBurst(0, rx)])
	}); a != 0 {
		t.Errorf("AllocBulk+TxBurst+RxBurst+FreeBulk: %v allocations per run", a)
	}
	if err := pool.AllocBulk(tx); err != nil {
		t.Fatal(err)
	}
	defer FreeBulk(tx)
	if a := testing.AllocsPerRun(200, func() {
		for _, m := range tx {
			m.SetLen(64)
			sum += len(m.Data()) + m.Len()
		}
	}); a != 0 {
		t.Errorf("SetLen+Data+Len: %v allocations per run", a)
	}
	if pool.InUse() != 32 || sum == 0 {
		t.Errorf("in use %d, want the 32 held", pool.InUse())
	}
}

// TestCMemoryBursts: burst arrays from NewMbufs carry a ring port's
// traffic as Go arrays do, allocating nothing, and start zeroed.
func TestCMemoryBursts(t *testing.T) {
	needEAL(t)
	pool := newPool(t, 1023, 0)
	rp := ringPort(t, pool)
	tx, rx := NewMbufs(32), NewMbufs(32)
	defer FreeMbufs(tx)
	defer FreeMbufs(rx)
	for i := range rx {
		if rx[i] != nil || tx[i] != nil {
			t.Fatalf("entry %d of a new array is not nil", i)
		}
	}
	got := 0
	if a := testing.AllocsPerRun(200, func() {
		if pool.AllocBulk(tx) != nil {
			panic("pool empty")
		}
		for _, m := range tx {
			m.SetLen(60)
		}
		sent := rp.TxBurst(0, tx)
		FreeBulk(tx[sent:])
		n := rp.RxBurst(0, rx)
		for _, m := range rx[:n] {
			got += m.Len()
		}
		FreeBulk(rx[:n])
	}); a != 0 {
		t.Errorf("bursts through C arrays: %v allocations per run", a)
	}
	if got == 0 {
		t.Error("nothing came back through the ring port")
	}
	if pool.InUse() != 0 {
		t.Errorf("%d mbufs in use after the bursts, want 0", pool.InUse())
	}
	if NewMbufs(0) != nil {
		t.Error("NewMbufs(0) is not nil")
	}
	FreeMbufs(nil)
}

// TestCgoCheck: a Go pointer in a burst array is caught by cgocheck (on
// by default) before C sees it, so the burst arrays are checked.
func TestCgoCheck(t *testing.T) {
	needEAL(t)
	if strings.Contains(os.Getenv("GODEBUG"), "cgocheck=0") {
		t.Skip("GODEBUG=cgocheck=0")
	}
	fake := make([]uint64, 32) // Go memory posing as an mbuf
	var r any
	func() {
		defer func() { r = recover() }()
		FreeBulk([]*Mbuf{nil, (*Mbuf)(unsafe.Pointer(&fake[0]))}) // checked past the first entry too
	}()
	if r == nil || !strings.Contains(fmt.Sprint(r), "Go pointer") {
		t.Fatalf("FreeBulk of a Go pointer: recovered %v, want cgocheck's panic", r)
	}
}

func TestPorts(t *testing.T) {
	needEAL(t)
	pool := newPool(t, 255, 0)
	if _, err := OpenPort("net_bogus7,x=1", PortConfig{Pool: pool}); err == nil || !strings.Contains(err.Error(), "net_bogus7,x=1") {
		t.Errorf("OpenPort of a bogus device: %v", err)
	} else {
		t.Log(err)
	}
	if _, err := OpenPort("net_af_packet_t,iface=nonexistent0", PortConfig{Pool: pool}); err == nil || !strings.Contains(err.Error(), "iface=nonexistent0") {
		t.Errorf("OpenPort of af_packet on a missing interface: %v", err)
	} else {
		t.Log(err)
	}
	if _, err := OpenPort("net_ring_nopool", PortConfig{}); err == nil {
		t.Error("OpenPort without a pool succeeded")
	}
	name := fmt.Sprintf("net_ring_t%d", portSeq.Add(1))
	p := openPort(t, name, pool)
	if p.Name() != name || !p.LinkUp() {
		t.Errorf("port %d: name %q, link up %v", p.ID(), p.Name(), p.LinkUp())
	}
	if _, err := OpenPort(name, PortConfig{Pool: pool}); err == nil {
		t.Error("opening an open port again succeeded")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// Close removed the device it probed: the name can be probed again.
	p2 := openPort(t, name, pool)
	if p2.Name() != name {
		t.Errorf("reopened port is named %q", p2.Name())
	}
	mbufs := make([]*Mbuf, 1)
	if err := pool.AllocBulk(mbufs); err != nil {
		t.Fatal(err)
	}
	mbufs[0].SetLen(frame(mbufs[0].Room(), [6]byte{}, [6]byte{}, 3))
	sendAll(t, p2, mbufs)
	if p2.RxBurst(0, mbufs) != 1 {
		t.Fatal("the reopened ring port lost a frame")
	}
	if seq, ours, err := parseFrame(mbufs[0].Data()); !ours || seq != 3 || err != nil {
		t.Errorf("reopened ring port: frame %d, %v", seq, err)
	}
	FreeBulk(mbufs)
}

// TestThreads: only Init's parked thread is pinned; registering a thread
// gives it an lcore id and leaves its affinity alone.
func TestThreads(t *testing.T) {
	needEAL(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var before, after unix.CPUSet
	if err := unix.SchedGetaffinity(0, &before); err != nil {
		t.Fatal(err)
	}
	if before != affinityPre {
		t.Errorf("a Go thread's affinity changed with Init: %d CPUs, was %d", before.Count(), affinityPre.Count())
	}
	if LcoreID() != LcoreIDAny {
		t.Fatalf("unregistered thread has lcore id %d", LcoreID())
	}
	if err := RegisterThread(); err != nil {
		t.Fatal(err)
	}
	id := LcoreID()
	unix.SchedGetaffinity(0, &after)
	UnregisterThread()
	if id == LcoreIDAny || id == 0 {
		t.Errorf("registered thread has lcore id %d", id)
	}
	if after != before {
		t.Error("RegisterThread changed the thread's affinity")
	}
	if LcoreID() != LcoreIDAny {
		t.Errorf("after UnregisterThread: lcore id %d", LcoreID())
	}
	if err := Init([]string{"--bogus"}); err != nil {
		t.Errorf("second Init: %v, want the first call's result (nil)", err)
	}
}

// TestStubBuilds: the package still builds and vets without DPDK.
func TestStubBuilds(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = runtime.GOROOT() + "/bin/go"
	}
	for _, args := range [][]string{{"vet", "."}, {"build", "."}} {
		cmd := exec.Command(gobin, args...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("CGO_ENABLED=0 go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// BenchmarkBurst: a round of 32 64-byte frames, allocated, given a
// header, sent, received, recognised and freed by a registered poller
// thread: ns/op is per round of 32.
func BenchmarkBurst(b *testing.B) {
	needEAL(b)
	run := func(b *testing.B, tx, rx *Port, pool *Mempool) {
		lockAndRegister(b)
		out, in := make([]*Mbuf, 32), make([]*Mbuf, 32)
		var hdr [64]byte
		frame(hdr[:], rx.MAC(), tx.MAC(), 0)
		b.ResetTimer()
		for i := range b.N {
			if err := pool.AllocBulk(out); err != nil {
				b.Fatal(err)
			}
			for _, m := range out {
				copy(m.Room(), hdr[:18])
				m.SetLen(64)
			}
			sendAll(b, tx, out)
			deadline := time.Now().Add(waitDelivery)
			for got := 0; got < len(out); {
				n := rx.RxBurst(0, in)
				for _, m := range in[:n] {
					if d := m.Data(); len(d) == 64 && binary.BigEndian.Uint16(d[12:]) == testEthType {
						got++
					}
				}
				FreeBulk(in[:n])
				if n == 0 && time.Now().After(deadline) {
					b.Fatalf("round %d: received %d of %d frames", i, got, len(out))
				}
			}
		}
		b.ReportMetric(float64(32*b.N)/b.Elapsed().Seconds(), "pps")
	}
	b.Run("ring", func(b *testing.B) {
		pool := newPool(b, 4095, 256)
		p := ringPort(b, pool)
		run(b, p, p, pool)
	})
	b.Run("af_packet", func(b *testing.B) {
		pool := newPool(b, 4095, 256)
		pa, pb := vethPorts(b, pool)
		run(b, pa, pb, pool)
	})
}
