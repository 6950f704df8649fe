package backend

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net/netip"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/slots"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/internal/wire"
	dpdkplug "github.com/veloce-io/veloce/plugins/dpdk"
)

var ringSeq atomic.Uint32

// TestDPDKSlotsNotReusedWhileInFlight: the runtime's remote slots live in
// the DPDK plugin's external memory and go out without a copy; a slot
// whose mbuf DPDK still holds (net_ring keeps it until the receiving side
// frees it, as a NIC keeps it until it read it) stays out of the pool,
// so no message can be written into it, and returns once DPDK let go.
// The bytes that arrive are the bytes sealed: every MAC verifies.
func TestDPDKSlotsNotReusedWhileInFlight(t *testing.T) {
	requireDPDK(t)
	dp, err := dpdkplug.New(dpdkplug.Options{Device: fmt.Sprintf("net_ring_rt%d", ringSeq.Add(1)), Addr: netip.MustParsePrefix("10.95.0.1/24"), CPU: -1})
	if err != nil {
		t.Fatal(err)
	}
	// The ring loops back: the runtime's peer is the plugin itself.
	dp.Host().Learn(dp.LocalAddr().Addr(), dp.Host().MAC())
	key := make([]byte, wire.MinKeyLen)
	rand.Read(key)
	rt := NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Accelerated: []Datapath{dp}, Peers: []netip.AddrPort{dp.LocalAddr()}, Key: key}})
	t.Cleanup(func() { rt.Close(); dp.Close() })
	rm := rt.remote
	st := rm.dps[0]
	if st.slotMem == nil {
		t.Fatal("the runtime did not lay its slots in the DPDK plugin's memory")
	}
	rm.peerList()[0].channels.Store(&[]uint32{5})
	s := rt.OpenSession(&fakeEndpoint{}, netip.AddrPort{})
	stream, _ := s.CreateStream(StreamOptions{Acceleration: true})
	src, err := s.CreateSource(stream.ID, 5)
	if err != nil {
		t.Fatal(err)
	}

	const n = remoteBatch
	msg := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 200+i) }
	for i := range n {
		if q := rt.Emit(src, msg(i)); q != 1 {
			t.Fatalf("emit %d queued for %d peers", i, q)
		}
	}
	// The polling thread's flush, by hand: the runtime is not started.
	f := &flusher{rm: rm, st: st, pkts: make([]wire.Packet, remoteBatch), ids: make([]uint32, remoteBatch), seal: rm.newSealer()}
	if !f.flush() {
		t.Fatal("flush found nothing to send")
	}
	if ds := dp.Stats(); ds.TxZeroCopy != n || ds.TxCopied != 0 || ds.TxSlotsBusy != n {
		t.Fatalf("after sending %d messages: plugin %+v, want all sent from their slots", n, ds)
	}
	if st.heldCount() != n || rm.slots.Free() != remoteSlots-n {
		t.Fatalf("with %d slots in DPDK's hands: %d held, %d free of %d", n, st.heldCount(), rm.slots.Free(), remoteSlots)
	}
	inFlight := map[uint32]bool{}
	for _, id := range f.ids[:n] {
		if rm.slots.State(id) != slots.Held || !dp.SlotBusy(int(id)) {
			t.Fatalf("slot %d in flight is %v, busy %v", id, rm.slots.State(id), dp.SlotBusy(int(id)))
		}
		inFlight[id] = true
	}
	// Nothing the pool hands out now is in flight; turns of the flusher
	// (with nothing to send) do not let the slots go either.
	for range 3 {
		f.flush()
	}
	var got []uint32
	for {
		id, ok := rm.slots.Get()
		if !ok {
			break
		}
		if inFlight[id] || dp.SlotBusy(int(id)) {
			t.Fatalf("the pool handed out slot %d while DPDK still holds it", id)
		}
		got = append(got, id)
	}
	if len(got) != remoteSlots-n {
		t.Fatalf("drained %d slots, want %d", len(got), remoteSlots-n)
	}
	for _, id := range got {
		rm.slots.Put(id)
	}

	// The receiving side takes the frames (and frees the mbufs): each
	// message intact, its MAC over the bytes that were sent.
	open := wire.NewOpener(key)
	pkts := make([]wire.Packet, 8)
	for i := range pkts {
		pkts[i].Buf = make([]byte, 2048)
	}
	for i := 0; i < n; {
		k, err := dp.RecvBatch(pkts, time.Second)
		if err != nil || k == 0 {
			t.Fatalf("received %d of %d: %v", i, n, err)
		}
		for j := range pkts[:k] {
			h, payload, _, err := open.Open(pkts[j].Bytes())
			if err != nil || h.Kind != wire.KindData || !bytes.Equal(payload, msg(i)) {
				t.Fatalf("message %d: %+v, %v", i, h, err)
			}
			i++
		}
	}
	if dp.SlotBusy(int(f.ids[0])) {
		t.Fatal("slot still busy after the receiver freed its mbuf")
	}
	f.flush() // reaps
	if st.heldCount() != 0 || rm.slots.Free() != remoteSlots {
		t.Fatalf("after DPDK let go: %d held, %d of %d free", st.heldCount(), rm.slots.Free(), remoteSlots)
	}

	// Emit, flush, receive, reap: no allocation.
	payload := msg(1)
	if a := testing.AllocsPerRun(20, func() {
		for range n {
			rt.Emit(src, payload)
		}
		f.flush()
		for k := 0; k < n; {
			r, _ := dp.RecvBatch(pkts, time.Second)
			k += r
		}
		f.flush()
	}); a != 0 {
		t.Errorf("emit+flush+reap of %d messages: %.1f allocations", n, a)
	}
	if st.heldCount() != 0 || dp.Stats().TxCopied != 0 {
		t.Errorf("after the allocation runs: %d held, plugin %+v", st.heldCount(), dp.Stats())
	}
}

// TestDPDKHostAppToHostAppOneCopy: two daemons on two hosts (namespaces
// joined by a veth, net_af_packet), a host application on each; 20,000
// messages from A's application reach B's, in order and intact, and A's
// DPDK plugin sends every one from the runtime's slot without copying
// it: the only copy of a message on A is the runtime's, from the
// application's TX slot into the remote slot (the wire header's). What the
// plugin copies is the directory traffic alone.
func TestDPDKHostAppToHostAppOneCopy(t *testing.T) {
	requireDPDK(t)
	na, nb := testutil.NewNetns(t), testutil.NewNetns(t)
	va, vb := testutil.BareVeth(t, na, nb)
	dpA, dpB := openDPDK(t, na, va, "10.98.4.1/24"), openDPDK(t, nb, vb, "10.98.4.2/24")
	start := func(dp, peer *dpdkplug.Plugin, node uint32) (*Daemon, string) {
		sock := filepath.Join(t.TempDir(), "app.sock")
		d, _ := startDaemonWith(t, func(o *DaemonOptions) {
			o.AppSocket = sock
			o.Runtime = RuntimeOptions{NodeID: node, Remote: RemoteOptions{Accelerated: []Datapath{dp},
				Peers: []netip.AddrPort{peer.LocalAddr()}, DirectoryInterval: 100 * time.Millisecond}}
		})
		return d, sock
	}
	dA, sockA := start(dpA, dpB, 1)
	dB, sockB := start(dpB, dpA, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	appA, appB := openApp(t, sockA), openApp(t, sockB)
	stB, err := appB.CreateStream(ctx, guestlib.StreamOptions{Acceleration: true})
	if err != nil {
		t.Fatal(err)
	}
	sink, err := stB.CreateSink(ctx, 7, guestlib.SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitDirectory(t, ctx, dA.rt, 7)
	stA, err := appA.CreateStream(ctx, guestlib.StreamOptions{Acceleration: true})
	if err != nil {
		t.Fatal(err)
	}
	src, err := stA.CreateSource(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20000
	var consumed atomic.Int64
	errs := make(chan error, 2)
	go func() { errs <- stream(ctx, src, n, 256, &consumed) }()
	go func() { errs <- receive(ctx, sink, n, &consumed) }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("%v; A: %+v", err, dA.Remote())
		}
	}
	dirs := dA.rt.remote.dirMsgs.Load()
	sa := dpA.Stats()
	t.Logf("A's plugin: %+v; directory datagrams %d; B's: %+v", sa, dirs, dpB.Stats())
	if sa.TxZeroCopy != n {
		t.Errorf("A's plugin sent %d of %d messages from the runtime's slots (copied %d datagrams)", sa.TxZeroCopy, n, sa.TxCopied)
	}
	// Directories are built outside the slots, and copied; a message never.
	if dirs = dA.rt.remote.dirMsgs.Load(); sa.TxCopied > dirs {
		t.Errorf("A's plugin copied %d datagrams, more than its %d directory datagrams", sa.TxCopied, dirs)
	}
	_ = dB
}

// TestDPDKSlotMemoryFreedWithRuntime: the slot memory a runtime took from
// its DPDK plugin is freed (unregistered from the EAL and unmapped) once
// the runtime is unreachable, so a process that makes runtimes one after
// another does not run out of the EAL's memseg lists; the plugin can then
// give out a region again.
func TestDPDKSlotMemoryFreedWithRuntime(t *testing.T) {
	requireDPDK(t)
	dp, err := dpdkplug.New(dpdkplug.Options{Device: fmt.Sprintf("net_ring_rt%d", ringSeq.Add(1)), Addr: netip.MustParsePrefix("10.95.1.1/24"), CPU: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	func() {
		rt := NewRuntime(RuntimeOptions{NodeID: 1, Remote: RemoteOptions{Accelerated: []Datapath{dp}}})
		if rt.remote.dps[0].slotMem == nil {
			t.Fatal("the runtime did not take the plugin's slot memory")
		}
		rt.Close()
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		runtime.GC()
		_, free, err := dp.SlotMemory(2, 2112)
		if err == nil {
			free()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the plugin's slot memory is still given out after the runtime went: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
