package shm

// ring is one ring of a region: its two counters (each on its own cache
// line) and its entries.
type ring struct {
	head, tail *uint32
	entries    []byte
	mask       uint32
	esize      uint32
}

// Size returns the ring's capacity in entries.
func (r *ring) Size() uint32 { return r.mask + 1 }

func (r *ring) entry(pos uint32) []byte {
	i := (pos & r.mask) * r.esize
	return r.entries[i : i+r.esize : i+r.esize]
}

// Producer is the writing end of a ring. Its head lives in private memory
// (the shared copy is only written), so the consumer cannot move it. A
// Producer is used by one goroutine at a time.
type Producer struct {
	ring
	pos   uint32 // next position to write
	limit uint32 // the consumer's tail when last read, plus the ring's size
}

// Space returns how many entries may be written now — at least want, if
// the consumer has made room for them: it reads the consumer's tail only
// when the room it knew of is less than want. A tail the consumer could
// not have written (further than a ring from the head) counts as a full
// ring: a broken consumer only stops its own traffic.
func (p *Producer) Space(want uint32) uint32 {
	if free := p.limit - p.pos; free >= want && free <= p.Size() {
		return free
	}
	tail := load32(p.tail)
	if p.pos-tail > p.Size() {
		return 0
	}
	p.limit = tail + p.Size()
	return p.limit - p.pos
}

// Entry returns the entry k positions past the head, for k < Space(k+1).
func (p *Producer) Entry(k uint32) []byte { return p.entry(p.pos + k) }

// Publish makes the next n entries visible to the consumer (a release
// store of the head).
func (p *Producer) Publish(n uint32) {
	p.pos += n
	store32(p.head, p.pos)
}

// Consumer is the reading end of a ring, its tail in private memory. A
// Consumer is used by one goroutine at a time.
type Consumer struct {
	ring
	pos uint32 // next position to read
}

// Available returns how many entries wait (an acquire load of the head).
// ok is false when the head is impossible (more than a ring past the
// tail, or behind it): the producer is broken, see Resync.
func (c *Consumer) Available() (n uint32, ok bool) {
	n = load32(c.head) - c.pos
	if n > c.Size() {
		return 0, false
	}
	return n, true
}

// Pending reports whether Available would return entries or a corrupt
// head: whether the consumer has something to look at.
func (c *Consumer) Pending() bool { return load32(c.head) != c.pos }

// Entry returns the entry k positions past the tail, for k < Available().
// The producer may still change it: copy it out once (GetTX, GetRX,
// GetID), then validate the copy.
func (c *Consumer) Entry(k uint32) []byte { return c.entry(c.pos + k) }

// Release gives the next n entries back to the producer.
func (c *Consumer) Release(n uint32) {
	c.pos += n
	store32(c.tail, c.pos)
}

// Resync drops whatever a broken producer claims to have written: the
// tail jumps to its head.
func (c *Consumer) Resync() {
	c.pos = load32(c.head)
	store32(c.tail, c.pos)
}

// TXEntry is an emitted message: a TX slot holding Len bytes for the
// session's source Source; Token identifies it in an outcome.
type TXEntry struct {
	Slot, Len, Source uint32
	Token             uint64
}

// RXEntry is a delivered message: an RX slot holding Len bytes for sink
// Sink, from global source Source with sequence number Seq.
type RXEntry struct {
	Slot, Len, Sink uint32
	Source, Seq     uint64
}

// PutTX writes e into a TX ring entry.
func PutTX(b []byte, e TXEntry) {
	_ = b[TXEntrySize-1]
	le.PutUint32(b[0:], e.Slot)
	le.PutUint32(b[4:], e.Len)
	le.PutUint32(b[8:], e.Source)
	le.PutUint32(b[12:], 0)
	le.PutUint64(b[16:], e.Token)
	le.PutUint64(b[24:], 0)
}

// GetTX reads a TX ring entry, each field once.
func GetTX(b []byte) TXEntry {
	_ = b[TXEntrySize-1]
	return TXEntry{Slot: le.Uint32(b[0:]), Len: le.Uint32(b[4:]), Source: le.Uint32(b[8:]), Token: le.Uint64(b[16:])}
}

// PutRX writes e into an RX ring entry.
func PutRX(b []byte, e RXEntry) {
	_ = b[RXEntrySize-1]
	le.PutUint32(b[0:], e.Slot)
	le.PutUint32(b[4:], e.Len)
	le.PutUint32(b[8:], e.Sink)
	le.PutUint32(b[12:], 0)
	le.PutUint64(b[16:], e.Source)
	le.PutUint64(b[24:], e.Seq)
}

// GetRX reads an RX ring entry, each field once.
func GetRX(b []byte) RXEntry {
	_ = b[RXEntrySize-1]
	return RXEntry{Slot: le.Uint32(b[0:]), Len: le.Uint32(b[4:]), Sink: le.Uint32(b[8:]), Source: le.Uint64(b[16:]), Seq: le.Uint64(b[24:])}
}

// PutID writes a slot id into a TX-done or RX-free ring entry.
func PutID(b []byte, id uint32) { le.PutUint32(b, id) }

// GetID reads a TX-done or RX-free ring entry.
func GetID(b []byte) uint32 { return le.Uint32(b) }

// Flag is a wait flag in a region: set by a consumer about to sleep,
// taken by the producer that then wakes it.
type Flag struct{ p *uint32 }

// Set raises the flag (a sequentially consistent store: it is ordered
// before the consumer's next look at its ring).
func (f Flag) Set() { store32(f.p, 1) }

// Clear lowers the flag.
func (f Flag) Clear() { store32(f.p, 0) }

// IsSet reports whether the flag is raised.
func (f Flag) IsSet() bool { return load32(f.p) != 0 }

// TakeIfSet lowers a raised flag and reports whether it was raised: the
// caller then owes the sleeper a wake-up. A lowered flag costs one load,
// not a write to the shared line.
func (f Flag) TakeIfSet() bool { return load32(f.p) != 0 && swap32(f.p, 0) != 0 }
