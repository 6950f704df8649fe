package backend

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/images/guestinit"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/vmtest"
)

// startDaemon runs a daemon with one listening port per socket name, in a
// temporary directory, for the length of the test.
func startDaemon(t *testing.T, names ...string) (*Daemon, []string) {
	t.Helper()
	return startDaemonQueues(t, 1, names...)
}

// startDaemonQueues is startDaemon with ports of the given queue pairs.
func startDaemonQueues(t *testing.T, queuePairs int, names ...string) (*Daemon, []string) {
	t.Helper()
	return startDaemonWith(t, func(o *DaemonOptions) {
		for i := range o.Ports {
			o.Ports[i].QueuePairs = queuePairs
		}
	}, names...)
}

// oneTenant puts every port in tenant: their guests share channels.
func oneTenant(tenant string) func(*DaemonOptions) {
	return func(o *DaemonOptions) {
		for i := range o.Ports {
			o.Ports[i].Tenant = tenant
		}
	}
}

// startDaemonWith is startDaemon with options adjusted by edit.
func startDaemonWith(t *testing.T, edit func(*DaemonOptions), names ...string) (*Daemon, []string) {
	t.Helper()
	dir := t.TempDir()
	opts := DaemonOptions{ControlSocket: filepath.Join(dir, "control.sock")}
	var socks []string
	for _, n := range names {
		s := filepath.Join(dir, n+".sock")
		socks = append(socks, s)
		opts.Ports = append(opts.Ports, PortOptions{Name: n, Socket: s})
	}
	edit(&opts)
	d, err := NewDaemon(opts)
	if err != nil {
		t.Fatal(err)
	}
	// Every socket listens once Start returns.
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
	return d, socks
}

var pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) packets received`)

func checkPings(t *testing.T, who, out string, want int) {
	t.Helper()
	m := pingSummary.FindStringSubmatch(out)
	if m == nil || m[1] != m[2] || m[1] != strconv.Itoa(want) {
		t.Fatalf("%s: want %d of %d pings answered; output:\n%s", who, want, want, out)
	}
}

// TestStockGuestGetsDHCPAndPingsService is the contract of DESIGN.md: a
// guest with Debian's kernel (virtio_net module) and busybox udhcpc gets its
// address from the daemon and pings the service address.
func TestStockGuestGetsDHCPAndPingsService(t *testing.T) {
	testutil.RequiresRoot(t)
	d, socks := startDaemon(t, "vm0")
	r := vmtest.RunGuest(t, vmtest.Options{
		NICs: []vmtest.NIC{{Socket: socks[0]}},
		Guest: &guestinit.Config{
			Net: []guestinit.NetConfig{{Name: "eth0"}}, // up, unconfigured: udhcpc does the rest
			Run: []string{"/bin/sh", "-c", "udhcpc -i eth0 -n -q -f -t 10 && ip -4 addr show eth0 && ip route && ping -c 5 -W 5 169.254.77.1"},
		},
	}, 4*time.Minute)
	if err := r.Err(); err != nil {
		t.Fatalf("%v; output:\n%s", err, r.Output)
	}
	if !strings.Contains(r.Output, "inet 169.254.77.2/24") {
		t.Errorf("guest did not get 169.254.77.2/24 by DHCP:\n%s", r.Output)
	}
	if strings.Contains(r.Output, "default") {
		t.Errorf("DHCP gave the guest a default route:\n%s", r.Output)
	}
	checkPings(t, "guest", r.Output, 5)

	p := d.Ports()[0]
	t.Logf("port after the guest: %+v", p)
	if p.DHCPReplies < 2 || p.EchoReplies < 5 || p.ARPReplies < 1 {
		t.Errorf("link peer answered %d DHCP, %d echo, %d ARP; want >= 2, 5, 1", p.DHCPReplies, p.EchoReplies, p.ARPReplies)
	}
	if p.GuestTXPackets < 8 || p.GuestRXPackets < 8 || p.GuestMAC != "52:54:00:00:00:01" {
		t.Errorf("counters: tx %d rx %d, guest MAC %q", p.GuestTXPackets, p.GuestRXPackets, p.GuestMAC)
	}
	if p.Errors != 0 || p.Drops != 0 {
		t.Errorf("errors %d, drops %d on a clean run", p.Errors, p.Drops)
	}
}

// TestTwoVMsOnTwoPorts: two guests at once, each on its own port, each
// getting the same point-to-point addressing, and velocectl's JSON shows
// both ports running with negotiated features while they ping.
func TestTwoVMsOnTwoPorts(t *testing.T) {
	testutil.RequiresRoot(t)
	_, socks := startDaemon(t, "a", "b")
	kernel, initramfs := vmtest.Image(t, vmtest.Guest{})
	client := control.NewClient(filepath.Join(filepath.Dir(socks[0]), "control.sock"))
	var vms []*vmtest.VM
	for _, s := range socks {
		vms = append(vms, vmtest.Boot(t, vmtest.Options{
			Kernel: kernel, Initramfs: initramfs,
			NICs: []vmtest.NIC{{Socket: s}},
			Guest: &guestinit.Config{
				Net: []guestinit.NetConfig{{Name: "eth0", DHCP: true}},
				Run: []string{"/bin/sh", "-c", "ping -c 20 -i 0.2 -W 5 169.254.77.1 && echo pinged"},
			},
		}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	// While both guests ping, both ports run.
	for _, vm := range vms {
		if _, err := vm.WaitConsole(ctx, "bytes from 169.254.77.1"); err != nil {
			t.Fatal(err)
		}
	}
	ports, err := client.Ports(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ports {
		if p.State != "running" || p.Queues != 1 || p.Features == "0x0" || p.GuestIP != "169.254.77.2" {
			t.Errorf("port %s while its guest pings: %+v", p.Name, p)
		}
	}
	for i, vm := range vms {
		r, err := vm.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Err(); err != nil {
			t.Fatalf("vm %d: %v\n%s", i, err, r.Output)
		}
		checkPings(t, socks[i], r.Output, 20)
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// TestMultiqueueGuest: a two-vCPU guest with a two-queue-pair NIC. QEMU
// drives each queue pair as its own vhost device over the one connection
// (each adds the same memory regions); both pairs run, and traffic flows.
func TestMultiqueueGuest(t *testing.T) {
	testutil.RequiresRoot(t)
	d, socks := startDaemonQueues(t, 2, "mq")
	vm := vmtest.Boot(t, vmtest.Options{
		CPUs: 2,
		NICs: []vmtest.NIC{{Socket: socks[0], Queues: 2}},
		Guest: &guestinit.Config{
			Net: []guestinit.NetConfig{{Name: "eth0", DHCP: true}},
			Run: []string{"/bin/sh", "-c", "ls /sys/class/net/eth0/queues; ping -c 20 -i 0.2 -W 5 169.254.77.1"},
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if _, err := vm.WaitConsole(ctx, "bytes from 169.254.77.1"); err != nil {
		t.Fatal(err)
	}
	if p := d.Ports()[0]; p.Queues != 2 || p.MaxQueues != 2 {
		t.Errorf("while the guest pings: %d of %d queue pairs running, want 2 of 2", p.Queues, p.MaxQueues)
	}
	r, err := vm.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Err(); err != nil {
		t.Fatalf("%v\n%s", err, r.Output)
	}
	if !strings.Contains(r.Output, "rx-1") || !strings.Contains(r.Output, "tx-1") {
		t.Errorf("guest has no second queue pair:\n%s", r.Output)
	}
	checkPings(t, "guest", r.Output, 20)
	if p := d.Ports()[0]; p.Errors != 0 || p.Drops != 0 || p.LastError != "" {
		t.Errorf("port: %+v", p)
	}
}
