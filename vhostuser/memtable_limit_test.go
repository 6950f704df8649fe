package vhostuser_test

import (
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
	"golang.org/x/sys/unix"
)

// Cloud Hypervisor (rust-vmm) sends its whole memory table, hotplugged
// regions included, in one SET_MEM_TABLE when it reconnects: up to 32
// regions and 32 file descriptors. One more is refused.
func TestSetMemTableCarriesUpTo32Regions(t *testing.T) {
	for _, tc := range []struct {
		regions int
		ok      bool
	}{{1, true}, {8, true}, {32, true}, {33, false}} {
		var table vhostuser.MemoryTable
		for i := 0; i < tc.regions; i++ {
			table.Regions = append(table.Regions, vhostuser.MemoryRegion{
				GuestAddr: uint64(i) << 20, Size: 1 << 20, UserAddr: 0x7f0000000000 + uint64(i)<<20})
		}
		payload := vhostuser.AppendMemoryTable(nil, table)
		if tc.regions > 32 {
			// Only the parser's bound is under test: no real frontend
			// can attach 33 descriptors.
			msg := vhostuser.AppendHeader(nil, vhostuser.Header{Request: vhostuser.SetMemTable, Flags: vhostuser.Version, Size: uint32(len(payload))})
			if _, err := vhostuser.ParseMessage(append(msg, payload...), vhostuser.MaxFDs); err == nil {
				t.Errorf("%d regions accepted", tc.regions)
			}
			continue
		}
		backend, front := vhostusertest.NewPair(t)
		fds := make([]int, tc.regions)
		for i := range fds {
			fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			fds[i] = fd
		}
		if err := front.Send(vhostuser.SetMemTable, 0, payload, fds...); err != nil {
			t.Fatal(err)
		}
		m, got, err := vhostuser.ReadMessage(backend, make([]byte, vhostuser.MaxMessageSize))
		if err != nil {
			t.Fatalf("%d regions: %v", tc.regions, err)
		}
		n := got.Len()
		got.Close()
		mt, err := m.MemoryTable()
		if err != nil || len(mt.Regions) != tc.regions || n != tc.regions {
			t.Errorf("%d regions: decoded %d regions, %d fds, %v", tc.regions, len(mt.Regions), n, err)
		}
	}
}
