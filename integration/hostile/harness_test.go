package hostile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
)

// Bounds. None is a performance assertion: each only turns a hang into a
// failure that says what hung.
const (
	readyWithin   = 20 * time.Second // daemon start to control socket answering
	controlWithin = 5 * time.Second  // velocectl ports
	arpWithin     = 10 * time.Second // ARP request to reply on a healthy port
	replyWithin   = 5 * time.Second  // one control-path reply
	fdSlack       = 4                // descriptors the daemon may keep beyond its baseline
	fdSettle      = 5 * time.Second  // for the daemon to close an attacker's descriptors
)

var (
	binDir   string
	binOnce  sync.Once
	binErr   error
	veloced  string
	velocect string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "veloce-hostile-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// gate skips (fails under CI) when the suite cannot run here.
func gate(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("hostile suite: starts real daemons; skipped with -short")
	}
	testutil.Require(t, runtime.GOOS == "linux", "needs Linux (memfd, SCM_RIGHTS, /proc)")
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	_, err := os.Stat(gobin)
	testutil.Require(t, err == nil, "needs the go toolchain at %s to build veloced", gobin)
	binOnce.Do(func() {
		veloced = filepath.Join(binDir, "veloced")
		velocect = filepath.Join(binDir, "velocectl")
		for _, b := range []struct{ out, pkg string }{{veloced, "./cmd/veloced"}, {velocect, "./cmd/velocectl"}} {
			cmd := exec.Command(gobin, "build", "-o", b.out, b.pkg)
			cmd.Dir = moduleRoot()
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				binErr = fmt.Errorf("go build %s: %v: %s", b.pkg, err, out)
				return
			}
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
}

func moduleRoot() string {
	wd, _ := os.Getwd()
	return filepath.Join(wd, "..", "..")
}

// daemon is one veloced process with two vhost-user ports.
type daemon struct {
	t          *testing.T
	cmd        *exec.Cmd
	pid        int
	p1, p2     string // vhost-user sockets
	ctl        string // control socket
	stderr     *bytes.Buffer
	stderrMu   *sync.Mutex
	done       chan struct{}
	waitErr    error
	stopByTest bool
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func startDaemon(t *testing.T) *daemon {
	t.Helper()
	dir := t.TempDir()
	d := &daemon{t: t, p1: filepath.Join(dir, "p1.sock"), p2: filepath.Join(dir, "p2.sock"), ctl: filepath.Join(dir, "control.sock"),
		stderr: &bytes.Buffer{}, stderrMu: &sync.Mutex{}, done: make(chan struct{})}
	d.cmd = exec.Command(veloced, "--vhost-user", d.p1, "--vhost-user", d.p2, "--control", d.ctl,
		"--app-socket", filepath.Join(dir, "app.sock"), "--log-level", "debug")
	w := lockedWriter{d.stderrMu, d.stderr}
	d.cmd.Stdout, d.cmd.Stderr = w, w
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start veloced: %v", err)
	}
	d.pid = d.cmd.Process.Pid
	go func() { d.waitErr = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(d.stop)
	// Readiness: the control socket answers (another change adds a
	// readiness signal; until then, poll with a bound).
	deadline := time.Now().Add(readyWithin)
	for {
		if _, err := d.ports(controlWithin); err == nil {
			break
		}
		if dead, how := d.dead(); dead {
			t.Fatalf("veloced exited during start-up: %s\n%s", how, d.log())
		}
		if time.Now().After(deadline) {
			t.Fatalf("veloced not ready within %v\n%s", readyWithin, d.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return d
}

func (d *daemon) stop() {
	select {
	case <-d.done:
		return
	default:
	}
	d.stopByTest = true
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		d.t.Errorf("veloced did not stop within 10 s of SIGTERM; killing it\n%s", d.tail(30))
		d.cmd.Process.Kill()
		<-d.done
	}
}

var fatalStart = regexp.MustCompile(`(?m)^(fatal error: |panic: |unexpected fault address )`)

var fatalLine = regexp.MustCompile(`(?m)^(fatal error: .*|panic: .*|unexpected fault address .*|\[signal [^\]]*\])$`)

// dead reports whether the daemon exited (by itself) and how.
func (d *daemon) dead() (bool, string) {
	select {
	case <-d.done:
	default:
		// Not reaped: check /proc too (a zombie is dead).
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", d.pid)); err == nil {
			if f := statFields(b); len(f) > 0 && f[0] == "Z" {
				select {
				case <-d.done: // reaped: report how it died
				case <-time.After(5 * time.Second):
					return true, "zombie"
				}
				break
			}
		}
		select {
		case <-d.done:
		default:
			return false, ""
		}
	}
	how := "exited"
	var ee *exec.ExitError
	if errors.As(d.waitErr, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			how = "killed by signal " + ws.Signal().String()
		} else {
			how = fmt.Sprintf("exit status %d", ee.ExitCode())
		}
	} else if d.waitErr == nil {
		how = "exit status 0"
	}
	if m := fatalLine.FindAllString(d.log(), 3); len(m) > 0 {
		how += " (" + strings.Join(m, "; ") + ")"
	}
	return true, how
}

func (d *daemon) log() string {
	d.stderrMu.Lock()
	defer d.stderrMu.Unlock()
	return d.stderr.String()
}

func (d *daemon) tail(n int) string {
	if l := d.log(); fatalStart.MatchString(l) {
		// A crash: its first lines say where, not the goroutine dump's end.
		lines := strings.Split(l[fatalStart.FindStringIndex(l)[0]:], "\n")
		return strings.Join(lines[:min(len(lines), 12)], "\n")
	}
	lines := strings.Split(strings.TrimRight(d.log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// portJSON is the part of velocectl's port object the suite reads.
type portJSON struct {
	Name      string `json:"name"`
	Socket    string `json:"socket"`
	State     string `json:"state"`
	Errors    uint64 `json:"errors"`
	LastError string `json:"last_error"`
}

// ports runs velocectl ports -o json, bounded by timeout.
func (d *daemon) ports(timeout time.Duration) ([]portJSON, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, velocect, "--control", d.ctl, "ports", "-o", "json")
	out, err := cmd.Output()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("velocectl ports: no answer within %v", timeout)
	}
	if err != nil {
		return nil, fmt.Errorf("velocectl ports: %v", err)
	}
	var ps []portJSON
	if err := json.Unmarshal(out, &ps); err != nil {
		return nil, fmt.Errorf("velocectl ports -o json: %v: %s", err, out)
	}
	return ps, nil
}

// fds counts the daemon's open descriptors.
func (d *daemon) fds() int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.pid))
	if err != nil {
		return -1
	}
	return len(ents)
}

// statFields returns /proc/PID/stat's fields after the command name,
// starting with the state.
func statFields(b []byte) []string {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// cpu returns the daemon's user+system CPU time.
func (d *daemon) cpu() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", d.pid))
	if err != nil {
		return 0, err
	}
	f := statFields(b)
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", d.pid)
	}
	// utime and stime are fields 14 and 15 of stat(5): 11 and 12 here.
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz, nil
}

// cpuOver measures the daemon's CPU time over an idle window.
func (d *daemon) cpuOver(window time.Duration) (time.Duration, error) {
	c0, err := d.cpu()
	if err != nil {
		return 0, err
	}
	time.Sleep(window)
	c1, err := d.cpu()
	if err != nil {
		return 0, err
	}
	return c1 - c0, nil
}

// harness is one attack class's world: a daemon, the well-behaved
// frontend on port 2, and the daemon's descriptor baseline.
type harness struct {
	t        *testing.T
	d        *daemon
	good     *vhostusertest.NetPeer
	baseline int
	restarts int
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{t: t}
	h.start(t)
	return h
}

func (h *harness) start(t *testing.T) {
	t.Helper()
	h.d = startDaemon(h.t)
	good, err := vhostusertest.NewNetPeer(h.t, h.d.p2, vhostusertest.NetPeerOptions{})
	if err != nil {
		t.Fatalf("well-behaved frontend on port 2: %v\n%s", err, h.d.tail(20))
	}
	if err := good.ARP(arpWithin); err != nil {
		t.Fatalf("port 2 before any attack: %v\n%s", err, h.d.tail(20))
	}
	h.good = good
	h.baseline = h.d.fds()
}

// afterCase records a daemon that died during an attack and starts a new
// one, so that the class's remaining attacks still run.
func (h *harness) afterCase(t *testing.T) {
	t.Helper()
	if dead, how := h.d.dead(); dead {
		t.Errorf("daemon died: %s\n--- daemon log tail ---\n%s", how, h.d.tail(25))
		h.restarts++
		h.start(t)
	}
}

// check runs the invariants that must hold after an attack class, with
// port 1's attackers gone. It reports each broken one.
func (h *harness) check(t *testing.T) {
	t.Helper()
	if h.restarts > 0 {
		t.Errorf("the daemon died %d time(s) in this class (see the attacks above)", h.restarts)
	}
	if dead, how := h.d.dead(); dead {
		t.Errorf("daemon died: %s\n%s", how, h.d.tail(25))
		return
	}
	if _, err := h.d.ports(controlWithin); err != nil {
		t.Errorf("control API: %v", err)
	}
	if err := h.good.ARP(arpWithin); err != nil {
		t.Errorf("port 2 (well-behaved frontend) stopped answering ARP: %v", err)
	}
	if err := h.portRecovers(t); err != nil {
		t.Errorf("port 1 does not serve a fresh well-behaved frontend: %v", err)
	}
	var n int
	for deadline := time.Now().Add(fdSettle); ; time.Sleep(50 * time.Millisecond) {
		if n = h.d.fds(); n <= h.baseline+fdSlack || time.Now().After(deadline) {
			break
		}
	}
	if n > h.baseline+fdSlack {
		t.Errorf("fd leak: daemon holds %d descriptors, %d before the attacks (+%d) after port 1's frontends left", n, h.baseline, n-h.baseline)
	}
	if dead, how := h.d.dead(); dead {
		t.Errorf("daemon died during the checks: %s\n%s", how, h.d.tail(25))
	}
}

// portRecovers connects a well-behaved frontend to port 1, gets an ARP
// answered and disconnects.
func (h *harness) portRecovers(t *testing.T) error {
	var err error
	for deadline := time.Now().Add(fdSettle); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var p *vhostusertest.NetPeer
		p, err = vhostusertest.NewNetPeer(t, h.d.p1, vhostusertest.NetPeerOptions{Timeout: replyWithin})
		if err != nil {
			continue // the port may still be dropping the attacker
		}
		err = p.ARP(arpWithin)
		p.C.Close()
		return err
	}
	return err
}

// logCPU measures the daemon's CPU time over an idle window after a
// class; more than 5 % of a core fails the class.
func (h *harness) logCPU(t *testing.T, window time.Duration) {
	t.Helper()
	if dead, _ := h.d.dead(); dead {
		return
	}
	c, err := h.d.cpuOver(window)
	if err != nil {
		t.Logf("cpu: %v", err)
		return
	}
	t.Logf("daemon CPU over %v idle after the attacks: %v", window, c)
	// Looser than TestIdleCPU's budget: this catches a poller that keeps
	// spinning after its attacker left, not a slightly busy daemon.
	if c > window/20 {
		t.Errorf("daemon busy after port 1's attackers left: %v CPU over %v idle", c, window)
	}
}

// expectLastError waits for velocectl to show, as port 1's last error,
// one that contains want (the daemon records it once it dropped the
// frontend), and fails the test otherwise.
func (h *harness) expectLastError(t *testing.T, want string) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(fdSettle); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		ps, err := h.d.ports(controlWithin)
		if err != nil {
			t.Errorf("control API: %v", err)
			return
		}
		for _, p := range ps {
			if p.Socket == h.d.p1 {
				last = p.LastError
			}
		}
		if strings.Contains(last, want) {
			return
		}
	}
	t.Errorf("port 1's last error is %q, want one that says %q", last, want)
}
