package main

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/plugins/dpdk"
)

// TestTwoDPDKDaemons is the operator's view of the DPDK datapath: two
// veloced processes, each in its own network namespace with its own EAL and
// a DPDK port (net_af_packet) on its end of a veth that has no kernel
// address, and host applications (veloce-perf over the daemons' app
// sockets) streaming 200,000 messages between them on an accelerated
// reliable stream: every one arrives, in order; velocectl remote shows the
// DPDK datapath carrying them. (The million-message test runs two runtimes
// in one process: backend.TestDPDKDaemonsExchangeMillionMessages. Here two
// busy-polling daemons and two applications share two cores, so the
// source is paced, and the stream is reliable: a best-effort sink whose
// application is starved drops what its pool cannot hold — 21 of 200,000
// in one loaded run — which is the guarantee best effort gives.)
func TestTwoDPDKDaemons(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.Require(t, dpdk.Available(), "needs DPDK: build with -tags dpdk and cgo")
	dir := t.TempDir()
	bin := func(name string, args ...string) string {
		out := filepath.Join(dir, name)
		cmd := exec.Command("go", append(append([]string{"build", "-o", out}, args...), "github.com/veloce-io/veloce/cmd/"+name)...)
		if name == "veloce-perf" {
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		}
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", name, err, b)
		}
		return out
	}
	veloced, perf := bin("veloced", "-tags", "dpdk"), bin("veloce-perf")

	a, b := testutil.NewNetns(t), testutil.NewNetns(t)
	va, vb := testutil.BareVeth(t, a, b)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := func(ns *testutil.Netns, name, iface, addr, peer, node string) (app, ctl string, ready *testutil.LineWatcher, exited chan struct{}) {
		app, ctl = filepath.Join(dir, name+".app"), filepath.Join(dir, name+".ctl")
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns.Name, veloced, "--app-socket", app, "--control", ctl,
			"--dpdk", "net_af_packet0,iface="+iface, "--dpdk-addr", addr, "--peer", peer, "--node-id", node)
		ready = testutil.WatchLine(control.ReadyLine, logf)
		cmd.Stdout, cmd.Stderr = logf, ready
		cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited = make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			cmd.Process.Signal(os.Interrupt)
			<-exited
			if t.Failed() {
				b, _ := os.ReadFile(logf.Name())
				t.Logf("%s's log:\n%s", name, b)
			}
		})
		return app, ctl, ready, exited
	}
	appA, ctlA, readyA, exitedA := start(a, "a", va, "10.96.0.1/24", "10.96.0.2:7000", "1")
	appB, ctlB, readyB, exitedB := start(b, "b", vb, "10.96.0.2/24", "10.96.0.1:7000", "2")
	// Each daemon says when its sockets listen.
	readyA.Wait(t, exitedA, time.Minute)
	readyB.Wait(t, exitedB, time.Minute)

	const count = "200000"
	// Each application runs in its daemon's namespace, as on a real host:
	// the client's abstract unix address belongs to the network namespace.
	sink := exec.CommandContext(ctx, "ip", "netns", "exec", b.Name, perf, "sink", "--socket", appB, "--accel", "--reliable", "--channel", "4", "--count", count, "--timeout", "60s")
	sinkOut, _ := sink.StdoutPipe()
	sink.Stderr = os.Stderr
	if err := sink.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(sinkOut)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("sink: %q", lines.Text())
	}
	// The source side must know of the sink before it emits.
	clientA := control.NewClient(ctlA)
	for {
		info, err := clientA.Remote(ctx)
		if err == nil && len(info.Peers) == 1 && slices.Contains(info.Peers[0].Channels, 4) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("daemon a never learned of the sink: %+v %v", info, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	source := exec.CommandContext(ctx, "ip", "netns", "exec", a.Name, perf, "source", "--socket", appA, "--accel", "--reliable", "--channel", "4", "--count", count,
		"--size", "64", "--rate", "20000")
	if out, err := source.CombinedOutput(); err != nil {
		t.Fatalf("source: %v\n%s", err, out)
	}
	var last string
	for lines.Scan() {
		last = lines.Text()
	}
	if err := sink.Wait(); err != nil {
		for _, ctl := range []string{ctlA, ctlB} {
			c := control.NewClient(ctl)
			info, _ := c.Remote(context.Background())
			streams, _ := c.Streams(context.Background())
			t.Logf("%s: remote %+v\nstreams %+v", ctl, info, streams)
		}
		t.Fatalf("sink: %v; last line %s", err, last)
	}
	var sum struct {
		Messages   uint64  `json:"messages"`
		Gaps       uint64  `json:"gaps"`
		OutOfOrder uint64  `json:"out_of_order"`
		Rate       float64 `json:"messages_per_second"`
		Datapath   string  `json:"datapath"`
	}
	if err := json.Unmarshal([]byte(last), &sum); err != nil {
		t.Fatalf("sink summary %q: %v", last, err)
	}
	t.Logf("sink: %+v", sum)
	if sum.Messages != 200000 || sum.Gaps != 0 || sum.OutOfOrder != 0 || sum.Datapath != "dpdk" {
		t.Errorf("sink summary %+v", sum)
	}
	for _, c := range []struct{ ctl, role string }{{ctlA, "sent"}, {ctlB, "received"}} {
		info, err := control.NewClient(c.ctl).Remote(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(info.Datapaths) != 1 || info.Datapaths[0].Name != "dpdk" {
			t.Errorf("datapaths: %+v", info.Datapaths)
		}
		n := info.Sent
		if c.role == "received" {
			n = info.Received
		}
		if n < 200000 { // with acks and any retransmissions
			t.Errorf("daemon %s %d messages, want at least 200000: %+v", c.role, n, info)
		}
		t.Logf("daemon %s %d datagrams; reliable %+v", c.role, n, info.Reliable)
		stats, _ := json.Marshal(info.Datapaths[0].Stats)
		if !strings.Contains(string(stats), "tx_datagrams") {
			t.Errorf("no DPDK counters in velocectl remote: %s", stats)
		}
	}
}
