// Command veloce-image fetches a Debian guest kernel, builds Veloce guest
// initramfs images, and writes bootable disk images of them (for Cloud
// Hypervisor's firmware or any UEFI firmware). See package images.
//
//	veloce-image kernel [--flavor cloud-amd64] [-o json]
//	veloce-image build --init PATH --out DIR [--flavor F] [--add SRC:DST]... [--module NAME]...
//	veloce-image disk --out PATH [--kernel P] [--initrd P] [--cmdline S] [--run CMD] [--size N] [-o json]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/veloce-io/veloce/images"
)

const usage = `usage: veloce-image COMMAND [flags]

Commands:
  kernel   fetch (once) and print the guest kernel of a Debian flavor
  build    build a guest: kernel + initramfs with the given /init and files
  disk     write a raw GPT disk image (ESP, Boot Loader Spec entry, systemd-boot)
           that rust-hypervisor-firmware and OVMF boot

Run 'veloce-image COMMAND -h' for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "veloce-image:", err)
		}
		os.Exit(2)
	}
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return errors.New("no command")
		}
		return nil
	}
	fs := flag.NewFlagSet("veloce-image "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	flavor := fs.String("flavor", images.DefaultFlavor, "Debian kernel flavor (linux-image-FLAVOR): cloud-amd64 or amd64")
	cache := fs.String("cache", images.DefaultCacheDir(), "cache directory for packages and kernels")
	offline := fs.Bool("offline", false, "never run apt; use the newest cached kernel")
	output := fs.String("o", "text", "output format: text or json")
	switch args[0] {
	case "kernel":
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		k, err := images.EnsureKernel(ctx, images.KernelOptions{Flavor: *flavor, CacheDir: *cache, Offline: *offline, Log: stderr})
		if err != nil {
			return err
		}
		return printKernel(stdout, *output, k, "")
	case "build":
		initPath := fs.String("init", "", "static /init binary (go build ./cmd/veloce-init with CGO_ENABLED=0)")
		out := fs.String("out", "", "output directory: vmlinuz and initramfs.cpio.gz are written there")
		busybox := fs.String("busybox", images.HostBusybox, "static busybox to include; empty for none")
		var adds, mods listFlag
		fs.Var(&adds, "add", "add a host file as SRC:DST (repeatable)")
		fs.Var(&mods, "module", "also load this kernel module and its dependencies (repeatable)")
		var bins, libs listFlag
		fs.Var(&bins, "add-bin", "add a dynamically linked host executable as SRC:DST with its loader and shared libraries (repeatable)")
		fs.Var(&libs, "lib", "add a shared library (path or soname) and the libraries it needs (repeatable)")
		rdma := fs.Bool("rdma", false, "add soft-RoCE: the rdma_rxe and ib_uverbs modules, libibverbs and the rxe provider (needs --flavor amd64)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if *initPath == "" || *out == "" {
			return errors.New("build: --init and --out are required")
		}
		k, err := images.EnsureKernel(ctx, images.KernelOptions{Flavor: *flavor, CacheDir: *cache, Offline: *offline, Log: stderr})
		if err != nil {
			return err
		}
		b := images.NewInitramfs(k)
		if _, err := os.Stat(*busybox); *busybox == "" || err != nil {
			if *busybox != "" && *busybox != images.HostBusybox {
				return fmt.Errorf("build: busybox: %w", err)
			}
			b.SetBusybox("")
		} else {
			b.SetBusybox(*busybox)
		}
		b.AddModules(mods...)
		if *rdma {
			b.AddModules(images.RDMAModules...)
			if err := b.AddRDMAUserspace(); err != nil {
				return fmt.Errorf("build: %w", err)
			}
		}
		for _, l := range libs {
			if err := b.AddLibrary(l); err != nil {
				return fmt.Errorf("build: --lib %s: %w", l, err)
			}
		}
		for _, a := range bins {
			src, dst, ok := strings.Cut(a, ":")
			if !ok || src == "" || !strings.HasPrefix(dst, "/") {
				return fmt.Errorf("build: --add-bin %q: want SRC:/ABSOLUTE/DST", a)
			}
			if err := b.AddBinaryWithLibs(dst, src); err != nil {
				return fmt.Errorf("build: --add-bin %s: %w", a, err)
			}
		}
		for _, a := range adds {
			src, dst, ok := strings.Cut(a, ":")
			if !ok || src == "" || !strings.HasPrefix(dst, "/") {
				return fmt.Errorf("build: --add %q: want SRC:/ABSOLUTE/DST", a)
			}
			b.AddFile(dst, src, 0o755)
		}
		if err := os.MkdirAll(*out, 0o755); err != nil {
			return err
		}
		initrd := filepath.Join(*out, "initramfs.cpio.gz")
		if err := b.WriteFile(initrd, *initPath); err != nil {
			return err
		}
		vmlinuz := filepath.Join(*out, "vmlinuz")
		if err := copyFile(vmlinuz, k.Vmlinuz); err != nil {
			return err
		}
		return printKernel(stdout, *output, &images.Kernel{Package: k.Package, Release: k.Release, Vmlinuz: vmlinuz, ModulesDir: k.ModulesDir}, initrd)
	case "disk":
		return runDisk(fs, args[1:], stdout, output)
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}

func printKernel(w io.Writer, format string, k *images.Kernel, initrd string) error {
	switch format {
	case "json":
		e := json.NewEncoder(w)
		e.SetIndent("", "  ")
		return e.Encode(struct {
			Package    string `json:"package"`
			Release    string `json:"release"`
			Vmlinuz    string `json:"vmlinuz"`
			ModulesDir string `json:"modules_dir"`
			Initramfs  string `json:"initramfs,omitempty"`
		}{k.Package, k.Release, k.Vmlinuz, k.ModulesDir, initrd})
	case "text":
		fmt.Fprintf(w, "package   %s\nrelease   %s\nvmlinuz   %s\nmodules   %s\n", k.Package, k.Release, k.Vmlinuz, k.ModulesDir)
		if initrd != "" {
			fmt.Fprintf(w, "initramfs %s\n", initrd)
		}
		return nil
	default:
		return fmt.Errorf("unknown output format %q (want text or json)", format)
	}
}

func copyFile(dst, src string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o644)
}
