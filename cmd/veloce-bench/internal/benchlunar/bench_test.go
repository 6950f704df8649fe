package benchlunar

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil/benchtest"
	"github.com/veloce-io/veloce/examples/lunarstream"
	"github.com/veloce-io/veloce/internal/testutil"
)

// Bad arguments are refused before anything is set up (no root needed).
func TestMainRefusesBadArguments(t *testing.T) {
	benchtest.RefusesArgs(t, Main, [][]string{
		{"--frame-size", "0"},
		{"--frame-size", "70000000"},
		{"--frames", "1"},
		{"--fps", "-1"},
		{"--max-message", "100"},
		{"-o", "yaml"},
		{"extra"},
	})
}

func TestWriteTable(t *testing.T) {
	rep := &Report{FrameSize: 2764800, Frames: 90, Rounds: []Round{{FPS: 30, MessagesPerFrame: 1,
		Veloce:   lunarstream.Summary{Transport: "veloce", Datapath: "udp", Frames: 90, Verified: 90, FPS: 29.9, LatencyP50: 12000, LatencyP99: 30000},
		TCP:      lunarstream.Summary{Transport: "tcp", Frames: 90, Verified: 90, FPS: 30, LatencyP50: 4000, LatencyP99: 9000},
		FPSRatio: 1, P50Ratio: 3, P99Ratio: 3.33}}}
	var b bytes.Buffer
	if err := WriteTable(&b, rep); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"veloce (udp, 1 msgs/frame)", "90/90", "29.90", "ratio veloce/tcp", "3.33"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

// A short run between two namespaces: every frame verified on both
// transports.
func TestRun(t *testing.T) {
	testutil.RequiresRoot(t)
	rep, err := Run(context.Background(), Config{FrameSize: lunarstream.DefaultFrameSize, FPS: 20, Frames: 10, MaxMessage: 4 << 20})
	if err == nil && len(rep.Rounds) != 2 {
		t.Fatalf("%d rounds, want 20 fps and as fast as they go", len(rep.Rounds))
	}
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	WriteTable(&b, rep)
	t.Logf("\n%s", b.String())
	for _, r := range rep.Rounds {
		if r.MessagesPerFrame != 1 || r.FPSRatio == 0 {
			t.Errorf("%+v", r)
		}
	}
}
