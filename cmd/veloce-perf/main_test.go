package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/internal/testutil"
)

// pingPong runs echo in the background and pingpong against it, and
// returns pingpong's summary.
func pingPong(t *testing.T, echoArgs, pingArgs []string) RTTSummary {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	echoOut := testutil.WatchLine("ready", nil)
	done := make(chan error, 1)
	exited := make(chan struct{})
	go func() { defer close(exited); done <- run(ctx, echoArgs, echoOut, echoOut) }()
	echoOut.Wait(t, exited, time.Minute)
	var out, errb bytes.Buffer
	if err := run(ctx, pingArgs, &out, &errb); err != nil {
		t.Fatalf("pingpong: %v\n%s", err, errb.String())
	}
	cancel()
	<-done
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var s RTTSummary
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &s); err != nil {
		t.Fatalf("summary: %v\n%s", err, out.String())
	}
	return s
}

func TestPingPongOnVeloce(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "app.sock")
	d, err := backend.NewDaemon(backend.DaemonOptions{ControlSocket: filepath.Join(dir, "c.sock"), AppSocket: sock})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil { // the app socket listens
		t.Fatal(err)
	}
	defer d.Close()
	s := pingPong(t, []string{"echo", "--socket", sock, "--in", "1", "--out", "2", "--timeout", "1m"},
		[]string{"pingpong", "--socket", sock, "--out", "1", "--in", "2", "--count", "300", "--size", "100"})
	t.Logf("%+v", s)
	if s.Samples != 300 || s.Lost != 0 || s.MedianUS <= 0 || s.Mode != "veloce" || s.Datapath != "udp" {
		t.Fatalf("summary %+v", s)
	}
}

func TestPingPongOnRawUDP(t *testing.T) {
	l, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.LocalAddr().String()
	l.Close()
	s := pingPong(t, []string{"echo", "--raw", addr, "--timeout", "1m"}, []string{"pingpong", "--raw", addr, "--count", "300"})
	if s.Samples != 300 || s.Lost != 0 || s.Mode != "raw-udp" {
		t.Fatalf("summary %+v", s)
	}
}

func TestBadArguments(t *testing.T) {
	for _, args := range [][]string{nil, {"bogus"}, {"pingpong", "--size", "4"}, {"pingpong", "--raw", "nowhere"}} {
		var out bytes.Buffer
		if err := run(context.Background(), args, &out, &out); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}
