package vmtest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/veloce-io/veloce/images"
	"github.com/veloce-io/veloce/images/guestinit"
	"github.com/veloce-io/veloce/internal/testutil"
)

// diskGuest returns the kernel and initramfs a disk is built from: the
// default image 'make images' built, else one built for the test.
func diskGuest(t *testing.T) (kernel, initramfs string) {
	dir := images.DefaultImageDir()
	kernel, initramfs = filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initramfs.cpio.gz")
	_, errK := os.Stat(kernel)
	_, errI := os.Stat(initramfs)
	if errK == nil && errI == nil {
		return kernel, initramfs
	}
	return Image(t, Guest{})
}

// TestGuestBootsFromDiskThroughUEFI is the Cloud Hypervisor boot path with
// OVMF standing in for rust-hypervisor-firmware: no -kernel, the firmware
// finds the ESP on a virtio-blk disk, systemd-boot reads the Boot Loader
// Spec entry, and the entry's command line tells /init what to run.
func TestGuestBootsFromDiskThroughUEFI(t *testing.T) {
	t.Parallel()
	testutil.RequiresCommand(t, "qemu-system-x86_64", "qemu-system-x86")
	for _, f := range []string{OVMFCode, OVMFVars} {
		_, err := os.Stat(f)
		testutil.Require(t, err == nil, "needs OVMF firmware %s (apt-get install ovmf)", f)
	}
	_, err := os.Stat(images.SystemdBootEFI)
	testutil.Require(t, err == nil, "needs %s (apt-get install systemd-boot-efi)", images.SystemdBootEFI)
	kernel, initramfs := diskGuest(t)

	cfg := guestinit.Config{Run: []string{"/bin/sh", "-c", "echo booted from disk; cat /proc/cmdline; exit 3"}}
	arg, err := cfg.KernelArg()
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "veloce.img")
	d, err := images.WriteDisk(img, images.DiskOptions{
		Kernel: kernel, Initrd: initramfs,
		Cmdline: images.DefaultCmdline + " " + arg,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("disk %s: %d MiB, ESP %d MiB at %d", img, d.Size>>20, d.ESPSize>>20, d.ESPStart)

	start := time.Now()
	vm := Boot(t, Options{Disk: &DiskBoot{Image: img}})
	args, _ := vm.Args()
	if slices.Contains(args, "-kernel") {
		t.Fatalf("disk boot passed -kernel: %v", args)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r, err := vm.Wait(ctx)
	if err != nil {
		t.Fatalf("guest: %v", err)
	}
	t.Logf("UEFI disk boot, run, power-off: %.1fs", time.Since(start).Seconds())
	if r.Status != 3 {
		t.Fatalf("status %d (%+v), want 3; output %q", r.Status, r, r.Output)
	}
	if !strings.Contains(r.Output, "booted from disk") {
		t.Errorf("output %q lacks the greeting", r.Output)
	}
	// The command line came from the disk's entry, not from QEMU.
	if !strings.Contains(r.Output, arg) {
		t.Errorf("guest /proc/cmdline lacks the entry's %s: %q", guestinit.KernelParam, r.Output)
	}
}

func TestDiskBootRefusesKernelArgs(t *testing.T) {
	vm, err := New(Options{Disk: &DiskBoot{Image: "/nonexistent"}, Guest: &guestinit.Config{}})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if _, err := vm.Args(); !errors.Is(err, ErrDiskBootArgs) {
		t.Fatalf("Args with Guest and Disk: %v, want ErrDiskBootArgs", err)
	}
}
