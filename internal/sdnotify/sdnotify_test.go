package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// listen makes a notify socket as systemd does: a unixgram socket that
// reads datagrams.
func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func read(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

func TestNotifyPathAndAbstract(t *testing.T) {
	for _, name := range []string{
		filepath.Join(t.TempDir(), "notify"),
		fmt.Sprintf("@veloce-sdnotify-test-%d", os.Getpid()),
	} {
		c := listen(t, name)
		t.Setenv(EnvSocket, name)
		sent, err := Notify(Ready + "\nSTATUS=serving")
		if err != nil || !sent {
			t.Fatalf("%s: sent %t, %v", name, sent, err)
		}
		if got := read(t, c); got != "READY=1\nSTATUS=serving" {
			t.Errorf("%s: got %q", name, got)
		}
	}
}

func TestNotifyWithoutSystemd(t *testing.T) {
	t.Setenv(EnvSocket, "")
	if sent, err := Notify(Ready); sent || err != nil {
		t.Errorf("no $NOTIFY_SOCKET: sent %t, %v; want nothing", sent, err)
	}
	if _, err := NotifySocket("vsock:2:1234", Ready); !errors.Is(err, ErrUnsupported) {
		t.Errorf("vsock: %v, want ErrUnsupported", err)
	}
	if _, err := NotifySocket(filepath.Join(t.TempDir(), "absent"), Ready); err == nil {
		t.Error("a socket nobody listens on: no error")
	}
}
