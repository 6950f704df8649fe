package images

import (
	"fmt"
	"io"
	"io/fs"
	"strings"
)

// cpioWriter writes the "newc" (SVR4, no CRC) cpio format the Linux kernel
// unpacks into its initramfs (Documentation/driver-api/early-userspace/
// buffer-format.rst). Every header is 110 ASCII bytes: the magic 070701 and
// thirteen 8-digit hex fields; name and data are each padded to 4 bytes.
type cpioWriter struct {
	w   io.Writer
	off int64
	ino uint32
	err error
}

const (
	cpioModeDir  = 0o040000
	cpioModeFile = 0o100000
	cpioModeLink = 0o120000
	cpioModeChr  = 0o020000
)

func (c *cpioWriter) write(p []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(p)
	c.off += int64(n)
	c.err = err
}

func (c *cpioWriter) pad() {
	if r := c.off % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

// entry writes one record. name is relative (no leading slash); mode holds
// the type bits and permissions; rdev is used for device nodes only.
func (c *cpioWriter) entry(name string, mode uint32, data []byte, rdevMajor, rdevMinor uint32) error {
	name = strings.TrimPrefix(name, "/")
	c.ino++
	nlink := uint32(1)
	if mode&cpioModeDir != 0 && mode&cpioModeFile == 0 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name))
	c.write([]byte{0})
	c.pad()
	c.write(data)
	c.pad()
	return c.err
}

// trailer ends the archive.
func (c *cpioWriter) trailer() error {
	c.ino = 0
	return c.entry("TRAILER!!!", 0, nil, 0, 0)
}

// permBits maps fs.FileMode permission bits to cpio mode bits.
func permBits(m fs.FileMode) uint32 { return uint32(m.Perm()) }
