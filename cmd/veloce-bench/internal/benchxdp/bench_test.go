package benchxdp

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/testutil"
)

func TestMainRefusesBadArguments(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--sizes", "8"}, "size"},
		{[]string{"--sizes", "1500"}, "size"},
		{[]string{"--paths", "raw,dpdk"}, "--paths"},
		{[]string{"--window", "0"}, "must be positive"},
		{[]string{"-o", "xml"}, "-o"},
		{[]string{"extra"}, "unexpected"},
	} {
		var out, errb bytes.Buffer
		err := Main(context.Background(), tc.args, &out, &errb)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error mentioning %q", tc.args, err, tc.want)
		}
	}
}

func TestWriteTable(t *testing.T) {
	rep := &Report{MTU: 2000, CPUs: 2, Window: 128, BusyPoll: "0s", XDPMode: "copy", XDPAttach: "native", Datapath: "xdp",
		Results: []Result{{Size: 64,
			RTT:              map[string]Latency{PathRaw: {Samples: 10, P50: 3.5}, PathXDP: {Samples: 10, P50: 40}, PathUDP: {Samples: 10, P50: 45}},
			Throughput:       map[string]Throughput{PathRaw: {Mmsgs: 1.2}, PathXDP: {Mmsgs: 0.3}, PathUDP: {Mmsgs: 0.2}},
			OverheadXDPRawUS: 36.5, OverheadUDPXDPUS: 5, RatioXDPRaw: 0.25, RatioXDPUDP: 1.5}},
		Idle: []IdleCPU{{Path: PathXDP, Seconds: 5, CPUms: 1.25, Percent: 0.025, Sleeps: 5}}}
	var b bytes.Buffer
	if err := WriteTable(&b, rep); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"socket mode copy, program native", "+36.5", "0.25", "1.50", "1.25", "poll(2) sleeps"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("no %q in:\n%s", want, b.String())
		}
	}
}

// A tiny run of the raw and XDP paths (no idle CPU: no veloced binary):
// the numbers exist, the stream got XDP, the socket copy mode.
func TestTinyRun(t *testing.T) {
	testutil.Integration(t)
	testutil.RequiresRoot(t)
	rep, err := Run(context.Background(), Config{Sizes: []int{64}, RoundTrips: 50, Warmup: 10, Duration: 100 * time.Millisecond,
		Paths: []string{PathRaw, PathXDP}})
	if err != nil {
		t.Fatal(err)
	}
	j, _ := json.Marshal(rep)
	t.Logf("%s", j)
	r := rep.Results[0]
	if r.RTT[PathRaw].Samples == 0 || r.RTT[PathXDP].Samples == 0 || r.Throughput[PathRaw].Mmsgs == 0 || r.Throughput[PathXDP].Mmsgs == 0 {
		t.Errorf("missing measurements: %+v", r)
	}
	if rep.Datapath != "xdp" || rep.XDPMode != "copy" {
		t.Errorf("stream datapath %q, mode %q", rep.Datapath, rep.XDPMode)
	}
}
