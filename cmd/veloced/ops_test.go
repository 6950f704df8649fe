package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/internal/sdnotify"
	"github.com/veloce-io/veloce/internal/testutil"
)

// No test reads the machine's /etc/veloce/veloced.toml.
func init() { defaultConfig = "" }

// printConfig runs veloced --print-config with args and returns what it
// printed.
func printConfig(t *testing.T, args ...string) string {
	t.Helper()
	var out, stderr bytes.Buffer
	stdout = &out
	defer func() { stdout = os.Stdout }()
	if err := run(context.Background(), append(args, "--print-config"), &stderr); err != nil {
		t.Fatalf("--print-config %v: %v\n%s", args, err, stderr.String())
	}
	return out.String()
}

var keyLine = regexp.MustCompile(`(?m)^(?:# )?([a-z][a-z0-9-]*) = `)

func keys(toml string) map[string]bool {
	out := map[string]bool{}
	for _, m := range keyLine.FindAllStringSubmatch(toml, -1) {
		out[m[1]] = true
	}
	return out
}

// TestPrintConfigRoundTrips: an operator starts from --print-config's
// output; read back, it is the same configuration.
func TestPrintConfigRoundTrips(t *testing.T) {
	first := printConfig(t, "--vhost-user", "/run/veloce/vm0.sock", "--vhost-user", "/run/veloce/vm1.sock", "--queues", "2", "--log-format", "json")
	for _, want := range []string{`vhost-user = ["/run/veloce/vm0.sock", "/run/veloce/vm1.sock"]`, "\nqueues = 2\n", `log-format = "json"`, `peer = []`, `metrics = ""`} {
		if !strings.Contains(first, want) {
			t.Errorf("missing %q in\n%s", want, first)
		}
	}
	p := filepath.Join(t.TempDir(), "veloced.toml")
	if err := os.WriteFile(p, []byte(first), 0o644); err != nil {
		t.Fatal(err)
	}
	second := printConfig(t, "--config", p)
	strip := func(s string) string { _, rest, _ := strings.Cut(s, "\n"); return rest } // the header names the file
	if strip(first) != strip(second) {
		t.Errorf("read back:\n%s\nwant:\n%s", second, first)
	}
}

// TestDistConfigDocumentsEveryFlag: dist/veloced.toml, the file make
// install puts in /etc/veloce, loads as it is and mentions every flag.
func TestDistConfigDocumentsEveryFlag(t *testing.T) {
	dist := filepath.Join("..", "..", "dist", "veloced.toml")
	text, err := os.ReadFile(dist)
	if err != nil {
		t.Fatal(err)
	}
	effective := printConfig(t, "--config", dist)
	documented := keys(string(text))
	for k := range keys(effective) {
		if !documented[k] {
			t.Errorf("%s: flag --%s is not documented: add it, commented out with its default", dist, k)
		}
	}
	for k := range documented {
		if !keys(effective)[k] {
			t.Errorf("%s documents %q, which is no flag", dist, k)
		}
	}
}

func TestConfigFileErrors(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"queues = 2\nservice-ip = \"999.1.1.1\"\n", ":2: service-ip: --service-ip: "},
		{"vhost-user = [\"/tmp/x.sock\"]\n\nlisten = \"nowhere\"\n", ":3: listen: --listen: "},
		{"# veloced\nvhost_user = [\"/tmp/x.sock\"]\n", ":2: vhost_user: no such flag"},
		{"vhost-user = \"/tmp/x.sock\"\nqueues = \"2\"\n", ":2: queues: wrong type: want an integer"},
		{"app-socket = \"\"\nlog-format = \"xml\"\n", ":2: log-format: --log-format: "},
	} {
		p := filepath.Join(t.TempDir(), "veloced.toml")
		if err := os.WriteFile(p, []byte(tc.text), 0o644); err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		err := run(context.Background(), []string{"--config", p, "--app-socket", "", "--vhost-user", filepath.Join(t.TempDir(), "x.sock")}, &stderr)
		if err == nil || !strings.Contains(err.Error(), p+tc.want) {
			t.Errorf("%q: got %v, want an error containing %q", tc.text, err, p+tc.want)
		}
	}
	var stderr bytes.Buffer
	if err := run(context.Background(), []string{"--config", filepath.Join(t.TempDir(), "absent.toml")}, &stderr); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Errorf("a missing --config: %v, want an error naming --config", err)
	}
	if err := run(context.Background(), []string{"--vhost-user", "/tmp/x.sock", "--log-format", "xml"}, &stderr); err == nil || !strings.HasPrefix(err.Error(), "--log-format") {
		t.Errorf("--log-format xml: %v, want an error naming --log-format", err)
	}
}

// TestSystemdStartsVeloced is veloced under a Type=notify unit: its
// configuration from a file, readiness and shutdown on $NOTIFY_SOCKET,
// JSON logs for the journal, metrics on a unix socket.
func TestSystemdStartsVeloced(t *testing.T) {
	dir := t.TempDir()
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "notify"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	t.Setenv(sdnotify.EnvSocket, filepath.Join(dir, "notify"))
	metricsSock := filepath.Join(dir, "metrics.sock")
	conf := filepath.Join(dir, "veloced.toml")
	err = os.WriteFile(conf, []byte(`vhost-user = ["`+filepath.Join(dir, "vm0.sock")+`"]
app-socket = "`+filepath.Join(dir, "app.sock")+`"
control = "`+filepath.Join(dir, "control.sock")+`"
metrics = "unix:`+metricsSock+`"
log-format = "json"
log-level = "debug"
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}

	stderr := testutil.WatchLine(control.ReadyLine, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		done <- run(ctx, []string{"--config", conf, "--log-level", "info"}, stderr)
	}()
	defer func() {
		cancel()
		<-exited
	}()
	stderr.Wait(t, exited, time.Minute)
	notify.SetReadDeadline(time.Now().Add(time.Minute)) // a bound on a hang
	buf := make([]byte, 4096)
	n, err := notify.Read(buf)
	if err != nil || string(buf[:n]) != sdnotify.Ready {
		t.Fatalf("notify socket: %q, %v; want %q", buf[:n], err, sdnotify.Ready)
	}

	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", metricsSock)
	}}}
	resp, err := hc.Get("http://veloced/metrics")
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if mf := mfs["veloce_port_state"]; mf == nil || len(mf.Metric) == 0 || mf.Metric[0].Label[0].GetValue() != "vm0.sock" {
		t.Errorf("veloce_port_state: %v, want vm0.sock's", mf)
	}

	cancel()
	n, err = notify.Read(buf)
	if err != nil || string(buf[:n]) != sdnotify.Stopping {
		t.Errorf("notify socket at shutdown: %q, %v; want %q", buf[:n], err, sdnotify.Stopping)
	}
	if err := <-done; err != nil {
		t.Errorf("veloced: %v\n%s", err, stderr.String())
	}
	var sawReady bool
	for _, l := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		if l == control.ReadyLine {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Errorf("log line %q is not JSON: %v", l, err)
			continue
		}
		if rec["level"] == "DEBUG" {
			t.Errorf("debug line with --log-level info overriding the file's debug: %q", l)
		}
		sawReady = sawReady || rec["msg"] == "veloced ready"
	}
	if !sawReady {
		t.Errorf("no JSON \"veloced ready\" line:\n%s", stderr.String())
	}
}
