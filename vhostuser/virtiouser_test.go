package vhostuser_test

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/testpmd"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/vhostuser"
)

// generator is an RXSource that sends limit copies of one frame.
type generator struct {
	frame []byte
	left  atomic.Int64
}

func (g *generator) HandleFrame(int, []byte, []byte) int { return 0 }
func (g *generator) FillRX(_ int, buf []byte) int {
	if g.left.Add(-1) < 0 {
		return 0
	}
	return copy(buf, g.frame)
}
func (g *generator) PendingRX(int) bool { return g.left.Load() > 0 }

// TestDPDKVirtioUserReceives is the device-to-guest direction with DPDK's
// virtio-user driver as the frontend (testpmd rxonly): every frame the
// device puts on the RX ring arrives at testpmd, none is malformed.
func TestDPDKVirtioUserReceives(t *testing.T) { testVirtioUserReceives(t, false) }

// TestDPDKVirtioUserReceivesPacked is TestDPDKVirtioUserReceives over a
// packed virtqueue (virtio-user packed_vq=1).
func TestDPDKVirtioUserReceivesPacked(t *testing.T) { testVirtioUserReceives(t, true) }

func testVirtioUserReceives(t *testing.T, packed bool) {
	testutil.RequiresRoot(t)
	testutil.RequiresCommand(t, "dpdk-testpmd", "dpdk-dev")
	const frames = 200000
	frame := make([]byte, 64)
	for i := range frame {
		frame[i] = byte(i)
	}
	copy(frame, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x88, 0xb5}) // local experimental EtherType
	g := &generator{frame: frame}                                                         // sends nothing until the test says so
	dev, err := vhostuser.NewNetDevice(vhostuser.NetOptions{Handler: g})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "vu.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := &vhostuser.Server{Path: sock, Device: dev}
	if err := srv.Start(ctx); err != nil { // the socket listens before testpmd looks for it
		t.Fatal(err)
	}
	defer srv.Close()
	pmd, err := testpmd.Start(ctx, testpmd.Options{
		Vdevs:       []string{fmt.Sprintf("net_virtio_user0,path=%s,queues=1,packed_vq=%d", sock, b2i(packed))},
		ForwardMode: "rxonly",
	})
	if err != nil {
		t.Fatal(err)
	}
	// Frames put on the ring while the driver still sets its queues up may
	// be discarded by it (a reset, testpmd's drain before forwarding):
	// start once testpmd forwards and prints its statistics.
	if err := pmd.WaitOutput(ctx, "NIC statistics for port 0"); err != nil {
		t.Fatal(err)
	}
	if got := dev.State().Features.Has(vhostuser.FRingPacked); got != packed {
		t.Fatalf("RING_PACKED negotiated: %v, want %v", got, packed)
	}
	base := lastRX(pmd.Output())
	g.left.Store(frames)
	dev.Wake()
	for deadline := time.Now().Add(time.Minute); dev.Stats().GuestRXPackets < frames; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			pmd.Stop()
			t.Fatalf("device delivered %d of %d frames in a minute; testpmd:\n%s", dev.Stats().GuestRXPackets, frames, pmd.Output())
		}
	}
	// testpmd prints its port counters every second: wait until it has
	// taken everything off the ring.
	for deadline := time.Now().Add(30 * time.Second); lastRX(pmd.Output())-base < frames; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			break
		}
	}
	got := lastRX(pmd.Output()) - base
	stats, err := pmd.Stop()
	if err != nil {
		t.Fatal(err)
	}
	ds := dev.Stats()
	// The port's own counter (testpmd's "NIC statistics"), not the
	// forwarding engine's: testpmd drains its queues once before it starts
	// forwarding, and those frames count only at the port.
	t.Logf("device: rx %d frames, %d bytes, drops %d, errors %d; testpmd port RX %d, forwarded %+v", ds.GuestRXPackets, ds.GuestRXBytes, ds.Drops, ds.Errors, got, *stats)
	if got != ds.GuestRXPackets || got != frames {
		t.Errorf("testpmd's port received %d frames, the device sent %d", got, ds.GuestRXPackets)
	}
	if ds.Errors != 0 || ds.GuestRXBytes != ds.GuestRXPackets*64 {
		t.Errorf("device stats %+v", ds)
	}
}

var rxPacketsRE = regexp.MustCompile(`RX-packets:\s*(\d+)`)

// lastRX returns the last RX-packets figure testpmd printed.
func lastRX(out []byte) uint64 {
	m := rxPacketsRE.FindAllSubmatch(out, -1)
	if len(m) == 0 {
		return 0
	}
	n, _ := strconv.ParseUint(string(m[len(m)-1][1]), 10, 64)
	return n
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// counter is a FrameHandler that counts the frames the guest sends and
// those of an unexpected length.
type counter struct {
	n, wrongLen atomic.Uint64
	want        int
}

func (c *counter) HandleFrame(_ int, frame, _ []byte) int {
	c.n.Add(1)
	if len(frame) != c.want {
		c.wrongLen.Add(1)
	}
	return 0
}

// TestDPDKVirtioUserSendsPacked is the guest-to-device direction over a
// packed virtqueue: testpmd txonly on virtio-user with packed_vq=1 sends
// 64-byte frames, the device takes them off the TX ring whole. Then
// testpmd quits and a second one connects to the same socket (a restarted
// frontend): the device serves it from a fresh ring.
func TestDPDKVirtioUserSendsPacked(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.RequiresCommand(t, "dpdk-testpmd", "dpdk-dev")
	const frames = 100000
	h := &counter{want: 64}
	dev, err := vhostuser.NewNetDevice(vhostuser.NetOptions{Handler: h})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "vu.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := &vhostuser.Server{Path: sock, Device: dev}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for round := range 2 {
		pmd, err := testpmd.Start(ctx, testpmd.Options{
			Vdevs:       []string{fmt.Sprintf("net_virtio_user0,path=%s,queues=1,packed_vq=1", sock)},
			ForwardMode: "txonly",
			TxPktLen:    64,
		})
		if err != nil {
			t.Fatal(err)
		}
		start := h.n.Load()
		for deadline := time.Now().Add(time.Minute); h.n.Load()-start < frames; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				pmd.Stop()
				t.Fatalf("round %d: device took %d of %d frames in a minute; testpmd:\n%s", round, h.n.Load()-start, frames, pmd.Output())
			}
		}
		if !dev.State().Features.Has(vhostuser.FRingPacked) {
			t.Fatalf("round %d: RING_PACKED not negotiated", round)
		}
		if _, err := pmd.Stop(); err != nil {
			t.Fatal(err)
		}
		ds := dev.Stats()
		t.Logf("round %d: device took %d frames (total %d), wrong length %d, errors %d", round, h.n.Load()-start, ds.GuestTXPackets, h.wrongLen.Load(), ds.Errors)
		if h.wrongLen.Load() != 0 || ds.Errors != 0 {
			t.Fatalf("round %d: %d frames of the wrong length, %d errors", round, h.wrongLen.Load(), ds.Errors)
		}
	}
}
