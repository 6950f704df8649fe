package vhostuser_test

import (
	"errors"
	"sync"
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"golang.org/x/sys/unix"
)

// newLog returns a dirty log of size bytes at offset in a memfd, and the
// frontend's view of the bitmap.
func newLog(t testing.TB, size, offset uint64) (*vhostuser.DirtyLog, []byte) {
	t.Helper()
	fd := memfd(t, int64(offset+size))
	view, err := unix.Mmap(fd, 0, int(offset+size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(view) })
	l, err := vhostuser.NewDirtyLog(own(t, fd), vhostuser.Log{Size: size, Offset: offset})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, view[offset:]
}

// TestMigrationDirtyLog follows vhost-user.rst "Migration": page =
// addr / VHOST_LOG_PAGE; log[page / 8] |= 1 << page % 8.
func TestMigrationDirtyLog(t *testing.T) {
	tests := []struct {
		name      string
		gpa, n    uint64
		wantPages []uint64
		err       error
	}{
		{"one byte of page 0", 0, 1, []uint64{0}, nil},
		{"last byte of page 0", 0xfff, 1, []uint64{0}, nil},
		{"two bytes across pages 0 and 1", 0xfff, 2, []uint64{0, 1}, nil},
		{"page 9 is bit 1 of byte 1", 9 << 12, 4096, []uint64{9}, nil},
		{"pages 60 to 70 cross a 64-bit word", 60 << 12, 11 << 12, []uint64{60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70}, nil},
		{"zero length marks nothing", 5 << 12, 0, nil, nil},
		{"last page", (100*8 - 1) << 12, 4096, []uint64{799}, nil},
		{"one past the last page", 800 << 12, 1, nil, vhostuser.ErrLogOutOfRange},
		{"straddling the end", (800 << 12) - 1, 2, nil, vhostuser.ErrLogOutOfRange},
		{"overflowing range", ^uint64(0) - 10, 100, nil, vhostuser.ErrLogOutOfRange},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// 100 bytes: not a multiple of 8, so the last word is partial.
			l, bitmap := newLog(t, 100, 0)
			err := l.Mark(tt.gpa, tt.n)
			if !errors.Is(err, tt.err) {
				t.Fatalf("Mark err = %v, want %v", err, tt.err)
			}
			want := make([]byte, 100)
			for _, p := range tt.wantPages {
				want[p/8] |= 1 << (p % 8)
			}
			if string(bitmap[:100]) != string(want) {
				t.Errorf("bitmap =\n%x\nwant\n%x", bitmap[:100], want)
			}
			for _, p := range tt.wantPages {
				if !l.IsMarked(p << 12) {
					t.Errorf("IsMarked(page %d) = false", p)
				}
			}
		})
	}
}

func TestDirtyLogOffset(t *testing.T) {
	l, bitmap := newLog(t, 64, 4096+8)
	if err := l.Mark(3<<12, 1); err != nil {
		t.Fatal(err)
	}
	if bitmap[0] != 1<<3 {
		t.Errorf("bitmap[0] = %#x, want %#x", bitmap[0], 1<<3)
	}
}

func TestDirtyLogValidation(t *testing.T) {
	for _, l := range []vhostuser.Log{{Size: 0}, {Size: 64, Offset: 3}, {Size: 1 << 40}} {
		fd := memfd(t, 4096)
		if _, err := vhostuser.NewDirtyLog(own(t, fd), l); !errors.Is(err, vhostuser.ErrBadLog) {
			t.Errorf("NewDirtyLog(%+v) err = %v, want ErrBadLog", l, err)
		}
		if fdIsOpen(fd) {
			t.Errorf("NewDirtyLog(%+v) left fd open", l)
		}
	}
}

// The frontend reads the log concurrently and other rings mark it too:
// concurrent marks on the same words must not lose bits.
func TestDirtyLogConcurrentMarks(t *testing.T) {
	l, bitmap := newLog(t, 4096, 0)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := uint64(g); p < 4096*8; p += 4 {
				if err := l.Mark(p<<12, 1); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for i, b := range bitmap[:4096] {
		if b != 0xff {
			t.Fatalf("bitmap[%d] = %#x, want 0xff (lost update)", i, b)
		}
	}
}

func TestDirtyLogMarkDoesNotAllocate(t *testing.T) {
	l, _ := newLog(t, 4096, 0)
	if n := testing.AllocsPerRun(1000, func() {
		_ = l.Mark(12345, 70000)
		_ = l.Mark(1<<60, 1)
	}); n != 0 {
		t.Errorf("Mark allocates %v times", n)
	}
}
