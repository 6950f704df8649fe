package images

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// ErrKernelNotCached is returned by EnsureKernel in offline mode when no
// kernel of the requested flavor has been fetched yet.
var ErrKernelNotCached = errors.New("no guest kernel in the cache (run 'make images')")

// DefaultFlavor is the Debian kernel flavor guests boot by default: the
// cloud kernel is small and has every virtio driver as a module.
const DefaultFlavor = "cloud-amd64"

// KernelOptions says which kernel EnsureKernel provides.
type KernelOptions struct {
	// Flavor is the Debian kernel flavor, the suffix of the
	// linux-image-<flavor> meta-package: "cloud-amd64" (default) or
	// "amd64" (the generic kernel, which also ships rdma_rxe).
	Flavor string
	// CacheDir holds fetched packages and extracted kernels; empty means
	// DefaultCacheDir().
	CacheDir string
	// Offline never runs apt: the newest cached kernel of the flavor is
	// used, or ErrKernelNotCached returned.
	Offline bool
	// Log receives one line per slow step (download, extraction); nil
	// discards.
	Log io.Writer
}

// Kernel is an extracted Debian kernel package.
type Kernel struct {
	// Package is the Debian package name, e.g. linux-image-6.1.0-56-cloud-amd64.
	Package string
	// Release is the kernel release (uname -r), e.g. 6.1.0-56-cloud-amd64.
	Release string
	// Vmlinuz is the path of the bootable kernel image.
	Vmlinuz string
	// ModulesDir is the path of lib/modules/<Release>.
	ModulesDir string
}

// DefaultCacheDir returns $VELOCE_CACHE, else $XDG_CACHE_HOME/veloce, else
// ~/.cache/veloce.
func DefaultCacheDir() string {
	if d := os.Getenv("VELOCE_CACHE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "veloce")
	}
	return filepath.Join(os.TempDir(), "veloce-cache")
}

// EnsureKernel returns the kernel of opts.Flavor, fetching and extracting
// the current Debian package first when it is not cached. It needs apt's
// package lists (apt-get update) unless opts.Offline is set.
//
// It may return ErrKernelNotCached (offline) or an error wrapping the
// failing apt-cache, apt-get or dpkg-deb run with its output.
func EnsureKernel(ctx context.Context, opts KernelOptions) (*Kernel, error) {
	if opts.Flavor == "" {
		opts.Flavor = DefaultFlavor
	}
	if opts.CacheDir == "" {
		opts.CacheDir = DefaultCacheDir()
	}
	logw := opts.Log
	if logw == nil {
		logw = io.Discard
	}
	kdir := filepath.Join(opts.CacheDir, "kernel")
	if opts.Offline {
		return newestCached(kdir, opts.Flavor)
	}
	meta := "linux-image-" + opts.Flavor
	out, err := run(ctx, "", "apt-cache", "depends", meta)
	if err != nil {
		if k, cerr := newestCached(kdir, opts.Flavor); cerr == nil {
			fmt.Fprintf(logw, "images: apt-cache failed (%v); using cached %s\n", err, k.Package)
			return k, nil
		}
		return nil, fmt.Errorf("resolve %s (is 'apt-get update' done?): %w", meta, err)
	}
	pkg := ""
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			pkg = f[1]
			break
		}
	}
	if pkg == "" {
		return nil, fmt.Errorf("resolve %s: no linux-image dependency in apt-cache output", meta)
	}
	dest := filepath.Join(kdir, pkg)
	if k, err := loadKernel(dest, pkg); err == nil {
		return k, nil
	}
	debs := filepath.Join(opts.CacheDir, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return nil, err
	}
	fmt.Fprintf(logw, "images: downloading %s\n", pkg)
	if _, err := run(ctx, debs, "apt-get", "download", pkg); err != nil {
		return nil, fmt.Errorf("download %s: %w", pkg, err)
	}
	matches, _ := filepath.Glob(filepath.Join(debs, pkg+"_*.deb"))
	if len(matches) == 0 {
		return nil, fmt.Errorf("download %s: no .deb appeared in %s", pkg, debs)
	}
	sort.Strings(matches)
	deb := matches[len(matches)-1]
	fmt.Fprintf(logw, "images: extracting %s\n", filepath.Base(deb))
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		return nil, err
	}
	// Extract beside dest, then rename: a crash never leaves a half kernel.
	tmp, err := os.MkdirTemp(kdir, ".extract-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if _, err := run(ctx, "", "dpkg-deb", "-x", deb, tmp); err != nil {
		return nil, fmt.Errorf("extract %s: %w", deb, err)
	}
	os.RemoveAll(dest)
	if err := os.Rename(tmp, dest); err != nil {
		return nil, fmt.Errorf("install kernel: %w", err)
	}
	return loadKernel(dest, pkg)
}

// loadKernel checks an extracted package directory.
func loadKernel(dir, pkg string) (*Kernel, error) {
	vm, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(vm) != 1 {
		return nil, fmt.Errorf("%s: expected one boot/vmlinuz-*, found %d", dir, len(vm))
	}
	rel := strings.TrimPrefix(filepath.Base(vm[0]), "vmlinuz-")
	mods := filepath.Join(dir, "lib", "modules", rel)
	if _, err := os.Stat(mods); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	return &Kernel{Package: pkg, Release: rel, Vmlinuz: vm[0], ModulesDir: mods}, nil
}

// newestCached returns the cached kernel of flavor with the highest
// version (Debian's ABI number sorts within a release line).
func newestCached(kdir, flavor string) (*Kernel, error) {
	ents, err := os.ReadDir(kdir)
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	var best *Kernel
	for _, e := range ents {
		name := e.Name()
		if !e.IsDir() || !strings.HasPrefix(name, "linux-image-") || !strings.HasSuffix(name, "-"+flavor) {
			continue
		}
		// linux-image-6.1.0-56-cloud-amd64 must not match flavor "amd64".
		if flavor == "amd64" && strings.Count(strings.TrimPrefix(name, "linux-image-"), "-") != 2 {
			continue
		}
		k, err := loadKernel(filepath.Join(kdir, name), name)
		if err != nil {
			continue
		}
		if best == nil || versionLess(best.Release, k.Release) {
			best = k
		}
	}
	if best == nil {
		return nil, fmt.Errorf("%w: flavor %s in %s", ErrKernelNotCached, flavor, kdir)
	}
	return best, nil
}

// versionLess compares dotted/dashed version strings numerically where
// both parts are numbers.
func versionLess(a, b string) bool {
	split := func(s string) []string {
		return strings.FieldsFunc(s, func(r rune) bool { return r == '.' || r == '-' })
	}
	pa, pb := split(a), split(b)
	for i := 0; i < len(pa) && i < len(pb); i++ {
		var na, nb int
		_, ea := fmt.Sscanf(pa[i], "%d", &na)
		_, eb := fmt.Sscanf(pb[i], "%d", &nb)
		if ea == nil && eb == nil {
			if na != nb {
				return na < nb
			}
			continue
		}
		if pa[i] != pb[i] {
			return pa[i] < pb[i]
		}
	}
	return len(pa) < len(pb)
}

// run executes a command and returns its standard output; on failure the
// error carries the combined output.
func run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}
