package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/internal/testutil"
)

// asDaemon makes the test binary run veloced's main: the tests below
// start real daemon processes without building another binary. With
// gated set, the process first waits for its descriptor 3 to reach end
// of file: the test starts several daemons, then closes the pipe's other
// end, and they all go at once.
const (
	asDaemon = "VELOCED_TEST_AS_DAEMON"
	gated    = "VELOCED_TEST_GATED"
)

func TestMain(m *testing.M) {
	if os.Getenv(asDaemon) == "1" {
		if os.Getenv(gated) == "1" {
			io.Copy(io.Discard, os.NewFile(3, "gate"))
		}
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// daemonProc is a veloced process and what it printed on stderr.
type daemonProc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    strings.Builder // +checklocks:mu
	ready  chan struct{}   // closed at control.ReadyLine
	exited chan struct{}   // closed once the process is gone
	err    error           // its exit, valid after exited
}

// startVeloced starts veloced with args; with gate non-nil it waits for
// the gate's writer to close before it runs.
func startVeloced(t *testing.T, gate *os.File, args ...string) *daemonProc {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	d := &daemonProc{cmd: exec.Command(self, args...), ready: make(chan struct{}), exited: make(chan struct{})}
	d.cmd.Env = append(os.Environ(), asDaemon+"=1")
	if gate != nil {
		d.cmd.Env = append(d.cmd.Env, gated+"=1")
		d.cmd.ExtraFiles = []*os.File{gate}
	}
	pipe, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pipe)
		readyOnce := sync.OnceFunc(func() { close(d.ready) })
		for sc.Scan() {
			d.mu.Lock()
			d.out.WriteString(sc.Text() + "\n")
			d.mu.Unlock()
			if sc.Text() == control.ReadyLine {
				readyOnce()
			}
		}
		d.err = d.cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(30 * time.Second):
			d.cmd.Process.Kill()
			<-d.exited
		}
	})
	return d
}

func (d *daemonProc) output() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.out.String()
}

// listenerPID connects to the unixpacket socket at path and returns the
// pid of the process listening there (SO_PEERCRED).
func listenerPID(t *testing.T, path string) int {
	t.Helper()
	c, err := net.Dial("unixpacket", path)
	if err != nil {
		t.Fatalf("connect to %s: %v", path, err)
	}
	defer c.Close()
	raw, _ := c.(*net.UnixConn).SyscallConn()
	pid := 0
	raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			pid = int(cred.Pid)
		}
	})
	return pid
}

// TestTwoDaemonsStartedAtOnceShareNoAppSocket is issue 10's collision: two
// veloced processes started at the same moment on one app socket (each
// with its own control socket), again and again, half the time over a
// stale socket a dead daemon left. Every time exactly one serves; the
// other exits saying which process serves the socket and which flag
// picks another path; the winner's socket is never unlinked or replaced
// (it still answers, from the winner), and the winner removes it when it
// stops.
func TestTwoDaemonsStartedAtOnceShareNoAppSocket(t *testing.T) {
	testutil.Integration(t)
	for round := range 20 {
		t.Run(fmt.Sprintf("round %d", round), func(t *testing.T) {
			dir := t.TempDir()
			app := filepath.Join(dir, "app.sock")
			if round%2 == 1 {
				// A daemon died and left its socket behind.
				ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: app, Net: "unixpacket"})
				if err != nil {
					t.Fatal(err)
				}
				ln.SetUnlinkOnClose(false)
				ln.Close()
			}
			gate, open, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			var ds [2]*daemonProc
			for i := range ds {
				ds[i] = startVeloced(t, gate, "--app-socket", app, "--control", filepath.Join(dir, fmt.Sprintf("control%d.sock", i)), "--log-level", "warn")
			}
			gate.Close()
			open.Close() // both go
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			// One becomes ready and the other exits, in either order.
			winner, loser := -1, -1
			r0, r1, e0, e1 := ds[0].ready, ds[1].ready, ds[0].exited, ds[1].exited
			for winner < 0 || loser < 0 {
				select {
				case <-r0:
					winner, r0 = 0, nil
				case <-r1:
					winner, r1 = 1, nil
				case <-e0:
					loser, e0 = 0, nil
				case <-e1:
					loser, e1 = 1, nil
				case <-ctx.Done():
					t.Fatalf("want one daemon ready and one gone; ready %d, exited %d\nfirst:\n%s\nsecond:\n%s", winner, loser, ds[0].output(), ds[1].output())
				}
				if winner >= 0 && winner == loser {
					t.Fatalf("daemon %d became ready, then exited:\n%s", winner, ds[winner].output())
				}
			}
			w, l := ds[winner], ds[loser]
			if l.err == nil {
				t.Errorf("the second daemon exited with status 0:\n%s", l.output())
			}
			wpid := w.cmd.Process.Pid
			want := fmt.Sprintf("another veloced is serving %s (pid %d)? use --app-socket", app, wpid)
			if !strings.Contains(l.output(), want) {
				t.Errorf("the second daemon's error lacks %q:\n%s", want, l.output())
			}
			t.Logf("daemon %d serves; daemon %d: %s", winner, loser, strings.TrimSpace(l.output()))
			if pid := listenerPID(t, app); pid != wpid {
				t.Errorf("the app socket is served by pid %d, want the winner %d", pid, wpid)
			}
			w.cmd.Process.Signal(syscall.SIGTERM)
			<-w.exited
			if w.err != nil {
				t.Errorf("the serving daemon stopped with %v:\n%s", w.err, w.output())
			}
			if _, err := os.Lstat(app); !os.IsNotExist(err) {
				t.Errorf("app socket after the daemon stopped: %v, want it removed", err)
			}
		})
	}
}
