package benchstreams

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
)

// MaxSize is the largest message size the bench accepts: what guestlib
// can emit over any transport (MaxMessage) and the kernel-UDP datapath
// sends as one datagram.
const MaxSize = 1400

// ParseSizes parses a comma-separated list of message sizes (1 to
// MaxSize bytes; at least 8, the bench's sequence number).
func ParseSizes(s string) ([]int, error) {
	var sizes []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("message size %q is not a number", f)
		}
		if n < 8 || n > MaxSize {
			return nil, fmt.Errorf("message size %d: want 8 to %d bytes", n, MaxSize)
		}
		sizes = append(sizes, n)
	}
	if len(sizes) == 0 {
		return nil, errors.New("no message sizes")
	}
	return sizes, nil
}

// ParseCounts parses a comma-separated list of sink counts (1 to 64).
func ParseCounts(s string) ([]int, error) { return benchutil.ParseInts(s, "sink count", 1, 64) }

// Latency summarises round-trip times (internal/benchdpdk reports them
// with this type too, so the two reports read alike).
type Latency struct {
	Samples  int     `json:"samples"`
	MedianUS float64 `json:"median_us"`
	P99US    float64 `json:"p99_us"`
	MinUS    float64 `json:"min_us"`
	MeanUS   float64 `json:"mean_us"`
	// Lost counts round trips whose message never came back within a
	// second (re-sent); they are not in the samples.
	Lost int `json:"lost"`
}

// Summarize returns the latency statistics of rtts (sorted in place).
// Percentiles are nearest-rank.
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
	l.MedianUS = benchutil.Micros(Percentile(rtts, 50))
	l.P99US = benchutil.Micros(Percentile(rtts, 99))
	l.MinUS = benchutil.Micros(rtts[0])
	l.MeanUS = benchutil.Round2(float64(sum) / float64(len(rtts)) / 1e3)
	return l
}

// Percentile returns the p-th percentile (0 < p <= 100, nearest rank) of
// sorted; 0 for none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Rate is messages per second over elapsed.
func Rate(count uint64, elapsed time.Duration) float64 {
	if elapsed <= 0 {
		return 0
	}
	return float64(count) / elapsed.Seconds()
}
