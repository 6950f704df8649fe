package sockfile_test

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/veloce-io/veloce/internal/sockfile"
	"github.com/veloce-io/veloce/internal/testutil"
)

// dialEnv makes the test binary a client: it connects to the socket named
// by $SOCKFILE_DIAL ("network path"), and exits 0 when it could, 13 on
// EACCES, 1 otherwise. The permission tests run it as another user.
const dialEnv = "SOCKFILE_DIAL"

func TestMain(m *testing.M) {
	if v := os.Getenv(dialEnv); v != "" {
		network, path, _ := strings.Cut(v, " ")
		c, err := net.Dial(network, path)
		switch {
		case err == nil:
			c.Close()
			os.Exit(0)
		case errors.Is(err, syscall.EACCES):
			os.Exit(13)
		}
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

var networks = []string{"unix", "unixpacket"}

func listen(t *testing.T, network, path string, opts sockfile.Options) *sockfile.Listener {
	t.Helper()
	l, err := sockfile.Listen(network, path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// serves checks that a client connecting to path reaches l.
func serves(t *testing.T, network, path string, l net.Listener) {
	t.Helper()
	c, err := net.Dial(network, path)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	// Connections that came before (Listen's probes) are in the backlog
	// first: take connections until one carries the greeting.
	for range 4 {
		a, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2)
		n, _ := io.ReadFull(a, buf)
		a.Close()
		if n == 2 && string(buf) == "hi" {
			return
		}
	}
	t.Fatalf("%s: the listener never got the client", path)
}

// staleSocket leaves a socket file nobody listens on, as a daemon that
// died does.
func staleSocket(t *testing.T, network, path string) {
	t.Helper()
	ln, err := net.ListenUnix(network, &net.UnixAddr{Name: path, Net: network})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func TestListenFreshPath(t *testing.T) {
	for _, network := range networks {
		t.Run(network, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "run", "veloce", "s.sock")
			l := listen(t, network, path, sockfile.Options{MkdirMode: 0o750})
			if got := l.Addr().String(); got != path {
				t.Errorf("Addr %q, want %q", got, path)
			}
			serves(t, network, path, l)
			fi, err := os.Stat(filepath.Dir(path))
			if err != nil || fi.Mode().Perm() != 0o750&^umask() {
				t.Errorf("created directory: %v %v, want %v", fi.Mode(), err, 0o750&^umask())
			}
			entries, _ := os.ReadDir(filepath.Dir(path))
			if len(entries) != 1 {
				t.Errorf("directory holds %d entries, want the socket only: %v", len(entries), entries)
			}
			l.Close()
			if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("after Close: %v, want the socket file gone", err)
			}
		})
	}
}

func umask() os.FileMode {
	m := syscall.Umask(0)
	syscall.Umask(m)
	return os.FileMode(m)
}

// A socket a dead daemon left is replaced.
func TestListenReplacesStaleSocket(t *testing.T) {
	for _, network := range networks {
		t.Run(network, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.sock")
			staleSocket(t, network, path)
			old := inode(t, path)
			l := listen(t, network, path, sockfile.Options{})
			if inode(t, path) == old {
				t.Error("the stale socket is still there")
			}
			serves(t, network, path, l)
			if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
				t.Errorf("directory holds %v, want the socket only", entries)
			}
		})
	}
}

// A second daemon on the same path refuses to start and leaves the first
// one's socket working.
func TestListenRefusesLiveSocket(t *testing.T) {
	for _, network := range networks {
		t.Run(network, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.sock")
			first := listen(t, network, path, sockfile.Options{})
			_, err := sockfile.Listen(network, path, sockfile.Options{})
			if !errors.Is(err, sockfile.ErrInUse) {
				t.Fatalf("second Listen: %v, want ErrInUse", err)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the path", err)
			}
			serves(t, network, path, first)
		})
	}
}

// A live socket of the other type is in use too (connect says
// EPROTOTYPE).
func TestListenRefusesLiveSocketOfOtherType(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	first := listen(t, "unix", path, sockfile.Options{})
	if _, err := sockfile.Listen("unixpacket", path, sockfile.Options{}); !errors.Is(err, sockfile.ErrInUse) {
		t.Fatalf("unixpacket Listen on a live stream socket: %v, want ErrInUse", err)
	}
	serves(t, "unix", path, first)
}

// A path holding something other than a socket is refused and left as
// it is.
func TestListenRefusesNonSocket(t *testing.T) {
	for _, tc := range []struct {
		name, what string
		make       func(t *testing.T, path string)
	}{
		{"regular file", "regular file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("precious"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{"directory", "directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o755); err != nil {
				t.Fatal(err)
			}
		}},
		{"symlink to a socket", "symbolic link", func(t *testing.T, path string) {
			target := path + ".target"
			staleSocket(t, "unix", target)
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}},
		{"dangling symlink", "symbolic link", func(t *testing.T, path string) {
			if err := os.Symlink("/nonexistent", path); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "control.sock")
			tc.make(t, path)
			before, _ := os.Lstat(path)
			_, err := sockfile.Listen("unix", path, sockfile.Options{})
			if !errors.Is(err, sockfile.ErrNotSocket) {
				t.Fatalf("Listen: %v, want ErrNotSocket", err)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.what) {
				t.Errorf("error %q does not say what is at the path", err)
			}
			after, err := os.Lstat(path)
			if err != nil || !os.SameFile(before, after) || before.ModTime() != after.ModTime() {
				t.Errorf("the %s was touched: %v", tc.name, err)
			}
			if tc.what == "regular file" {
				if b, _ := os.ReadFile(path); string(b) != "precious" {
					t.Errorf("the file now holds %q", b)
				}
			}
			if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1+btoi(strings.Contains(tc.name, "to a socket")) {
				t.Errorf("directory holds %v", entries)
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestListenMode(t *testing.T) {
	for _, tc := range []struct {
		mode, want os.FileMode
	}{{0, 0o660}, {0o600, 0o600}, {0o666, 0o666}} {
		t.Run(tc.want.String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.sock")
			listen(t, "unixpacket", path, sockfile.Options{Mode: tc.mode})
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode()&fs.ModeSocket == 0 || fi.Mode().Perm() != tc.want {
				t.Errorf("socket mode %v, want %v", fi.Mode(), tc.want)
			}
		})
	}
	if _, err := sockfile.Listen("unix", filepath.Join(t.TempDir(), "s"), sockfile.Options{Mode: os.ModeSetuid | 0o660}); err == nil {
		t.Error("a mode with more than permission bits was accepted")
	}
}

// nobody is uid/gid 65534 (Debian's nobody and nogroup) and its group's
// name.
func nobody(t *testing.T) (uid, gid int, group string) {
	t.Helper()
	testutil.RequiresRoot(t)
	u, err := user.Lookup("nobody")
	testutil.Require(t, err == nil, "needs user nobody: %v", err)
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	g, err := user.LookupGroupId(u.Gid)
	testutil.Require(t, err == nil, "needs nobody's group: %v", err)
	return uid, gid, g.Name
}

func TestListenGroup(t *testing.T) {
	_, gid, group := nobody(t)
	for _, g := range []string{group, strconv.Itoa(gid)} {
		t.Run(g, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.sock")
			listen(t, "unix", path, sockfile.Options{Group: g})
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Sys().(*syscall.Stat_t).Gid; int(got) != gid || fi.Mode().Perm() != 0o660 {
				t.Errorf("socket gid %d mode %v, want %d 0660", got, fi.Mode().Perm(), gid)
			}
		})
	}
	if _, err := sockfile.Listen("unix", filepath.Join(t.TempDir(), "s"), sockfile.Options{Group: "no-such-group-veloce"}); err == nil {
		t.Error("an unknown group was accepted")
	}
}

// A user outside the socket's owner and group cannot connect to a 0660
// socket; in its group, it can.
func TestOtherUserNeedsTheGroup(t *testing.T) {
	uid, gid, group := nobody(t)
	// A directory nobody may enter, holding a copy of this test binary
	// nobody may run.
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "dial")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	dialAs := func(network, path string) int {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), dialEnv+"="+network+" "+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("run dialler: %v", err)
		}
		if code := cmd.ProcessState.ExitCode(); code != 0 && code != 13 {
			t.Fatalf("dialler as uid %d: exit %d: %s", uid, code, out)
		}
		return cmd.ProcessState.ExitCode()
	}
	for _, network := range networks {
		t.Run(network, func(t *testing.T) {
			rootOnly := filepath.Join(dir, network+"-root.sock")
			listen(t, network, rootOnly, sockfile.Options{Mode: 0o660, Group: "0"})
			if code := dialAs(network, rootOnly); code != 13 {
				t.Errorf("uid %d connecting to a 0660 root:root socket: exit %d, want 13 (EACCES)", uid, code)
			}
			grouped := filepath.Join(dir, network+"-group.sock")
			listen(t, network, grouped, sockfile.Options{Mode: 0o660, Group: group})
			if code := dialAs(network, grouped); code != 0 {
				t.Errorf("uid %d connecting to a 0660 socket of its group %s: exit %d, want 0", uid, group, code)
			}
		})
	}
}

// A listener whose file was replaced (an operator removed it and a new
// daemon started) does not remove the new daemon's socket on Close.
func TestCloseLeavesANewerSocket(t *testing.T) {
	for _, network := range networks {
		t.Run(network, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.sock")
			old, err := sockfile.Listen(network, path, sockfile.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			newer := listen(t, network, path, sockfile.Options{})
			old.Close()
			serves(t, network, path, newer)
		})
	}
}

func TestSetUnlinkOnCloseFalseKeepsTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	l := listen(t, "unix", path, sockfile.Options{})
	l.SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("after Close with SetUnlinkOnClose(false): %v", err)
	}
}

// A path so long that the private name beside it would not fit sun_path
// still works.
func TestListenLongPath(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, strings.Repeat("d", 98-len(dir)), "s.sock")
	if len(path) > 107 {
		t.Skipf("temporary directory %s too long for the test", dir)
	}
	l := listen(t, "unix", path, sockfile.Options{})
	serves(t, "unix", path, l)
}

func TestParseMode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want os.FileMode
		ok   bool
	}{
		{"0660", 0o660, true}, {"660", 0o660, true}, {"0o600", 0o600, true}, {"0777", 0o777, true}, {"0", 0, true},
		{"", 0, false}, {"0668", 0, false}, {"1777", 0, false}, {"rw-rw----", 0, false}, {"-1", 0, false},
	} {
		got, err := sockfile.ParseMode(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseMode(%q) = %v, %v; want %v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// TestInUseNamesTheListener: the refusal says which process listens
// (SO_PEERCRED), so an operator knows which daemon to look at.
func TestInUseNamesTheListener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	listen(t, "unixpacket", path, sockfile.Options{})
	_, err := sockfile.Listen("unixpacket", path, sockfile.Options{})
	var iu *sockfile.InUseError
	if !errors.Is(err, sockfile.ErrInUse) || !errors.As(err, &iu) {
		t.Fatalf("second Listen: %v, want an *InUseError", err)
	}
	if iu.PID != os.Getpid() || iu.Command == "" {
		t.Errorf("InUseError = %+v, want pid %d and its command", iu, os.Getpid())
	}
	if want := fmt.Sprintf("pid %d", os.Getpid()); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q lacks %q", err, want)
	}
}
