package benchstreams

import (
	"bytes"
	"strings"
	"testing"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil/benchtest"
)

// Bad arguments are refused before anything is set up (no root needed).
func TestMainRefusesBadArguments(t *testing.T) {
	benchtest.RefusesArgs(t, Main, [][]string{
		{"--sizes", "64,x"},
		{"--sizes", "2000"},
		{"--sinks", "0"},
		{"--sink-size", "4"},
		{"--sink-rounds", "0"},
		{"--round-trips", "0"},
		{"--window", "0"},
		{"--sink-window", "0"},
		{"--duration", "0s"},
		{"--profile-sizes", ""},
		{"-o", "yaml"},
		{"extra"},
	})
}

func TestWriteTable(t *testing.T) {
	rep := &Report{
		Results: []Result{{Size: 64, RawRTT: Latency{MedianUS: 17.5, P99US: 40}, VeloceRTT: Latency{MedianUS: 120, P99US: 300},
			OverheadUS: 102.5, RawTput: Throughput{Mmsgs: 0.3}, VeloceTput: Throughput{Mmsgs: 0.1, Lost: 2}, Ratio: 0.33}},
		Sinks: []SinkResult{{Sinks: 8, Size: 64, RawMmsgs: 0.3, Tput: Throughput{Mmsgs: 0.02, DeliveriesMmsgs: 0.16}, Ratio: 0.07}},
	}
	var b bytes.Buffer
	if err := WriteTable(&b, rep); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"OVERHEAD µs", "102.5", "0/2", "64, 8 sinks", "0.160 M deliveries/s"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	if err := WriteJSON(&b, rep); err != nil || !strings.Contains(b.String(), `"overhead_us": 102.5`) {
		t.Errorf("json: %v\n%s", err, b.String())
	}
}
