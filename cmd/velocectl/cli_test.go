package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
	"libvirt.org/go/libvirtxml"
)

// adminDaemon is startDaemon's daemon with a settable log level (as
// veloced makes it); it returns the control socket, the socket directory
// and the level.
func adminDaemon(t *testing.T) (ctl, dir string, lv *slog.LevelVar) {
	t.Helper()
	dir = t.TempDir()
	ctl = filepath.Join(dir, "control.sock")
	lv = new(slog.LevelVar)
	d, err := backend.NewDaemon(backend.DaemonOptions{ControlSocket: ctl, Ports: []backend.PortOptions{
		{Name: "vm0", Socket: filepath.Join(dir, "vm0.sock")},
		{Name: "vm1", Socket: filepath.Join(dir, "vm1.sock"), Client: true},
	}, Admin: backend.AdminOptions{LogLevel: lv}})
	if err != nil {
		t.Fatal(err)
	}
	startAndClose(t, d)
	return ctl, dir, lv
}

// velocectl runs velocectl as main does: it returns stdout, stderr (with
// the printed error) and the exit status.
func velocectl(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	code = exitCode(run(context.Background(), args, &out, &errb), &errb)
	return out.String(), errb.String(), code
}

// mustRun runs velocectl and fails the test unless it exits 0.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errs, code := velocectl(t, args...)
	if code != 0 {
		t.Fatalf("velocectl %s: exit %d: %s", strings.Join(args, " "), code, errs)
	}
	return out
}

func portsJSON(t *testing.T, args ...string) []control.PortInfo {
	t.Helper()
	var ports []control.PortInfo
	out := mustRun(t, args...)
	if err := json.Unmarshal([]byte(out), &ports); err != nil {
		t.Fatalf("velocectl %s: not a JSON list: %v\n%s", strings.Join(args, " "), err, out)
	}
	return ports
}

func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}, {"help", "ports"}, {"ports", "--help"},
		{"add-port", "-h"}, {"stats", "--help"}, {"libvirt-xml", "--help"}, {"completion", "--help"}} {
		out, errs, code := velocectl(t, args...)
		if code != 0 || !strings.Contains(out, "Usage:") {
			t.Errorf("velocectl %s: exit %d, stdout %q, stderr %q", strings.Join(args, " "), code, out, errs)
		}
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		if out := mustRun(t, args...); !strings.HasPrefix(out, "velocectl ") || !strings.Contains(out, "go1.") {
			t.Errorf("velocectl %s: %q", args[0], out)
		}
	}
	var v versionInfo
	if err := json.Unmarshal([]byte(mustRun(t, "version", "-o", "json")), &v); err != nil || v.Version == "" || !strings.HasPrefix(v.Go, "go1.") {
		t.Errorf("version -o json: %+v, %v", v, err)
	}
}

func TestFlagsInAnyPosition(t *testing.T) {
	ctl := startDaemon(t)
	for _, args := range [][]string{
		{"ports", "--control", ctl, "-o", "json"},
		{"--control", ctl, "ports", "-o", "json"},
		{"-o", "json", "--control", ctl, "ports"},
		{"--control=" + ctl, "--output=json", "ports"},
	} {
		if ports := portsJSON(t, args...); len(ports) != 2 || ports[0].Name != "vm0" {
			t.Errorf("%v: %+v", args, ports)
		}
	}
}

// TestControlSocketFromEnvironment: --control beats $VELOCE_CONTROL,
// which beats the default.
func TestControlSocketFromEnvironment(t *testing.T) {
	ctl := startDaemon(t)
	t.Setenv(envControl, ctl)
	if ports := portsJSON(t, "ports", "-o", "json"); len(ports) != 2 {
		t.Errorf("ports from $%s: %+v", envControl, ports)
	}
	nowhere := filepath.Join(t.TempDir(), "none.sock")
	if _, errs, code := velocectl(t, "--control", nowhere, "ports"); code != 1 || !strings.Contains(errs, nowhere) {
		t.Errorf("--control over $%s: exit %d, %q", envControl, code, errs)
	}
	t.Setenv(envControl, nowhere)
	if ports := portsJSON(t, "ports", "-o", "json", "--control", ctl); len(ports) != 2 {
		t.Errorf("--control with a wrong $%s: %+v", envControl, ports)
	}
}

// TestDaemonNotRunningSaysWhatToCheck: the message printed, once, with no
// Go internals, and exit status 1.
func TestDaemonNotRunningSaysWhatToCheck(t *testing.T) {
	ctl := filepath.Join(t.TempDir(), "control.sock")
	out, errs, code := velocectl(t, "--control", ctl, "ports")
	want := "velocectl: cannot reach veloced at " + ctl + ": no such file (is veloced running? is --control right?)\n"
	if code != 1 || errs != want || out != "" {
		t.Errorf("exit %d, stderr %q, stdout %q; want exit 1, stderr %q", code, errs, out, want)
	}
}

func TestUsageErrorsExitTwoNamingTheFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ports", "-o", "bogus"}, "table or json, or wide"},
		{[]string{"add-port", "vm9"}, "--socket"},
		{[]string{"add-port", "vm9", "--socket", "/tmp/x.sock", "--queues", "0"}, "--queues 0"},
		{[]string{"add-port", "vm9", "--socket", "/tmp/x.sock", "--queues", "many"}, "--queues"},
		{[]string{"add-port"}, "missing NAME"},
		{[]string{"del-port", "a", "b"}, `unexpected argument "b"`},
		{[]string{"streams", "--session", "x"}, "--session"},
		{[]string{"stats", "--watch", "1ms"}, "--watch 1ms"},
		{[]string{"stats", "--watch", "soon"}, "--watch"},
		{[]string{"log-level", "loud"}, `level "loud": give one of debug, info, warn, error`},
		{[]string{"--control", "", "ports"}, "--control"},
		{[]string{"porst"}, `did you mean ports?`},
	} {
		_, errs, code := velocectl(t, tc.args...)
		if code != 2 || !strings.Contains(errs, tc.want) || strings.Count(errs, "velocectl:") != 1 {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and %q", tc.args, code, errs, tc.want)
		}
	}
}

func TestPortsByName(t *testing.T) {
	ctl := startDaemon(t)
	if ports := portsJSON(t, "--control", ctl, "ports", "vm1", "-o", "json"); len(ports) != 1 || ports[0].Name != "vm1" {
		t.Errorf("ports vm1: %+v", ports)
	}
	_, errs, code := velocectl(t, "--control", ctl, "ports", "vm0", "vm7")
	if code != 1 || !strings.Contains(errs, `no port "vm7"`) || !strings.Contains(errs, "vm0, vm1") {
		t.Errorf("unknown port: exit %d, %q", code, errs)
	}
	if out := mustRun(t, "--control", ctl, "ports", "-o", "wide"); !strings.Contains(out, "LAST ERROR") {
		t.Errorf("wide table:\n%s", out)
	}
}

func TestStreamsFilters(t *testing.T) {
	ctl := startDaemon(t)
	for _, args := range [][]string{{"--port", "vm0"}, {"--session", "7"}} {
		if out := mustRun(t, append([]string{"--control", ctl, "streams", "-o", "json"}, args...)...); strings.TrimSpace(out) != "[]" {
			t.Errorf("streams %v: %s", args, out)
		}
	}
	if _, errs, code := velocectl(t, "--control", ctl, "streams", "--port", "vm7"); code != 1 || !strings.Contains(errs, `--port: no port "vm7"`) {
		t.Errorf("streams --port vm7: exit %d, %q", code, errs)
	}
}

func TestAppsAndRemoteAreObjects(t *testing.T) {
	ctl := startDaemon(t)
	for _, cmd := range []string{"apps", "remote"} {
		var obj map[string]any
		if err := json.Unmarshal([]byte(mustRun(t, "--control", ctl, cmd, "-o", "json")), &obj); err != nil {
			t.Errorf("%s -o json: %v", cmd, err)
		}
		mustRun(t, "--control", ctl, cmd, "-o", "wide")
	}
}

// TestAddPortThenAFrontendConnects: add-port creates a listening port
// that answers a vhost-user frontend, refuses duplicates; del-port
// disconnects the frontend and removes the socket.
func TestAddPortThenAFrontendConnects(t *testing.T) {
	ctl, dir, _ := adminDaemon(t)
	sock := filepath.Join(dir, "vm2.sock")
	var added control.PortInfo
	if err := json.Unmarshal([]byte(mustRun(t, "--control", ctl, "add-port", "vm2", "--socket", sock, "--queues", "2", "-o", "json")), &added); err != nil {
		t.Fatal(err)
	}
	if added.Name != "vm2" || added.Socket != sock || added.MaxQueues != 2 || added.Mode != "server" {
		t.Errorf("added: %+v", added)
	}
	if ports := portsJSON(t, "--control", ctl, "ports", "-o", "json"); len(ports) != 3 || ports[2].Name != "vm2" {
		t.Errorf("ports after add-port: %+v", ports)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("frontend cannot connect to the added port: %v", err)
	}
	defer c.Close()
	fe := &vhostusertest.Frontend{Conn: c.(*net.UnixConn)}
	if err := fe.Send(vhostuser.GetFeatures, 0, nil); err != nil {
		t.Fatal(err)
	}
	r, err := fe.ReadReply()
	if err != nil {
		t.Fatalf("GET_FEATURES: %v", err)
	}
	if f, err := r.U64(); err != nil || f&(1<<32) == 0 { // VIRTIO_F_VERSION_1
		t.Errorf("GET_FEATURES = %#x, %v", f, err)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"add-port", "vm2", "--socket", filepath.Join(dir, "other.sock")}, "pick another name"},
		{[]string{"add-port", "vm3", "--socket", sock}, "is port vm2's"},
		{[]string{"add-port", "vm3", "--socket", filepath.Join(dir, "no", "such", "dir.sock")}, "no such file"},
		{[]string{"del-port", "vm7"}, `"vm7"`},
	} {
		if _, errs, code := velocectl(t, append([]string{"--control", ctl}, tc.args...)...); code != 1 || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: exit %d, %q; want %q", tc.args, code, errs, tc.want)
		}
	}

	if out := mustRun(t, "--control", ctl, "del-port", "vm2"); !strings.Contains(out, "port vm2 removed") {
		t.Errorf("del-port: %q", out)
	}
	if _, err := fe.ReadReply(); err == nil {
		t.Error("frontend still connected after del-port")
	}
	if _, err := os.Stat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket after del-port: %v", err)
	}
	if ports := portsJSON(t, "--control", ctl, "ports", "-o", "json"); len(ports) != 2 {
		t.Errorf("ports after del-port: %+v", ports)
	}
	// The name and socket are free again.
	mustRun(t, "--control", ctl, "add-port", "vm2", "--socket", sock)
}

func TestLogLevelRoundTrip(t *testing.T) {
	ctl, _, lv := adminDaemon(t)
	if out := mustRun(t, "--control", ctl, "log-level"); out != "info\n" {
		t.Errorf("log-level = %q, want info", out)
	}
	if out := mustRun(t, "--control", ctl, "log-level", "debug"); out != "debug\n" || lv.Level() != slog.LevelDebug {
		t.Errorf("log-level debug = %q, daemon's level %v", out, lv.Level())
	}
	if out := mustRun(t, "--control", ctl, "log-level", "-o", "json"); strings.TrimSpace(out) != `{
  "level": "DEBUG"
}` {
		t.Errorf("log-level -o json = %q", out)
	}
	// A daemon with a fixed level shows it and refuses to change it.
	fixed := startDaemon(t)
	mustRun(t, "--control", fixed, "log-level")
	if _, errs, code := velocectl(t, "--control", fixed, "log-level", "warn"); code != 1 || !strings.Contains(errs, "log level fixed") {
		t.Errorf("fixed level: exit %d, %q", code, errs)
	}
}

// TestLibvirtXMLParsesBack: the interface, memory backing and override
// elements decode with libvirtxml into what the port needs.
func TestLibvirtXMLParsesBack(t *testing.T) {
	ctl, dir, _ := adminDaemon(t)
	mustRun(t, "--control", ctl, "add-port", "mq", "--socket", filepath.Join(dir, "mq.sock"), "--queues", "4")
	for _, tc := range []struct {
		port, mode string
		queues     uint
	}{{"vm0", "client", 0}, {"vm1", "server", 0}, {"mq", "client", 4}} {
		out, errs, code := velocectl(t, "--control", ctl, "libvirt-xml", tc.port, "--tcg")
		if code != 0 {
			t.Fatalf("libvirt-xml %s: exit %d: %s", tc.port, code, errs)
		}
		frags := strings.Split(strings.TrimSpace(out), "\n\n")
		if len(frags) != 3 {
			t.Fatalf("libvirt-xml %s --tcg: %d elements, want 3:\n%s", tc.port, len(frags), out)
		}
		var iface libvirtxml.DomainInterface
		if err := iface.Unmarshal(frags[0]); err != nil {
			t.Fatalf("interface: %v\n%s", err, frags[0])
		}
		if iface.Source == nil || iface.Source.VHostUser == nil || iface.Source.VHostUser.Chardev == nil || iface.Source.VHostUser.Chardev.UNIX == nil {
			t.Fatalf("interface has no vhostuser unix source:\n%s", frags[0])
		}
		u := iface.Source.VHostUser.Chardev.UNIX
		if u.Mode != tc.mode || u.Path != filepath.Join(dir, tc.port+".sock") || iface.Model == nil || iface.Model.Type != "virtio" ||
			iface.ROM == nil || iface.ROM.Enabled != "no" || iface.Alias == nil || iface.Alias.Name != "ua-veloce-"+tc.port {
			t.Errorf("%s: interface:\n%s", tc.port, frags[0])
		}
		if (tc.queues == 0) != (iface.Driver == nil) || (iface.Driver != nil && iface.Driver.Queues != tc.queues) {
			t.Errorf("%s: driver %+v, want queues %d", tc.port, iface.Driver, tc.queues)
		}
		var mb struct {
			XMLName xml.Name `xml:"memoryBacking"`
			libvirtxml.DomainMemoryBacking
		}
		if err := xml.Unmarshal([]byte(frags[1]), &mb); err != nil || mb.MemorySource == nil || mb.MemorySource.Type != "memfd" ||
			mb.MemoryAccess == nil || mb.MemoryAccess.Mode != "shared" {
			t.Errorf("memoryBacking (%v):\n%s", err, frags[1])
		}
		var ov libvirtxml.DomainQEMUOverride
		if err := xml.Unmarshal([]byte(frags[2]), &ov); err != nil || len(ov.Devices) != 1 || ov.Devices[0].Alias != iface.Alias.Name ||
			len(ov.Devices[0].Frontend.Properties) != 1 || ov.Devices[0].Frontend.Properties[0] != (libvirtxml.DomainQEMUOverrideProperty{Name: "vectors", Type: "unsigned", Value: "0"}) {
			t.Errorf("qemu:override (%v):\n%s", err, frags[2])
		}
		if strings.Contains(out, "<!--") {
			t.Errorf("XML with comments:\n%s", out)
		}
	}
	// The pieces make a domain libvirtxml reads whole.
	out, errs, _ := velocectl(t, "--control", ctl, "libvirt-xml", "vm0")
	if !strings.Contains(errs, "vectors=0") || strings.Count(strings.TrimSpace(out), "\n\n") != 1 {
		t.Errorf("without --tcg: stdout\n%s\nstderr %q", out, errs)
	}
	frags := strings.Split(strings.TrimSpace(out), "\n\n")
	doc := "<domain type='qemu'><name>g</name>" + frags[1] + "<devices>" + frags[0] + "</devices></domain>"
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(doc); err != nil || dom.MemoryBacking == nil || len(dom.Devices.Interfaces) != 1 {
		t.Errorf("domain: %v\n%s", err, doc)
	}
	if _, errs, code := velocectl(t, "--control", ctl, "libvirt-xml", "vm7"); code != 1 || !strings.Contains(errs, `no port "vm7"`) {
		t.Errorf("libvirt-xml vm7: exit %d, %q", code, errs)
	}
}

func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish"} {
		if out := mustRun(t, "completion", shell); !strings.Contains(out, "velocectl") || len(out) < 500 {
			t.Errorf("completion %s: %d bytes", shell, len(out))
		}
	}
	ctl := startDaemon(t)
	// What the shell scripts call: port names come from the daemon.
	out := mustRun(t, "__complete", "--control", ctl, "del-port", "")
	if !strings.Contains(out, "vm0\t") || !strings.Contains(out, "vm1\t") {
		t.Errorf("del-port completion:\n%s", out)
	}
	out = mustRun(t, "__complete", "--control", ctl, "ports", "vm0", "")
	if strings.Contains(out, "vm0\t") || !strings.Contains(out, "vm1\t") {
		t.Errorf("ports completion after vm0:\n%s", out)
	}
	if out := mustRun(t, "__complete", "--control", ctl, "streams", "--port", ""); !strings.Contains(out, "vm1\t") {
		t.Errorf("streams --port completion:\n%s", out)
	}
	if out := mustRun(t, "__complete", "ports", "-o", ""); !strings.Contains(out, "wide") {
		t.Errorf("-o completion:\n%s", out)
	}
}

// cancelAfter is stdout for stats --watch: it ends the command's context
// (as Ctrl-C does) once it has seen n samples.
type cancelAfter struct {
	bytes.Buffer
	n      int
	cancel context.CancelFunc
}

func (w *cancelAfter) Write(p []byte) (int, error) {
	n, err := w.Buffer.Write(p)
	if strings.Count(w.String(), `"interval_seconds"`) >= w.n {
		w.cancel()
	}
	return n, err
}

func TestStats(t *testing.T) {
	ctl := startDaemon(t)
	var s statsSample
	if err := json.Unmarshal([]byte(mustRun(t, "--control", ctl, "stats", "-o", "json")), &s); err != nil || len(s.Ports) != 2 || s.IntervalSeconds != 0 {
		t.Errorf("stats -o json: %+v, %v", s, err)
	}
	if out := mustRun(t, "--control", ctl, "stats", "vm1"); !strings.Contains(out, "TX PKTS") || !strings.Contains(out, "vm1") || strings.Contains(out, "vm0") {
		t.Errorf("stats vm1:\n%s", out)
	}
	if _, errs, code := velocectl(t, "--control", ctl, "stats", "vm7"); code != 1 || !strings.Contains(errs, `no port "vm7"`) {
		t.Errorf("stats vm7: exit %d, %q", code, errs)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &cancelAfter{n: 3, cancel: cancel}
	var errb bytes.Buffer
	if err := run(ctx, []string{"--control", ctl, "stats", "--watch", "100ms", "-o", "json"}, out, &errb); err != nil {
		t.Fatalf("stats --watch: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) < 3 {
		t.Fatalf("stats --watch printed %d samples:\n%s", len(lines), out.String())
	}
	for i, l := range lines {
		var s statsSample
		if err := json.Unmarshal([]byte(l), &s); err != nil || len(s.Ports) != 2 || (i > 0) != (s.IntervalSeconds > 0) {
			t.Errorf("sample %d: %+v, %v", i, s, err)
		}
	}
}

func TestStreamsSetQoSErrors(t *testing.T) {
	ctl := startDaemon(t)
	if _, errs, code := velocectl(t, "--control", ctl, "streams", "set-qos", "42", "--accel"); code != 1 || !strings.Contains(errs, "stream 42: no such stream") ||
		!strings.Contains(errs, "velocectl streams lists") {
		t.Errorf("set-qos of an unknown stream: exit %d, %q", code, errs)
	}
	if _, errs, code := velocectl(t, "--control", ctl, "streams", "set-qos", "x"); code != 1 || !strings.Contains(errs, "numeric id") {
		t.Errorf("set-qos x: exit %d, %q", code, errs)
	}
	if _, errs, code := velocectl(t, "--control", ctl, "streams", "set-qos"); code != 2 || !strings.Contains(errs, "missing STREAM") {
		t.Errorf("set-qos without a stream: exit %d, %q", code, errs)
	}
}
