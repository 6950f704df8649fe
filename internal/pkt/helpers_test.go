package pkt

import (
	"encoding/hex"
	"testing"
)

// Frames built independently of this package (by a small Python script with
// its own checksum routine) and kept as hex, so that the parsers and builders
// are checked against bytes they did not produce. Guest 52:54:00:12:34:56 at
// 169.254.77.2 talks to the service 02:56:4c:4f:43:01 at 169.254.77.1.
const (
	// ARP who-has 169.254.77.1 tell 169.254.77.2, broadcast, padded to 60.
	hexARPRequest = "ffffffffffff52540012345608060001080006040001525400123456a9fe4d02000000000000a9fe4d01000000000000000000000000000000000000"
	// ICMP echo request id 0x42 seq 1, 56 bytes payload 00..37, IP id 0x1c46, DF.
	hexPing = "02564c4f43015254001234560800450000541c46400040013063a9fe4d02a9fe4d01080000aa00420001000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031323334353637"
	// UDP 40000 -> 7077 "hello veloce", checksum 0xcfb3.
	hexUDP = "02564c4f43015254001234560800450000281c4640004011307fa9fe4d02a9fe4d019c401ba50014cfb368656c6c6f2076656c6f6365"
	// As hexUDP with an 802.1Q tag (PCP 1, VID 100) and payload "tagged".
	hexVLAN = "02564c4f4301525400123456810020640800450000221c46400040113085a9fe4d02a9fe4d019c401ba5000e18bf746167676564"
	// IPv4 packet (no Ethernet) with a router-alert option: UDP 1 -> 2 "x".
	hexIPOptions = "460000211c46400040119b81a9fe4d02a9fe4d019404000000010002000999d878"
	// IPv4 first fragment (MF set): UDP 1 -> 2 "fragment".
	hexFragment = "450000241c46200040115083a9fe4d02a9fe4d010001000200106e17667261676d656e74"
)

var (
	guestMAC   = MAC{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	serviceMAC = MAC{0x02, 0x56, 0x4c, 0x4f, 0x43, 0x01}
	guestIP    = [4]byte{169, 254, 77, 2}
	serviceIP  = [4]byte{169, 254, 77, 1}
)

func unhex(tb testing.TB, s string) []byte {
	tb.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func mustUnhex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}
