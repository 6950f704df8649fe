package fd

import "golang.org/x/sys/unix"

// write and read are one system call each, retried on EINTR; their
// errors are the callers' business only as a count of bytes.
func write(raw int, b []byte) {
	for {
		if _, err := unix.Write(raw, b); err != unix.EINTR {
			return
		}
	}
}

func read(raw int, b []byte) int {
	for {
		n, err := unix.Read(raw, b)
		if err != unix.EINTR {
			return n
		}
	}
}

func setNonblock(raw int) error { return unix.SetNonblock(raw, true) }
