package backend

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/testpmd"
	"github.com/veloce-io/veloce/internal/testutil"
)

// TestDPDKVirtioUserFrontend: DPDK's virtio-user driver, a frontend nobody
// here wrote, negotiates with veloced and transmits through it (testpmd
// txonly); every frame is taken off the ring and counted, none is
// malformed.
func TestDPDKVirtioUserFrontend(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.RequiresCommand(t, "dpdk-testpmd", "dpdk-dev")
	d, socks := startDaemon(t, "pmd")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pmd, err := testpmd.Start(ctx, testpmd.Options{
		Vdevs:       []string{fmt.Sprintf("net_virtio_user0,path=%s,queues=1", socks[0])},
		ForwardMode: "txonly",
		TxPktLen:    64,
		Args:        []string{"--txq=1", "--rxq=1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("testpmd output:\n%s", pmd.Output())
		}
	}()
	// Wait until traffic flows through the port.
	deadline := time.Now().Add(time.Minute)
	for {
		p := d.Ports()[0]
		if p.GuestTXPackets > 100000 {
			if p.State != "running" || p.Features == "0x0" {
				t.Errorf("port while testpmd transmits: %+v", p)
			}
			break
		}
		if time.Now().After(deadline) {
			pmd.Stop()
			t.Fatalf("only %d frames from testpmd after a minute: %+v", p.GuestTXPackets, p)
		}
		time.Sleep(100 * time.Millisecond)
	}
	stats, err := pmd.Stop()
	if err != nil {
		t.Fatal(err)
	}
	// After testpmd is gone the port is waiting again, and it took every
	// frame testpmd says it sent.
	deadline = time.Now().Add(10 * time.Second)
	for d.Ports()[0].State != "waiting" && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	p := d.Ports()[0]
	t.Logf("testpmd: %+v; port: tx %d frames, %d bytes, errors %d", *stats, p.GuestTXPackets, p.GuestTXBytes, p.Errors)
	if p.State != "waiting" {
		t.Errorf("port state %q after the frontend left", p.State)
	}
	// testpmd counts frames it posted; those still on the ring when it
	// closed the connection were never taken, and can be at most one
	// ring's worth (virtio-user's default queue size is 256).
	if p.GuestTXPackets > stats.TXPackets || stats.TXPackets-p.GuestTXPackets > 256 {
		t.Errorf("port took %d frames, testpmd posted %d", p.GuestTXPackets, stats.TXPackets)
	}
	if p.Errors != 0 {
		t.Errorf("%d ring errors", p.Errors)
	}
	if want := p.GuestTXPackets * 64; p.GuestTXBytes != want {
		t.Errorf("port counted %d bytes for %d 64-byte frames", p.GuestTXBytes, p.GuestTXPackets)
	}
}
