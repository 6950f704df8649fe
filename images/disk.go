package images

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"
)

// SystemdBootEFI is systemd-boot's x86-64 EFI binary as Debian's
// systemd-boot-efi package installs it. WriteDisk installs it as the
// removable-media boot path EFI/BOOT/BOOTX64.EFI, which any UEFI firmware
// (OVMF) starts; rust-hypervisor-firmware does not need it and reads the
// Boot Loader Spec entries itself.
const SystemdBootEFI = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"

// DefaultCmdline is the kernel command line of a disk's boot entry when
// DiskOptions.Cmdline is empty: the serial console (ttyS0 under QEMU and
// under Cloud Hypervisor's --serial tty), a guest that powers off rather
// than hangs on a panic, and a quiet kernel. vmtest's direct kernel boot
// uses the same.
const DefaultCmdline = "console=ttyS0 panic=-1 quiet loglevel=4"

// Where WriteDisk puts things on the EFI system partition. Paths are
// absolute on the ESP, with forward slashes, as Boot Loader Spec entries
// name them.
const (
	DiskLoaderConf = "/loader/loader.conf"
	DiskEntry      = "/loader/entries/veloce.conf"
	DiskKernel     = "/veloce/vmlinuz"
	DiskInitrd     = "/veloce/initramfs.cpio.gz"
	DiskBootloader = "/EFI/BOOT/BOOTX64.EFI"
)

// ESPTypeGUID is the GPT partition type of an EFI system partition.
const ESPTypeGUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"

const (
	sectorSize = 512
	mib        = 1 << 20
	// espAlign is where the ESP starts and the unit its size is rounded
	// to: 1 MiB, as partitioning tools align.
	espAlign = mib
	// minESP keeps the ESP FAT32 by every reader's rule: 512-byte
	// clusters and at least 65525 of them. rust-hypervisor-firmware counts
	// clusters from the total sector count, FAT's specification from the
	// data area; 64 MiB satisfies both with room to spare.
	minESP = 64 * mib
	// bootEntryMax is the largest loader.conf or entry file
	// rust-hypervisor-firmware reads (it reads into a 4 KiB buffer).
	bootEntryMax = 4096
	// fatReservedSectors is the reserved area go-diskfs's FAT32 has.
	fatReservedSectors = 32
)

// ErrNoBootloader is returned by WriteDisk when the systemd-boot binary it
// installs by default is not on the host.
var ErrNoBootloader = errors.New("no systemd-boot EFI binary (apt-get install systemd-boot-efi)")

// DiskOptions says what WriteDisk puts on a disk. Kernel and Initrd are
// required.
type DiskOptions struct {
	// Kernel is the host path of the bzImage the entry boots (a Debian
	// vmlinuz: it has the EFI stub systemd-boot needs).
	Kernel string
	// Initrd is the host path of the initramfs (Initramfs.WriteFile's
	// output).
	Initrd string
	// Cmdline is the entry's "options" line, the whole kernel command
	// line; empty means DefaultCmdline. To run a program in the guest, add
	// a guestinit.Config's KernelArg. It must fit on one line.
	Cmdline string
	// Title is the entry's title; default "Veloce guest".
	Title string
	// Bootloader is the EFI binary installed as EFI/BOOT/BOOTX64.EFI;
	// empty means SystemdBootEFI (ErrNoBootloader when it is missing).
	Bootloader string
	// NoBootloader leaves EFI/BOOT/BOOTX64.EFI out: enough for
	// rust-hypervisor-firmware, which reads the entries itself, but not
	// for OVMF or other UEFI firmware.
	NoBootloader bool
	// Size is the disk's size in bytes, rounded up to a MiB; zero means
	// the contents plus slack, and never less than 64 MiB of ESP. A size
	// too small for the contents is an error.
	Size int64
}

// DiskFile is one file on a disk's ESP.
type DiskFile struct {
	// Path is the absolute path on the ESP.
	Path string `json:"path"`
	// Size is the file's length in bytes.
	Size int64 `json:"size"`
}

// Disk describes a disk image WriteDisk wrote.
type Disk struct {
	// Path is the image file.
	Path string `json:"path"`
	// Size is the image's length in bytes.
	Size int64 `json:"size"`
	// ESPStart and ESPSize are the EFI system partition's byte offset and
	// length.
	ESPStart int64 `json:"esp_start"`
	ESPSize  int64 `json:"esp_size"`
	// Entry is the Boot Loader Spec entry's path on the ESP, Cmdline its
	// options line.
	Entry   string `json:"entry"`
	Cmdline string `json:"cmdline"`
	// Files lists what was copied onto the ESP, in order.
	Files []DiskFile `json:"files"`
}

// WriteDisk writes a raw disk image to out that UEFI-style firmware boots
// without -kernel: a GPT with one EFI system partition holding a FAT32
// filesystem with the kernel and initramfs, a Boot Loader Spec type 1
// entry for them (loader/entries/veloce.conf) made the default with no
// menu timeout (loader/loader.conf), and systemd-boot as the fallback boot
// path unless opts.NoBootloader. Cloud Hypervisor's rust-hypervisor-firmware
// reads the entries itself; OVMF starts systemd-boot, which reads the same
// entries. The image is written beside out and renamed into place, so out
// is never half written.
//
// It may return ErrNoBootloader, or an error naming the input file or step
// that failed.
func WriteDisk(out string, opts DiskOptions) (*Disk, error) {
	if opts.Kernel == "" || opts.Initrd == "" {
		return nil, errors.New("write disk: Kernel and Initrd are required")
	}
	if opts.Cmdline == "" {
		opts.Cmdline = DefaultCmdline
	}
	if opts.Title == "" {
		opts.Title = "Veloce guest"
	}
	if strings.ContainsAny(opts.Cmdline+opts.Title, "\r\n") {
		return nil, errors.New("write disk: Cmdline and Title must be single lines")
	}
	type source struct {
		dst, src string
		data     []byte
	}
	loaderConf := "# Written by veloce-image: boot the Veloce entry at once.\ndefault " + path.Base(DiskEntry) + "\ntimeout 0\n"
	entry := fmt.Sprintf("title %s\nlinux %s\ninitrd %s\noptions %s\n", opts.Title, DiskKernel, DiskInitrd, opts.Cmdline)
	if len(entry) > bootEntryMax {
		return nil, fmt.Errorf("write disk: boot entry is %d bytes; rust-hypervisor-firmware reads at most %d", len(entry), bootEntryMax)
	}
	sources := []source{
		{dst: DiskKernel, src: opts.Kernel},
		{dst: DiskInitrd, src: opts.Initrd},
		{dst: DiskLoaderConf, data: []byte(loaderConf)},
		{dst: DiskEntry, data: []byte(entry)},
	}
	if !opts.NoBootloader {
		bl := opts.Bootloader
		if bl == "" {
			bl = SystemdBootEFI
			if _, err := os.Stat(bl); err != nil {
				return nil, fmt.Errorf("write disk: %w", ErrNoBootloader)
			}
		}
		sources = append(sources, source{dst: DiskBootloader, src: bl})
	}

	// Size the ESP from the contents: each file rounded to a cluster, plus
	// slack for directories and the FATs.
	var content int64
	for _, s := range sources {
		n := int64(len(s.data))
		if s.src != "" {
			fi, err := os.Stat(s.src)
			if err != nil {
				return nil, fmt.Errorf("write disk: %w", err)
			}
			if !fi.Mode().IsRegular() {
				return nil, fmt.Errorf("write disk: %s is not a regular file", s.src)
			}
			n = fi.Size()
		}
		content += roundUp(n, sectorSize)
	}
	need := roundUp(content+content/8+4*mib, espAlign)
	// The GPT needs 34 sectors in front and 33 behind; the ESP starts at
	// 1 MiB and its end is aligned too, which leaves room for the backup.
	size := espAlign + max(need, minESP) + espAlign
	if opts.Size != 0 {
		size = roundUp(opts.Size, espAlign)
		if size-2*espAlign < max(need, minESP) {
			return nil, fmt.Errorf("write disk: size %d too small: the ESP needs %d bytes (at least %d) plus 2 MiB for the GPT", opts.Size, need, minESP)
		}
	}
	espStart := int64(espAlign)
	espSize := size - 2*espAlign
	// go-diskfs v1.9.4 sizes the FAT one or two entries short when the
	// sectors after the reserved area are 0 or 129 modulo 130 (it leaves
	// out the two reserved FAT entries): fsck.fat then reports more
	// clusters than FAT entries. Two sectors less avoids both residues.
	if r := (espSize/sectorSize - fatReservedSectors) % 130; r == 0 || r == 129 {
		espSize -= 2 * sectorSize
	}

	tmp, err := os.CreateTemp(filepath.Dir(out), ".disk-")
	if err != nil {
		return nil, fmt.Errorf("write disk: %w", err)
	}
	tmpName := tmp.Name()
	tmp.Close()
	os.Remove(tmpName) // go-diskfs creates the file itself
	defer os.Remove(tmpName)

	d, err := diskfs.Create(tmpName, size, diskfs.SectorSize512)
	if err != nil {
		return nil, fmt.Errorf("create disk image: %w", err)
	}
	closed := false
	defer func() {
		if !closed {
			d.Close()
		}
	}()
	table := &gpt.Table{
		LogicalSectorSize:  sectorSize,
		PhysicalSectorSize: sectorSize,
		ProtectiveMBR:      true,
		Partitions: []*gpt.Partition{{
			Index: 1,
			Start: uint64(espStart / sectorSize),
			End:   uint64((espStart+espSize)/sectorSize - 1),
			Type:  gpt.EFISystemPartition,
			Name:  "EFI System Partition",
		}},
	}
	if err := d.Partition(table); err != nil {
		return nil, fmt.Errorf("write partition table: %w", err)
	}
	fsys, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: 1, FSType: filesystem.TypeFat32, VolumeLabel: "VELOCE-ESP"})
	if err != nil {
		return nil, fmt.Errorf("create ESP filesystem: %w", err)
	}
	made := map[string]bool{}
	res := &Disk{Path: out, Size: size, ESPStart: espStart, ESPSize: espSize, Entry: DiskEntry, Cmdline: opts.Cmdline}
	for _, s := range sources {
		if dir := path.Dir(s.dst); !made[dir] {
			if err := fsys.Mkdir(dir); err != nil {
				return nil, fmt.Errorf("make ESP directory %s: %w", dir, err)
			}
			made[dir] = true
		}
		n, err := copyToESP(fsys, s.dst, s.src, s.data)
		if err != nil {
			return nil, err
		}
		res.Files = append(res.Files, DiskFile{Path: s.dst, Size: n})
	}
	closed = true
	if err := d.Close(); err != nil {
		return nil, fmt.Errorf("close disk image: %w", err)
	}
	f, err := os.OpenFile(tmpName, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("write disk: %w", err)
	}
	err = fixRootDotDot(f, espStart)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(tmpName, 0o644); err != nil {
		return nil, fmt.Errorf("write disk: %w", err)
	}
	if err := os.Rename(tmpName, out); err != nil {
		return nil, fmt.Errorf("install disk image: %w", err)
	}
	return res, nil
}

// copyToESP writes one file onto the ESP from the host file src, or from
// data when src is empty, and returns its length.
func copyToESP(fsys filesystem.FileSystem, dst, src string, data []byte) (int64, error) {
	w, err := fsys.OpenFile(dst, os.O_CREATE|os.O_RDWR)
	if err != nil {
		return 0, fmt.Errorf("create ESP file %s: %w", dst, err)
	}
	var r io.Reader = strings.NewReader(string(data))
	if src != "" {
		f, err := os.Open(src)
		if err != nil {
			w.Close()
			return 0, fmt.Errorf("copy to ESP: %w", err)
		}
		defer f.Close()
		r = f
	}
	n, err := io.Copy(w, r)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("write ESP file %s: %w", dst, err)
	}
	return n, nil
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// DefaultImageDir is where 'make images' (veloce-image build) puts the
// default guest, vmlinuz and initramfs.cpio.gz: $VELOCE_CACHE/images/default.
func DefaultImageDir() string { return filepath.Join(DefaultCacheDir(), "images", "default") }
