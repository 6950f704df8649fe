// Package sdnotify tells systemd about the daemon's state, as
// sd_notify(3) does, without libsystemd: one datagram of newline-separated
// VAR=value assignments to the unix socket named by $NOTIFY_SOCKET.
//
// systemd sets $NOTIFY_SOCKET for a unit with Type=notify (or
// NotifyAccess=); a path starting with "@" is in the abstract namespace.
// Without the variable, Notify does nothing: veloced run by hand or by
// another supervisor is unaffected.
//
// veloced sends Ready once every socket listens and Stopping when it begins
// to shut down.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
)

// EnvSocket is the environment variable systemd names its socket in.
const EnvSocket = "NOTIFY_SOCKET"

// The states veloced reports (see sd_notify(3)).
const (
	// Ready: startup is finished; systemd starts the units ordered after.
	Ready = "READY=1"
	// Stopping: shutdown has begun.
	Stopping = "STOPPING=1"
)

// ErrUnsupported: $NOTIFY_SOCKET names a socket type this package does
// not speak (systemd's vsock: form).
var ErrUnsupported = errors.New("unsupported $NOTIFY_SOCKET")

// Notify sends state (assignments such as Ready, or "STATUS=...", joined
// by newlines) to $NOTIFY_SOCKET. It reports whether it sent anything:
// false, nil without the variable.
func Notify(state string) (bool, error) {
	return NotifySocket(os.Getenv(EnvSocket), state)
}

// NotifySocket is Notify to socket, a path or "@abstract" name; an empty
// socket sends nothing.
func NotifySocket(socket, state string) (bool, error) {
	if socket == "" {
		return false, nil
	}
	if !strings.HasPrefix(socket, "/") && !strings.HasPrefix(socket, "@") {
		return false, fmt.Errorf("notify %s: %w (want a path or @abstract name)", socket, ErrUnsupported)
	}
	// Go's net package maps a leading "@" to the abstract namespace.
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: socket, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("notify %s: %w", socket, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return false, fmt.Errorf("notify %s: %w", socket, err)
	}
	return true, nil
}
