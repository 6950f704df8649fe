package backend

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/veloce-io/veloce/images/guestinit"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vmtest"
)

// TestQEMUPackedRingPing: a Linux guest whose virtio-net device has
// packed=on negotiates VIRTIO_F_RING_PACKED with the daemon and pings
// the service address through packed virtqueues.
func TestQEMUPackedRingPing(t *testing.T) {
	testutil.RequiresRoot(t)
	d, socks := startDaemon(t, "vm")
	vm := vmtest.Boot(t, vmtest.Options{
		NICs: []vmtest.NIC{{Socket: socks[0], DeviceProps: []string{"packed=on"}}},
		Guest: &guestinit.Config{
			Net: []guestinit.NetConfig{{Name: "eth0", Addr: "169.254.77.2/24"}},
			Run: []string{"/bin/ping", "-c", "20", "-i", "0.1", "-s", "1400", "-W", "2", "169.254.77.1"},
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The features while the guest runs (a frontend that goes away
	// resets them).
	if _, err := vm.WaitConsole(ctx, "seq=10 "); err != nil {
		t.Fatal(err)
	}
	p := d.Ports()[0]
	f, err := strconv.ParseUint(p.Features, 0, 64)
	if err != nil || !vhostuser.Features(f).Has(vhostuser.FRingPacked) {
		t.Errorf("port features %q: RING_PACKED not negotiated", p.Features)
	}
	r, err := vm.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Err(); err != nil {
		t.Fatalf("%v\n%s", err, r.Output)
	}
	checkPings(t, "guest", r.Output, 20)
	if p = d.Ports()[0]; p.EchoReplies < 20 || p.Errors != 0 {
		t.Errorf("port: %d echo replies, %d errors", p.EchoReplies, p.Errors)
	}
}
