package vhostuser_test

import (
	"errors"
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
	"golang.org/x/sys/unix"
)

func memfd(t testing.TB, size int64) int {
	t.Helper()
	fd, err := unix.MemfdCreate("vhostuser-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		t.Fatal(err)
	}
	return fd
}

// own hands raw to an owner, as a frontend's descriptor arrives.
func own(t testing.TB, raw int) *vhostuser.FD {
	t.Helper()
	f, err := vhostuser.OwnFD(raw)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func owns(t testing.TB, raws ...int) []*vhostuser.FD {
	out := make([]*vhostuser.FD, len(raws))
	for i, raw := range raws {
		out[i] = own(t, raw)
	}
	return out
}

func fdIsOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

// TestMemoryAccess follows vhost-user.rst "Memory access": guest
// addresses and user addresses map to the region containing them.
func TestMemoryAccess(t *testing.T) {
	const page = 4096
	// Two regions backed by one memfd at different offsets, as QEMU sends
	// for RAM below and above the PCI hole.
	fd := memfd(t, 4*page)
	data, err := unix.Mmap(fd, 0, 4*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(data)
	for i := range data {
		data[i] = byte(i / page)
	}
	low := vhostuser.MemoryRegion{GuestAddr: 0, Size: page, UserAddr: 0x7000_0000_0000, MmapOffset: 0}
	high := vhostuser.MemoryRegion{GuestAddr: 1 << 32, Size: 2 * page, UserAddr: 0x7000_0010_0000, MmapOffset: 2 * page}
	dup, _ := unix.Dup(fd)
	m, err := vhostuser.NewMemoryFromTable([]vhostuser.MemoryRegion{high, low}, owns(t, fd, dup))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	tests := []struct {
		name string
		gpa  uint64
		n    uint64
		want byte // first byte expected
		err  error
	}{
		{"start of low", 0, 16, 0, nil},
		{"end of low", page - 1, 1, 0, nil},
		{"past low", page - 1, 2, 0, vhostuser.ErrAddressNotMapped},
		{"hole", page, 1, 0, vhostuser.ErrAddressNotMapped},
		{"high at mmap offset", 1 << 32, 1, 2, nil},
		{"high second page", 1<<32 + page, page, 3, nil},
		{"past high", 1<<32 + page, page + 1, 0, vhostuser.ErrAddressNotMapped},
		{"zero length", 0, 0, 0, vhostuser.ErrAddressNotMapped},
		{"overflowing length", 1 << 32, ^uint64(0), 0, vhostuser.ErrAddressNotMapped},
		{"top of address space", ^uint64(0), 1, 0, vhostuser.ErrAddressNotMapped},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := m.Translate(tt.gpa, tt.n)
			if !errors.Is(err, tt.err) {
				t.Fatalf("Translate(%#x, %d) err = %v, want %v", tt.gpa, tt.n, err, tt.err)
			}
			if err != nil {
				return
			}
			if uint64(len(b)) != tt.n || uint64(cap(b)) != tt.n || b[0] != tt.want {
				t.Errorf("Translate(%#x, %d) = len %d cap %d first %d, want first %d", tt.gpa, tt.n, len(b), cap(b), b[0], tt.want)
			}
		})
	}

	// User addresses.
	b, err := m.TranslateUser(high.UserAddr+page, 8)
	if err != nil || b[0] != 3 {
		t.Errorf("TranslateUser high+page: %v %v", b, err)
	}
	if _, err := m.TranslateUser(low.UserAddr+page, 1); !errors.Is(err, vhostuser.ErrAddressNotMapped) {
		t.Errorf("TranslateUser past low: %v", err)
	}
	if gpa, ok := m.UserToGuest(high.UserAddr + 5); !ok || gpa != 1<<32+5 {
		t.Errorf("UserToGuest = %#x, %v", gpa, ok)
	}

	// Writes through the mapping reach the memfd.
	b, _ = m.Translate(1<<32, 1)
	b[0] = 0xee
	if data[2*page] != 0xee {
		t.Error("write through Translate did not reach the memfd")
	}
}

func TestMemoryAdjacentRegions(t *testing.T) {
	g1 := vhostusertest.NewGuest(t, 0x10000, 0x7f00_0000_0000, 4096)
	g2 := vhostusertest.NewGuest(t, 0x11000, 0x7f00_0000_1000, 4096)
	m := vhostuser.NewMemory()
	defer m.Close()
	if err := m.AddRegion(g1.Region, g1.OwnedFD(t)); err != nil {
		t.Fatal(err)
	}
	if err := m.AddRegion(g2.Region, g2.OwnedFD(t)); err != nil {
		t.Fatal(err)
	}
	copy(g1.Mem[4090:], "hello ")
	copy(g2.Mem, "world")
	if _, err := m.Translate(0x10ffa, 11); !errors.Is(err, vhostuser.ErrCrossesRegion) {
		t.Fatalf("Translate across regions: err = %v, want ErrCrossesRegion", err)
	}
	segs, err := m.TranslateSegments(nil, 0x10ffa, 11)
	if err != nil || len(segs) != 2 || string(segs[0])+string(segs[1]) != "hello world" {
		t.Fatalf("TranslateSegments = %q, %v", segs, err)
	}
	if segs, err := m.TranslateSegments(segs[:0], 0x10ffa, 0x2000); !errors.Is(err, vhostuser.ErrAddressNotMapped) || len(segs) != 0 {
		t.Errorf("TranslateSegments past end = %d segs, %v", len(segs), err)
	}
}

func TestMemoryRegionValidation(t *testing.T) {
	g := vhostusertest.NewGuest(t, 0x100000, 0x7f00_0000_0000, 1<<16)
	m := g.Memory(t)
	tests := []struct {
		name string
		r    vhostuser.MemoryRegion
		want error
	}{
		{"empty", vhostuser.MemoryRegion{GuestAddr: 0, Size: 0, UserAddr: 1 << 44}, vhostuser.ErrBadRegion},
		{"guest overflow", vhostuser.MemoryRegion{GuestAddr: ^uint64(0) - 10, Size: 4096, UserAddr: 1 << 44}, vhostuser.ErrBadRegion},
		{"user overflow", vhostuser.MemoryRegion{GuestAddr: 0, Size: 4096, UserAddr: ^uint64(0) - 10}, vhostuser.ErrBadRegion},
		{"guest overlap", vhostuser.MemoryRegion{GuestAddr: 0x100000 + 1<<15, Size: 1 << 16, UserAddr: 1 << 44}, vhostuser.ErrRegionOverlap},
		{"user overlap", vhostuser.MemoryRegion{GuestAddr: 0, Size: 4096, UserAddr: 0x7f00_0000_0000 + 4096}, vhostuser.ErrRegionOverlap},
		{"larger than the file", vhostuser.MemoryRegion{GuestAddr: 0, Size: 1 << 17, UserAddr: 1 << 44}, vhostuser.ErrBadRegion},
		{"beyond the end of the file", vhostuser.MemoryRegion{GuestAddr: 0, Size: 4096, UserAddr: 1 << 44, MmapOffset: 1 << 62}, vhostuser.ErrBadRegion},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fd := memfd(t, 1<<16)
			err := m.AddRegion(tt.r, own(t, fd))
			if !errors.Is(err, tt.want) {
				t.Errorf("AddRegion err = %v, want %v", err, tt.want)
			}
			if fdIsOpen(fd) {
				t.Errorf("fd %d left open after failed AddRegion", fd)
				unix.Close(fd)
			}
		})
	}
	if m.NumRegions() != 1 {
		t.Errorf("NumRegions = %d, want 1", m.NumRegions())
	}
}

// TestMemorySlots follows vhost-user.rst on CONFIGURE_MEM_SLOTS: regions
// are added and removed one at a time, up to the slot limit.
func TestMemorySlots(t *testing.T) {
	m := vhostuser.NewMemory()
	defer m.Close()
	region := func(i int) vhostuser.MemoryRegion {
		return vhostuser.MemoryRegion{GuestAddr: uint64(i) << 20, Size: 4096, UserAddr: 1<<40 + uint64(i)<<20}
	}
	for i := range vhostuser.MaxMemSlots {
		if err := m.AddRegion(region(i), own(t, memfd(t, 4096))); err != nil {
			t.Fatalf("region %d: %v", i, err)
		}
	}
	fd := memfd(t, 4096)
	if err := m.AddRegion(region(vhostuser.MaxMemSlots), own(t, fd)); !errors.Is(err, vhostuser.ErrTooManyRegions) {
		t.Fatalf("region %d: err = %v, want ErrTooManyRegions", vhostuser.MaxMemSlots, err)
	}
	if fdIsOpen(fd) {
		t.Error("fd left open")
	}
	// Every region translates, through the binary search.
	for i := range vhostuser.MaxMemSlots {
		if _, err := m.Translate(uint64(i)<<20+4095, 1); err != nil {
			t.Fatalf("Translate region %d: %v", i, err)
		}
	}
	r := region(100)
	r.MmapOffset = 12345 // ignored by REM_MEM_REG
	if err := m.RemoveRegion(r); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Translate(100<<20, 1); !errors.Is(err, vhostuser.ErrAddressNotMapped) {
		t.Errorf("removed region still translates: %v", err)
	}
	if err := m.RemoveRegion(r); !errors.Is(err, vhostuser.ErrRegionNotFound) {
		t.Errorf("second removal: %v", err)
	}
	if err := m.AddRegion(region(100), own(t, memfd(t, 4096))); err != nil {
		t.Errorf("re-adding into the freed slot: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Translate(0, 1); err == nil {
		t.Error("Translate after Close succeeded")
	}
	if err := m.AddRegion(region(0), own(t, memfd(t, 4096))); !errors.Is(err, vhostuser.ErrClosed) {
		t.Errorf("AddRegion after Close: %v", err)
	}
}

func TestMemoryCloseReleasesFDs(t *testing.T) {
	fd := memfd(t, 8192)
	m := vhostuser.NewMemory()
	if err := m.AddRegion(vhostuser.MemoryRegion{Size: 8192, UserAddr: 1 << 40}, own(t, fd)); err != nil {
		t.Fatal(err)
	}
	if !fdIsOpen(fd) {
		t.Fatal("Memory closed its fd early")
	}
	m.Close()
	if fdIsOpen(fd) {
		t.Error("Close left the region fd open")
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestTranslateDoesNotAllocate(t *testing.T) {
	g := vhostusertest.NewGuest(t, 0, 1<<40, 1<<20)
	m := g.Memory(t)
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := m.Translate(4096, 1500); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Translate(1<<20, 1); err == nil {
			t.Fatal("no error")
		}
	})
	if allocs != 0 {
		t.Errorf("Translate allocates %v times per call", allocs)
	}
}

func BenchmarkTranslate(b *testing.B) {
	m := vhostuser.NewMemory()
	defer m.Close()
	for i := range 8 {
		if err := m.AddRegion(vhostuser.MemoryRegion{GuestAddr: uint64(i) << 30, Size: 1 << 20, UserAddr: 1<<40 + uint64(i)<<30}, own(b, memfd(b, 1<<20))); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := m.Translate(uint64(i&7)<<30+2048, 1500); err != nil {
			b.Fatal(err)
		}
	}
}
