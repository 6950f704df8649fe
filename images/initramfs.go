package images

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// ModuleOrderFile is where the initramfs lists, one absolute path a line,
// the modules /init loads, in load order.
const ModuleOrderFile = "/lib/modules/veloce.order"

// HostBusybox is Debian's busybox-static binary, put into guests when present.
const HostBusybox = "/bin/busybox"

// udhcpcScript is what busybox udhcpc runs on a lease: it configures the
// address (and, as the stock script does, a router only when offered).
const udhcpcScript = `#!/bin/sh
[ -n "$1" ] || exit 1
case "$1" in
deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
bound|renew)
	ip -4 addr flush dev "$interface"
	ip addr add "$ip/${mask:-24}" dev "$interface"
	for r in $router; do ip route add default via "$r" dev "$interface"; done
	;;
esac
exit 0
`

type initramfsFile struct {
	dst  string // absolute path in the guest
	src  string // host path, or "" when data is set
	data []byte
	mode os.FileMode
	link string // symlink target when non-empty
}

// Initramfs builds a guest initramfs: /init, kernel modules, busybox, and
// extra files. The zero value is not usable; call NewInitramfs.
type Initramfs struct {
	kernel  *Kernel
	modules []string
	files   []initramfsFile
	busybox string
}

// NewInitramfs starts an initramfs for kernel k with DefaultModules and,
// when the host has it, HostBusybox.
func NewInitramfs(k *Kernel) *Initramfs {
	b := &Initramfs{kernel: k, modules: append([]string(nil), DefaultModules...)}
	if _, err := os.Stat(HostBusybox); err == nil {
		b.busybox = HostBusybox
	}
	return b
}

// AddModules asks for more kernel modules (their dependencies follow).
func (b *Initramfs) AddModules(names ...string) { b.modules = append(b.modules, names...) }

// SetBusybox sets the busybox binary to include; "" leaves busybox out.
// The binary must be static: the guest has no C library.
func (b *Initramfs) SetBusybox(path string) { b.busybox = path }

// AddFile copies the host file src to dst in the guest with mode perm.
func (b *Initramfs) AddFile(dst, src string, perm os.FileMode) {
	b.files = append(b.files, initramfsFile{dst: path.Clean("/" + dst), src: src, mode: perm})
}

// AddData writes data to dst in the guest with mode perm.
func (b *Initramfs) AddData(dst string, data []byte, perm os.FileMode) {
	b.files = append(b.files, initramfsFile{dst: path.Clean("/" + dst), data: data, mode: perm})
}

// WriteFile builds the initramfs into file out (gzip-compressed newc cpio),
// with the host file initPath as /init (a static binary).
func (b *Initramfs) WriteFile(out, initPath string) error {
	f, err := os.CreateTemp(filepath.Dir(out), ".initramfs-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := b.Write(f, initPath); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(f.Name(), out)
}

// Write builds the initramfs into w.
func (b *Initramfs) Write(w io.Writer, initPath string) error {
	files := append([]initramfsFile(nil), b.files...)
	files = append(files, initramfsFile{dst: "/init", src: initPath, mode: 0o755})

	idx, err := IndexModules(b.kernel.ModulesDir)
	if err != nil {
		return err
	}
	order, err := idx.Resolve(b.modules...)
	if err != nil {
		return fmt.Errorf("build initramfs: %w", err)
	}
	var list bytes.Buffer
	for _, rel := range order {
		dst := path.Join("/lib/modules", b.kernel.Release, filepath.ToSlash(rel))
		files = append(files, initramfsFile{dst: dst, src: filepath.Join(b.kernel.ModulesDir, rel), mode: 0o644})
		fmt.Fprintln(&list, dst)
	}
	files = append(files, initramfsFile{dst: ModuleOrderFile, data: list.Bytes(), mode: 0o644})

	if b.busybox != "" {
		files = append(files, initramfsFile{dst: "/bin/busybox", src: b.busybox, mode: 0o755})
		applets, err := busyboxApplets(b.busybox)
		if err != nil {
			return err
		}
		for _, a := range applets {
			if a == "busybox" || a == "init" || a == "linuxrc" {
				continue
			}
			files = append(files, initramfsFile{dst: "/bin/" + a, link: "busybox"})
		}
		// Debian's busybox runs /etc/udhcpc/default.script; upstream's
		// default is /usr/share/udhcpc/default.script.
		files = append(files, initramfsFile{dst: "/etc/udhcpc/default.script", data: []byte(udhcpcScript), mode: 0o755},
			initramfsFile{dst: "/usr/share/udhcpc/default.script", data: []byte(udhcpcScript), mode: 0o755})
	}

	// Directories first (parents before children), then everything else.
	dirs := map[string]bool{"dev": true, "proc": true, "sys": true, "tmp": true, "run": true, "etc": true, "bin": true, "sbin": true, "lib": true}
	seen := map[string]bool{}
	for _, f := range files {
		if seen[f.dst] {
			return fmt.Errorf("build initramfs: %s added twice", f.dst)
		}
		seen[f.dst] = true
		for d := path.Dir(f.dst); d != "/"; d = path.Dir(d) {
			dirs[strings.TrimPrefix(d, "/")] = true
		}
	}
	dirList := make([]string, 0, len(dirs))
	for d := range dirs {
		dirList = append(dirList, d)
	}
	sort.Strings(dirList)

	zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return err
	}
	cw := &cpioWriter{w: zw}
	for _, d := range dirList {
		mode := uint32(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		cw.entry(d, cpioModeDir|mode, nil, 0, 0)
	}
	// The kernel opens /dev/console for init's stdio before any devtmpfs
	// is mounted, so the node must be in the archive.
	cw.entry("dev/console", cpioModeChr|0o600, nil, 5, 1)
	for _, f := range files {
		switch {
		case f.link != "":
			cw.entry(f.dst, cpioModeLink|0o777, []byte(f.link), 0, 0)
		case f.src != "":
			data, err := os.ReadFile(f.src)
			if err != nil {
				return fmt.Errorf("build initramfs: %w", err)
			}
			cw.entry(f.dst, cpioModeFile|permBits(f.mode), data, 0, 0)
		default:
			cw.entry(f.dst, cpioModeFile|permBits(f.mode), f.data, 0, 0)
		}
	}
	if err := cw.trailer(); err != nil {
		return fmt.Errorf("build initramfs: %w", err)
	}
	return zw.Close()
}

// busyboxApplets asks a busybox binary for its applet names.
func busyboxApplets(bin string) ([]string, error) {
	out, err := exec.Command(bin, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	return strings.Fields(string(out)), nil
}
