package backend

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/veloce-io/veloce/images/guestinit"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/vmtest"
)

var (
	perfOnce sync.Once
	perfPath string
	perfErr  error
)

// perfImage returns a guest image with veloce-perf in /bin.
func perfImage(t *testing.T) (kernel, initramfs string) {
	t.Helper()
	perfOnce.Do(func() {
		dir, err := makeTempDir()
		if err != nil {
			perfErr = err
			return
		}
		perfPath = filepath.Join(dir, "veloce-perf")
		perfErr = vmtest.BuildStatic(context.Background(), "github.com/veloce-io/veloce/cmd/veloce-perf", perfPath)
	})
	if perfErr != nil {
		t.Fatal(perfErr)
	}
	return vmtest.Image(t, vmtest.Guest{Files: map[string]string{"/bin/veloce-perf": perfPath}})
}

type perfSummary struct {
	Role       string `json:"role"`
	Messages   uint64 `json:"messages"`
	Sources    int    `json:"sources"`
	Gaps       uint64 `json:"gaps"`
	OutOfOrder uint64 `json:"out_of_order"`
	Datapath   string `json:"datapath"`
	Warning    string `json:"warning"`
}

func lastSummary(t *testing.T, out string) perfSummary {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var s perfSummary
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &s); err != nil {
		t.Fatalf("no summary in:\n%s", out)
	}
	return s
}

// TestVMToVMStreaming: an application in one VM emits on a channel, an
// application in another VM on the same daemon sinks it; every message
// arrives once and in order. The sink asked for acceleration on a host
// with none: it gets UDP and a warning it can see, and velocectl streams
// shows.
func TestVMToVMStreaming(t *testing.T) {
	testutil.RequiresRoot(t)
	const count = 3000
	d, socks := startDaemon(t, "sinkvm", "sourcevm")
	kernel, initramfs := perfImage(t)
	net := []guestinit.NetConfig{{Name: "eth0", DHCP: true}}
	sink := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, NICs: []vmtest.NIC{{Socket: socks[0]}},
		Guest: &guestinit.Config{Net: net, Run: []string{"/bin/veloce-perf", "sink", "--accel", "--channel", "7", "--count", itoaU(count), "--timeout", "3m"}}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := sink.WaitConsole(ctx, "ready"); err != nil {
		t.Fatal(err)
	}
	streams := d.Streams()
	if len(streams) != 1 || streams[0].Datapath != DatapathUDP || !strings.Contains(streams[0].Warning, "acceleration") ||
		len(streams[0].Sinks) != 1 || streams[0].Sinks[0].Channel != 7 || streams[0].Endpoint != "vm:sinkvm" {
		t.Fatalf("streams while the sink waits: %+v", streams)
	}
	source := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, NICs: []vmtest.NIC{{Socket: socks[1]}},
		Guest: &guestinit.Config{Net: net, Run: []string{"/bin/veloce-perf", "source", "--channel", "7", "--count", itoaU(count), "--size", "200", "--rate", "1000"}}})
	rs, err := source.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Err(); err != nil {
		t.Fatalf("source: %v\n%s", err, rs.Output)
	}
	r, err := sink.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Err(); err != nil {
		t.Fatalf("sink: %v\n%s", err, r.Output)
	}
	if !strings.Contains(r.Output, "warning: acceleration requested") {
		t.Errorf("the sink application did not see the fallback warning:\n%s", r.Output)
	}
	s := lastSummary(t, r.Output)
	t.Logf("sink: %+v", s)
	if s.Messages != count || s.Sources != 1 || s.Gaps != 0 || s.OutOfOrder != 0 || s.Datapath != DatapathUDP {
		t.Errorf("sink summary %+v, want %d messages from 1 source in order", s, count)
	}
	for _, p := range d.Ports() {
		if p.Malformed != 0 || p.Errors != 0 {
			t.Errorf("port %s: %+v", p.Name, p)
		}
	}
}

func itoaU(n int) string { b, _ := json.Marshal(n); return string(b) }

func makeTempDir() (string, error) { return os.MkdirTemp("", "veloce-perf-") }
