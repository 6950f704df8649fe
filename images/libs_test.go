package images

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// A verbs program's closure, read from ELF headers alone: the provider
// brings libibverbs, which brings libnl and libc; an executable brings its
// dynamic loader.
func TestAddRDMAUserspaceResolvesLibraries(t *testing.T) {
	if _, err := os.Stat("/etc/libibverbs.d/rxe.driver"); err != nil {
		t.Skip("needs ibverbs-providers (make deps)")
	}
	b := &Initramfs{}
	if err := b.AddRDMAUserspace(); err != nil {
		t.Fatal(err)
	}
	if err := b.AddBinaryWithLibs("/bin/sh-dyn", "/bin/dash"); err != nil {
		t.Fatal(err)
	}
	if err := b.AddRDMAUserspace(); err != nil { // twice is harmless
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, f := range b.files {
		if got[f.dst] {
			t.Errorf("%s added twice", f.dst)
		}
		got[f.dst] = true
	}
	for _, want := range []string{"/etc/libibverbs.d/rxe.driver", "libibverbs.so.1", "librxe-rdmav", "libnl-3.so.200", "libnl-route-3.so.200", "libc.so.6", "ld-linux-x86-64.so.2", "/bin/sh-dyn"} {
		found := false
		for dst := range got {
			if filepath.Base(dst) == filepath.Base(want) || dst == want || (want == "librxe-rdmav" && filepath.Dir(dst) == RDMAProviderDir) {
				found = true
			}
		}
		if !found {
			t.Errorf("no %s in %v", want, got)
		}
	}
}

func TestAddLibraryNotFound(t *testing.T) {
	b := &Initramfs{}
	err := b.AddLibrary("libveloce-does-not-exist.so.9")
	if !errors.Is(err, ErrLibraryNotFound) {
		t.Fatalf("got %v, want ErrLibraryNotFound", err)
	}
}

func TestAddBinaryWithLibsStatic(t *testing.T) {
	if _, err := os.Stat(HostBusybox); err != nil {
		t.Skip("needs busybox-static")
	}
	b := &Initramfs{}
	if err := b.AddBinaryWithLibs("/bin/bb", HostBusybox); err != nil {
		t.Fatal(err)
	}
	if len(b.files) != 1 {
		t.Errorf("static binary brought %d files, want 1", len(b.files))
	}
}
