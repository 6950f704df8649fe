package vmtest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// OVMF's firmware volumes as Debian's ovmf package installs them: the code
// (read-only) and the template of the variable store (each VM gets a copy).
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS.fd"
)

// DiskBoot boots a VM from a disk image through UEFI firmware instead of
// QEMU's direct kernel boot (-kernel/-initrd/-append): the firmware finds
// the EFI system partition and boots what its Boot Loader Spec entries say
// (images.WriteDisk). That is how Cloud Hypervisor boots a guest with
// rust-hypervisor-firmware; here OVMF with systemd-boot stands in for it.
//
// With DiskBoot set, Options.Kernel, Initramfs, Guest and Cmdline must be
// empty: the kernel command line is the disk entry's options line.
type DiskBoot struct {
	// Image is the raw disk image, attached as a virtio-blk drive.
	Image string
	// Code is the firmware's code volume (read-only pflash); default
	// OVMFCode.
	Code string
	// Vars is the variable store template, copied into the VM's work
	// directory when the command line is built (Start, Args) so the
	// firmware's writes stay there; default OVMFVars.
	Vars string
	// Writable lets the guest write to Image. By default QEMU puts writes
	// in a temporary overlay (snapshot=on) and Image stays as it was.
	Writable bool
}

// ErrDiskBootArgs is returned by VM.Args when a disk-booted VM is also
// given a kernel, initramfs, guest config or command line.
var ErrDiskBootArgs = errors.New("vmtest: a disk boot takes its kernel, initramfs and command line from the disk's boot entry")

// diskArgs returns QEMU's firmware and drive arguments, copying the
// variable store into dir.
func (d *DiskBoot) diskArgs(o *Options, dir string) ([]string, error) {
	if o.Kernel != "" || o.Initramfs != "" || o.Guest != nil || len(o.Cmdline) > 0 {
		return nil, ErrDiskBootArgs
	}
	if d.Image == "" {
		return nil, errors.New("vmtest: DiskBoot.Image is required")
	}
	code, vars := d.Code, d.Vars
	if code == "" {
		code = OVMFCode
	}
	if vars == "" {
		vars = OVMFVars
	}
	for _, p := range []string{code, vars, d.Image} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("boot from disk: %w", err)
		}
	}
	tmpl, err := os.ReadFile(vars)
	if err != nil {
		return nil, fmt.Errorf("copy firmware variables: %w", err)
	}
	varsCopy := filepath.Join(dir, "efivars.fd")
	if err := os.WriteFile(varsCopy, tmpl, 0o644); err != nil {
		return nil, fmt.Errorf("copy firmware variables: %w", err)
	}
	drive := "file=" + d.Image + ",format=raw,if=none,id=disk0,cache=unsafe"
	if !d.Writable {
		drive += ",snapshot=on"
	}
	return []string{
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + code,
		"-drive", "if=pflash,format=raw,unit=1,file=" + varsCopy,
		"-drive", drive,
		"-device", "virtio-blk-pci,drive=disk0,bootindex=0",
	}, nil
}
