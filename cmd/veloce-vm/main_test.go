package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/images/guestinit"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/vmtest"
)

// The README's example: the image directory it names, and the arguments.
const readmeImage = "/var/lib/veloce/images/default"

func readmeArgs(image, sock string) []string {
	return []string{"--print-qemu", "--image", image, "--vhost-user", sock, "--", "/bin/ping", "-c", "3", "169.254.77.1"}
}

// printQEMU runs veloce-vm --print-qemu on an image directory holding
// kernel and initramfs (links to them, or empty files).
func printQEMU(t *testing.T, kernel, initramfs, sock string) (cmd, imageDir string) {
	t.Helper()
	dir := t.TempDir()
	for name, src := range map[string]string{"vmlinuz": kernel, "initramfs.cpio.gz": initramfs} {
		dst := filepath.Join(dir, name)
		var err error
		if src == "" {
			err = os.WriteFile(dst, nil, 0o644)
		} else {
			err = os.Symlink(src, dst)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	var out, errs bytes.Buffer
	status, err := run(context.Background(), readmeArgs(dir, sock), &out, &errs)
	if err != nil || status != 0 {
		t.Fatalf("veloce-vm --print-qemu: status %d, %v\n%s", status, err, errs.String())
	}
	return out.String(), dir
}

// TestREADMEQEMUCommandIsWhatVeloceVMPrints: the README's QEMU command
// is veloce-vm's output for the README's arguments, and has what a
// vhost-user NIC under TCG needs.
func TestREADMEQEMUCommandIsWhatVeloceVMPrints(t *testing.T) {
	printed, dir := printQEMU(t, "", "", "/run/veloce/vm0.sock")
	printed = strings.ReplaceAll(printed, dir, readmeImage)
	for _, want := range []string{"accel=tcg", "memory-backend-memfd,id=mem,size=512M,share=on", "memory-backend=mem",
		",romfile=,vectors=0", "-device virtio-rng-pci", "path=/run/veloce/vm0.sock", "console=ttyS0", guestinit.KernelParam + "="} {
		if !strings.Contains(printed, want) {
			t.Errorf("printed command lacks %q:\n%s", want, printed)
		}
	}
	if strings.Contains(printed, "-qmp") {
		t.Errorf("printed command has the harness's QMP socket:\n%s", printed)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const marker = "<!-- veloce-vm --print-qemu: kept identical by cmd/veloce-vm's tests -->\n"
	r := string(readme)
	i := strings.Index(r, marker)
	if i < 0 {
		t.Fatal("README.md lost its veloce-vm --print-qemu block")
	}
	var block strings.Builder
	for _, line := range strings.Split(r[i+len(marker):], "\n") {
		if !strings.HasPrefix(line, "    ") {
			break
		}
		block.WriteString(strings.TrimPrefix(line, "    ") + "\n")
	}
	if block.String() != printed {
		t.Errorf("README's command differs from veloce-vm's (update README.md):\n--- README\n%s--- veloce-vm %s\n%s",
			block.String(), strings.Join(readmeArgs(readmeImage, "/run/veloce/vm0.sock"), " "), printed)
	}
}

// TestPrintedQEMUCommandBootsAndPings: the command veloce-vm prints,
// run by a shell as a user would paste it, boots the guest against a
// daemon, and the guest pings the service address.
func TestPrintedQEMUCommandBootsAndPings(t *testing.T) {
	testutil.Integration(t)
	kernel, initramfs := vmtest.Image(t, vmtest.Guest{})
	dir := t.TempDir()
	sock := filepath.Join(dir, "vm0.sock")
	logs := &lockedBuffer{}
	d, err := backend.NewDaemon(backend.DaemonOptions{ControlSocket: filepath.Join(dir, "control.sock"),
		Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Ports:  []backend.PortOptions{{Name: "vm0", Socket: sock}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	printed, _ := printQEMU(t, kernel, initramfs, sock)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", printed)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out, errs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errs
	if err := cmd.Run(); err != nil {
		t.Fatalf("printed command: %v\nstderr:\n%s\nconsole:\n%s", err, errs.String(), out.String())
	}
	res, err := guestinit.ParseResult(out.Bytes())
	if err != nil {
		t.Fatalf("no result on the console: %v\n%s", err, out.String())
	}
	if err := res.Err(); err != nil {
		t.Fatalf("guest: %v\n%s", err, res.Output)
	}
	if !strings.Contains(res.Output, "3 packets received") {
		t.Errorf("ping output:\n%s", res.Output)
	}
	if p := d.Ports()[0]; p.EchoReplies < 3 || p.DHCPReplies < 1 {
		t.Errorf("daemon answered %d echoes, %d DHCP; want >= 3, 1", p.EchoReplies, p.DHCPReplies)
	}

	// What the operator reads in veloced's log about this VM: QEMU's
	// connection, the negotiated features by name, the lease.
	records := logs.records(t)
	find := func(msg string) []map[string]any {
		var out []map[string]any
		for _, r := range records {
			if r["msg"] == msg && r["port"] == "vm0" {
				out = append(out, r)
			}
		}
		return out
	}
	if n := len(find("frontend connected")); n != 1 {
		t.Errorf("%d \"frontend connected\" lines, want 1", n)
	}
	up := find("guest link up")
	if len(up) != 1 {
		t.Fatalf("%d \"guest link up\" lines, want 1:\n%s", len(up), logs.String())
	}
	if f, _ := up[0]["features"].(string); !strings.Contains(f, "VERSION_1") || !strings.Contains(f, "MRG_RXBUF") {
		t.Errorf("guest link up features %q: want QEMU's VERSION_1 and MRG_RXBUF", f)
	}
	if f, _ := up[0]["protocol_features"].(string); !strings.Contains(f, "REPLY_ACK") {
		t.Errorf("protocol features %q: want REPLY_ACK", f)
	}
	lease := find("DHCP lease")
	if len(lease) != 1 || lease[0]["guest_mac"] != "52:54:00:00:00:01" || lease[0]["guest_ip"] != "169.254.77.2" {
		t.Errorf("DHCP lease lines %v, want one for 52:54:00:00:00:01 at 169.254.77.2", lease)
	}
}

// lockedBuffer collects a daemon's JSON log.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer // +checklocks:mu
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *lockedBuffer) records(t *testing.T) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.String()), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}
