package vmtest

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/veloce-io/veloce/images"
	"github.com/veloce-io/veloce/internal/testutil"
)

// RDMAFlavor is the kernel flavour RDMA guests boot: Debian's generic
// kernel, which ships soft-RoCE (rdma_rxe); the cloud kernel does not.
const RDMAFlavor = "amd64"

// RDMAGuest says what goes into an RDMA guest besides soft-RoCE.
type RDMAGuest struct {
	// Binaries maps guest paths to host executables, dynamically linked
	// ones (cgo) too: their loader and libraries come along.
	Binaries map[string]string
	// Modules are loaded besides images.DefaultModules and
	// images.RDMAModules (veth, say).
	Modules []string
}

// RDMAImage returns the generic kernel (fetched and cached on first use)
// and an initramfs with soft-RoCE: the rdma_rxe and ib_uverbs modules,
// libibverbs with the rxe provider, and g's binaries with their shared
// libraries. A missing QEMU or kernel skips the test outside CI and fails
// it under CI.
func RDMAImage(t testing.TB, g RDMAGuest) (kernel, initramfs string) {
	t.Helper()
	testutil.RequiresCommand(t, "qemu-system-x86_64", "qemu-system-x86")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	k, err := images.EnsureKernel(ctx, images.KernelOptions{Flavor: RDMAFlavor})
	testutil.Require(t, err == nil, "needs the generic guest kernel (veloce-image kernel --flavor amd64): %v", err)
	b := images.NewInitramfs(k)
	b.AddModules(images.RDMAModules...)
	b.AddModules(g.Modules...)
	if err := b.AddRDMAUserspace(); err != nil {
		testutil.Require(t, false, "needs rdma-core userspace (apt-get install ibverbs-providers): %v", err)
	}
	for dst, src := range g.Binaries {
		if err := b.AddBinaryWithLibs(dst, src); err != nil {
			t.Fatalf("add %s: %v", src, err)
		}
	}
	initramfs = filepath.Join(t.TempDir(), "initramfs.cpio.gz")
	if err := b.WriteFile(initramfs, InitBinary(t)); err != nil {
		t.Fatalf("build initramfs: %v", err)
	}
	return k.Vmlinuz, initramfs
}
