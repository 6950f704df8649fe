package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/plugins/udp"
)

func startDaemon(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	ctl := filepath.Join(dir, "control.sock")
	d, err := backend.NewDaemon(backend.DaemonOptions{ControlSocket: ctl, Ports: []backend.PortOptions{
		{Name: "vm0", Socket: filepath.Join(dir, "vm0.sock")},
		{Name: "vm1", Socket: filepath.Join(dir, "vm1.sock"), Client: true},
	}})
	if err != nil {
		t.Fatal(err)
	}
	startAndClose(t, d)
	return ctl
}

// startAndClose starts d, ready when Start returns, and closes it when the
// test ends.
func startAndClose(t *testing.T, d *backend.Daemon) {
	t.Helper()
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
}

// The JSON field names are a contract (DESIGN.md): outside tests read them.
func TestPortsJSONContract(t *testing.T) {
	ctl := startDaemon(t)
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"--control", ctl, "ports", "-o", "json"}, &out, &errb); err != nil {
		t.Fatalf("%v: %s", err, errb.String())
	}
	var ports []map[string]any
	if err := json.Unmarshal(out.Bytes(), &ports); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out.String())
	}
	if len(ports) != 2 {
		t.Fatalf("%d ports, want 2", len(ports))
	}
	for _, field := range []string{"name", "socket", "state", "features", "queues", "guest_ip",
		"guest_tx_packets", "guest_tx_bytes", "guest_rx_packets", "guest_rx_bytes", "drops", "errors"} {
		if _, ok := ports[0][field]; !ok {
			t.Errorf("field %q missing from %v", field, ports[0])
		}
	}
	if ports[0]["name"] != "vm0" || ports[0]["state"] != "waiting" || ports[1]["mode"] != "client" {
		t.Errorf("ports: %v", ports)
	}
}

func TestPortsTable(t *testing.T) {
	ctl := startDaemon(t)
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"--control", ctl, "ports"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME") || !strings.HasPrefix(lines[1], "vm0 ") {
		t.Errorf("table:\n%s", out.String())
	}
}

func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no command"},
		{[]string{"bogus"}, "unknown command"},
		{[]string{"--control", "/nonexistent/control.sock", "ports"}, "control API"},
		{[]string{"ports", "-o", "yaml"}, "want table or json"},
		{[]string{"--bad-flag"}, "flag provided but not defined"},
	} {
		var out, errb bytes.Buffer
		err := run(context.Background(), tc.args, &out, &errb)
		if err == nil || !strings.Contains(err.Error()+errb.String(), tc.want) {
			t.Errorf("%v: got %v (stderr %q), want %q", tc.args, err, errb.String(), tc.want)
		}
	}
}

func TestStreamsEmpty(t *testing.T) {
	ctl := startDaemon(t)
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"--control", ctl, "streams", "-o", "json"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out.String()) != "[]" {
		t.Errorf("streams of an idle daemon: %s", out.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"--control", ctl, "streams"}, &out, &errb); err != nil || !strings.HasPrefix(out.String(), "STREAM") {
		t.Errorf("table: %v %q", err, out.String())
	}
}

// TestRemote: the datapaths to other hosts and the peers, as JSON and as a
// table.
func TestRemote(t *testing.T) {
	dp, err := udp.New(udp.Options{Listen: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctl := filepath.Join(dir, "control.sock")
	d, err := backend.NewDaemon(backend.DaemonOptions{ControlSocket: ctl, AppSocket: filepath.Join(dir, "app.sock"),
		Runtime: backend.RuntimeOptions{Remote: backend.RemoteOptions{Datapath: dp, Peers: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")}}}})
	if err != nil {
		t.Fatal(err)
	}
	startAndClose(t, d)
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"--control", ctl, "remote", "-o", "json"}, &out, &errb); err != nil {
		t.Fatalf("%v: %s", err, errb.String())
	}
	var info struct {
		Datapaths []map[string]any `json:"datapaths"`
		Peers     []map[string]any `json:"peers"`
	}
	if err := json.Unmarshal(out.Bytes(), &info); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out.String())
	}
	if len(info.Datapaths) != 1 || info.Datapaths[0]["name"] != "udp" || info.Datapaths[0]["addr"] != dp.LocalAddr().String() ||
		info.Datapaths[0]["default"] != true || info.Datapaths[0]["stats"] == nil {
		t.Errorf("datapaths: %v", info.Datapaths)
	}
	if len(info.Peers) != 1 || info.Peers[0]["addr"] != "127.0.0.1:9" {
		t.Errorf("peers: %v", info.Peers)
	}
	out.Reset()
	if err := run(context.Background(), []string{"--control", ctl, "apps", "-o", "json"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"socket": "`+filepath.Join(dir, "app.sock")+`"`) {
		t.Errorf("apps: %s", out.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"--control", ctl, "remote"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "DATAPATH") || !strings.Contains(s, "127.0.0.1:9") || !strings.Contains(s, "messages: 0 sent") {
		t.Errorf("table:\n%s", s)
	}
}

// TestDaemonNotRunning: velocectl against a socket nobody serves says to
// check that veloced runs, naming the socket.
func TestDaemonNotRunning(t *testing.T) {
	ctl := filepath.Join(t.TempDir(), "control.sock")
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"--control", ctl, "streams"}, &out, &errb)
	if !errors.Is(err, control.ErrUnreachable) || !strings.Contains(err.Error(), "is veloced running? (control socket "+ctl+")") {
		t.Errorf("got %v, want ErrUnreachable naming %s", err, ctl)
	}
}
