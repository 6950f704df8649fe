package rdma

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/veloce-io/veloce/images/guestinit"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/vmtest"
)

// TestRDMAInVM boots a guest on Debian's generic kernel with two
// soft-RoCE devices and runs this package's TestGuest* tests inside it,
// the plugin's and the daemons' (daemon_guest_test.go), in one boot: the
// test binary and veloced are built with -tags rdma (cgo, dynamically
// linked to libibverbs) and go into the image with their libraries, with
// veloce-perf and velocectl. TCG is slow:
// VELOCE_RDMA_COUNT sets the stream test's message count (default
// 200,000).
func TestRDMAInVM(t *testing.T) {
	if os.Getenv(guestEnv) != "" {
		t.Skip("inside the guest already")
	}
	testutil.Integration(t)
	gcc, _ := exec.LookPath("gcc")
	testutil.Require(t, gcc != "", "needs gcc for cgo")
	bin := filepath.Join(t.TempDir(), "rdma.test")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "test", "-c", "-tags", "rdma", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := build.CombinedOutput(); err != nil {
		testutil.Require(t, !strings.Contains(string(out), "libibverbs"), "needs libibverbs-dev: %s", out)
		t.Fatalf("build the guest test binary: %v\n%s", err, out)
	}
	// The daemon tests' binaries: veloced with RDMA (cgo), the others
	// pure Go and static.
	bins := map[string]string{"/bin/rdma.test": bin}
	for _, b := range []struct{ guest, pkg, tags, cgo string }{
		{guestVeloced, "../../cmd/veloced", "rdma", "1"},
		{guestPerf, "../../cmd/veloce-perf", "", "0"},
		{guestVeloctl, "../../cmd/velocectl", "", "0"},
	} {
		out := filepath.Join(t.TempDir(), filepath.Base(b.guest))
		cmd := exec.CommandContext(ctx, "go", "build", "-tags", b.tags, "-o", out, b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+b.cgo)
		if o, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b.pkg, err, o)
		}
		bins[b.guest] = out
	}
	kernel, initrd := vmtest.RDMAImage(t, vmtest.RDMAGuest{Binaries: bins, Modules: []string{"veth"}})
	run := []string{"/bin/rdma.test", "-test.v", "-test.count=1", "-test.run", "^TestGuest"}
	if s := os.Getenv("VELOCE_RDMA_RUN"); s != "" {
		run[len(run)-1] = s
	}
	env := []string{guestEnv + "=1", "PATH=/bin", "LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"}
	if n := os.Getenv(countEnv); n != "" {
		env = append(env, countEnv+"="+n)
	}
	r := vmtest.RunGuest(t, vmtest.Options{Kernel: kernel, Initramfs: initrd, Memory: "1G",
		Guest: &guestinit.Config{Run: run, Env: env, Timeout: guestinit.Duration(25 * time.Minute)}}, 30*time.Minute)
	t.Logf("guest output:\n%s", r.Output)
	if r.Status != 0 {
		t.Fatalf("guest tests failed: status %d %s %s", r.Status, r.Signal, r.Error)
	}
}
