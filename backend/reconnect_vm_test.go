package backend

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/images/guestinit"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/vmtest"
)

// TestQEMUReconnectsAfterDaemonKill9: veloced dies with SIGKILL while a
// guest pings through it; QEMU (reconnect=1) reconnects to the restarted
// daemon and the pings carry on: the rings were not corrupted.
func TestQEMUReconnectsAfterDaemonKill9(t *testing.T) {
	reconnectAfterKill9(t, nil)
}

// TestQEMUPackedReconnectsAfterDaemonKill9 is the same with packed
// virtqueues (packed=on). QEMU's virtio-net hands the backend no inflight
// region and sets the restarted daemon's rings up with the first base it
// had; the daemon resumes them from the state it kept in --ring-state-dir
// (without it the guest's pings stop at the restart).
func TestQEMUPackedReconnectsAfterDaemonKill9(t *testing.T) {
	reconnectAfterKill9(t, []string{"packed=on"})
}

func reconnectAfterKill9(t *testing.T, props []string) {
	testutil.RequiresRoot(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "veloced")
	if err := vmtest.BuildStatic(context.Background(), "github.com/veloce-io/veloce/cmd/veloced", bin); err != nil {
		t.Fatal(err)
	}
	sock, ctl := filepath.Join(dir, "vm.sock"), filepath.Join(dir, "control.sock")
	type proc struct {
		cmd    *exec.Cmd
		exited chan struct{}
	}
	start := func(name string) proc {
		os.Remove(ctl)
		cmd := exec.Command(bin, "--vhost-user", sock, "--control", ctl, "--app-socket", filepath.Join(dir, "app.sock"), "--ring-state-dir", filepath.Join(dir, "rings"))
		logf, _ := os.Create(filepath.Join(dir, name+".log"))
		ready := testutil.WatchLine(control.ReadyLine, logf)
		cmd.Stderr = ready
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() { cmd.Process.Kill(); <-exited })
		ready.Wait(t, exited, time.Minute) // its sockets listen
		return proc{cmd, exited}
	}
	first := start("veloced-1")

	vm := vmtest.Boot(t, vmtest.Options{
		NICs: []vmtest.NIC{{Socket: sock, Reconnect: 1, DeviceProps: props}},
		Guest: &guestinit.Config{
			Net: []guestinit.NetConfig{{Name: "eth0", Addr: "169.254.77.2/24"}},
			Run: []string{"/bin/ping", "-c", "60", "-i", "0.25", "-W", "1", "169.254.77.1"},
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if _, err := vm.WaitConsole(ctx, "seq=10 "); err != nil {
		t.Fatal(err)
	}
	first.cmd.Process.Signal(syscall.SIGKILL)
	<-first.exited
	// The daemon stays down a while (the scenario, not a readiness wait):
	// QEMU sees the hang-up and retries every second (reconnect=1).
	time.Sleep(time.Second)
	start("veloced-2")
	r, err := vm.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest output:\n%s", r.Output)
	// The pings after the restart were answered by the new daemon.
	for _, seq := range []string{"seq=50 ", "seq=55 ", "seq=59 "} {
		if !strings.Contains(r.Output, seq) {
			t.Errorf("no reply for %s after the daemon restarted", strings.TrimSpace(seq))
		}
	}
	ports, err := control.NewClient(ctl).Ports(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p := ports[0]; p.EchoReplies < 40 || p.Errors != 0 {
		t.Errorf("restarted daemon: %d echo replies, %d errors; want >= 40 and 0", p.EchoReplies, p.Errors)
	}
}

// TestDaemonReconnectsToRestartedQEMU is reconnection the other way round:
// veloced is the client (--vhost-user-client), QEMU listens (server=on).
// When QEMU goes away and a new QEMU listens on the same path, the daemon
// connects to it by itself and the new guest works.
func TestDaemonReconnectsToRestartedQEMU(t *testing.T) {
	testutil.RequiresRoot(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "vm.sock")
	d, err := NewDaemon(DaemonOptions{ControlSocket: filepath.Join(dir, "control.sock"),
		Ports: []PortOptions{{Name: "vm", Socket: sock, Client: true}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := d.Close(); err != nil {
			t.Errorf("daemon: %v", err)
		}
	}()
	kernel, initramfs := vmtest.Image(t, vmtest.Guest{})
	for round := 1; round <= 2; round++ {
		vm := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs,
			NICs: []vmtest.NIC{{Socket: sock, Server: true}},
			Guest: &guestinit.Config{
				Net: []guestinit.NetConfig{{Name: "eth0", DHCP: true}},
				Run: []string{"/bin/ping", "-c", "5", "-i", "0.2", "-W", "5", "169.254.77.1"},
			}})
		r, err := vm.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Err(); err != nil {
			t.Fatalf("round %d: %v\n%s", round, err, r.Output)
		}
		checkPings(t, "guest", r.Output, 5)
		vm.Close()
	}
	if p := d.Ports()[0]; p.Mode != "client" || p.EchoReplies < 10 {
		t.Errorf("port after two QEMUs: %+v", p)
	}
}

// TestSIGTERMStopsDaemonCleanly: veloced exits 0 on SIGTERM and leaves no
// sockets behind.
func TestSIGTERMStopsDaemonCleanly(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "veloced")
	if err := vmtest.BuildStatic(context.Background(), "github.com/veloce-io/veloce/cmd/veloced", bin); err != nil {
		t.Fatal(err)
	}
	sock, ctl := filepath.Join(dir, "vm.sock"), filepath.Join(dir, "control.sock")
	// Its own app socket: the default one may be another daemon's (a
	// test running meanwhile), and veloced refuses to take it over.
	app := filepath.Join(dir, "app.sock")
	cmd := exec.Command(bin, "--vhost-user", sock, "--control", ctl, "--app-socket", app)
	stderr := testutil.WatchLine(control.ReadyLine, nil)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	exitedC := make(chan struct{})
	go func() { exited <- cmd.Wait(); close(exitedC) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exitedC })
	stderr.Wait(t, exitedC, time.Minute)
	for _, p := range []string{sock, ctl, app} {
		if !exists(p) {
			t.Errorf("%s missing once veloced said it was ready", p)
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := <-exited; err != nil {
		t.Fatalf("veloced after SIGTERM: %v\n%s", err, stderr.String())
	}
	for _, p := range []string{sock, ctl, app} {
		if exists(p) {
			t.Errorf("%s left behind", p)
		}
	}
}
