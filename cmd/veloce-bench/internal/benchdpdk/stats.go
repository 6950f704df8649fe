package benchdpdk

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchstreams"
	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
	"github.com/veloce-io/veloce/guestlib"
)

// Latency summarises round-trip times: internal/benchstreams' type (the
// same fields and rules, so the two reports read alike).
type Latency = benchstreams.Latency

// Summarize returns the statistics of rtts (sorted in place); percentiles
// are nearest-rank (benchstreams.Summarize).
func Summarize(rtts []time.Duration) Latency { return benchstreams.Summarize(rtts) }

// Percentile returns the p-th percentile (0 < p <= 100, nearest rank) of
// sorted; 0 for none (benchstreams.Percentile).
func Percentile(sorted []time.Duration, p float64) time.Duration {
	return benchstreams.Percentile(sorted, p)
}

// Throughput is one one-way throughput measurement: the sender keeps at
// most Window messages in flight (sent, not yet counted by the receiver).
type Throughput struct {
	Window int `json:"window"`
	// Mmsgs is the receiver's rate in millions of messages per second:
	// the median of its rates over the measured window's sub-windows of
	// SubWindow (about 100 ms), which a few milliseconds of another
	// process on the cores do not swing; MeanMmsgs is the rate over the
	// whole window. Gbps is the payload bits of Mmsgs.
	Mmsgs     float64 `json:"mmsgs"`
	MeanMmsgs float64 `json:"mean_mmsgs"`
	Gbps      float64 `json:"payload_gbps"`
	// Sent and Delivered count the whole run (warm-up included); Lost =
	// Sent - Delivered after the drain.
	Sent      uint64 `json:"sent"`
	Delivered uint64 `json:"delivered"`
	Lost      uint64 `json:"lost"`
	// Stalls counts the times the window stayed full for 50 ms and the
	// missing messages were written off as lost.
	Stalls        int     `json:"stalls"`
	WindowSeconds float64 `json:"window_seconds"`
	SubWindows    int     `json:"sub_windows"`
}

// SubWindow is the length of the throughput sub-windows.
const SubWindow = 100 * time.Millisecond

// meter is the throughput bookkeeping both senders share: the warm-up,
// the measured window, the credit window and stall write-offs.
type meter struct {
	size, window     int
	recv             func() uint64 // receiver's count since the start
	start            time.Time
	measureFrom, end time.Time
	t0               time.Time
	r0               uint64
	inWindow         bool
	marks            []mark // the receiver's count at each sub-window's start
	sent             uint64
	writtenOff       uint64
	th               Throughput
}

type mark struct {
	t time.Time
	n uint64
}

func newMeter(size, window int, warm, dur time.Duration, recv func() uint64) *meter {
	now := time.Now()
	return &meter{size: size, window: window, recv: recv, start: now, measureFrom: now.Add(warm), end: now.Add(warm + dur)}
}

// tick notes the time; it reports false once the measured window is over.
func (m *meter) tick(now time.Time) bool {
	if !m.inWindow && now.After(m.measureFrom) {
		m.t0, m.r0, m.inWindow = now, m.recv(), true
		m.marks = append(m.marks, mark{now, m.r0})
	}
	if now.Before(m.end) {
		if m.inWindow && now.Sub(m.marks[len(m.marks)-1].t) >= SubWindow {
			m.marks = append(m.marks, mark{now, m.recv()})
		}
		return true
	}
	if !m.inWindow { // no warm-up tick came in time
		m.t0, m.r0 = m.start, 0
	}
	n := m.recv()
	m.marks = append(m.marks, mark{now, n})
	var rates []float64
	for i := 1; i < len(m.marks); i++ {
		if el := m.marks[i].t.Sub(m.marks[i-1].t); el >= SubWindow/2 {
			rates = append(rates, benchstreams.Rate(m.marks[i].n-m.marks[i-1].n, el))
		}
	}
	el := now.Sub(m.t0)
	mean := benchstreams.Rate(n-m.r0, el)
	med := mean
	if len(rates) > 0 {
		slices.Sort(rates)
		med = rates[len(rates)/2]
		if len(rates)%2 == 0 {
			med = (rates[len(rates)/2-1] + rates[len(rates)/2]) / 2
		}
	}
	m.th.Mmsgs = benchutil.Round4(med / 1e6)
	m.th.MeanMmsgs = benchutil.Round4(mean / 1e6)
	m.th.Gbps = benchutil.Round4(med * float64(m.size) * 8 / 1e9)
	m.th.WindowSeconds = benchutil.Round2(el.Seconds())
	m.th.SubWindows = len(rates)
	return false
}

// room is how many more messages the window allows now.
func (m *meter) room() int {
	in := m.sent - m.writtenOff - m.recv()
	if int64(in) < 0 { // the receiver counted a written-off message after all
		return m.window
	}
	return max(0, m.window-int(in))
}

// stalled writes off what is in flight: the window stayed full too long.
func (m *meter) stalled() {
	m.th.Stalls++
	m.writtenOff = m.sent - m.recv()
}

// drain waits until everything sent arrived or nothing did for 100 ms,
// and returns the result.
func (m *meter) drain(ctx context.Context) Throughput {
	for last := m.recv(); m.recv() < m.sent && ctx.Err() == nil; {
		time.Sleep(100 * time.Millisecond)
		r := m.recv()
		if r == last {
			break
		}
		last = r
	}
	m.th.Sent, m.th.Delivered = m.sent, m.recv()
	if m.th.Delivered < m.sent {
		m.th.Lost = m.sent - m.th.Delivered
	}
	return m.th
}

// MinSize and MaxSize bound message sizes: 8 bytes carry the round
// number; MaxSize is the largest message a guestlib application may emit
// (guestlib.MaxMessage, 1436), which with the Veloce wire header and frame
// headers fits the link's MTU (LinkMTU) and one 2048-byte mbuf.
const (
	MinSize = 8
	MaxSize = guestlib.MaxMessage
)

// ParseInts parses a comma-separated list of integers in [lo, hi]; what
// names them in errors, and an empty list is one.
func ParseInts(s, what string, lo, hi int) ([]int, error) {
	out, err := benchutil.ParseInts(s, what, lo, hi)
	if err == nil && len(out) == 0 {
		return nil, fmt.Errorf("no %ss", what)
	}
	return out, err
}

var errNoDPDK = errors.New("this veloce-bench has no DPDK: build it with cgo and -tags dpdk (make build)")
