package control_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/veloce-io/veloce/control"
)

// fixed is a Service with fixed answers; its Streams fails with err.
type fixed struct{ err error }

func (fixed) Ports(context.Context) ([]control.PortInfo, error) {
	return []control.PortInfo{{Name: "vm0", Features: "0x130afffa7", GuestTXPackets: 3}}, nil
}
func (f fixed) Streams(context.Context) ([]control.StreamInfo, error) { return nil, f.err }
func (fixed) Apps(context.Context) (control.HostAppsInfo, error) {
	return control.HostAppsInfo{Socket: "/run/veloce/app.sock", Clients: []control.HostClientInfo{{Name: "host:pid 7"}}}, nil
}
func (fixed) Remote(context.Context) (control.RemoteInfo, error) {
	return control.RemoteInfo{Datapaths: []control.DatapathInfo{{Name: "udp", Stats: map[string]any{"tx": 1}}}}, nil
}

// serve serves s on a unix socket until the test ends.
func serve(t *testing.T, s control.Service) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "control.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: control.Handler(s)}
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return sock
}

func TestClientGetsWhatTheServiceServes(t *testing.T) {
	c := control.NewClient(serve(t, fixed{}))
	defer c.CloseIdleConnections()
	ctx := context.Background()
	ports, err := c.Ports(ctx)
	if err != nil || len(ports) != 1 || ports[0].Name != "vm0" || ports[0].GuestTXPackets != 3 {
		t.Errorf("Ports = %+v, %v", ports, err)
	}
	apps, err := c.Apps(ctx)
	if err != nil || apps.Socket != "/run/veloce/app.sock" || len(apps.Clients) != 1 {
		t.Errorf("Apps = %+v, %v", apps, err)
	}
	remote, err := c.Remote(ctx)
	if err != nil || len(remote.Datapaths) != 1 || fmt.Sprint(remote.Datapaths[0].Stats) != "map[tx:1]" {
		t.Errorf("Remote = %+v, %v", remote, err)
	}
}

func TestServiceErrorsBecomeStatusesAndTypedErrors(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
		is     error
	}{
		{fmt.Errorf("stream 9: %w", control.ErrNotFound), http.StatusNotFound, control.ErrNotFound},
		{fmt.Errorf("channel 0: %w", control.ErrBadRequest), http.StatusBadRequest, control.ErrBadRequest},
		{errors.New("disk on fire"), http.StatusInternalServerError, nil},
	} {
		_, err := control.NewClient(serve(t, fixed{err: tc.err})).Streams(context.Background())
		apiErr, ok := errors.AsType[*control.APIError](err)
		if !ok || apiErr.Status != tc.status || apiErr.Message != tc.err.Error() || apiErr.Path != control.PathStreams {
			t.Errorf("%v: got %#v", tc.err, err)
			continue
		}
		if tc.is != nil && !errors.Is(err, tc.is) {
			t.Errorf("%v: errors.Is(%v, %v) = false", tc.err, err, tc.is)
		}
	}
}

func TestUnreachableDaemonSaysSo(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "control.sock")
	_, err := control.NewClient(sock).Ports(context.Background())
	if !errors.Is(err, control.ErrUnreachable) || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("got %v, want ErrUnreachable wrapping ENOENT", err)
	}
	if ue, ok := errors.AsType[*control.UnreachableError](err); !ok || ue.Socket != sock {
		t.Errorf("got %#v, want an *UnreachableError for %s", err, sock)
	}
	if want := "is veloced running? (control socket " + sock + ")"; !strings.Contains(err.Error(), want) {
		t.Errorf("message %q lacks %q", err, want)
	}
}
