package shm

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// seals a region carries: its size is fixed for good, so neither side can
// truncate it under the other's mapping (which would fault the other).
const seals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// sealedMemfd returns a memfd of size bytes, sealed.
func sealedMemfd(name string, size int) (int, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, fmt.Errorf("memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("ftruncate %d: %w", size, err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("seal: %w", err)
	}
	return fd, nil
}

// checkSealed says whether fd is a memfd whose size is sealed.
func checkSealed(fd int) error {
	sl, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return fmt.Errorf("not a memfd (%v): %w", err, ErrBadRegion)
	}
	if sl&(unix.F_SEAL_SHRINK|unix.F_SEAL_GROW) != unix.F_SEAL_SHRINK|unix.F_SEAL_GROW {
		return fmt.Errorf("size not sealed (seals %#x): %w", sl, ErrBadRegion)
	}
	return nil
}
