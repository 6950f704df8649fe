package benchstreams

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
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
func ParseCounts(s string) ([]int, error) {
	var counts []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 || n > 64 {
			return nil, fmt.Errorf("sink count %q: want 1 to 64", f)
		}
		counts = append(counts, n)
	}
	return counts, nil
}

// Latency summarises round-trip times.
type Latency struct {
	Samples  int     `json:"samples"`
	MedianUS float64 `json:"median_us"`
	P99US    float64 `json:"p99_us"`
	MinUS    float64 `json:"min_us"`
	MeanUS   float64 `json:"mean_us"`
	// Lost counts round trips whose message never came back (the
	// watchdog re-sent after a second); they are not in the samples.
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

func us(d time.Duration) float64 { return round2(float64(d) / 1e3) }

func round2(v float64) float64 { return math.Round(v*100) / 100 }

func round4(v float64) float64 { return math.Round(v*1e4) / 1e4 }
