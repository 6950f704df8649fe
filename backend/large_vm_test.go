package backend

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/veloce-io/veloce/images/guestinit"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/vmtest"
)

// TestVMSendsLargeMessagesToHostProcess (issue 13, item 5, from a VM):
// an application in a VM emits 1 MiB messages (guestlib sends each as
// EmitFrag frames over the VM's link, the port reassembles them) to a
// process on the host (host transport: runs of RX slots), which checks
// every byte of every message and that none is missing.
func TestVMSendsLargeMessagesToHostProcess(t *testing.T) {
	testutil.RequiresRoot(t)
	const count = 12
	d, socks, app := daemonWithAppSocket(t, 24)
	kernel, initramfs := perfImage(t) // also builds perfPath
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	host := exec.CommandContext(ctx, perfPath, "sink", "--socket", app, "--channel", "24", "--count", itoaU(count), "--check", "--timeout", "7m")
	var out syncBuf
	host.Stdout, host.Stderr = &out, &out
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(out.String(), "ready") {
		if ctx.Err() != nil {
			t.Fatalf("host sink never ready:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	vm := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, NICs: []vmtest.NIC{{Socket: socks[0]}},
		Guest: &guestinit.Config{Net: []guestinit.NetConfig{{Name: "eth0", DHCP: true}},
			Run: []string{"/bin/veloce-perf", "source", "--channel", "24", "--count", itoaU(count), "--size", itoaU(DefaultMaxMessage), "--rate", "2"}}})
	if r, err := vm.Wait(ctx); err != nil || r.Err() != nil {
		t.Fatalf("guest source: %v\n%s", err, r.Output)
	}
	if err := host.Wait(); err != nil {
		t.Fatalf("host sink: %v\n%s", err, out.String())
	}
	s := lastSummary(t, out.String())
	t.Logf("host process: %+v; ports: %+v", s, d.Ports())
	if s.Messages != count || s.Bytes != count*DefaultMaxMessage || s.Corrupt != 0 || s.Gaps != 0 || s.OutOfOrder != 0 || s.Sources != 1 {
		t.Errorf("host sink summary %+v", s)
	}
}
