package rdma

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Memory is anonymous memory mapped outside the Go heap, for registering
// as a memory region: the device reads and writes it while Go code sees
// it as a []byte. Never Go heap memory goes to the device, so the garbage
// collector neither moves it nor frees it under the device's feet.
type Memory struct {
	b []byte
}

// Map maps size bytes (rounded up to the page size) of zeroed memory,
// populated at once.
func Map(size int) (*Memory, error) {
	if size <= 0 {
		return nil, fmt.Errorf("rdma: map %d bytes: bad size", size)
	}
	pg := unix.Getpagesize()
	size = (size + pg - 1) / pg * pg
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("rdma: map %d bytes: %w", size, err)
	}
	return &Memory{b: b}, nil
}

// Bytes returns the memory; nil after Close.
func (m *Memory) Bytes() []byte { return m.b }

// Close unmaps the memory. Deregister every region over it first.
func (m *Memory) Close() error {
	if m.b == nil {
		return nil
	}
	err := unix.Munmap(m.b)
	m.b = nil
	return err
}
