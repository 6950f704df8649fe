package benchstreams

import (
	"slices"
	"testing"
	"time"
)

func TestParseSizes(t *testing.T) {
	got, err := ParseSizes(" 64,256, 1024,1400,")
	if err != nil || !slices.Equal(got, []int{64, 256, 1024, 1400}) {
		t.Errorf("got %v, %v", got, err)
	}
	for _, bad := range []string{"", ",", "64,x", "4", "1401", "-1", "6.4"} {
		if s, err := ParseSizes(bad); err == nil {
			t.Errorf("%q: %v, no error", bad, s)
		}
	}
}

func TestParseCounts(t *testing.T) {
	got, err := ParseCounts("1, 8")
	if err != nil || !slices.Equal(got, []int{1, 8}) {
		t.Errorf("got %v, %v", got, err)
	}
	if got, err := ParseCounts(""); err != nil || len(got) != 0 {
		t.Errorf("empty: %v, %v", got, err)
	}
	for _, bad := range []string{"0", "65", "a"} {
		if _, err := ParseCounts(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Microsecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Microsecond}, {99, 99 * time.Microsecond}, {100, 100 * time.Microsecond}, {0.1, time.Microsecond}} {
		if got := Percentile(d, c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
	if Percentile(nil, 50) != 0 {
		t.Error("empty: not 0")
	}
	if got := Percentile([]time.Duration{7}, 99); got != 7 {
		t.Errorf("one sample: %v", got)
	}
}

func TestSummarize(t *testing.T) {
	d := []time.Duration{5000, 1000, 3000, 2000, 4000} // unsorted, ns
	l := Summarize(d)
	if l.Samples != 5 || l.MedianUS != 3 || l.P99US != 5 || l.MinUS != 1 || l.MeanUS != 3 {
		t.Errorf("%+v", l)
	}
	if l := Summarize(nil); l.Samples != 0 || l.MedianUS != 0 {
		t.Errorf("empty: %+v", l)
	}
}

func TestRate(t *testing.T) {
	if r := Rate(500, 250*time.Millisecond); r != 2000 {
		t.Errorf("rate %v", r)
	}
	if Rate(5, 0) != 0 {
		t.Error("zero elapsed")
	}
}
