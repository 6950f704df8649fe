package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/veloce-io/veloce/images"
	"github.com/veloce-io/veloce/images/guestinit"
)

// runDisk is 'veloce-image disk': a raw disk image of a built guest.
func runDisk(fs *flag.FlagSet, args []string, stdout io.Writer, output *string) error {
	def := images.DefaultImageDir()
	kernel := fs.String("kernel", filepath.Join(def, "vmlinuz"), "kernel (bzImage) to boot; default: the image 'veloce-image build' wrote for make images")
	initrd := fs.String("initrd", filepath.Join(def, "initramfs.cpio.gz"), "initramfs to boot")
	cmdline := fs.String("cmdline", images.DefaultCmdline, "kernel command line of the boot entry")
	runCmd := fs.String("run", "", "program (and arguments, split on spaces) the guest's /init runs; added to the command line as "+guestinit.KernelParam+"=...; default an interactive shell")
	out := fs.String("out", "", "disk image to write (raw)")
	size := fs.String("size", "", "disk size in bytes, or with a K, M or G suffix; default: the contents plus slack, at least 66M")
	bootloader := fs.String("bootloader", "", "EFI binary installed as EFI/BOOT/BOOTX64.EFI, for UEFI firmware such as OVMF; default "+images.SystemdBootEFI)
	noBootloader := fs.Bool("no-bootloader", false, "leave EFI/BOOT/BOOTX64.EFI out (rust-hypervisor-firmware reads the entry itself)")
	title := fs.String("title", "", "title of the boot entry")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("disk: --out is required")
	}
	opts := images.DiskOptions{Kernel: *kernel, Initrd: *initrd, Cmdline: *cmdline, Title: *title, Bootloader: *bootloader, NoBootloader: *noBootloader}
	if *runCmd != "" {
		cfg := guestinit.Config{Run: strings.Fields(*runCmd)}
		arg, err := cfg.KernelArg()
		if err != nil {
			return fmt.Errorf("disk: --run: %w", err)
		}
		opts.Cmdline = strings.TrimSpace(opts.Cmdline + " " + arg)
	}
	if *size != "" {
		n, err := parseSize(*size)
		if err != nil {
			return fmt.Errorf("disk: --size: %w", err)
		}
		opts.Size = n
	}
	d, err := images.WriteDisk(*out, opts)
	if err != nil {
		return err
	}
	switch *output {
	case "json":
		e := json.NewEncoder(stdout)
		e.SetIndent("", "  ")
		return e.Encode(d)
	case "text":
		fmt.Fprintf(stdout, "disk     %s (%d MiB)\nesp      %d MiB at offset %d\nentry    %s\noptions  %s\n", d.Path, d.Size>>20, d.ESPSize>>20, d.ESPStart, d.Entry, d.Cmdline)
		for _, f := range d.Files {
			fmt.Fprintf(stdout, "file     %s (%d bytes)\n", f.Path, f.Size)
		}
		return nil
	default:
		return fmt.Errorf("unknown output format %q (want text or json)", *output)
	}
}

// parseSize reads a byte count with an optional K, M or G suffix (powers of
// 1024, as QEMU and Cloud Hypervisor read sizes).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("parse size %q: want a positive number of bytes, K, M or G", s)
	}
	return n * mult, nil
}
