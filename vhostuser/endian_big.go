//go:build armbe || arm64be || m68k || mips || mips64 || mips64p32 || ppc || ppc64 || s390 || s390x || shbe || sparc || sparc64

package vhostuser

// Virtio 1.x rings are little-endian and this package reads them with
// native loads. Building it for a big-endian host is a mistake: this
// undefined name makes the compiler say so.
var _ = vhostuserRequiresLittleEndianHost
