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
	"syscall"
	"testing"
	"time"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/sockfile"
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
	if err := second.Start(context.Background()); !errors.Is(err, sockfile.ErrInUse) || !strings.Contains(err.Error(), "another veloced") {
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

// TestSocketsAreNeverStolen: a daemon never removes what is not a stale
// socket. A regular file at the control path is refused and kept; a
// second daemon given the first one's app socket (with its own control
// socket) is refused, and the first daemon's applications can still
// attach; a stale socket left by a dead daemon is replaced.
func TestSocketsAreNeverStolen(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "control.sock")
	if err := os.WriteFile(file, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	d, _ := NewDaemon(DaemonOptions{ControlSocket: file})
	if err := d.Start(context.Background()); !errors.Is(err, sockfile.ErrNotSocket) {
		t.Errorf("Start with a regular file at the control path = %v, want ErrNotSocket", err)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep me" {
		t.Errorf("the regular file after Start: %q, %v", b, err)
	}

	app := filepath.Join(dir, "app.sock")
	first, _ := NewDaemon(DaemonOptions{ControlSocket: filepath.Join(dir, "c1.sock"), AppSocket: app})
	if err := first.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, _ := NewDaemon(DaemonOptions{ControlSocket: filepath.Join(dir, "c2.sock"), AppSocket: app})
	if err := second.Start(context.Background()); !errors.Is(err, sockfile.ErrInUse) {
		t.Errorf("second daemon on the first one's app socket = %v, want ErrInUse", err)
	}
	openApp(t, app).Close() // the first daemon's socket still serves

	// A stale socket (its daemon died without removing it) is replaced.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	third, _ := NewDaemon(DaemonOptions{ControlSocket: stale})
	if err := third.Start(context.Background()); err != nil {
		t.Fatalf("Start over a stale socket: %v", err)
	}
	third.Close()
}

// TestSocketModes: every socket the daemon listens on gets 0660 unless
// told otherwise, and the modes and group it is given.
func TestSocketModes(t *testing.T) {
	dir := t.TempDir()
	ctl, app, vm := filepath.Join(dir, "control.sock"), filepath.Join(dir, "app.sock"), filepath.Join(dir, "vm.sock")
	d, _ := NewDaemon(DaemonOptions{ControlSocket: ctl, AppSocket: app, Ports: []PortOptions{{Socket: vm}}})
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{ctl, app, vm} {
		if fi, err := os.Lstat(s); err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
			t.Errorf("%s: %v %v, want a socket with mode 0660", s, fi.Mode(), err)
		}
	}
	d.Close()

	group := ""
	if os.Geteuid() == 0 {
		group = "65534" // nogroup: only root may give a group it is not in
	}
	d, _ = NewDaemon(DaemonOptions{ControlSocket: ctl, AppSocket: app, Ports: []PortOptions{{Socket: vm}},
		SocketMode: 0o600, SocketGroup: group, ControlSocketMode: 0o600, ControlSocketGroup: group, AppSocketMode: 0o666})
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for s, want := range map[string]os.FileMode{ctl: 0o600, vm: 0o600, app: 0o666} {
		fi, err := os.Lstat(s)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want mode %v", s, fi.Mode(), err, want)
			continue
		}
		if gid := fi.Sys().(*syscall.Stat_t).Gid; group != "" && s != app && gid != 65534 {
			t.Errorf("%s: gid %d, want 65534", s, gid)
		}
	}
}

// TestHostAppLimit: past DaemonOptions.MaxAppClients sessions, opening
// another fails with guestlib.ErrLimit, and a slot freed by a closed
// session is taken by the next.
func TestHostAppLimit(t *testing.T) {
	dir := t.TempDir()
	app := filepath.Join(dir, "app.sock")
	d, _ := NewDaemon(DaemonOptions{ControlSocket: filepath.Join(dir, "control.sock"), AppSocket: app, MaxAppClients: 2})
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	a, b := openApp(t, app), openApp(t, app)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if s, err := guestlib.Open(ctx, guestlib.Options{Socket: app}); !errors.Is(err, guestlib.ErrLimit) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("third session = %v, want ErrLimit", err)
	}
	a.Close()
	// The first session's slot is free once its region is unmapped, a
	// moment after the session itself closed: the next open succeeds
	// then (a bounded wait, not a timing assertion).
	var c *guestlib.Session
	eventually(t, "a session in the freed slot", func() bool {
		var err error
		c, err = guestlib.Open(ctx, guestlib.Options{Socket: app})
		if err != nil && !errors.Is(err, guestlib.ErrLimit) {
			t.Fatalf("open after a slot was freed: %v", err)
		}
		return err == nil
	})
	c.Close()
	b.Close()
}
