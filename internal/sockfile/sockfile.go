// Package sockfile creates the unix sockets a daemon listens on (the
// vhost-user sockets, the control socket, the host-application socket) so
// that starting a daemon never breaks another one, never deletes a file
// that is not a socket, and never lets a client in with permissions the
// operator did not ask for.
//
// Listen decides by what is at the path (os.Lstat, so a symlink is never
// followed):
//
//   - nothing: it listens there;
//   - not a socket (a regular file, a directory, a symlink, a FIFO...): it
//     refuses with ErrNotSocket and leaves the file alone;
//   - a socket something answers on (a connect of the same socket type
//     succeeds, or the listener is of the other type, or its backlog is
//     full): it refuses with ErrInUse and leaves the socket alone — a
//     second veloced started by mistake exits without harming the first;
//   - a socket nothing listens on (the connect fails with ECONNREFUSED: a
//     daemon died and left it): it replaces it.
//
// Any other answer to the probe (EACCES, a timeout) is an error: Listen
// does not replace what it could not check.
//
// # Permissions without a window
//
// A unix socket's file gets its mode from the process umask at bind(2),
// and connect(2) checks the permissions only when it connects: a client
// that connects between bind and a later chmod keeps its connection. So
// Listen binds where no client can reach: in a fresh private directory
// (mode 0700, os.MkdirTemp) beside path. There it sets the group, then the
// mode, then moves the socket to path with renameat2(2): RENAME_NOREPLACE
// when path was free (so a file that appeared meanwhile is not clobbered),
// RENAME_EXCHANGE when it held a stale socket (the old file lands in the
// private directory and is checked, by device and inode, to be the stale
// socket that was probed; if it is not, the exchange is undone and Listen
// looks again). The socket is reachable at path only with its final mode
// and group. The process umask is not touched: it is shared by every
// thread of the process, so changing it around bind would race with any
// other goroutine creating files. On a file system without renameat2
// flags Listen falls back to link(2) (which never replaces) and, for a
// stale socket, to unlinking it after checking its inode again.
//
// The kernel keeps the name the socket was bound to: Addr reports path,
// but a client's RemoteAddr and an accepted connection's LocalAddr show
// the private name (the socket's getsockname). When path is too long for
// that name to fit sun_path, the socket is bound through
// /proc/self/fd/N/ instead, where N is a descriptor of the private
// directory.
//
// # Removal
//
// Close removes the socket file only while it is still this listener's
// (same device and inode as placed), and does so before it closes the
// socket: while the socket is open no other Listen replaces the file
// (it would find it live), so the check cannot be raced by a daemon using
// this package. A daemon that lost its file to an operator's rm and a new
// daemon's socket never unlinks the new one.
package sockfile

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Errors Listen returns, wrapped in an *fs.PathError naming the path.
var (
	// ErrInUse: something listens on the socket at the path. Listen
	// returns it as an *InUseError naming the process when the kernel
	// says which (SO_PEERCRED).
	ErrInUse = errors.New("another process is listening (another veloced?)")
	// ErrNotSocket: the path exists and is not a socket; the error says
	// what it is.
	ErrNotSocket = errors.New("not a socket")
)

// InUseError is ErrInUse with the process that listens on the socket, as
// the kernel recorded it when that process called listen(2). It matches
// ErrInUse with errors.Is.
type InUseError struct {
	// PID is the listening process (0: unknown, e.g. a socket of another
	// type, or in another PID namespace).
	PID int
	// Command is its name (/proc/PID/comm), or empty.
	Command string
}

func (e *InUseError) Error() string {
	switch {
	case e.PID == 0:
		return ErrInUse.Error()
	case e.Command != "":
		return fmt.Sprintf("another process is listening (another veloced? pid %d, %s)", e.PID, e.Command)
	}
	return fmt.Sprintf("another process is listening (another veloced? pid %d)", e.PID)
}

// Is makes an *InUseError match ErrInUse.
func (e *InUseError) Is(target error) bool { return target == ErrInUse }

// Defaults for Options.
const (
	DefaultMode      os.FileMode = 0o660
	DefaultMkdirMode os.FileMode = 0o755
)

// probeTimeout bounds the connect that tells a live socket from a stale
// one. A unix connect does not wait for an accept (a full backlog fails
// at once with EAGAIN), so this only guards against the unexpected.
const probeTimeout = 2 * time.Second

// Options say who may connect to the socket and how to make its directory.
type Options struct {
	// Mode is the socket file's permission bits (at most 0777); 0 means
	// DefaultMode (0660: owner and group). Connecting needs write
	// permission.
	Mode os.FileMode
	// Group is the socket file's group: a group name (looked up with
	// os/user) or a numeric gid. Empty keeps the group the file gets from
	// the process (or a setgid directory). Setting a group the process is
	// not in needs CAP_CHOWN.
	Group string
	// MkdirMode is the mode of the parent directories Listen creates when
	// they are missing (less the umask); 0 means DefaultMkdirMode (0755).
	// Existing directories are left as they are.
	MkdirMode os.FileMode
	// NoMkdir makes a missing parent directory an error instead (a
	// vhost-user socket path is the operator's, as with QEMU's).
	NoMkdir bool
}

// Listener is a listening unix socket at a path. It is a
// *net.UnixListener (Accept, AcceptUnix, SetDeadline, File, SyscallConn)
// whose Addr is the path and whose Close removes the file only while it
// is still this listener's.
type Listener struct {
	*net.UnixListener
	path    string
	network string
	id      fileID // the socket file as placed at path

	mu     sync.Mutex
	unlink bool // +checklocks:mu
	closed bool // +checklocks:mu
}

var _ net.Listener = (*Listener)(nil)

// Path returns the socket's path.
func (l *Listener) Path() string { return l.path }

// Addr returns the socket's path (not the private name it was bound to).
func (l *Listener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: l.network} }

// SetUnlinkOnClose sets whether Close removes the socket file (while it
// is still this listener's). Listen sets it to true.
func (l *Listener) SetUnlinkOnClose(unlink bool) {
	l.mu.Lock()
	l.unlink = unlink
	l.mu.Unlock()
}

// Close removes the socket file if it is still this listener's (and
// SetUnlinkOnClose has not said otherwise), then closes the socket.
func (l *Listener) Close() error {
	l.mu.Lock()
	if !l.closed && l.unlink {
		if id, err := lstatID(l.path); err == nil && id == l.id {
			unix.Unlink(l.path)
		}
	}
	l.closed = true
	l.mu.Unlock()
	return l.UnixListener.Close()
}

// Listen listens on network ("unix" or "unixpacket") at path, a file
// system path, following the package's rules: it refuses when path is
// not a socket (ErrNotSocket) or when something listens on it (ErrInUse),
// replaces a stale socket, creates missing parent directories with
// opts.MkdirMode, and gives the socket opts.Mode and opts.Group before
// any client can reach it. Errors about path are *fs.PathError with Op
// "listen", wrapping ErrInUse, ErrNotSocket, or the system's error.
func Listen(network, path string, opts Options) (*Listener, error) {
	switch network {
	case "unix", "unixpacket":
	default:
		return nil, &fs.PathError{Op: "listen", Path: path, Err: net.UnknownNetworkError(network)}
	}
	if path == "" || path[0] == '@' {
		return nil, &fs.PathError{Op: "listen", Path: path, Err: errors.New("not a file system path")}
	}
	mode := opts.Mode
	if mode == 0 {
		mode = DefaultMode
	}
	if mode&^os.ModePerm != 0 {
		return nil, &fs.PathError{Op: "listen", Path: path, Err: fmt.Errorf("mode %#o: only permission bits", mode)}
	}
	mkdirMode := opts.MkdirMode
	if mkdirMode == 0 {
		mkdirMode = DefaultMkdirMode
	}
	gid := -1
	if opts.Group != "" {
		var err error
		if gid, err = lookupGroup(opts.Group); err != nil {
			return nil, &fs.PathError{Op: "listen", Path: path, Err: err}
		}
	}
	dir := filepath.Dir(path)
	if opts.NoMkdir {
		if _, err := os.Stat(dir); err != nil {
			return nil, &fs.PathError{Op: "listen", Path: path, Err: fmt.Errorf("socket directory: %w", err)}
		}
	} else if err := os.MkdirAll(dir, mkdirMode); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}

	// Before making anything, refuse what is plainly not ours to replace.
	if _, err := check(network, path); err != nil {
		return nil, err
	}

	priv, err := os.MkdirTemp(dir, ".sockfile-")
	if err != nil {
		return nil, fmt.Errorf("create private socket directory: %w", err)
	}
	defer os.RemoveAll(priv) // after placing: at most a stale socket
	name := filepath.Join(priv, "s")
	bindName := name
	if len(name) >= len(unix.RawSockaddrUnix{}.Path) {
		d, err := os.Open(priv)
		if err != nil {
			return nil, fmt.Errorf("open private socket directory: %w", err)
		}
		defer d.Close()
		bindName = fmt.Sprintf("/proc/self/fd/%d/s", d.Fd())
	}
	ln, err := net.ListenUnix(network, &net.UnixAddr{Name: bindName, Net: network})
	if err != nil {
		return nil, &fs.PathError{Op: "listen", Path: path, Err: err}
	}
	ln.SetUnlinkOnClose(false) // the private name goes with priv
	l := &Listener{UnixListener: ln, path: path, network: network, unlink: true}
	if err := l.place(name, gid, mode); err != nil {
		ln.Close()
		return nil, err
	}
	return l, nil
}

// place gives the socket at name its group and mode and moves it to
// l.path.
func (l *Listener) place(name string, gid int, mode os.FileMode) error {
	if gid >= 0 {
		// Group first: the mode then never applies to the wrong group.
		if err := os.Lchown(name, -1, gid); err != nil {
			return fmt.Errorf("set socket group: %w", err)
		}
	}
	if err := os.Chmod(name, mode); err != nil {
		return fmt.Errorf("set socket mode: %w", err)
	}
	id, err := lstatID(name)
	if err != nil {
		return fmt.Errorf("stat socket: %w", err)
	}
	l.id = id
	// A few rounds: another daemon may place its socket, or a stale
	// socket may be replaced, between a look and a move.
	for range 3 {
		stale, err := check(l.network, l.path)
		if err != nil {
			return err
		}
		var done bool
		if stale == nil {
			done, err = placeNew(name, l.path)
		} else {
			done, err = replaceStale(name, l.path, *stale)
		}
		if err != nil {
			return &fs.PathError{Op: "listen", Path: l.path, Err: err}
		}
		if done {
			return nil
		}
	}
	return &fs.PathError{Op: "listen", Path: l.path, Err: errors.New("the path keeps changing (several daemons starting?)")}
}

// check looks at path: nil, nil when nothing is there; the stale
// socket's identity when a socket nobody listens on is; else the error
// refusing it.
func check(network, path string) (*fileID, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, &fs.PathError{Op: "listen", Path: path, Err: err}
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return nil, &fs.PathError{Op: "listen", Path: path, Err: fmt.Errorf("%w: it is %s; not removing it", ErrNotSocket, describe(path, fi))}
	}
	id := idOf(fi)
	live, pid, err := probe(network, path)
	if err != nil {
		return nil, &fs.PathError{Op: "listen", Path: path, Err: fmt.Errorf("check whether the socket is in use: %w", err)}
	}
	if live {
		return nil, &fs.PathError{Op: "listen", Path: path, Err: &InUseError{PID: pid, Command: command(pid)}}
	}
	return &id, nil
}

// probe connects to the socket at path: true when something listens,
// with the listener's pid when the kernel tells (0 otherwise).
func probe(network, path string) (bool, int, error) {
	d := net.Dialer{Timeout: probeTimeout}
	c, err := d.Dial(network, path)
	switch {
	case err == nil:
		pid := peerPID(c)
		c.Close()
		return true, pid, nil
	case errors.Is(err, syscall.ECONNREFUSED):
		return false, 0, nil
	case errors.Is(err, syscall.EAGAIN), // a listener with a full backlog
		errors.Is(err, syscall.EPROTOTYPE): // a live socket of another type
		return true, 0, nil
	}
	return false, 0, err
}

// peerPID returns the pid SO_PEERCRED reports for a connected unix
// socket: for a client, the process that called listen(2). 0 when unknown.
func peerPID(c net.Conn) int {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0
	}
	pid := 0
	raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			pid = int(cred.Pid)
		}
	})
	return pid
}

// command returns the name of process pid, or "".
func command(pid int) string {
	if pid <= 0 {
		return ""
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// placeNew moves name to path if path is still free: false when it is
// not.
func placeNew(name, path string) (bool, error) {
	err := unix.Renameat2(unix.AT_FDCWD, name, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		err = unix.Link(name, path) // never replaces either
	}
	if errors.Is(err, unix.EEXIST) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("move socket into place: %w", err)
	}
	return true, nil
}

// replaceStale swaps name and path if path still holds the stale socket
// stale: false when it holds something else (and then path is as it was).
func replaceStale(name, path string, stale fileID) (bool, error) {
	err := unix.Renameat2(unix.AT_FDCWD, name, unix.AT_FDCWD, path, unix.RENAME_EXCHANGE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		if id, err := lstatID(path); err != nil || id != stale {
			return false, nil
		}
		if err := unix.Unlink(path); err != nil && !errors.Is(err, unix.ENOENT) {
			return false, fmt.Errorf("remove stale socket: %w", err)
		}
		return placeNew(name, path)
	}
	if errors.Is(err, unix.ENOENT) { // path went meanwhile
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("move socket into place: %w", err)
	}
	// name now holds what was at path.
	if id, err := lstatID(name); err == nil && id == stale {
		return true, nil // the stale socket goes with the private directory
	}
	if err := unix.Renameat2(unix.AT_FDCWD, name, unix.AT_FDCWD, path, unix.RENAME_EXCHANGE); err != nil {
		return false, fmt.Errorf("restore %s after a lost race: %w", path, err)
	}
	return false, nil
}

// fileID identifies a file.
type fileID struct{ dev, ino uint64 }

func idOf(fi fs.FileInfo) fileID {
	st := fi.Sys().(*syscall.Stat_t)
	return fileID{uint64(st.Dev), st.Ino}
}

func lstatID(path string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fileID{}, err
	}
	return fileID{st.Dev, st.Ino}, nil
}

// describe says what a file that is not a socket is.
func describe(path string, fi fs.FileInfo) string {
	m := fi.Mode()
	switch {
	case m.IsRegular():
		return "a regular file"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSymlink != 0:
		if target, err := os.Readlink(path); err == nil {
			return fmt.Sprintf("a symbolic link to %s", target)
		}
		return "a symbolic link"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	}
	return fmt.Sprintf("a file of mode %v", m)
}

// lookupGroup resolves a group name or numeric gid.
func lookupGroup(group string) (int, error) {
	if gid, err := strconv.Atoi(group); err == nil {
		if gid < 0 {
			return 0, fmt.Errorf("look up group %q: negative gid", group)
		}
		return gid, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, fmt.Errorf("look up group %q: %w", group, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("look up group %q: gid %q: %w", group, g.Gid, err)
	}
	return gid, nil
}

// ParseMode parses a socket mode for a flag: octal permission bits, with
// or without a leading 0 or 0o ("0660", "660", "0o660"), at most 0777.
func ParseMode(s string) (os.FileMode, error) {
	digits := strings.TrimPrefix(strings.TrimPrefix(s, "0o"), "0O")
	v, err := strconv.ParseUint(digits, 8, 32)
	if err != nil {
		return 0, fmt.Errorf("parse mode %q: %w", s, err)
	}
	if v > 0o777 {
		return 0, fmt.Errorf("parse mode %q: more than permission bits (0777)", s)
	}
	return os.FileMode(v), nil
}
