//go:build !linux

package fd

const cmsgCloexec = 0

const eventFDKind = "eventfd"

func newEventFD() (int, error)   { return -1, ErrNotSupported }
func kindOf(int) (string, error) { return "", ErrNotSupported }
