package netns

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// ifreqData is struct ifreq with its union as ifr_data, the layout
// SIOCETHTOOL takes (x/sys/unix keeps its own unexported).
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(uintptr(0))]byte
}

// ethtoolVal is struct ethtool_value.
type ethtoolVal struct {
	cmd  uint32
	data uint32
}

// ethtoolValue issues the ethtool set command cmd with value v on dev.
func ethtoolValue(fd int, dev string, cmd, v uint32) error {
	_, err := ethtool(fd, dev, cmd, v)
	return err
}

// ethtoolGet issues the ethtool get command cmd on dev.
func ethtoolGet(fd int, dev string, cmd uint32) (uint32, error) { return ethtool(fd, dev, cmd, 0) }

func ethtool(fd int, dev string, cmd, v uint32) (uint32, error) {
	if len(dev) >= unix.IFNAMSIZ {
		return 0, unix.EINVAL
	}
	val := ethtoolVal{cmd: cmd, data: v}
	var ifr ifreqData
	copy(ifr.name[:], dev)
	ifr.data = unsafe.Pointer(&val)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); e != 0 {
		return 0, e
	}
	return val.data, nil
}
