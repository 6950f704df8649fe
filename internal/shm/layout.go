package shm

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Header constants.
const (
	// Magic is the first word of a region: "VLSH" little endian.
	Magic = 0x48534c56
	// Version is the layout version this package speaks.
	Version = 1
	// HeaderLen is the size of the header proper.
	HeaderLen = 32
	// ControlSize is the header page: header and ring control lines.
	ControlSize = 4096
	// TXEntrySize and RXEntrySize are the sizes of TX and RX ring entries;
	// IDEntrySize of TX-done and RX-free entries (a slot id).
	TXEntrySize = 32
	RXEntrySize = 32
	IDEntrySize = 4

	// Limits a region must respect.
	MinSlotSize = 64
	MaxSlotSize = 1 << 16
	MaxSlots    = 1 << 16
	MaxSize     = 1 << 30

	cacheLine = 64
	pageSize  = 4096
)

// Control-line offsets: one cache line each.
const (
	offTXHead      = 1 * cacheLine // app
	offTXTail      = 2 * cacheLine // daemon
	offDoneHead    = 3 * cacheLine // daemon
	offDoneTail    = 4 * cacheLine // app
	offRXHead      = 5 * cacheLine // daemon
	offRXTail      = 6 * cacheLine // app
	offFreeHead    = 7 * cacheLine // app
	offFreeTail    = 8 * cacheLine // daemon
	offDaemonWait  = 9 * cacheLine
	offAppWaitRX   = 10 * cacheLine
	offAppWaitTX   = 11 * cacheLine
	controlLinesTo = 12 * cacheLine
)

// Errors.
var (
	// ErrBadRegion: a region whose header, size or seals are not what
	// this package expects, or a descriptor of the wrong kind.
	ErrBadRegion = errors.New("shm: bad region")
	// ErrNotSupported: memfd regions and eventfds are Linux's.
	ErrNotSupported = errors.New("shm: shared-memory transport not supported on this system")
)

// Layout is what a region holds: two slot pools of SlotSize bytes each.
type Layout struct {
	// SlotSize is the bytes of one slot: a multiple of 64, from
	// MinSlotSize to MaxSlotSize.
	SlotSize uint32
	// TXSlots and RXSlots are the slots of the two pools, and the sizes of
	// their rings: powers of two from 2 to MaxSlots.
	TXSlots, RXSlots uint32
}

// Offsets of a layout's parts, derived by offsets.
type offsets struct {
	txRing, txDone, rxRing, rxFree, txSlots, rxSlots, size uint64
}

func align(n, a uint64) uint64 { return (n + a - 1) &^ (a - 1) }

func pow2(n uint32) bool { return n >= 2 && n&(n-1) == 0 }

// Validate checks the layout's limits.
func (l Layout) Validate() error {
	switch {
	case l.SlotSize < MinSlotSize || l.SlotSize > MaxSlotSize || l.SlotSize%cacheLine != 0:
		return fmt.Errorf("slot size %d: %w", l.SlotSize, ErrBadRegion)
	case !pow2(l.TXSlots) || l.TXSlots > MaxSlots:
		return fmt.Errorf("%d TX slots: %w", l.TXSlots, ErrBadRegion)
	case !pow2(l.RXSlots) || l.RXSlots > MaxSlots:
		return fmt.Errorf("%d RX slots: %w", l.RXSlots, ErrBadRegion)
	case l.offsets().size > MaxSize:
		return fmt.Errorf("region of %d bytes: %w", l.offsets().size, ErrBadRegion)
	}
	return nil
}

func (l Layout) offsets() offsets {
	var o offsets
	tx, rx, ss := uint64(l.TXSlots), uint64(l.RXSlots), uint64(l.SlotSize)
	o.txRing = ControlSize
	o.txDone = align(o.txRing+tx*TXEntrySize, cacheLine)
	o.rxRing = align(o.txDone+tx*IDEntrySize, cacheLine)
	o.rxFree = align(o.rxRing+rx*RXEntrySize, cacheLine)
	o.txSlots = align(o.rxFree+rx*IDEntrySize, pageSize)
	o.rxSlots = o.txSlots + tx*ss
	o.size = align(o.rxSlots+rx*ss, pageSize)
	return o
}

// Size returns the bytes of a region with this layout.
func (l Layout) Size() int { return int(l.offsets().size) }

var le = binary.LittleEndian

// PutHeader writes the header of a region of layout l into b (at least
// HeaderLen bytes).
func PutHeader(b []byte, l Layout) {
	_ = b[HeaderLen-1]
	le.PutUint32(b[0:], Magic)
	le.PutUint32(b[4:], Version)
	le.PutUint32(b[8:], l.SlotSize)
	le.PutUint32(b[12:], l.TXSlots)
	le.PutUint32(b[16:], l.RXSlots)
	le.PutUint32(b[20:], 0)
	le.PutUint64(b[24:], uint64(l.Size()))
}

// ParseHeader decodes and validates a region header. The result's Size
// is the size the header claims; the caller checks it against the
// mapping. It does not allocate on success.
func ParseHeader(b []byte) (Layout, error) {
	if len(b) < HeaderLen {
		return Layout{}, fmt.Errorf("header of %d bytes: %w", len(b), ErrBadRegion)
	}
	if le.Uint32(b[0:]) != Magic {
		return Layout{}, fmt.Errorf("magic %#x: %w", le.Uint32(b[0:]), ErrBadRegion)
	}
	if v := le.Uint32(b[4:]); v != Version {
		return Layout{}, fmt.Errorf("layout version %d, want %d: %w", v, Version, ErrBadRegion)
	}
	l := Layout{SlotSize: le.Uint32(b[8:]), TXSlots: le.Uint32(b[12:]), RXSlots: le.Uint32(b[16:])}
	if err := l.Validate(); err != nil {
		return Layout{}, err
	}
	if size := le.Uint64(b[24:]); size != uint64(l.Size()) {
		return Layout{}, fmt.Errorf("header says %d bytes, layout needs %d: %w", size, l.Size(), ErrBadRegion)
	}
	return l, nil
}
