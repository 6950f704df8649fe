package lunarstream

import (
	"bytes"
	"hash/crc32"
	"math"
	"slices"
	"time"
)

// Receiver verifies frames as their parts arrive and keeps the statistics
// of a consumer. It is not safe for concurrent use: one goroutine feeds
// it (Accept, or AcceptPart for a transport that splits frames itself).
// It allocates only when it is made and when more frames complete than it
// was made for (the latency list grows).
type Receiver struct {
	expect  int // frames the producer sends (0: unknown)
	scratch []byte
	rbuf    []byte // ConsumeStream's read buffer

	// The frame in progress.
	active bool
	broken bool // a part did not match: the frame is corrupt
	cur    Header
	next   uint32 // body bytes received so far
	crc    uint32

	seen      bool   // any frame at all
	highest   uint64 // highest frame number seen
	finished  bool   // the highest frame is finished (complete or broken)
	verified  uint64
	corrupt   uint64
	malformed uint64 // messages that are no part of a frame (Parse failed)
	stale     uint64 // parts of frames before the one in progress
	first     time.Time
	last      time.Time
	latencies []time.Duration
}

// NewReceiver returns a receiver for frames frames (0 if unknown) of up
// to partSize bytes in one part (the largest piece Accept or AcceptPart
// is given; larger parts are verified in pieces of that size).
func NewReceiver(frames, partSize int) *Receiver {
	if partSize < 1 {
		partSize = 1
	}
	return &Receiver{expect: frames, scratch: make([]byte, min(partSize, 1<<20)), latencies: make([]time.Duration, 0, max(frames, 16))}
}

// Accept takes one message of a stream: a header and the part of a
// frame's body that follows it, received at now. A message that is no
// part of a frame returns Parse's error and is counted as malformed.
func (r *Receiver) Accept(msg []byte, now time.Time) error {
	h, err := Parse(msg, len(msg)-min(len(msg), HeaderLen))
	if err != nil {
		r.malformed++
		return err
	}
	r.AcceptPart(h, msg[HeaderLen:], now)
	return nil
}

// AcceptPart takes the part of frame h's body at h.Offset, received at
// now; h was checked by Parse for this part's length.
func (r *Receiver) AcceptPart(h Header, part []byte, now time.Time) {
	if r.active && h.Frame != r.cur.Frame {
		if h.Frame < r.cur.Frame {
			r.stale++
			return
		}
		r.active = false // the frame in progress is lost (its rest never came)
	}
	if !r.active {
		if r.seen && h.Frame <= r.highest {
			r.stale++ // a finished frame again, or an old one
			return
		}
		r.seen, r.highest, r.finished = true, h.Frame, false
		r.active, r.broken, r.cur, r.next, r.crc = true, false, h, 0, 0
		if h.Offset != 0 {
			r.broken = true // its beginning is missing
		}
	}
	if h.Offset != r.next || h.Length != r.cur.Length || h.Checksum != r.cur.Checksum || h.SendTime != r.cur.SendTime {
		r.broken = true
	}
	if !r.broken {
		for p, off := part, int(h.Offset); len(p) > 0; {
			n := min(len(p), len(r.scratch))
			Fill(r.scratch[:n], h.Frame, off)
			if !bytes.Equal(r.scratch[:n], p[:n]) {
				r.broken = true
				break
			}
			p, off = p[n:], off+n
		}
		r.crc = crc32.Update(r.crc, castagnoli, part)
	}
	r.next = h.Offset + uint32(len(part))
	if r.next < r.cur.Length {
		return
	}
	r.active, r.finished = false, true
	if r.broken || r.crc != r.cur.Checksum {
		r.corrupt++
		return
	}
	r.verified++
	if r.first.IsZero() {
		r.first = now
	}
	r.last = now
	r.latencies = append(r.latencies, now.Sub(time.Unix(0, r.cur.SendTime)))
}

// Done reports whether the last of the expected frames has been
// finished, verified or not (with frames unknown: never).
func (r *Receiver) Done() bool {
	return r.expect > 0 && r.seen && r.finished && r.highest+1 >= uint64(r.expect)
}

// Summary is what a consumer reports (veloce-bench lunar and
// lunarstream consume -o json print it).
type Summary struct {
	Role      string `json:"role"`      // "consumer"
	Transport string `json:"transport"` // "veloce" or "tcp"
	FrameSize int    `json:"frame_size"`
	// Frames is how many frames the producer sent: the expected count, or
	// with none given the highest frame number seen plus one.
	Frames   uint64 `json:"frames"`
	Verified uint64 `json:"verified"` // every byte as it must be
	Corrupt  uint64 `json:"corrupt"`  // finished, but a byte, part or checksum wrong
	Lost     uint64 `json:"lost"`     // not finished: never or partly arrived
	// Malformed counts messages that were no frame part; Stale parts of
	// frames already finished or given up.
	Malformed uint64 `json:"malformed"`
	Stale     uint64 `json:"stale"`
	// FPS is verified frames per second between the first and the last
	// verified frame.
	FPS float64 `json:"fps"`
	// Latencies, producer's send time to the frame's last byte verified,
	// in microseconds (meaningful with a shared clock only).
	LatencyP50 float64 `json:"latency_p50_us"`
	LatencyP99 float64 `json:"latency_p99_us"`
	LatencyMax float64 `json:"latency_max_us"`
	// SinkDropped counts messages guestlib's sink dropped with its queue
	// full (Veloce only).
	SinkDropped uint64 `json:"sink_dropped,omitempty"`
	// Datapath and Warning are the stream's (Veloce only).
	Datapath string `json:"datapath,omitempty"`
	Warning  string `json:"warning,omitempty"`
}

// Summary returns the statistics so far.
func (r *Receiver) Summary() Summary {
	s := Summary{Role: "consumer", FrameSize: int(r.cur.Length), Verified: r.verified, Corrupt: r.corrupt, Malformed: r.malformed, Stale: r.stale}
	if r.expect > 0 {
		s.Frames = uint64(r.expect)
	}
	if r.seen && r.highest+1 > s.Frames {
		s.Frames = r.highest + 1
	}
	if done := r.verified + r.corrupt; done < s.Frames {
		s.Lost = s.Frames - done
	}
	if r.verified > 1 {
		if d := r.last.Sub(r.first); d > 0 {
			s.FPS = round2(float64(r.verified-1) / d.Seconds())
		}
	}
	l := slices.Clone(r.latencies)
	slices.Sort(l)
	s.LatencyP50, s.LatencyP99 = micros(Percentile(l, 50)), micros(Percentile(l, 99))
	if len(l) > 0 {
		s.LatencyMax = micros(l[len(l)-1])
	}
	return s
}

// Percentile is the p-th percentile (nearest rank) of sorted; 0 if empty.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func micros(d time.Duration) float64 { return round2(float64(d) / 1e3) }

func round2(v float64) float64 { return math.Round(v*100) / 100 }
