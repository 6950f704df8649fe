package images

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/veloce-io/veloce/internal/testutil"
)

type cpioEntry struct {
	mode       uint32
	rdev       [2]uint32
	data       string
	nameOffset int
}

// readNewc parses a newc archive the way the kernel's initramfs unpacker
// does (init/initramfs.c), independently of cpioWriter.
func readNewc(t *testing.T, b []byte) (map[string]cpioEntry, []string) {
	t.Helper()
	entries := map[string]cpioEntry{}
	var order []string
	off := 0
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off+110 > len(b) {
			t.Fatalf("truncated header at %d", off)
		}
		h := b[off : off+110]
		if string(h[:6]) != "070701" {
			t.Fatalf("bad magic %q at %d", h[:6], off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("field %d: %v", i, err)
			}
			return uint32(v)
		}
		mode, size, rmaj, rmin, nsize := field(1), field(6), field(9), field(10), field(11)
		name := string(b[off+110 : off+110+int(nsize)-1])
		if b[off+110+int(nsize)-1] != 0 {
			t.Fatalf("%s: name not NUL-terminated", name)
		}
		doff := align(off + 110 + int(nsize))
		if name == "TRAILER!!!" {
			return entries, order
		}
		entries[name] = cpioEntry{mode: mode, rdev: [2]uint32{rmaj, rmin}, data: string(b[doff : doff+int(size)]), nameOffset: off}
		order = append(order, name)
		off = align(doff + int(size))
	}
}

func TestCpioNewcFormat(t *testing.T) {
	var buf bytes.Buffer
	cw := &cpioWriter{w: &buf}
	cw.entry("bin", cpioModeDir|0o755, nil, 0, 0)
	cw.entry("/bin/x", cpioModeFile|0o755, []byte("hello"), 0, 0) // leading slash dropped
	cw.entry("bin/y", cpioModeLink|0o777, []byte("x"), 0, 0)
	cw.entry("dev/console", cpioModeChr|0o600, nil, 5, 1)
	if err := cw.trailer(); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Fatalf("archive length %d not 4-aligned", buf.Len())
	}
	got, _ := readNewc(t, buf.Bytes())
	if e := got["bin/x"]; e.data != "hello" || e.mode != cpioModeFile|0o755 {
		t.Errorf("bin/x: %+v", e)
	}
	if e := got["bin/y"]; e.data != "x" || e.mode&0o170000 != cpioModeLink {
		t.Errorf("bin/y: %+v", e)
	}
	if e := got["dev/console"]; e.rdev != [2]uint32{5, 1} {
		t.Errorf("dev/console: %+v", e)
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"virtio_net":                       "virtio_net",
		"kernel/drivers/net/virtio_net.ko": "virtio_net",
		"virtio-net.ko.xz":                 "virtio_net",
		"rdma_rxe.ko.zst":                  "rdma_rxe",
	} {
		if got := moduleName(in); got != want {
			t.Errorf("moduleName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestVersionLess(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		less bool
	}{
		{"6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64", true},
		{"6.1.0-56-cloud-amd64", "6.1.0-47-cloud-amd64", false},
		{"6.1.0-56-cloud-amd64", "6.12.0-1-cloud-amd64", true},
	} {
		if got := versionLess(tc.a, tc.b); got != tc.less {
			t.Errorf("versionLess(%s, %s) = %v", tc.a, tc.b, got)
		}
	}
}

// cachedKernel returns the kernel make images fetched (offline: tests do
// not download).
func cachedKernel(t *testing.T) *Kernel {
	t.Helper()
	k, err := EnsureKernel(context.Background(), KernelOptions{Offline: true})
	testutil.Require(t, err == nil, "needs a cached guest kernel: %v", err)
	return k
}

func TestResolveVirtioNetDependencies(t *testing.T) {
	k := cachedKernel(t)
	idx, err := IndexModules(k.ModulesDir)
	if err != nil {
		t.Fatal(err)
	}
	order, err := idx.Resolve(DefaultModules...)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, rel := range order {
		pos[moduleName(rel)] = i
	}
	// Debian's cloud kernel builds all of these as modules; each must
	// come after what it depends on.
	for _, dep := range [][2]string{
		{"virtio_ring", "virtio"}, {"virtio", "virtio_pci"}, {"virtio_pci_modern_dev", "virtio_pci"},
		{"failover", "net_failover"}, {"net_failover", "virtio_net"}, {"virtio", "virtio_net"},
	} {
		a, aok := pos[dep[0]]
		b, bok := pos[dep[1]]
		if !aok || !bok || a >= b {
			t.Errorf("%s must load before %s; order %v", dep[0], dep[1], order)
		}
	}
	if _, err := idx.Resolve("no_such_module"); err == nil {
		t.Error("an unknown module resolved")
	}
}

func TestInitramfsContents(t *testing.T) {
	k := cachedKernel(t)
	dir := t.TempDir()
	initBin := filepath.Join(dir, "init")
	os.WriteFile(initBin, []byte("#!init"), 0o755)
	b := NewInitramfs(k)
	b.AddData("/etc/motd", []byte("hi"), 0o644)
	b.AddFile("/bin/tool", initBin, 0o755)
	out := filepath.Join(dir, "initramfs.cpio.gz")
	if err := b.WriteFile(out, initBin); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(out)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	got, order := readNewc(t, raw)
	for _, name := range []string{"init", "etc/motd", "bin/tool", "dev/console", "tmp", strings.TrimPrefix(ModuleOrderFile, "/")} {
		if _, ok := got[name]; !ok {
			t.Errorf("%s missing", name)
		}
	}
	if got["tmp"].mode != cpioModeDir|0o1777 {
		t.Errorf("tmp mode %o", got["tmp"].mode)
	}
	// Parents precede children, as the kernel's unpacker needs.
	seen := map[string]bool{}
	for _, name := range order {
		if d := filepath.Dir(name); d != "." && !seen[d] {
			t.Errorf("%s comes before its directory %s", name, d)
		}
		seen[name] = true
	}
	// Every module listed for /init is in the archive.
	for _, p := range strings.Fields(got[strings.TrimPrefix(ModuleOrderFile, "/")].data) {
		if _, ok := got[strings.TrimPrefix(p, "/")]; !ok {
			t.Errorf("module %s listed but not packed", p)
		}
	}
	if _, err := os.Stat(HostBusybox); err == nil {
		if e, ok := got["bin/ping"]; !ok || e.data != "busybox" {
			t.Errorf("bin/ping applet link: %+v", e)
		}
	}
	b.AddData("/etc/motd", nil, 0o644)
	if err := b.Write(io.Discard, initBin); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("duplicate path: got %v", err)
	}
}
