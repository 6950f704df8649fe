package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/guestlib"
)

// TestStreamsSetQoS: a host application's stream gets new options from
// velocectl streams set-qos; this daemon has kernel UDP only, so asking
// for acceleration keeps UDP with the policy's warning. The JSON answer is
// the stream as velocectl streams shows it, the table names the options,
// and the application is told.
func TestStreamsSetQoS(t *testing.T) {
	dir := t.TempDir()
	ctl, app := filepath.Join(dir, "control.sock"), filepath.Join(dir, "app.sock")
	d, err := backend.NewDaemon(backend.DaemonOptions{ControlSocket: ctl, AppSocket: app})
	if err != nil {
		t.Fatal(err)
	}
	startAndClose(t, d)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := guestlib.Open(ctx, guestlib.Options{Socket: app})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := s.CreateStream(ctx, guestlib.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	id := strconv.FormatUint(uint64(st.ID()), 10)
	var info control.StreamInfo
	out := mustRun(t, "--control", ctl, "streams", "set-qos", id, "--accel", "--reliable", "-o", "json")
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if info.Stream != st.ID() || info.Datapath != "udp" || !info.Options.Acceleration || !info.Options.Reliable || info.Options.Frugal ||
		!strings.Contains(info.Warning, "acceleration requested") {
		t.Errorf("set-qos answered %+v", info)
	}
	select {
	case ev := <-st.Events():
		if ev.Datapath != "udp" || ev.Warning != info.Warning {
			t.Errorf("event %+v", ev)
		}
	case <-ctx.Done():
		t.Fatal("the application was not told")
	}
	table := mustRun(t, "--control", ctl, "streams", "set-qos", id, "--time-sensitive")
	if !strings.Contains(table, "tsn") || !strings.Contains(table, "udp") || !strings.Contains(table, "gate schedule") {
		t.Errorf("table:\n%s", table)
	}
	if list := mustRun(t, "--control", ctl, "streams"); !strings.Contains(list, "tsn") {
		t.Errorf("streams after set-qos:\n%s", list)
	}
}
