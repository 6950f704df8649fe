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

// TestVMReceivesLargeMessagesFromHostProcess (issue 13, item 5, to a
// VM): a host process's reliable source emits 1 MiB messages to a sink
// in a VM; the port sends each as DeliverFrag frames within the sink's
// credit and guestlib in the VM joins them: every message arrives, in
// order, every byte checked, and the guest's kernel drops nothing.
func TestVMReceivesLargeMessagesFromHostProcess(t *testing.T) {
	testutil.RequiresRoot(t)
	const count = 12
	d, socks, app := daemonWithAppSocket(t, 25)
	kernel, initramfs := perfImage(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	vm := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, NICs: []vmtest.NIC{{Socket: socks[0]}},
		Guest: &guestinit.Config{Net: []guestinit.NetConfig{{Name: "eth0", DHCP: true}},
			Run: []string{"/bin/sh", "-c", "/bin/veloce-perf sink --channel 25 --check --count " + itoaU(count) +
				" --timeout 6m; s=$?; grep Udp: /proc/net/snmp; exit $s"}}})
	if _, err := vm.WaitConsole(ctx, "ready"); err != nil {
		t.Fatal(err)
	}
	host := exec.CommandContext(ctx, perfPath, "source", "--socket", app, "--reliable", "--channel", "25",
		"--count", itoaU(count), "--size", itoaU(DefaultMaxMessage), "--timeout", "6m")
	var out syncBuf
	host.Stdout, host.Stderr = &out, &out
	if err := host.Run(); err != nil {
		t.Fatalf("host source: %v\n%s", err, out.String())
	}
	r, err := vm.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := lastSummaryBefore(t, r.Output, "Udp:")
	udp := vmtest.UDPCounters(r.Output)
	t.Logf("guest sink %+v; guest Udp %v; host source %s; streams %+v", s, udp, strings.TrimSpace(out.String()), d.Streams())
	if r.Err() != nil || s.Messages != count || s.Bytes != count*DefaultMaxMessage || s.Corrupt != 0 || s.Gaps != 0 || s.OutOfOrder != 0 || s.Dropped != 0 {
		t.Errorf("guest sink %+v (%v), want %d messages of 1 MiB in order, intact, none dropped\n%s", s, r.Err(), count, r.Output)
	}
	if udp == nil || udp["RcvbufErrors"] != 0 {
		t.Errorf("guest kernel UDP counters %v: want no RcvbufErrors", udp)
	}
}
