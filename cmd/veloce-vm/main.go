// Command veloce-vm boots a Veloce guest under QEMU with vhost-user NICs,
// runs one program in it, prints the program's output and exits with its
// status. It is the harness of package vmtest as a tool: for demos
// ('make run'), for trying a backend by hand, and for debugging a test.
//
//	veloce-vm --vhost-user /run/veloce/vm0.sock --ip 169.254.77.2/24 -- /bin/ping -c 3 169.254.77.1
//
// With --print-qemu it prints the QEMU command it would run, complete
// (TCG options, shared memfd memory, the vhost-user NIC with MSI-X off,
// the rng, the kernel command line with the guest's configuration), to
// copy and run by hand, and boots nothing.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/veloce-io/veloce/images"
	"github.com/veloce-io/veloce/images/guestinit"
	"github.com/veloce-io/veloce/vmtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	status, err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "veloce-vm:", err)
		}
		os.Exit(2)
	}
	os.Exit(status)
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	fs := flag.NewFlagSet("veloce-vm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: veloce-vm [flags] -- PROGRAM [ARGS...]\n\nBoots a guest, runs PROGRAM in it (busybox applets are in /bin), exits with its status.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	imageDir := fs.String("image", filepath.Join(images.DefaultCacheDir(), "images", "default"), "directory with vmlinuz and initramfs.cpio.gz (veloce-image build --out)")
	var clients, servers listFlag
	fs.Var(&clients, "vhost-user", "vhost-user socket QEMU connects to, one NIC each (repeatable)")
	fs.Var(&servers, "vhost-user-server", "vhost-user socket QEMU listens on, for a backend that connects (repeatable)")
	reconnect := fs.Int("reconnect", 1, "seconds between QEMU's reconnects to a lost backend (client sockets); 0 disables")
	ip := fs.String("ip", "dhcp", "eth0's address: dhcp, a static CIDR (169.254.77.2/24), or none (up, unconfigured: the program configures it)")
	memory := fs.String("memory", "512M", "guest memory (QEMU size syntax)")
	timeout := fs.Duration("timeout", 5*time.Minute, "kill the program after this long")
	keep := fs.Bool("keep", false, "keep the work directory (serial and QEMU logs)")
	quiet := fs.Bool("quiet", false, "do not stream the guest console; print the program's output at the end")
	output := fs.String("o", "text", "result format: text or json")
	printQEMU := fs.Bool("print-qemu", false, "print the full QEMU command line (to copy and run by hand) and exit without booting")
	if err := fs.Parse(args); err != nil {
		return 0, err
	}
	if *output != "text" && *output != "json" {
		return 0, fmt.Errorf("-o %q: want text or json", *output)
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 0, errors.New("no program to run in the guest")
	}
	cfg := &guestinit.Config{Run: fs.Args(), Timeout: guestinit.Duration(*timeout)}
	var nics []vmtest.NIC
	for _, s := range clients {
		nics = append(nics, vmtest.NIC{Socket: s, Reconnect: *reconnect})
	}
	for _, s := range servers {
		nics = append(nics, vmtest.NIC{Socket: s, Server: true})
	}
	if len(nics) > 0 {
		n := guestinit.NetConfig{Name: "eth0"}
		switch *ip {
		case "dhcp":
			n.DHCP = true
		case "none":
		default:
			if _, err := netip.ParsePrefix(*ip); err != nil {
				return 0, fmt.Errorf("--ip: %w", err)
			}
			n.Addr = *ip
		}
		cfg.Net = append(cfg.Net, n)
	}
	kernel, initrd := filepath.Join(*imageDir, "vmlinuz"), filepath.Join(*imageDir, "initramfs.cpio.gz")
	for _, f := range []string{kernel, initrd} {
		if _, err := os.Stat(f); err != nil {
			return 0, fmt.Errorf("guest image: %w (build it with 'make images')", err)
		}
	}
	opts := vmtest.Options{Kernel: kernel, Initramfs: initrd, Guest: cfg, Memory: *memory, NICs: nics, KeepDir: *keep}
	if *printQEMU {
		return 0, printCommand(stdout, opts)
	}
	if !*quiet && *output == "text" {
		opts.Console = stdout
	}
	vm, err := vmtest.New(opts)
	if err != nil {
		return 0, err
	}
	defer vm.Close()
	start := time.Now()
	if err := vm.Start(ctx); err != nil {
		return 0, err
	}
	r, err := vm.Wait(ctx)
	if err != nil {
		return 0, fmt.Errorf("%w (logs in %s)", err, vm.Dir())
	}
	elapsed := time.Since(start)
	switch *output {
	case "json":
		e := json.NewEncoder(stdout)
		e.SetIndent("", "  ")
		e.Encode(struct {
			Status  int     `json:"status"`
			Signal  string  `json:"signal,omitempty"`
			Error   string  `json:"error,omitempty"`
			Output  string  `json:"output"`
			Seconds float64 `json:"seconds"`
		}{r.Status, r.Signal, r.Error, r.Output, elapsed.Seconds()})
	default:
		if *quiet {
			io.WriteString(stdout, r.Output)
		}
		fmt.Fprintf(stderr, "veloce-vm: guest finished in %.1fs: ", elapsed.Seconds())
		if err := r.Err(); err != nil {
			fmt.Fprintln(stderr, err)
		} else {
			fmt.Fprintln(stderr, "status 0")
		}
	}
	if *keep {
		fmt.Fprintf(stderr, "veloce-vm: logs kept in %s\n", vm.Dir())
	}
	if r.Status < 0 {
		return 1, nil
	}
	return r.Status, nil
}

// printCommand prints the QEMU command vmtest would run for opts, one
// option per line, quoted for a POSIX shell. QMP (the harness's own
// control socket) is left out: the command runs on its own, with the
// guest's console on stdout.
func printCommand(w io.Writer, opts vmtest.Options) error {
	vm, err := vmtest.New(opts)
	if err != nil {
		return err
	}
	defer vm.Close()
	args, err := vm.Args()
	if err != nil {
		return err
	}
	if opts.Guest != nil {
		js, err := json.Marshal(opts.Guest)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "# %s= on the kernel command line is base64url(%s) (images/guestinit)\n", guestinit.KernelParam, js)
	}
	fmt.Fprint(w, "qemu-system-x86_64")
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "-qmp" {
			i++
			continue
		}
		if strings.HasPrefix(a, "-") {
			fmt.Fprint(w, " \\\n  "+a)
			if i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
				i++
				fmt.Fprint(w, " "+shellQuote(args[i]))
			}
			continue
		}
		fmt.Fprint(w, " "+shellQuote(a))
	}
	fmt.Fprintln(w)
	return nil
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=,.:/+@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
