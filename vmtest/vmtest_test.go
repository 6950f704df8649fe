package vmtest

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/veloce-io/veloce/images/guestinit"
	"github.com/veloce-io/veloce/internal/testpmd"
	"github.com/veloce-io/veloce/internal/testutil"
)

func TestGuestRunsProgramAndReportsStatus(t *testing.T) {
	t.Parallel()
	start := time.Now()
	r := RunGuest(t, Options{Guest: &guestinit.Config{
		Run: []string{"/bin/sh", "-c", "echo hello from $(uname -r); cat /proc/modules | cut -d' ' -f1 | sort | tr '\\n' ' '; echo; exit 7"},
	}}, 3*time.Minute)
	t.Logf("boot to power-off: %.1fs", time.Since(start).Seconds())
	if r.Status != 7 || r.Err() == nil {
		t.Fatalf("status %d (err %v), want 7", r.Status, r.Err())
	}
	if !strings.Contains(r.Output, "hello from 6.") {
		t.Errorf("output %q lacks the greeting", r.Output)
	}
	for _, m := range []string{"virtio_net", "virtio_pci", "net_failover"} {
		if !strings.Contains(r.Output, m) {
			t.Errorf("module %s not loaded; /proc/modules: %q", m, r.Output)
		}
	}
}

func TestGuestProgramTimeoutIsReported(t *testing.T) {
	t.Parallel()
	r := RunGuest(t, Options{Guest: &guestinit.Config{
		Run:     []string{"/bin/sleep", "600"},
		Timeout: guestinit.Duration(2 * time.Second),
	}}, 3*time.Minute)
	if !strings.Contains(r.Error, "timed out") || r.Signal == "" {
		t.Fatalf("got %+v, want a timeout with the kill signal", r)
	}
}

func TestGuestSetupErrorIsReported(t *testing.T) {
	t.Parallel()
	// eth0 never appears: the VM has no NIC.
	r := RunGuest(t, Options{Guest: &guestinit.Config{
		Net: []guestinit.NetConfig{{Name: "eth0", Addr: "169.254.77.2/24", Wait: guestinit.Duration(2 * time.Second)}},
		Run: []string{"/bin/true"},
	}}, 3*time.Minute)
	if r.Status != -1 || !strings.Contains(r.Error, "eth0") {
		t.Fatalf("got %+v, want a set-up error naming eth0", r)
	}
}

var pingRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) packets received`)

// TestGuestPingsTestpmdVhostBackend proves the harness against a vhost-user
// backend nobody here wrote: DPDK testpmd's net_vhost in icmpecho mode
// answers the guest's ARP and ICMP echo requests.
func TestGuestPingsTestpmdVhostBackend(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.RequiresCommand(t, "dpdk-testpmd", "dpdk-dev")
	kernel, initramfs := Image(t, Guest{})
	sock := filepath.Join(t.TempDir(), "vhost.sock")

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	pmd, err := testpmd.Start(ctx, testpmd.Options{
		Vdevs:       []string{fmt.Sprintf("net_vhost0,iface=%s,queues=1", sock)},
		ForwardMode: "icmpecho",
	})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			pmd.Stop()
		}
		if t.Failed() {
			t.Logf("testpmd output:\n%s", pmd.Output())
		}
	})
	if err := pmd.WaitSocket(ctx, sock); err != nil {
		t.Fatal(err)
	}

	const count = 5
	start := time.Now()
	vm := Boot(t, Options{
		Kernel: kernel, Initramfs: initramfs,
		NICs: []NIC{{Socket: sock}},
		Guest: &guestinit.Config{
			Net: []guestinit.NetConfig{{Name: "eth0", Addr: "169.254.77.2/24"}},
			Run: []string{"/bin/ping", "-c", strconv.Itoa(count), "-i", "0.2", "-W", "5", "169.254.77.1"},
		},
	})
	r, err := vm.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("boot, %d pings, power-off: %.1fs", count, time.Since(start).Seconds())
	t.Logf("guest output:\n%s", r.Output)
	m := pingRE.FindStringSubmatch(r.Output)
	if m == nil {
		t.Fatalf("no ping summary in the guest output (result %+v)", r)
	}
	if m[1] != strconv.Itoa(count) || m[2] != m[1] || r.Err() != nil {
		t.Fatalf("sent %s, received %s (result %v)", m[1], m[2], r.Err())
	}

	stats, err := pmd.Stop()
	stopped = true
	if err != nil {
		t.Fatal(err)
	}
	// testpmd saw at least the echo requests (plus ARP) and answered them.
	if stats.RXPackets < count || stats.TXPackets < count {
		t.Fatalf("testpmd forwarded RX %d / TX %d packets, want at least %d each", stats.RXPackets, stats.TXPackets, count)
	}
	t.Logf("testpmd: %+v", *stats)
}
