package wire

import "encoding/binary"

// Ack body: the payload of a KindAck message. The header's Source and
// Channel name the acknowledged source, its Seq is the cumulative
// acknowledgement (every message up to and including Seq arrived, in
// order); the body adds the receiver's flow-control credit and selective
// acknowledgements of what arrived beyond Seq:
//
//	offset size field
//	 0     4    window: messages past Seq the receiver has room for
//	 4     2    block count n, at most MaxAckBlocks
//	 6     2    reserved, zero
//	 8     8*n  blocks: first and last (uint32 each) as offsets from Seq
//
// A block [first, last] says messages Seq+first .. Seq+last arrived.
// Blocks are in ascending order, do not touch (a gap of at least one
// message between them: otherwise they would be one block) and start past
// Seq+1 (Seq+1 is missing, or Seq would be higher). An empty ack body (a
// header with PayloadLen 0) is legal on the wire for version-1 peers that
// send only cumulative acks; ParseAck rejects it with ErrTruncated, so a
// runtime that needs the credit treats such an ack as malformed.
const (
	// AckHeaderLen is the fixed part of an ack body.
	AckHeaderLen = 8
	// MaxAckBlocks is the most selective-ack blocks one ack carries.
	MaxAckBlocks = 16
	// AckBlockLen is one block's size.
	AckBlockLen = 8
	// MaxAckLen is the largest ack body.
	MaxAckLen = AckHeaderLen + MaxAckBlocks*AckBlockLen
)

// AckBlock is a run of messages that arrived past the cumulative ack, as
// offsets from it (see the layout above).
type AckBlock struct {
	First, Last uint32
}

// Ack is a decoded ack body. It is a value with fixed arrays, so parsing
// and building one allocates nothing.
type Ack struct {
	// Window is the receiver's credit: how many messages past the
	// cumulative ack it can take now (its free slots).
	Window uint32
	// N is how many of Blocks are used.
	N int
	// Blocks are the selective acknowledgements, Blocks[:N].
	Blocks [MaxAckBlocks]AckBlock
}

// Len is the body's size on the wire.
func (a *Ack) Len() int { return AckHeaderLen + a.N*AckBlockLen }

// check validates the blocks.
func (a *Ack) check() error {
	if a.N < 0 || a.N > MaxAckBlocks {
		return ErrMalformed
	}
	prev := uint64(0) // offset 1 is never acknowledged selectively
	for i := range a.N {
		b := a.Blocks[i]
		// In 64 bits: prev+2 must not wrap past a block ending at 2^32-1.
		if uint64(b.First) < prev+2 || b.Last < b.First {
			return ErrMalformed
		}
		prev = uint64(b.Last)
	}
	return nil
}

// Marshal writes the body into b and returns its length: ErrShortBuffer
// when b is shorter than Len, ErrMalformed for blocks ParseAck would
// reject (nothing is written then).
func (a *Ack) Marshal(b []byte) (int, error) {
	if err := a.check(); err != nil {
		return 0, err
	}
	n := a.Len()
	if len(b) < n {
		return 0, ErrShortBuffer
	}
	binary.LittleEndian.PutUint32(b[0:], a.Window)
	binary.LittleEndian.PutUint16(b[4:], uint16(a.N))
	binary.LittleEndian.PutUint16(b[6:], 0)
	for i := range a.N {
		o := AckHeaderLen + i*AckBlockLen
		binary.LittleEndian.PutUint32(b[o:], a.Blocks[i].First)
		binary.LittleEndian.PutUint32(b[o+4:], a.Blocks[i].Last)
	}
	return n, nil
}

// ParseAck decodes an ack body (a KindAck message's payload). Errors:
// ErrTruncated for a body shorter than AckHeaderLen or than its blocks;
// ErrMalformed for more than MaxAckBlocks blocks, reserved bytes set,
// bytes after the blocks, or blocks out of order, touching, inverted or
// covering Seq+1.
func ParseAck(b []byte) (Ack, error) {
	var a Ack
	if len(b) < AckHeaderLen {
		return a, ErrTruncated
	}
	a.Window = binary.LittleEndian.Uint32(b[0:])
	n := int(binary.LittleEndian.Uint16(b[4:]))
	if n > MaxAckBlocks || binary.LittleEndian.Uint16(b[6:]) != 0 {
		return Ack{}, ErrMalformed
	}
	if len(b) < AckHeaderLen+n*AckBlockLen {
		return Ack{}, ErrTruncated
	}
	if len(b) > AckHeaderLen+n*AckBlockLen {
		return Ack{}, ErrMalformed
	}
	a.N = n
	for i := range n {
		o := AckHeaderLen + i*AckBlockLen
		a.Blocks[i] = AckBlock{First: binary.LittleEndian.Uint32(b[o:]), Last: binary.LittleEndian.Uint32(b[o+4:])}
	}
	if err := a.check(); err != nil {
		return Ack{}, err
	}
	return a, nil
}
