package benchv2v

import (
	"fmt"
	"math"
	"strings"
)

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

func mppsList(pps []float64) string {
	var b strings.Builder
	for i, x := range pps {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%.3f", x/1e6)
	}
	return b.String()
}

func floats(xs []float64) string {
	var b strings.Builder
	for i, x := range xs {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%.3f", x)
	}
	return b.String()
}
