package rdma

import (
	"errors"
	"net/netip"
	"testing"
)

// The host has no RDMA devices (VMs test the real ones): discovery finds
// nothing and says so with ErrNoDevice, in every build.
func TestDiscoveryWithoutDevices(t *testing.T) {
	if n := DeviceNames(); len(n) > 0 {
		t.Skipf("this machine has RDMA devices %v", n)
	}
	if d, err := DeviceForNetdev("lo"); !errors.Is(err, ErrNoDevice) {
		t.Errorf("DeviceForNetdev(lo) = %q, %v; want ErrNoDevice", d, err)
	}
	if _, err := NetdevForAddr(netip.MustParseAddr("192.0.2.77")); !errors.Is(err, ErrNoDevice) {
		t.Errorf("NetdevForAddr: %v, want ErrNoDevice", err)
	}
	if n, err := NetdevForAddr(netip.MustParseAddr("127.0.0.1")); err != nil || n != "lo" {
		t.Errorf("NetdevForAddr(127.0.0.1) = %q, %v", n, err)
	}
}

func TestGIDForAddr(t *testing.T) {
	g := GIDForAddr(netip.MustParseAddr("10.1.2.3"))
	want := GID{10: 0xff, 11: 0xff, 12: 10, 13: 1, 14: 2, 15: 3}
	if g != want {
		t.Errorf("GID %x, want %x", g, want)
	}
	if MTU1024.Bytes() != 1024 || MTU4096.Bytes() != 4096 || MTU(9).Bytes() != 0 {
		t.Error("MTU.Bytes")
	}
	if WCRetryExcErr.String() != "transport retry counter exceeded" || QPRTS.String() != "RTS" {
		t.Error("names", WCRetryExcErr, QPRTS)
	}
}

func TestParseGID(t *testing.T) {
	g, err := ParseGID("0000:0000:0000:0000:0000:ffff:0a4d:0001")
	if err != nil || g != GIDForAddr(netip.MustParseAddr("10.77.0.1")) {
		t.Errorf("ParseGID = %x, %v", g, err)
	}
	for _, bad := range []string{"", "10.0.0.1", "xyz", "0000:0000"} {
		if _, err := ParseGID(bad); err == nil {
			t.Errorf("ParseGID(%q) accepted", bad)
		}
	}
	if _, err := GIDIndex("nosuchdev0", 1, netip.MustParseAddr("10.0.0.1")); err == nil {
		t.Error("GIDIndex of a missing device")
	}
}
