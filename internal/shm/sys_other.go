//go:build !linux

package shm

func sealedMemfd(string, int) (int, error) { return -1, ErrNotSupported }
func checkSealed(int) error                { return ErrNotSupported }
