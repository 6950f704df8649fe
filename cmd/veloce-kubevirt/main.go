// Command veloce-kubevirt is Veloce's KubeVirt network binding plugin: a
// sidecar in virt-launcher pods that serves KubeVirt's hook API on a unix
// socket and, at OnDefineDomain, turns every VMI interface with
// binding 'veloce' into a vhost-user interface on veloced (package
// kubevirt; deployment in examples/kubevirt).
//
//	veloce-kubevirt [--socket-dir /var/run/veloce/vms] [--control /var/run/veloce/control.sock]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/kubevirt"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "veloce-kubevirt:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("veloce-kubevirt", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: veloce-kubevirt [flags]\n\nKubeVirt hook sidecar: makes VMI interfaces with binding %q vhost-user interfaces on veloced.\n\nFlags:\n", kubevirt.DefaultBinding)
		fs.PrintDefaults()
	}
	hook := fs.String("hook-socket", filepath.Join(kubevirt.HookSocketDir, "veloce.sock"), "where to serve the hook API (virt-launcher looks in "+kubevirt.HookSocketDir+")")
	binding := fs.String("binding", kubevirt.DefaultBinding, "the binding name VMI interfaces use (spec.domain.devices.interfaces[].binding.name)")
	sockDir := fs.String("socket-dir", kubevirt.DefaultSocketDir, "directory of the vhost-user sockets as QEMU in the compute container sees it")
	hostDir := fs.String("host-socket-dir", "", "the same directory as veloced sees it (default --socket-dir); used with --control")
	ctl := fs.String("control", "", "veloced's control socket, mounted into this sidecar: register each interface as a client-mode port (and remove it at Shutdown); empty: the operator adds the ports")
	queues := fs.Int("max-queues", 8, "most queue pairs for a multiqueue interface")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *version {
		v := "devel"
		if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		fmt.Fprintln(stdout, "veloce-kubevirt", v)
		return nil
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (all settings are flags; see --help)", fs.Arg(0))
	}
	if *queues < 1 {
		return fmt.Errorf("--max-queues %d: want 1 or more", *queues)
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", *level)
	}
	for _, f := range []struct{ name, v string }{{"--socket-dir", *sockDir}, {"--host-socket-dir", *hostDir}} {
		if f.v != "" && !filepath.IsAbs(f.v) {
			return fmt.Errorf("%s %q: want an absolute path", f.name, f.v)
		}
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: lv}))
	opts := kubevirt.Options{Binding: *binding, SocketDir: *sockDir, HostSocketDir: *hostDir, Queues: *queues, Logger: log}
	if *ctl != "" {
		opts.Control = control.NewClient(*ctl)
	}
	l, err := kubevirt.Listen(*hook)
	if err != nil {
		return err
	}
	s := kubevirt.NewGRPCServer(kubevirt.New(opts))
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	log.Info("serving KubeVirt hooks", "socket", *hook, "binding", *binding, "socket_dir", *sockDir, "control", *ctl)
	select {
	case err := <-done:
		return fmt.Errorf("serve hooks: %w", err)
	case <-ctx.Done():
		s.GracefulStop()
		<-done
		os.Remove(*hook)
		return nil
	}
}
