package images

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/veloce-io/veloce/internal/testutil"
)

// gptHeader is what readGPT checks and returns of a GPT header.
type gptHeader struct {
	current, backup, firstUsable, lastUsable, entriesLBA uint64
	entries, entrySize                                   uint32
	entriesCRC                                           uint32
}

// gptEntry is one used partition entry.
type gptEntry struct {
	typeGUID   string
	first, end uint64 // LBAs, end inclusive
	name       string
}

// guidString formats a GPT GUID, whose first three fields are little endian.
func guidString(b []byte) string {
	return fmt.Sprintf("%08X-%04X-%04X-%X-%X", binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint16(b[4:]),
		binary.LittleEndian.Uint16(b[6:]), b[8:10], b[10:16])
}

// readGPTHeader parses and checks the header at lba, independently of
// go-diskfs: signature, revision, size, header CRC32 and entries CRC32
// (UEFI 2.10, section 5.3).
func readGPTHeader(t *testing.T, img []byte, lba uint64) (gptHeader, []gptEntry) {
	t.Helper()
	h := img[lba*512 : lba*512+512]
	if string(h[:8]) != "EFI PART" || binary.LittleEndian.Uint32(h[8:]) != 0x00010000 {
		t.Fatalf("LBA %d: no GPT header (signature %q)", lba, h[:8])
	}
	size := binary.LittleEndian.Uint32(h[12:])
	if size != 92 {
		t.Fatalf("LBA %d: header size %d", lba, size)
	}
	hdr := bytes.Clone(h[:size])
	clear(hdr[16:20])
	if got, want := crc32.ChecksumIEEE(hdr), binary.LittleEndian.Uint32(h[16:]); got != want {
		t.Fatalf("LBA %d: header CRC32 %08x, stored %08x", lba, got, want)
	}
	g := gptHeader{
		current: binary.LittleEndian.Uint64(h[24:]), backup: binary.LittleEndian.Uint64(h[32:]),
		firstUsable: binary.LittleEndian.Uint64(h[40:]), lastUsable: binary.LittleEndian.Uint64(h[48:]),
		entriesLBA: binary.LittleEndian.Uint64(h[72:]), entries: binary.LittleEndian.Uint32(h[80:]),
		entrySize: binary.LittleEndian.Uint32(h[84:]), entriesCRC: binary.LittleEndian.Uint32(h[88:]),
	}
	if g.current != lba {
		t.Fatalf("header at LBA %d says it is at %d", lba, g.current)
	}
	arr := img[g.entriesLBA*512 : g.entriesLBA*512+uint64(g.entries)*uint64(g.entrySize)]
	if got := crc32.ChecksumIEEE(arr); got != g.entriesCRC {
		t.Fatalf("LBA %d: entries CRC32 %08x, stored %08x", lba, got, g.entriesCRC)
	}
	var used []gptEntry
	for i := 0; i < int(g.entries); i++ {
		e := arr[i*int(g.entrySize) : (i+1)*int(g.entrySize)]
		if bytes.Equal(e[:16], make([]byte, 16)) {
			continue
		}
		var name []rune
		for j := 56; j+1 < 128; j += 2 {
			c := binary.LittleEndian.Uint16(e[j:])
			if c == 0 {
				break
			}
			name = append(name, rune(c))
		}
		used = append(used, gptEntry{typeGUID: guidString(e[:16]), first: binary.LittleEndian.Uint64(e[32:]), end: binary.LittleEndian.Uint64(e[40:]), name: string(name)})
	}
	return g, used
}

// fakeGuest writes stand-ins for a kernel, an initramfs and a bootloader:
// the layout does not depend on what they hold.
func fakeGuest(t *testing.T) (kernel, initrd, loader string) {
	dir := t.TempDir()
	rnd := rand.New(rand.NewSource(1))
	for _, f := range []struct {
		p *string
		n int
	}{{&kernel, 3<<20 + 17}, {&initrd, 1<<20 + 5}, {&loader, 100 << 10}} {
		b := make([]byte, f.n)
		rnd.Read(b)
		*f.p = filepath.Join(dir, fmt.Sprint(f.n))
		if err := os.WriteFile(*f.p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return kernel, initrd, loader
}

func TestDiskLayoutGPTAndESP(t *testing.T) {
	kernel, initrd, loader := fakeGuest(t)
	out := filepath.Join(t.TempDir(), "veloce.img")
	const cmdline = DefaultCmdline + " veloce.cfg=e30"
	d, err := WriteDisk(out, DiskOptions{Kernel: kernel, Initrd: initrd, Bootloader: loader, Cmdline: cmdline})
	if err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(img)) != d.Size || d.Size%512 != 0 {
		t.Fatalf("image is %d bytes, summary says %d", len(img), d.Size)
	}
	last := uint64(len(img)/512 - 1)

	// Protective MBR: one partition of type 0xEE from LBA 1 to the end.
	if img[510] != 0x55 || img[511] != 0xaa {
		t.Fatal("no MBR boot signature")
	}
	if p := img[446:462]; p[4] != 0xee || binary.LittleEndian.Uint32(p[8:]) != 1 || uint64(binary.LittleEndian.Uint32(p[12:])) != last {
		t.Fatalf("protective MBR entry % x, want type ee from LBA 1 covering %d sectors", p, last)
	}

	primary, parts := readGPTHeader(t, img, 1)
	if primary.backup != last {
		t.Fatalf("primary header puts the backup at LBA %d, want the last LBA %d", primary.backup, last)
	}
	backup, backupParts := readGPTHeader(t, img, last)
	if backup.backup != 1 || backup.entriesCRC != primary.entriesCRC || backup.entriesLBA <= backup.lastUsable {
		t.Fatalf("backup header %+v does not mirror the primary %+v", backup, primary)
	}
	if fmt.Sprint(parts) != fmt.Sprint(backupParts) {
		t.Fatalf("primary entries %v, backup %v", parts, backupParts)
	}
	if len(parts) != 1 {
		t.Fatalf("%d partitions, want one ESP: %v", len(parts), parts)
	}
	esp := parts[0]
	if esp.typeGUID != ESPTypeGUID {
		t.Errorf("partition type %s, want the ESP's %s", esp.typeGUID, ESPTypeGUID)
	}
	if esp.first*512 != uint64(d.ESPStart) || (esp.end+1-esp.first)*512 != uint64(d.ESPSize) || esp.first%2048 != 0 {
		t.Errorf("ESP at LBAs %d-%d, summary says %d+%d bytes (want 1 MiB aligned)", esp.first, esp.end, d.ESPStart, d.ESPSize)
	}
	if esp.first < primary.firstUsable || esp.end > primary.lastUsable {
		t.Errorf("ESP %d-%d outside the usable LBAs %d-%d", esp.first, esp.end, primary.firstUsable, primary.lastUsable)
	}

	// The ESP's files, read back through go-diskfs.
	dk, err := diskfs.Open(out, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer dk.Close()
	fsys, err := dk.GetFilesystem(1)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	err = fs.WalkDir(fsys, ".", func(p string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			files = append(files, "/"+p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ESP files: %v", files)
	want := map[string]string{DiskKernel: kernel, DiskInitrd: initrd, DiskBootloader: loader}
	for p, src := range want {
		got, err := fs.ReadFile(fsys, strings.TrimPrefix(p, "/"))
		host, _ := os.ReadFile(src)
		if err != nil || !bytes.Equal(got, host) {
			t.Errorf("%s: %d bytes (err %v), want the %d bytes of %s", p, len(got), err, len(host), src)
		}
	}
	entry, err := fs.ReadFile(fsys, strings.TrimPrefix(DiskEntry, "/"))
	if err != nil {
		t.Fatal(err)
	}
	wantEntry := "title Veloce guest\nlinux " + DiskKernel + "\ninitrd " + DiskInitrd + "\noptions " + cmdline + "\n"
	if string(entry) != wantEntry {
		t.Errorf("entry:\n%s\nwant:\n%s", entry, wantEntry)
	}
	conf, err := fs.ReadFile(fsys, strings.TrimPrefix(DiskLoaderConf, "/"))
	if err != nil || !strings.Contains(string(conf), "\ndefault veloce.conf\n") || !strings.Contains(string(conf), "\ntimeout 0\n") {
		t.Errorf("loader.conf %q (err %v): want default veloce.conf, timeout 0", conf, err)
	}
}

// TestDiskESPPassesFsck checks the FAT32 with tools that share no code
// with the writer: fsck.fat (dosfstools) and mtools' mtype. The sizes
// include ones where go-diskfs alone would size the FAT too small.
func TestDiskESPPassesFsck(t *testing.T) {
	testutil.RequiresCommand(t, "fsck.fat", "dosfstools")
	testutil.RequiresCommand(t, "mtype", "mtools")
	kernel, initrd, loader := fakeGuest(t)
	var sizes []int64
	for m := int64(66); m < 400 && len(sizes) < 2; m++ {
		if r := (m*2048 - 4096 - fatReservedSectors) % 130; r == 0 || r == 129 {
			sizes = append(sizes, m<<20)
		}
	}
	for _, size := range append([]int64{0}, sizes...) {
		t.Run(fmt.Sprintf("size=%dM", size>>20), func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, "veloce.img")
			d, err := WriteDisk(out, DiskOptions{Kernel: kernel, Initrd: initrd, Bootloader: loader, Size: size})
			if err != nil {
				t.Fatal(err)
			}
			img, _ := os.ReadFile(out)
			part := filepath.Join(dir, "esp.img")
			os.WriteFile(part, img[d.ESPStart:d.ESPStart+d.ESPSize], 0o644)
			if b, err := exec.Command("fsck.fat", "-n", "-v", part).CombinedOutput(); err != nil || bytes.Contains(b, []byte("Invalid")) {
				t.Fatalf("fsck.fat -n: %v\n%s", err, b)
			}
			cmd := exec.Command("mtype", "-i", part, "::"+DiskEntry)
			cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
			b, err := cmd.CombinedOutput()
			if err != nil || !bytes.Contains(b, []byte("linux "+DiskKernel)) {
				t.Fatalf("mtype %s: %v\n%s", DiskEntry, err, b)
			}
		})
	}
}

func TestDiskRejectsBadOptions(t *testing.T) {
	kernel, initrd, loader := fakeGuest(t)
	out := filepath.Join(t.TempDir(), "x.img")
	for name, o := range map[string]DiskOptions{
		"no initrd":       {Kernel: kernel, Bootloader: loader},
		"too small":       {Kernel: kernel, Initrd: initrd, Bootloader: loader, Size: 8 << 20},
		"multi-line args": {Kernel: kernel, Initrd: initrd, Bootloader: loader, Cmdline: "a\nlinux /evil"},
		"missing kernel":  {Kernel: kernel + ".none", Initrd: initrd, Bootloader: loader},
	} {
		if _, err := WriteDisk(out, o); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a failed WriteDisk left %s (%v)", out, err)
	}
}
