package vhostusertest

import (
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"golang.org/x/sys/unix"
)

// Guest is fake guest RAM: a memfd of Size bytes, mapped into the test
// process (Mem, the "driver's" view), that appears to the backend as one
// region at guest physical address GuestAddr and frontend virtual address
// UserAddr.
type Guest struct {
	// Mem is the whole of guest RAM as the test (the driver) sees it.
	Mem []byte
	// Region describes the RAM as a memory table entry.
	Region vhostuser.MemoryRegion
	fd     int
}

// NewGuest creates a guest of size bytes at guest physical address gpa and
// frontend virtual address uaddr. The memfd and mapping are released when
// the test ends.
func NewGuest(tb testing.TB, gpa, uaddr, size uint64) *Guest {
	tb.Helper()
	fd, err := unix.MemfdCreate("vhostusertest-guest", unix.MFD_CLOEXEC)
	if err != nil {
		tb.Fatalf("memfd_create: %v", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		tb.Fatalf("ftruncate memfd: %v", err)
	}
	mem, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		tb.Fatalf("mmap memfd: %v", err)
	}
	g := &Guest{Mem: mem, Region: vhostuser.MemoryRegion{GuestAddr: gpa, Size: size, UserAddr: uaddr}, fd: fd}
	tb.Cleanup(func() {
		unix.Munmap(mem)
		unix.Close(fd)
	})
	return g
}

// DupFD returns a new descriptor for the guest's memfd, for handing to code
// that takes ownership of it (Memory.AddRegion, a SET_MEM_TABLE message).
func (g *Guest) DupFD(tb testing.TB) int {
	tb.Helper()
	fd, err := unix.FcntlInt(uintptr(g.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		tb.Fatalf("dup memfd: %v", err)
	}
	return fd
}

// OwnedFD is DupFD as an owner, for Memory.AddRegion and
// NewMemoryFromTable.
func (g *Guest) OwnedFD(tb testing.TB) *vhostuser.FD {
	tb.Helper()
	f, err := vhostuser.OwnFD(g.DupFD(tb))
	if err != nil {
		tb.Fatal(err)
	}
	return f
}

// Memory returns a vhostuser.Memory holding the guest's one region, closed
// when the test ends.
func (g *Guest) Memory(tb testing.TB) *vhostuser.Memory {
	tb.Helper()
	m := vhostuser.NewMemory()
	if err := m.AddRegion(g.Region, g.OwnedFD(tb)); err != nil {
		tb.Fatalf("add guest region: %v", err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

// Bytes returns the guest RAM at [gpa, gpa+n), panicking (a test bug) if
// it is outside the guest.
func (g *Guest) Bytes(gpa, n uint64) []byte {
	off := gpa - g.Region.GuestAddr
	return g.Mem[off : off+n]
}

// UserAddr converts a guest physical address of this guest to the
// frontend virtual address the backend knows it by.
func (g *Guest) UserAddr(gpa uint64) uint64 {
	return gpa - g.Region.GuestAddr + g.Region.UserAddr
}
