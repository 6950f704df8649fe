package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }
func (l *list) Get() any           { return []string(*l) }

// flags is a FlagSet shaped like veloced's: every kind of flag.
type flags struct {
	fs       *flag.FlagSet
	listen   *string
	queues   *int
	node     *uint
	verbose  *bool
	ratio    *float64
	timeout  *time.Duration
	peers    list
	sockets  list
	cfg      *Config
	defaults string
}

func newFlags(t *testing.T, defaultPath string) *flags {
	f := &flags{fs: flag.NewFlagSet("veloced", flag.ContinueOnError)}
	f.fs.SetOutput(io.Discard)
	f.listen = f.fs.String("listen", "", "UDP address")
	f.queues = f.fs.Int("queues", 1, "queue pairs")
	f.node = f.fs.Uint("node-id", 0, "node id")
	f.verbose = f.fs.Bool("verbose", false, "say more")
	f.ratio = f.fs.Float64("ratio", 0.5, "a ratio")
	f.timeout = f.fs.Duration("timeout", time.Second, "a timeout")
	f.fs.Var(&f.peers, "peer", "a peer (repeatable)")
	f.fs.Var(&f.sockets, "vhost-user", "a socket (repeatable)")
	f.cfg = New(f.fs, defaultPath)
	return f
}

func writeFile(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "veloced.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFileSetsEveryKindOfFlag(t *testing.T) {
	p := writeFile(t, `# a comment
listen = "10.0.0.1:7078"
queues = 4
node-id = 7
verbose = true
ratio = 2
timeout = "1m30s"
peer = ["10.0.0.2:7078", "10.0.0.3:7078"]
vhost-user = "/run/veloce/vm0.sock"
`)
	f := newFlags(t, "")
	if err := f.cfg.Parse([]string{"--config", p}); err != nil {
		t.Fatal(err)
	}
	if *f.listen != "10.0.0.1:7078" || *f.queues != 4 || *f.node != 7 || !*f.verbose || *f.ratio != 2 || *f.timeout != 90*time.Second {
		t.Errorf("scalars: listen %q queues %d node %d verbose %t ratio %g timeout %s", *f.listen, *f.queues, *f.node, *f.verbose, *f.ratio, *f.timeout)
	}
	if strings.Join(f.peers, " ") != "10.0.0.2:7078 10.0.0.3:7078" || strings.Join(f.sockets, " ") != "/run/veloce/vm0.sock" {
		t.Errorf("lists: peer %q vhost-user %q", f.peers, f.sockets)
	}
	if f.cfg.Loaded() != p {
		t.Errorf("Loaded() = %q, want %q", f.cfg.Loaded(), p)
	}
}

func TestCommandLineWins(t *testing.T) {
	p := writeFile(t, "listen = \"10.0.0.1:7078\"\nqueues = 4\npeer = [\"10.0.0.2:7078\", \"10.0.0.3:7078\"]\n")
	f := newFlags(t, "")
	if err := f.cfg.Parse([]string{"--queues", "2", "--config", p, "--peer", "192.0.2.1:1"}); err != nil {
		t.Fatal(err)
	}
	if *f.queues != 2 || *f.listen != "10.0.0.1:7078" || strings.Join(f.peers, " ") != "192.0.2.1:1" {
		t.Errorf("queues %d listen %q peers %q: want 2, the file's, the command line's only", *f.queues, *f.listen, f.peers)
	}
}

func TestDefaultFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "absent.toml")
	if err := newFlags(t, missing).cfg.Parse(nil); err != nil {
		t.Errorf("a missing default file: %v, want it ignored", err)
	}
	err := newFlags(t, missing).cfg.Parse([]string{"--config", missing})
	if err == nil || !strings.Contains(err.Error(), "--config") || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing --config: %v, want an error naming --config", err)
	}
	f := newFlags(t, writeFile(t, "queues = 3\n"))
	if err := f.cfg.Parse(nil); err != nil || *f.queues != 3 {
		t.Errorf("the default file: queues %d, err %v; want 3", *f.queues, err)
	}
	f = newFlags(t, writeFile(t, "queues = 3\n"))
	if err := f.cfg.Parse([]string{"--config", ""}); err != nil || *f.queues != 1 {
		t.Errorf("--config '': queues %d, err %v; want the default, 1", *f.queues, err)
	}
}

// TestErrorsNameLineAndKey: every mistake in a file points at its line and key.
func TestErrorsNameLineAndKey(t *testing.T) {
	for _, tc := range []struct {
		name, text, want string
		is               error
	}{
		{"unknown key", "queues = 2\n\nlisten-addr = \"x\"\n", ":3: listen-addr: no such flag", ErrUnknownKey},
		{"quoted unknown key", "\"bogus\" = 1\n", ":1: bogus: no such flag", ErrUnknownKey},
		{"table", "queues = 1\n[peer]\naddr = \"x\"\n", ":2: peer: no such flag: tables", ErrUnknownKey},
		{"dotted key", "listen.addr = \"x\"\n", ":1: listen: no such flag: tables", ErrUnknownKey},
		{"config in the file", "config = \"/x\"\n", ":1: config:", ErrUnknownKey},
		{"string for int", "# c\nqueues = \"two\"\n", `:2: queues: wrong type: want an integer, have string "two"`, ErrType},
		{"int for string", "listen = 7078\n", ":1: listen: wrong type: want a string, have integer 7078", ErrType},
		{"string for bool", "verbose = \"yes\"\n", ":1: verbose: wrong type: want true or false", ErrType},
		{"int for duration", "timeout = 10\n", ":1: timeout: wrong type: want a duration string", ErrType},
		{"array of ints", "peer = [\"a\", 2]\n", ":1: peer: element 1: wrong type: want a string, have integer 2", ErrType},
		{"array for scalar", "listen = [\"a\"]\n", ":1: listen: wrong type: want a string, have an array", ErrType},
		{"bad value", "\n\nnode-id = -1\n", `:3: node-id: invalid value "-1"`, nil},
		{"bad duration", "timeout = \"soon\"\n", `:1: timeout: invalid value "soon"`, nil},
		{"syntax", "queues = 1\nlisten = \"unterminated\n", ":2: ", nil},
		{"duplicate", "queues = 1\nqueues = 2\n", ":2: ", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, tc.text)
			err := newFlags(t, "").cfg.Parse([]string{"--config", p})
			if err == nil || !strings.Contains(err.Error(), p+tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, p+tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("%v is not %v", err, tc.is)
			}
		})
	}
}

// TestPrintRoundTrips: Print's output, read back as a file, gives the
// same configuration.
func TestPrintRoundTrips(t *testing.T) {
	p := writeFile(t, "listen = \"10.0.0.1:7078\"\nratio = 1.5\npeer = [\"a:1\", \"b \\\"quoted\\\"\"]\n")
	f := newFlags(t, "")
	if err := f.cfg.Parse([]string{"--config", p, "--queues", "3", "--verbose", "--timeout", "2s", "--print-config"}); err != nil {
		t.Fatal(err)
	}
	if !f.cfg.Printing() {
		t.Error("Printing() = false after --print-config")
	}
	var out bytes.Buffer
	if err := f.cfg.Print(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"# queue pairs\nqueues = 3\n", `peer = ["a:1", "b \"quoted\""]`, "vhost-user = []", `timeout = "2s"`, "ratio = 1.5", "verbose = true", "node-id = 0"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("missing %q in\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "print-config =") || strings.Contains(out.String(), "\nconfig =") {
		t.Errorf("--config or --print-config printed:\n%s", out.String())
	}
	g := newFlags(t, "")
	if err := g.cfg.Parse([]string{"--config", writeFile(t, out.String())}); err != nil {
		t.Fatalf("reading the printed configuration back: %v\n%s", err, out.String())
	}
	a, _ := json.Marshal(snapshot(f))
	b, _ := json.Marshal(snapshot(g))
	if !bytes.Equal(a, b) {
		t.Errorf("round trip: %s, want %s", b, a)
	}
}

func snapshot(f *flags) []any {
	return []any{*f.listen, *f.queues, *f.node, *f.verbose, *f.ratio, *f.timeout, f.peers, f.sockets}
}

func TestAnnotate(t *testing.T) {
	p := writeFile(t, "queues = 2\n\nlisten = \"nowhere\"\n")
	f := newFlags(t, "")
	if err := f.cfg.Parse([]string{"--config", p, "--queues", "9"}); err != nil {
		t.Fatal(err)
	}
	inner := errors.New("--listen: missing port in address")
	err := f.cfg.Annotate(inner)
	if want := p + ":3: listen: --listen: missing port"; !strings.HasPrefix(err.Error(), want) || !errors.Is(err, inner) {
		t.Errorf("got %v, want %q... wrapping the error", err, want)
	}
	for _, e := range []error{errors.New("--queues: too many"), errors.New("port vm0: broken"), nil} {
		if got := f.cfg.Annotate(e); got != e {
			t.Errorf("Annotate(%v) = %v, want it unchanged (not from the file)", e, got)
		}
	}
}

func TestNewLogger(t *testing.T) {
	var buf bytes.Buffer
	log, _, err := NewLogger(&buf, "warn", LogJSON)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.Warn("shown", "port", "vm0")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil || rec["msg"] != "shown" || rec["port"] != "vm0" || rec["level"] != "WARN" {
		t.Errorf("JSON log %q: %v, %v", buf.String(), rec, err)
	}
	if _, _, err := NewLogger(&buf, "loud", LogText); err == nil || !strings.HasPrefix(err.Error(), "--log-level: ") {
		t.Errorf("bad level: %v, want an error naming --log-level", err)
	}
	if _, _, err := NewLogger(&buf, "info", "xml"); err == nil || !strings.HasPrefix(err.Error(), "--log-format: ") {
		t.Errorf("bad format: %v, want an error naming --log-format", err)
	}
}
