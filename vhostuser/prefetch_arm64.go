package vhostuser

// See prefetch_amd64.go.

func prefetchRead(addr uintptr)

func prefetchForWrite(addr uintptr)
