//go:build !amd64 && !arm64

package vhostuser

// No prefetch instruction wired up here: the hints do nothing.

func prefetchRead(uintptr)     {}
func prefetchForWrite(uintptr) {}
