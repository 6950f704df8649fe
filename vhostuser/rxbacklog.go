package vhostuser

// RX backlog.
//
// A frame for the guest (a reply the FrameHandler wrote, an announcement)
// may find the guest's RX ring short: the driver has not refilled it yet,
// as happens while QEMU stalls the guest during a live migration's dirty
// syncs, or during a burst. Dropping it there is what lost runs of ping
// replies in the middle of migrations (issue 10). Instead the poller keeps
// such frames, in order, in a bounded per-queue-pair backlog and delivers
// them before any new frame as soon as the guest posts buffers: every
// poll round flushes it first, and while it is not empty the poller asks
// for RX kicks before it sleeps, so a refill wakes it. Backlogged frames
// go into guest memory through the same path as any other (Push marks
// the buffers and the used ring in the dirty log when logging is on).
//
// The backlog is preallocated (rxBacklogBytes of frame storage,
// rxBacklogFrames entries) and belongs to the device, one per queue pair,
// so it survives a poller restart within a frontend connection; it is
// emptied when a frontend connects. Only a full backlog drops a frame
// (NetStats.Drops). Nothing on its path allocates or locks: only the
// queue pair's poller touches it.

// Backlog bounds: enough for a few hundred full-size frames (a stalled
// guest's worth of replies at line rate for a few milliseconds, or
// seconds of pings).
const (
	rxBacklogBytes  = 256 << 10
	rxBacklogFrames = 512
)

// rxBacklog is a FIFO of frames in a fixed byte arena: each frame is
// stored contiguously, and a frame that does not fit before the end of
// the arena starts again at its beginning (the tail is left unused).
type rxBacklog struct {
	arena []byte
	off   []uint32 // entry i: arena offset of its frame
	size  []uint32 // entry i: its length
	head  int      // first entry
	n     int      // entries held
	bytes int      // frame bytes held (for stats and tests)
}

func newRXBacklog(arenaBytes, frames int) *rxBacklog {
	return &rxBacklog{arena: make([]byte, arenaBytes), off: make([]uint32, frames), size: make([]uint32, frames)}
}

// Len returns the number of frames held.
func (b *rxBacklog) Len() int { return b.n }

// push appends a copy of frame; false when the backlog is full (no entry
// left, or no room for the frame).
func (b *rxBacklog) push(frame []byte) bool {
	l := len(frame)
	if b.n == len(b.off) || l > len(b.arena) || l == 0 {
		return false
	}
	var at int
	if b.n == 0 {
		at = 0
	} else {
		first := int(b.off[b.head])
		lastI := (b.head + b.n - 1) % len(b.off)
		end := int(b.off[lastI] + b.size[lastI])
		switch {
		case end > first:
			// Live data is [first, end): room after end, else before first.
			if end+l <= len(b.arena) {
				at = end
			} else if l <= first {
				at = 0
			} else {
				return false
			}
		default:
			// Wrapped: live data is [first, arena end) and [0, end).
			if end+l <= first {
				at = end
			} else {
				return false
			}
		}
	}
	copy(b.arena[at:at+l], frame)
	i := (b.head + b.n) % len(b.off)
	b.off[i], b.size[i] = uint32(at), uint32(l)
	b.n++
	b.bytes += l
	return true
}

// peek returns the oldest frame (valid until the next pop or push), or
// nil when empty.
func (b *rxBacklog) peek() []byte {
	if b.n == 0 {
		return nil
	}
	o, s := b.off[b.head], b.size[b.head]
	return b.arena[o : o+s]
}

// pop removes the oldest frame.
func (b *rxBacklog) pop() {
	if b.n == 0 {
		return
	}
	b.bytes -= int(b.size[b.head])
	b.head = (b.head + 1) % len(b.off)
	b.n--
	if b.n == 0 {
		b.head = 0
	}
}

// reset empties the backlog.
func (b *rxBacklog) reset() { b.head, b.n, b.bytes = 0, 0, 0 }
