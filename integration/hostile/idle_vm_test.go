package hostile

import (
	"context"
	"testing"
	"time"

	"github.com/veloce-io/veloce/images/guestinit"
	"github.com/veloce-io/veloce/vmtest"
)

// TestStockGuestIdleCostsNoCPU boots a stock guest (Debian kernel,
// virtio_net) under QEMU on port 1 of a real veloced, gets it an address
// and two pings answered, and then leaves it idle: the Linux driver keeps
// its RX queue full of posted buffers. The daemon must use < 0.1 s of CPU
// over 10 idle seconds, with EVENT_IDX negotiated (QEMU's default) and
// without it (event_idx=off).
//
// It needs QEMU and a guest kernel (vmtest; VELOCE_INIT and VELOCE_CACHE
// as for the backend's VM tests).
func TestStockGuestIdleCostsNoCPU(t *testing.T) {
	gate(t)
	const window, budget = 10 * time.Second, 100 * time.Millisecond
	for _, tc := range []struct {
		name  string
		props []string
	}{
		{"EventIdx", nil},
		{"NoEventIdx", []string{"event_idx=off"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := startDaemon(t)
			vm := vmtest.Boot(t, vmtest.Options{
				NICs: []vmtest.NIC{{Socket: d.p1, DeviceProps: tc.props}},
				Guest: &guestinit.Config{
					Net: []guestinit.NetConfig{{Name: "eth0"}},
					Run: []string{"/bin/sh", "-c", "udhcpc -i eth0 -n -q -f -t 10 && ping -c 2 -W 5 169.254.77.1 && echo GUEST-IDLE-NOW && sleep 600"},
				},
			})
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			if _, err := vm.WaitConsole(ctx, "GUEST-IDLE-NOW"); err != nil {
				t.Fatalf("guest never got to idle: %v", err)
			}
			time.Sleep(2 * time.Second) // the last replies' interrupts settle
			c, err := d.cpuOver(window)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("daemon CPU over %v with an idle stock guest (%s): %v", window, tc.name, c)
			if c >= budget {
				t.Errorf("idle stock guest: daemon used %v CPU over %v (budget %v)", c, window, budget)
			}
			if ps, err := d.ports(controlWithin); err != nil || len(ps) == 0 || ps[0].State != "running" {
				t.Errorf("port 1 while the guest idles: %+v %v", ps, err)
			}
		})
	}
}
