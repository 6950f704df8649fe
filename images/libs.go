package images

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// LibDirs are where AddLibrary and AddBinaryWithLibs look for a library an
// ELF object names in DT_NEEDED (after the object's own directory), in
// order: Debian's multiarch directories first.
var LibDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// ErrLibraryNotFound is returned (wrapped, with the name and who needs it)
// when a DT_NEEDED library is in none of LibDirs.
var ErrLibraryNotFound = errors.New("shared library not found")

// RDMAModules are the kernel modules of soft-RoCE and the verbs character
// devices (their dependencies, ib_core and the rest, follow). Only the
// generic kernel flavour ("amd64") ships them. crc32_generic is not a
// dependency on paper: rxe asks the crypto API for "crc32" (its ICRC)
// when a device is added, and without a crc32 provider loaded (the
// initramfs has no modprobe to load one on demand) `rdma link add`
// fails with ENOENT.
var RDMAModules = []string{"crc32_generic", "rdma_rxe", "ib_uverbs"}

// RDMAProviderDir is where Debian's libibverbs loads its providers from.
const RDMAProviderDir = "/usr/lib/x86_64-linux-gnu/libibverbs"

// AddLibrary adds the shared library src (a host path, or a bare name
// such as "libibverbs.so.1" looked up in LibDirs) at the same path in the
// guest, and every library it needs, recursively (DT_NEEDED, read with
// debug/elf: nothing is executed). Symbolic links are followed: the guest
// gets the file's contents under the name asked for. Adding a library
// twice is harmless.
//
// It may return an error wrapping ErrLibraryNotFound, or the ELF parser's.
func (b *Initramfs) AddLibrary(src string) error {
	if !strings.Contains(src, "/") {
		p, err := findLibrary(src, "")
		if err != nil {
			return err
		}
		src = p
	}
	return b.addELF(src, src, 0o755)
}

// AddBinaryWithLibs adds the dynamically linked executable src at dst in
// the guest, with its program interpreter (PT_INTERP, the dynamic loader)
// and its libraries, as AddLibrary does. A static executable gets no
// libraries.
func (b *Initramfs) AddBinaryWithLibs(dst, src string) error {
	return b.addELF(dst, src, 0o755)
}

// AddRDMAUserspace adds what a verbs program needs in the guest besides
// its own libraries: the providers named (default "rxe", soft-RoCE), each
// as its /etc/libibverbs.d/NAME.driver file and the provider library
// RDMAProviderDir/libNAME-rdmav*.so with its libraries (libibverbs,
// libnl-3, libnl-route-3, libc). Load RDMAModules too.
func (b *Initramfs) AddRDMAUserspace(providers ...string) error {
	if len(providers) == 0 {
		providers = []string{"rxe"}
	}
	if err := b.AddLibrary("libibverbs.so.1"); err != nil {
		return fmt.Errorf("rdma userspace: %w", err)
	}
	for _, p := range providers {
		drv := "/etc/libibverbs.d/" + p + ".driver"
		if _, err := os.Stat(drv); err != nil {
			return fmt.Errorf("rdma userspace: provider %s: %w (apt-get install ibverbs-providers)", p, err)
		}
		if !b.has(drv) {
			b.AddFile(drv, drv, 0o644)
		}
		libs, _ := filepath.Glob(filepath.Join(RDMAProviderDir, "lib"+p+"-rdmav*.so"))
		if len(libs) == 0 {
			return fmt.Errorf("rdma userspace: provider %s: no lib%s-rdmav*.so in %s: %w", p, p, RDMAProviderDir, ErrLibraryNotFound)
		}
		for _, l := range libs {
			if err := b.AddLibrary(l); err != nil {
				return fmt.Errorf("rdma userspace: %w", err)
			}
		}
	}
	return nil
}

// has reports whether dst is in the image already.
func (b *Initramfs) has(dst string) bool {
	dst = path.Clean("/" + dst)
	for _, f := range b.files {
		if f.dst == dst {
			return true
		}
	}
	return false
}

// addELF adds src at dst and its interpreter and DT_NEEDED closure.
func (b *Initramfs) addELF(dst, src string, perm os.FileMode) error {
	if b.has(dst) {
		return nil
	}
	interp, needed, err := elfDeps(src)
	if err != nil {
		return err
	}
	b.AddFile(dst, src, perm)
	if interp != "" && !b.has(interp) {
		if _, err := os.Stat(interp); err != nil {
			return fmt.Errorf("%s: interpreter %s: %w", src, interp, err)
		}
		b.AddFile(interp, interp, 0o755)
	}
	for _, n := range needed {
		p, err := findLibrary(n, filepath.Dir(src))
		if err != nil {
			return fmt.Errorf("%s: %w", src, err)
		}
		if err := b.addELF(p, p, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// elfDeps reads an ELF object's interpreter and DT_NEEDED names.
func elfDeps(file string) (interp string, needed []string, err error) {
	f, err := elf.Open(file)
	if err != nil {
		return "", nil, fmt.Errorf("read ELF %s: %w", file, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			buf := make([]byte, p.Filesz)
			if _, err := p.ReadAt(buf, 0); err != nil {
				return "", nil, fmt.Errorf("read ELF %s: interpreter: %w", file, err)
			}
			interp = strings.TrimRight(string(buf), "\x00")
		}
	}
	needed, err = f.ImportedLibraries()
	if err != nil {
		if f.Section(".dynamic") == nil {
			return interp, nil, nil // static
		}
		return "", nil, fmt.Errorf("read ELF %s: %w", file, err)
	}
	return interp, needed, nil
}

// findLibrary looks name up in dir (when not empty), then in LibDirs.
func findLibrary(name, dir string) (string, error) {
	dirs := LibDirs
	if dir != "" {
		dirs = append([]string{dir}, LibDirs...)
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w (looked in %s)", name, ErrLibraryNotFound, strings.Join(dirs, ", "))
}
