package vmtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/veloce-io/veloce/images"
	"github.com/veloce-io/veloce/images/guestinit"
	"github.com/veloce-io/veloce/internal/testutil"
)

// Guest says what goes into a test's guest image.
type Guest struct {
	// Flavor is the Debian kernel flavor; default images.DefaultFlavor.
	Flavor string
	// Files maps guest paths to host files (binaries are made executable).
	Files map[string]string
	// Modules are loaded besides images.DefaultModules.
	Modules []string
}

var (
	initOnce sync.Once
	initPath string
	initErr  error
)

// InitBinary returns a static build of cmd/veloce-init: $VELOCE_INIT when
// set, else one built (once per process) into the cache directory.
func InitBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("VELOCE_INIT"); p != "" {
		return p
	}
	initOnce.Do(func() {
		dir := filepath.Join(images.DefaultCacheDir(), "bin")
		if initErr = os.MkdirAll(dir, 0o755); initErr != nil {
			return
		}
		tmp := filepath.Join(dir, fmt.Sprintf(".veloce-init-%d", os.Getpid()))
		initErr = BuildStatic(context.Background(), "github.com/veloce-io/veloce/cmd/veloce-init", tmp)
		if initErr == nil {
			initPath = filepath.Join(dir, "veloce-init")
			initErr = os.Rename(tmp, initPath)
		}
	})
	if initErr != nil {
		t.Fatalf("build veloce-init: %v", initErr)
	}
	return initPath
}

// BuildStatic builds a Go package as a static binary (CGO_ENABLED=0) for
// the guest.
func BuildStatic(ctx context.Context, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

// Image returns a kernel and a freshly built initramfs for g, fetching the
// kernel first if needed. Missing QEMU or kernel skips the test outside CI
// and fails it under CI.
func Image(t testing.TB, g Guest) (kernel, initramfs string) {
	t.Helper()
	testutil.RequiresCommand(t, "qemu-system-x86_64", "qemu-system-x86")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	k, err := images.EnsureKernel(ctx, images.KernelOptions{Flavor: g.Flavor})
	testutil.Require(t, err == nil, "needs a guest kernel: %v", err)
	b := images.NewInitramfs(k)
	b.AddModules(g.Modules...)
	for dst, src := range g.Files {
		b.AddFile(dst, src, 0o755)
	}
	dir := t.TempDir()
	initramfs = filepath.Join(dir, "initramfs.cpio.gz")
	if err := b.WriteFile(initramfs, InitBinary(t)); err != nil {
		t.Fatalf("build initramfs: %v", err)
	}
	return k.Vmlinuz, initramfs
}

// Boot starts a VM for the test. When opts has no kernel, Image(t, Guest{})
// provides one. The VM is shut down when the test ends; if the test failed,
// its work directory is kept and the end of its console is logged.
func Boot(t testing.TB, opts Options) *VM {
	t.Helper()
	testutil.RequiresCommand(t, "qemu-system-x86_64", "qemu-system-x86")
	if opts.Kernel == "" && opts.Disk == nil {
		opts.Kernel, opts.Initramfs = Image(t, Guest{})
	}
	opts.KeepDir = true
	vm, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		vm.Shutdown(context.Background())
		if t.Failed() {
			t.Logf("VM %s kept in %s; console ends:\n%s", t.Name(), vm.Dir(), indent(tail(vm.Console(), 3000)))
			return
		}
		if opts.Dir == "" {
			os.RemoveAll(vm.Dir())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := vm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return vm
}

// RunGuest boots a VM that runs opts.Guest.Run and returns the program's
// result once the guest has powered off. A guest that gives no result
// within timeout fails the test.
func RunGuest(t testing.TB, opts Options, timeout time.Duration) *guestinit.Result {
	t.Helper()
	start := time.Now()
	vm := Boot(t, opts)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	r, err := vm.Wait(ctx)
	if err != nil {
		t.Fatalf("guest: %v", err)
	}
	t.Logf("guest ran %v in %.1fs (boot, run, power off)", opts.Guest.Run, time.Since(start).Seconds())
	return r
}

func indent(b []byte) string {
	s := strings.ReplaceAll(string(b), "\r", "")
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}
