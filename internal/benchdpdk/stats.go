package benchdpdk

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Latency summarises round-trip times (the same fields and rules as
// internal/benchstreams, so the two reports read alike).
type Latency struct {
	Samples  int     `json:"samples"`
	MedianUS float64 `json:"median_us"`
	P99US    float64 `json:"p99_us"`
	MinUS    float64 `json:"min_us"`
	MeanUS   float64 `json:"mean_us"`
	// Lost counts round trips whose message never came back within a
	// second (re-sent; not in the samples).
	Lost int `json:"lost"`
}

// Summarize returns the statistics of rtts (sorted in place); percentiles
// are nearest-rank.
func Summarize(rtts []time.Duration) Latency {
	l := Latency{Samples: len(rtts)}
	if len(rtts) == 0 {
		return l
	}
	slices.Sort(rtts)
	var sum time.Duration
	for _, d := range rtts {
		sum += d
	}
	l.MedianUS = us(Percentile(rtts, 50))
	l.P99US = us(Percentile(rtts, 99))
	l.MinUS = us(rtts[0])
	l.MeanUS = round2(float64(sum) / float64(len(rtts)) / 1e3)
	return l
}

// Percentile returns the p-th percentile (0 < p <= 100, nearest rank) of
// sorted; 0 for none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
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
			rates = append(rates, rate(m.marks[i].n-m.marks[i-1].n, el))
		}
	}
	el := now.Sub(m.t0)
	mean := rate(n-m.r0, el)
	med := mean
	if len(rates) > 0 {
		slices.Sort(rates)
		med = rates[len(rates)/2]
		if len(rates)%2 == 0 {
			med = (rates[len(rates)/2-1] + rates[len(rates)/2]) / 2
		}
	}
	m.th.Mmsgs = round4(med / 1e6)
	m.th.MeanMmsgs = round4(mean / 1e6)
	m.th.Gbps = round4(med * float64(m.size) * 8 / 1e9)
	m.th.WindowSeconds = round2(el.Seconds())
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

// progress counts what a receiver got and wakes a sender waiting for the
// count to reach a target (flow control without polling).
type progress struct {
	n      atomic.Uint64
	target atomic.Uint64 // 0: nobody waits
	wake   chan struct{}
}

func newProgress() *progress { return &progress{wake: make(chan struct{}, 1)} }

func (p *progress) add(k uint64) {
	v := p.n.Add(k)
	if t := p.target.Load(); t != 0 && v >= t && p.target.CompareAndSwap(t, 0) {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// waitAtLeast waits until the count reaches t, for at most timeout, and
// reports whether it did.
func (p *progress) waitAtLeast(t uint64, timer *time.Timer, timeout time.Duration) bool {
	timer.Reset(timeout)
	defer timer.Stop()
	for p.n.Load() < t {
		p.target.Store(t)
		if p.n.Load() >= t {
			p.target.Store(0)
			return true
		}
		select {
		case <-p.wake:
		case <-timer.C:
			p.target.Store(0)
			return p.n.Load() >= t
		}
	}
	return true
}

func rate(count uint64, elapsed time.Duration) float64 {
	if elapsed <= 0 {
		return 0
	}
	return float64(count) / elapsed.Seconds()
}

func us(d time.Duration) float64 { return round2(float64(d) / 1e3) }
func round2(v float64) float64   { return math.Round(v*100) / 100 }
func round4(v float64) float64   { return math.Round(v*1e4) / 1e4 }

// MinSize and MaxSize bound message sizes: 8 bytes carry the round
// number; 1500 plus the Veloce wire header and frame headers fit the
// link's MTU (LinkMTU) and one 2048-byte mbuf.
const (
	MinSize = 8
	MaxSize = 1500
)

// ParseInts parses a comma-separated list of integers in [lo, hi]; what
// names them in errors.
func ParseInts(s, what string, lo, hi int) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < lo || n > hi {
			return nil, fmt.Errorf("%s %q: want %d to %d", what, f, lo, hi)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no %ss", what)
	}
	return out, nil
}

var errNoDPDK = errors.New("this veloce-bench has no DPDK: build it with cgo and -tags dpdk (make build)")
