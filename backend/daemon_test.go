package backend

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/veloce-io/veloce/control"
)

// TestDaemonStartIsReadiness: once Start returns, every socket listens and
// the control API answers; Close removes them; Close again and Wait agree.
func TestDaemonStartIsReadiness(t *testing.T) {
	dir := t.TempDir()
	opts := DaemonOptions{ControlSocket: filepath.Join(dir, "ctl", "control.sock"), AppSocket: filepath.Join(dir, "app.sock"),
		Ports: []PortOptions{{Name: "vm0", Socket: filepath.Join(dir, "vm0.sock")}}}
	d, err := NewDaemon(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Wait(); !errors.Is(err, ErrNotStarted) {
		t.Errorf("Wait before Start = %v, want ErrNotStarted", err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{opts.ControlSocket, opts.AppSocket, opts.Ports[0].Socket} {
		if _, err := os.Stat(s); err != nil {
			t.Errorf("after Start: %v", err)
		}
	}
	ports, err := control.NewClient(opts.ControlSocket).Ports(context.Background())
	if err != nil || len(ports) != 1 || ports[0].Name != "vm0" || ports[0].State != "waiting" {
		t.Errorf("Ports = %+v, %v", ports, err)
	}
	if err := d.Start(context.Background()); !errors.Is(err, ErrStarted) {
		t.Errorf("second Start = %v, want ErrStarted", err)
	}
	for range 2 {
		if err := d.Close(); err != nil {
			t.Errorf("Close = %v", err)
		}
	}
	if err := d.Wait(); err != nil {
		t.Errorf("Wait after Close = %v", err)
	}
	for _, s := range []string{opts.ControlSocket, opts.AppSocket, opts.Ports[0].Socket} {
		if _, err := os.Lstat(s); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after Close: %v", s, err)
		}
	}
}

// TestDaemonStartFailsCleanly: a second daemon on the same control
// socket is refused before it touches the first one's sockets; a port
// whose socket cannot be created fails Start and leaves nothing behind.
func TestDaemonStartFailsCleanly(t *testing.T) {
	dir := t.TempDir()
	ctl := filepath.Join(dir, "control.sock")
	first, _ := NewDaemon(DaemonOptions{ControlSocket: ctl, Ports: []PortOptions{{Socket: filepath.Join(dir, "vm.sock")}}})
	if err := first.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, _ := NewDaemon(DaemonOptions{ControlSocket: ctl, Ports: []PortOptions{{Socket: filepath.Join(dir, "vm.sock")}}})
	if err := second.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "another veloced is running") {
		t.Fatalf("second daemon: %v", err)
	}
	if _, err := control.NewClient(ctl).Ports(context.Background()); err != nil {
		t.Errorf("first daemon after the second failed: %v", err)
	}

	ctl2, app2 := filepath.Join(dir, "control2.sock"), filepath.Join(dir, "app2.sock")
	bad, _ := NewDaemon(DaemonOptions{ControlSocket: ctl2, AppSocket: app2, Ports: []PortOptions{
		{Name: "ok", Socket: filepath.Join(dir, "ok.sock")},
		{Name: "bad", Socket: filepath.Join(dir, "missing", "bad.sock")},
	}})
	err := bad.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "port bad") {
		t.Fatalf("Start with an impossible socket: %v", err)
	}
	for _, s := range []string{ctl2, app2, filepath.Join(dir, "ok.sock")} {
		if _, err := os.Lstat(s); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after a failed Start: %v", s, err)
		}
	}
	if err := bad.Close(); err == nil {
		t.Error("Close after a failed Start = nil, want Start's error")
	}
}

// TestControlAPIErrors: unknown paths and wrong methods get the API's
// JSON error object and status.
func TestControlAPIErrors(t *testing.T) {
	dir := t.TempDir()
	ctl := filepath.Join(dir, "control.sock")
	d, _ := NewDaemon(DaemonOptions{ControlSocket: ctl})
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", ctl)
	}}}
	for _, tc := range []struct {
		method, path string
		status       int
	}{
		{http.MethodGet, "/v1/nothing", http.StatusNotFound},
		{http.MethodGet, "/ports", http.StatusNotFound},
		{http.MethodPost, control.PathPorts, http.StatusMethodNotAllowed},
		{http.MethodGet, control.PathStreams, http.StatusOK},
	} {
		req, _ := http.NewRequest(tc.method, "http://veloced"+tc.path, nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body any
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || err != nil || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: %d %v (%v), want %d with a JSON body", tc.method, tc.path, resp.StatusCode, body, err, tc.status)
			continue
		}
		if tc.status != http.StatusOK {
			if m, ok := body.(map[string]any); !ok || m["error"] == "" || m["error"] == nil {
				t.Errorf("%s %s: body %v, want {\"error\": ...}", tc.method, tc.path, body)
			}
		}
	}
}
