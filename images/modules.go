package images

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/ulikunitz/xz"
)

// DefaultModules are loaded by every guest: the PCI transport, the network
// driver, and the entropy device (vmtest adds virtio-rng-pci: without it a
// TCG guest's getrandom blocks for minutes, and DHCP clients with it).
// Their dependencies (virtio, virtio_ring, failover, ...) are found by
// ModuleIndex.Resolve.
var DefaultModules = []string{"virtio_pci", "virtio_net", "virtio_rng"}

// moduleName normalises a module file or name: "virtio-net.ko.xz" and
// "virtio_net" both become "virtio_net".
func moduleName(s string) string {
	s = filepath.Base(s)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		s = strings.TrimSuffix(s, ext)
	}
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
}

// ModuleIndex maps module names to files under a kernel's modules
// directory, and knows which modules are built into the kernel.
type ModuleIndex struct {
	dir     string
	files   map[string]string // name -> path relative to dir
	builtin map[string]bool
}

// IndexModules walks modulesDir (lib/modules/<release>).
func IndexModules(modulesDir string) (*ModuleIndex, error) {
	idx := &ModuleIndex{dir: modulesDir, files: map[string]string{}, builtin: map[string]bool{}}
	err := filepath.WalkDir(modulesDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.Contains(d.Name(), ".ko") {
			return nil
		}
		rel, _ := filepath.Rel(modulesDir, p)
		idx.files[moduleName(d.Name())] = rel
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules: %w", err)
	}
	if f, err := os.Open(filepath.Join(modulesDir, "modules.builtin")); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			idx.builtin[moduleName(sc.Text())] = true
		}
		f.Close()
	}
	return idx, nil
}

// Resolve returns the files (relative to the modules directory) that must
// be loaded, in order, so that every named module and its dependencies are
// present: dependencies first. Built-in modules are skipped; an unknown
// module is an error.
func (idx *ModuleIndex) Resolve(names ...string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		name = moduleName(name)
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
		}
		rel, ok := idx.files[name]
		if !ok {
			if idx.builtin[name] {
				state[name] = 2
				return nil
			}
			return fmt.Errorf("module %s not found in %s", name, idx.dir)
		}
		state[name] = 1
		deps, err := moduleDepends(filepath.Join(idx.dir, rel))
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, rel)
		return nil
	}
	for _, n := range names {
		if err := visit(n, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// ReadModule returns a module file's ELF bytes, decompressing .ko.xz.
func ReadModule(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if !strings.HasSuffix(path, ".xz") {
		return raw, nil
	}
	r, err := xz.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("decompress %s: %w", path, err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("decompress %s: %w", path, err)
	}
	return out, nil
}

// moduleDepends reads the depends= entry of a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	data, err := ReadModule(path)
	if err != nil {
		return nil, err
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s: no .modinfo section", path)
	}
	info, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	for _, kv := range bytes.Split(info, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}
