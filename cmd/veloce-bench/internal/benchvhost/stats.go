package benchvhost

import (
	"regexp"
	"sort"
	"strconv"
)

// PortSample is one periodic "NIC statistics for port N" block that
// testpmd prints every --stats-period seconds. RXPackets and TXPackets are
// cumulative; RXPPS and TXPPS are testpmd's own rates since the previous
// block (measured by testpmd with a clock, so a late block does not skew
// them).
type PortSample struct {
	Port                 int
	RXPackets, TXPackets uint64
	RXPPS, TXPPS         uint64
}

var (
	blockStartRE = regexp.MustCompile(`NIC statistics for port (\d+)`)
	rxPacketsRE  = regexp.MustCompile(`RX-packets:\s*(\d+)`)
	txPacketsRE  = regexp.MustCompile(`TX-packets:\s*(\d+)`)
	rxPPSRE      = regexp.MustCompile(`Rx-pps:\s*(\d+)`)
	// The Tx line is the block's last figure; requiring its end of line
	// leaves out a block testpmd is still writing.
	txPPSRE = regexp.MustCompile(`Tx-pps:\s*(\d+)\s+Tx-bps:\s*\d+[ \t]*\r?\n`)
)

// ParsePortSamples returns the complete periodic statistics blocks of
// port in testpmd's output, oldest first. A block cut short (testpmd is
// still writing it) is left out.
func ParsePortSamples(out []byte, port int) []PortSample {
	samples, _ := parseBlocks(out, port)
	return samples
}

// parseBlocks is ParsePortSamples that also returns how many bytes of out
// it has consumed: up to the end of the last complete block of any port.
func parseBlocks(out []byte, port int) (samples []PortSample, consumed int) {
	starts := blockStartRE.FindAllSubmatchIndex(out, -1)
	for i, st := range starts {
		end := len(out)
		if i+1 < len(starts) {
			end = starts[i+1][0]
		}
		block := out[st[1]:end]
		last := txPPSRE.FindSubmatchIndex(block)
		if last == nil {
			continue // incomplete (or not a statistics block)
		}
		consumed = st[1] + last[1]
		p, err := strconv.Atoi(string(out[st[2]:st[3]]))
		if err != nil || p != port {
			continue
		}
		txr, _ := strconv.ParseUint(string(block[last[2]:last[3]]), 10, 64)
		rxp, ok1 := findUint(rxPacketsRE, block)
		txp, ok2 := findUint(txPacketsRE, block)
		rxr, ok3 := findUint(rxPPSRE, block)
		if !ok1 || !ok2 || !ok3 {
			continue
		}
		samples = append(samples, PortSample{Port: p, RXPackets: rxp, TXPackets: txp, RXPPS: rxr, TXPPS: txr})
	}
	return samples, consumed
}

// sampleReader collects one port's samples from testpmd's growing output,
// parsing each part once.
type sampleReader struct {
	port    int
	off     int // bytes of the output already parsed
	samples []PortSample
}

// update parses what out has beyond what was parsed before and returns
// how many new samples it found.
func (r *sampleReader) update(out []byte) int {
	if r.off > len(out) {
		r.off = 0 // not the same output
		r.samples = nil
	}
	s, n := parseBlocks(out[r.off:], r.port)
	r.off += n
	r.samples = append(r.samples, s...)
	return len(s)
}

func findUint(re *regexp.Regexp, b []byte) (uint64, bool) {
	m := re.FindSubmatch(b)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseUint(string(m[1]), 10, 64)
	return v, err == nil
}

// SteadyWindow picks the samples to average from a sequence of periodic
// samples: rate gives a sample's rate. The first sample with a non-zero
// rate covers the start of traffic only partly and is skipped, as are
// warmup more; then n samples follow. It returns those n samples and true,
// or false when there are not yet enough.
func SteadyWindow(samples []PortSample, rate func(PortSample) uint64, warmup, n int) ([]PortSample, bool) {
	first := -1
	for i, s := range samples {
		if rate(s) > 0 {
			first = i
			break
		}
	}
	if first < 0 {
		return nil, false
	}
	from := first + 1 + warmup
	if len(samples) < from+n {
		return nil, false
	}
	return samples[from : from+n], true
}

// Median returns the median of xs (the mean of the middle two for an even
// count), 0 for none. A second in which other work on the machine took
// the core moves it less than it moves the mean.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Rates returns rate of each sample, in packets per second.
func Rates(samples []PortSample, rate func(PortSample) uint64) []float64 {
	xs := make([]float64, len(samples))
	for i, s := range samples {
		xs[i] = float64(rate(s))
	}
	return xs
}

// MeanRate averages rate over samples, in packets per second.
func MeanRate(samples []PortSample, rate func(PortSample) uint64) float64 {
	if len(samples) == 0 {
		return 0
	}
	var sum float64
	for _, s := range samples {
		sum += float64(rate(s))
	}
	return sum / float64(len(samples))
}

// RXRate and TXRate select a sample's receive or transmit rate.
func RXRate(s PortSample) uint64 { return s.RXPPS }

// TXRate selects a sample's transmit rate.
func TXRate(s PortSample) uint64 { return s.TXPPS }
