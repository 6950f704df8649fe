package benchdpdk

import (
	"bytes"
	"context"
	"encoding/json"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil/benchtest"
	"github.com/veloce-io/veloce/internal/dpdk"
	"github.com/veloce-io/veloce/internal/testutil"
)

// Bad arguments are refused before anything is set up (no root needed).
func TestMainRefusesBadArguments(t *testing.T) {
	benchtest.RefusesArgs(t, Main, [][]string{
		{"--sizes", "64,x"},
		{"--sizes", "4"},
		{"--sizes", "1501"},
		{"--sizes", ""},
		{"--windows", "0"},
		{"--cpus", "1,1"},
		{"--cpus", "0"},
		{"--paths", "raw,xdp"},
		{"--paths", ","},
		{"--round-trips", "0"},
		{"--duration", "0s"},
		{"--gomaxprocs", "-1"},
		{"--profile-sizes", ""},
		{"-o", "yaml"},
		{"extra"},
	})
}

func TestSummarizeAndParse(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Microsecond)
	}
	l := Summarize(d)
	if l.Samples != 100 || l.MedianUS != 50 || l.P99US != 99 || l.MinUS != 1 || l.MeanUS != 50.5 {
		t.Errorf("Summarize: %+v", l)
	}
	if l := Summarize(nil); l.Samples != 0 || l.MedianUS != 0 {
		t.Errorf("Summarize(nil): %+v", l)
	}
	if got, err := ParseInts(" 64, 1400,", "size", MinSize, MaxSize); err != nil || len(got) != 2 || got[1] != 1400 {
		t.Errorf("ParseInts: %v %v", got, err)
	}
}

// The meter's rate is the median of its sub-windows: one stalled
// sub-window does not halve it.
func TestMeterMedianOfSubWindows(t *testing.T) {
	var n uint64
	m := newMeter(64, 32, 0, 5*SubWindow, func() uint64 { return n })
	t0 := m.start
	m.tick(t0.Add(time.Millisecond)) // the window starts
	for i := 1; i <= 5; i++ {
		if i != 3 { // sub-window 3 gets nothing
			n += 1000
		}
		m.tick(t0.Add(time.Millisecond + time.Duration(i)*SubWindow))
	}
	if m.tick(t0.Add(time.Millisecond + 5*SubWindow + time.Microsecond)) {
		t.Fatal("the window did not end")
	}
	if m.th.Mmsgs != 0.01 || m.th.MeanMmsgs >= m.th.Mmsgs || m.th.SubWindows < 5 {
		t.Errorf("throughput %+v, want a median of 0.01 Mmsg/s over at least 5 sub-windows, mean lower", m.th)
	}
}

func TestWriteTable(t *testing.T) {
	legs := &Legs{Samples: 9, WakeA: LegStat{200, 400}, WireAB: LegStat{20, 40}, WakeB: LegStat{210, 400}, WireBA: LegStat{21, 40}}
	rep := &Report{Paths: []string{PathRaw, PathDPDK, PathUDP}, Windows: []int{32, 256}, MTU: LinkMTU, Seconds: 0.5,
		Results: []Result{{Size: 64,
			RawDPDK:    Path{RTT: Latency{MedianUS: 30, P99US: 90}, Throughput: []Throughput{{Mmsgs: 0.4}, {Mmsgs: 0.5}}},
			VeloceDPDK: Path{RTT: Latency{MedianUS: 451.5, P99US: 900}, Legs: legs, Throughput: []Throughput{{Mmsgs: 0.1, Lost: 3}, {Mmsgs: 0.25}}},
			VeloceUDP:  Path{RTT: Latency{MedianUS: 60, P99US: 300}, Throughput: []Throughput{{Mmsgs: 0.2}, {Mmsgs: 0.2}}},
			OverheadUS: 421.5, RatioDPDKRaw: []float64{0.25, 0.5}, RatioDPDKUDP: []float64{0.5, 1.25}, PollerSleeps: [2]uint64{7, 8}}}}
	var b bytes.Buffer
	if err := WriteTable(&b, rep); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"451.5", "421.5", "EMIT->SEND A", "91%", "1.25", "0/3/0", "7/8"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	if err := WriteJSON(&b, rep); err != nil || !strings.Contains(b.String(), `"overhead_us": 421.5`) {
		t.Errorf("json: %v\n%s", err, b.String())
	}
	if strings.Contains(b.String(), "CAUTION") {
		t.Errorf("caution without a reason:\n%s", b.String())
	}
	rep.RoundTrips = 5000 // (a)'s 0 samples are then too few
	b.Reset()
	if err := WriteTable(&b, rep); err != nil || !strings.Contains(b.String(), "CAUTION, ping-pongs with few samples") ||
		!strings.Contains(b.String(), "(a) 64 B: 0") {
		t.Errorf("no caution for too few samples (%v):\n%s", err, b.String())
	}
	// A run of some paths only shows the others as "-".
	rep.Paths = []string{PathRaw}
	r := &rep.Results[0]
	r.VeloceDPDK, r.VeloceUDP, r.RatioDPDKRaw, r.RatioDPDKUDP = Path{}, Path{}, nil, nil
	b.Reset()
	if err := WriteTable(&b, rep); err != nil || !strings.Contains(b.String(), "0/-/-") || strings.Contains(b.String(), "EMIT->SEND") {
		t.Errorf("raw-only table (%v):\n%s", err, b.String())
	}
}

// TestTinyRun runs the whole bench once, small: 200 round trips and a
// short throughput run at 64 bytes on each path. It checks that every
// path measured something and that the report prints; it asserts no
// timing (CI machines are too noisy for that).
func TestTinyRun(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.Require(t, dpdk.Available(), "needs DPDK: build with -tags dpdk and cgo")
	cfg := Config{Sizes: []int{64}, RoundTrips: 200, Warmup: 20, MaxRTTTime: 10 * time.Second, Windows: []int{32},
		Warm: 50 * time.Millisecond, Duration: 200 * time.Millisecond, CPUA: 0, CPUB: 1}
	if runtime.NumCPU() < 2 {
		cfg.CPUA, cfg.CPUB = -1, -1
	}
	var log bytes.Buffer
	cfg.Log = &log
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	t.Logf("progress: %s", log.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 1 {
		t.Fatalf("%d results", len(rep.Results))
	}
	r := rep.Results[0]
	for _, p := range []struct {
		name string
		p    Path
	}{{"raw DPDK", r.RawDPDK}, {"Veloce DPDK", r.VeloceDPDK}, {"Veloce UDP", r.VeloceUDP}} {
		if p.p.RTT.Samples+p.p.RTT.Lost == 0 || p.p.RTT.Samples > 200 {
			t.Errorf("%s: RTT %+v, want up to 200 round trips", p.name, p.p.RTT)
		}
		if len(p.p.Throughput) != 1 || p.p.Throughput[0].Delivered == 0 || p.p.Throughput[0].Window != 32 {
			t.Errorf("%s: throughput %+v", p.name, p.p.Throughput)
		}
	}
	if r.VeloceDPDK.Legs == nil || r.VeloceUDP.Legs == nil || r.RawDPDK.Legs != nil {
		t.Errorf("legs: dpdk %+v, udp %+v, raw %+v", r.VeloceDPDK.Legs, r.VeloceUDP.Legs, r.RawDPDK.Legs)
	}
	var b bytes.Buffer
	if err := WriteTable(&b, rep); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", b.String())
	b.Reset()
	var back Report
	if err := WriteJSON(&b, rep); err != nil || json.Unmarshal(b.Bytes(), &back) != nil || len(back.Results) != 1 {
		t.Errorf("JSON round trip: %v\n%s", err, b.String())
	}
}
