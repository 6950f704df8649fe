package fd

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// cmsgCloexec is recvmsg's flag for close-on-exec received descriptors.
const cmsgCloexec = unix.MSG_CMSG_CLOEXEC

// eventFDKind is what /proc/self/fd/N links to for an eventfd.
const eventFDKind = "anon_inode:[eventfd]"

func newEventFD() (int, error) {
	raw, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return -1, fmt.Errorf("eventfd: %w", err)
	}
	return raw, nil
}

// kindOf names what raw is: the target of /proc/self/fd/raw ("socket:[N]",
// "pipe:[N]", "anon_inode:[eventfd]", a path). Without procfs it falls
// back to fstat: any anonymous inode then passes for an eventfd.
func kindOf(raw int) (string, error) {
	if raw < 0 {
		return "", ErrBadFD
	}
	var st unix.Stat_t
	if err := unix.Fstat(raw, &st); err != nil {
		return "", fmt.Errorf("fstat: %w", err)
	}
	link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(raw))
	if err == nil {
		return link, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	switch st.Mode & unix.S_IFMT {
	case 0:
		return eventFDKind, nil
	case unix.S_IFSOCK:
		return "socket", nil
	case unix.S_IFIFO:
		return "pipe", nil
	case unix.S_IFREG:
		return "regular file", nil
	}
	return fmt.Sprintf("file of mode %#o", st.Mode), nil
}
