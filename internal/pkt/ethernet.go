package pkt

import (
	"encoding/binary"
	"net"
)

// MAC is an IEEE 802 MAC-48 address. Unlike net.HardwareAddr it is a value:
// comparable, and free to copy.
type MAC [6]byte

// BroadcastMAC is the Ethernet broadcast address ff:ff:ff:ff:ff:ff.
var BroadcastMAC = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// MACFrom converts a 6-byte hardware address to a MAC; ok is false for any
// other length.
func MACFrom(hw net.HardwareAddr) (m MAC, ok bool) {
	if len(hw) != len(m) {
		return m, false
	}
	copy(m[:], hw)
	return m, true
}

// IsBroadcast reports whether m is ff:ff:ff:ff:ff:ff.
func (m MAC) IsBroadcast() bool { return m == BroadcastMAC }

// IsMulticast reports whether m is a group address (the I/G bit is set),
// which includes broadcast.
func (m MAC) IsMulticast() bool { return m[0]&1 != 0 }

// IsZero reports whether m is 00:00:00:00:00:00.
func (m MAC) IsZero() bool { return m == MAC{} }

// HardwareAddr returns m as a newly allocated net.HardwareAddr.
func (m MAC) HardwareAddr() net.HardwareAddr { return net.HardwareAddr(append([]byte(nil), m[:]...)) }

// String returns m in the form 02:00:5e:10:00:01.
func (m MAC) String() string { return net.HardwareAddr(m[:]).String() }

// EtherType is the type field of an Ethernet II header.
type EtherType uint16

// EtherTypes this package knows by name.
const (
	EtherTypeIPv4 EtherType = 0x0800 // Internet Protocol version 4
	EtherTypeARP  EtherType = 0x0806 // Address Resolution Protocol
	EtherTypeVLAN EtherType = 0x8100 // IEEE 802.1Q VLAN tag (C-tag)
	EtherTypeIPv6 EtherType = 0x86dd // Internet Protocol version 6
	EtherTypeQinQ EtherType = 0x88a8 // IEEE 802.1ad service VLAN tag (S-tag)
)

// Header sizes.
const (
	// EthernetHeaderLen is the size of an untagged Ethernet II header.
	EthernetHeaderLen = 14
	// VLANTagLen is the size of one 802.1Q or 802.1ad tag.
	VLANTagLen = 4
	// MaxVLANTags is the number of stacked VLAN tags ParseEthernet skips
	// (an 802.1ad S-tag and an 802.1Q C-tag); more is ErrUnsupported.
	MaxVLANTags = 2
	// minEtherType is the smallest EtherType; smaller values are 802.3
	// length fields.
	minEtherType = 0x0600
)

// Ethernet is a parsed Ethernet II header. Payload is a view of the caller's
// buffer.
type Ethernet struct {
	// Dst and Src are the destination and source addresses.
	Dst, Src MAC
	// Type is the EtherType of the payload, after any VLAN tags.
	Type EtherType
	// Tags is the number of 802.1Q/802.1ad tags skipped (0 to MaxVLANTags).
	Tags uint8
	// TCI is the tag control information (PCP, DEI, VLAN ID) of the
	// outermost tag when Tags > 0, else 0.
	TCI uint16
	// HeaderLen is the number of bytes before Payload:
	// EthernetHeaderLen + Tags*VLANTagLen.
	HeaderLen int
	// Payload is everything after the header, including any padding the
	// sender added to reach the minimum frame size. The frame check
	// sequence is assumed absent.
	Payload []byte
}

// VLANID returns the VLAN identifier of the outermost tag (0 when untagged).
func (e *Ethernet) VLANID() uint16 { return e.TCI & 0x0fff }

// ParseEthernet parses the Ethernet II header at the start of b, skipping up
// to MaxVLANTags 802.1Q/802.1ad tags.
//
// It returns ErrTruncated when b is shorter than the header and
// ErrUnsupported for an 802.3 length field or too many tags.
func ParseEthernet(b []byte) (Ethernet, error) {
	var e Ethernet
	if len(b) < EthernetHeaderLen {
		return e, ErrTruncated
	}
	copy(e.Dst[:], b[0:6])
	copy(e.Src[:], b[6:12])
	off := 12
	t := EtherType(binary.BigEndian.Uint16(b[off:]))
	for t == EtherTypeVLAN || t == EtherTypeQinQ {
		if e.Tags == MaxVLANTags {
			return e, ErrUnsupported
		}
		if len(b) < off+VLANTagLen+2 {
			return e, ErrTruncated
		}
		if e.Tags == 0 {
			e.TCI = binary.BigEndian.Uint16(b[off+2:])
		}
		e.Tags++
		off += VLANTagLen
		t = EtherType(binary.BigEndian.Uint16(b[off:]))
	}
	if t < minEtherType {
		return e, ErrUnsupported
	}
	e.Type = t
	e.HeaderLen = off + 2
	e.Payload = b[e.HeaderLen:len(b):len(b)]
	return e, nil
}

// PutEthernetHeader writes an untagged Ethernet II header to b and returns
// EthernetHeaderLen, or ErrShortBuffer.
func PutEthernetHeader(b []byte, dst, src MAC, t EtherType) (int, error) {
	if len(b) < EthernetHeaderLen {
		return 0, ErrShortBuffer
	}
	copy(b[0:6], dst[:])
	copy(b[6:12], src[:])
	binary.BigEndian.PutUint16(b[12:14], uint16(t))
	return EthernetHeaderLen, nil
}

// PutEthernetHeaderVLAN writes an Ethernet II header with one 802.1Q tag
// carrying tci to b and returns EthernetHeaderLen+VLANTagLen, or
// ErrShortBuffer.
func PutEthernetHeaderVLAN(b []byte, dst, src MAC, tci uint16, t EtherType) (int, error) {
	const n = EthernetHeaderLen + VLANTagLen
	if len(b) < n {
		return 0, ErrShortBuffer
	}
	copy(b[0:6], dst[:])
	copy(b[6:12], src[:])
	binary.BigEndian.PutUint16(b[12:14], uint16(EtherTypeVLAN))
	binary.BigEndian.PutUint16(b[14:16], tci)
	binary.BigEndian.PutUint16(b[16:18], uint16(t))
	return n, nil
}
