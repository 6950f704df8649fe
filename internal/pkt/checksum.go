package pkt

import (
	"encoding/binary"
	"math/bits"
)

// Sum returns the 16-bit one's complement sum (RFC 1071) of b, added to
// initial, folded but not complemented. b is read as a sequence of big-endian
// 16-bit words; an odd final byte is padded with a zero byte.
//
// Sums of consecutive pieces chain through initial as long as every piece
// but the last has an even length:
//
//	Sum(b[:n], 0) chained as Sum(b[n:], Sum(b[:n], 0)) == Sum(b, 0) for even n.
//
// Use [Checksum] for the value that goes into a header.
func Sum(b []byte, initial uint16) uint16 {
	// The one's complement sum is byte-order independent (RFC 1071, 2.B):
	// summing little-endian words yields the byte-swapped big-endian sum. So
	// sum 64-bit little-endian loads with end-around carry and swap once.
	acc := uint64(bits.ReverseBytes16(initial))
	var carry uint64
	for len(b) >= 32 {
		acc, carry = bits.Add64(acc, binary.LittleEndian.Uint64(b[0:8]), carry)
		acc, carry = bits.Add64(acc, binary.LittleEndian.Uint64(b[8:16]), carry)
		acc, carry = bits.Add64(acc, binary.LittleEndian.Uint64(b[16:24]), carry)
		acc, carry = bits.Add64(acc, binary.LittleEndian.Uint64(b[24:32]), carry)
		b = b[32:]
	}
	for len(b) >= 8 {
		acc, carry = bits.Add64(acc, binary.LittleEndian.Uint64(b), carry)
		b = b[8:]
	}
	if len(b) >= 4 {
		acc, carry = bits.Add64(acc, uint64(binary.LittleEndian.Uint32(b)), carry)
		b = b[4:]
	}
	if len(b) >= 2 {
		acc, carry = bits.Add64(acc, uint64(binary.LittleEndian.Uint16(b)), carry)
		b = b[2:]
	}
	if len(b) == 1 {
		// The lone byte is the high byte of a big-endian word, which is
		// the low byte in the little-endian domain.
		acc, carry = bits.Add64(acc, uint64(b[0]), carry)
	}
	acc, carry = bits.Add64(acc, carry, 0)
	acc += carry // acc was 2^64-1 and wrapped to 0: adding 1 cannot overflow.
	return bits.ReverseBytes16(fold64(acc))
}

// fold64 reduces a 64-bit one's complement accumulator to 16 bits.
func fold64(acc uint64) uint16 {
	acc = (acc >> 32) + (acc & 0xffffffff)
	acc = (acc >> 32) + (acc & 0xffffffff)
	acc = (acc >> 16) + (acc & 0xffff)
	acc = (acc >> 16) + (acc & 0xffff)
	acc = (acc >> 16) + (acc & 0xffff)
	return uint16(acc)
}

// Checksum returns the Internet checksum of b: the complement of [Sum](b, 0).
// Computed over a header whose checksum field is zero, it is the value to
// store in that field; computed over a header with a valid checksum in
// place, it is zero.
func Checksum(b []byte) uint16 {
	return ^Sum(b, 0)
}

// SumAdd returns the one's complement sum of two partial sums from [Sum].
func SumAdd(a, b uint16) uint16 {
	s := uint32(a) + uint32(b)
	return uint16(s>>16 + s&0xffff)
}

// PseudoHeaderSumV4 returns the [Sum] of the IPv4 pseudo-header that UDP and
// TCP checksums cover (RFC 768): source and destination address, protocol and
// the transport length (header plus payload).
func PseudoHeaderSumV4(src, dst [4]byte, proto IPProtocol, length uint16) uint16 {
	s := uint32(src[0])<<8 | uint32(src[1])
	s += uint32(src[2])<<8 | uint32(src[3])
	s += uint32(dst[0])<<8 | uint32(dst[1])
	s += uint32(dst[2])<<8 | uint32(dst[3])
	s += uint32(proto)
	s += uint32(length)
	s = s>>16 + s&0xffff
	s = s>>16 + s&0xffff
	return uint16(s)
}

// ChecksumUpdate16 returns checksum updated for one 16-bit word of the
// covered data changing from old to new, without re-summing the data
// (RFC 1624, equation 3: HC' = ~(~HC + ~m + m')). The word must sit at an
// even offset of the covered data.
//
// A UDP checksum of zero means "no checksum" and must be left alone by the
// caller; an updated UDP checksum of zero must be stored as 0xffff.
func ChecksumUpdate16(checksum, old, new uint16) uint16 {
	s := uint32(^checksum) + uint32(^old) + uint32(new)
	s = s>>16 + s&0xffff
	s = s>>16 + s&0xffff
	return ^uint16(s)
}

// ChecksumUpdate4 is [ChecksumUpdate16] for a 4-byte field at an even offset,
// such as an IPv4 address in an IPv4 header or in the pseudo-header of a
// UDP checksum (address rewriting, NAT).
func ChecksumUpdate4(checksum uint16, old, new [4]byte) uint16 {
	s := uint32(^checksum)
	s += uint32(^(uint16(old[0])<<8 | uint16(old[1])))
	s += uint32(^(uint16(old[2])<<8 | uint16(old[3])))
	s += uint32(new[0])<<8 | uint32(new[1])
	s += uint32(new[2])<<8 | uint32(new[3])
	s = s>>16 + s&0xffff
	s = s>>16 + s&0xffff
	return ^uint16(s)
}
