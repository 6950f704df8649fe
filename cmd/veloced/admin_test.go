package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/veloce-io/veloce/control"
)

// TestLogLevelAndAddPortAtRunTime: veloced's logger follows the level set
// through the control API, and a port added at run time gets --queues.
func TestLogLevelAndAddPortAtRunTime(t *testing.T) {
	dir := t.TempDir()
	ctl := filepath.Join(dir, "control.sock")
	ctx, stderr, _ := inProcess(t, nil, "--control", ctl, "--app-socket", "", "--queues", "3", "--log-level", "warn",
		"--vhost-user", filepath.Join(dir, "vm0.sock"))
	c := control.NewClient(ctl)
	defer c.CloseIdleConnections()
	if l, err := c.LogLevel(ctx); err != nil || l.Level != "WARN" {
		t.Fatalf("LogLevel = %+v, %v; want WARN (--log-level warn)", l, err)
	}
	if _, err := c.SetLogLevel(ctx, control.LogLevelRequest{Level: "debug"}); err != nil {
		t.Fatal(err)
	}
	p, err := c.AddPort(ctx, control.AddPortRequest{Name: "vm1", Socket: filepath.Join(dir, "vm1.sock")})
	if err != nil || p.MaxQueues != 3 {
		t.Errorf("AddPort = %+v, %v; want 3 queue pairs (--queues 3)", p, err)
	}
	// The "port added" line is at info: logged only because the level is
	// debug now.
	if log := stderr.String(); !strings.Contains(log, `msg="port added" port=vm1`) {
		t.Errorf("after log-level debug, veloced did not log the added port:\n%s", log)
	}
}
