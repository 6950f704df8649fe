package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/veloce-io/veloce/guestlib"
	irdma "github.com/veloce-io/veloce/internal/rdma"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/plugins/rdma"
)

// Bad RDMA flags are refused with an error that names the flag. (This host
// has no RDMA device, so a named device is an error in every build: no
// such device, or no RDMA in this build.)
func TestRDMAFlagErrors(t *testing.T) {
	if len(irdma.DeviceNames()) > 0 {
		t.Skipf("this machine has RDMA devices %v", irdma.DeviceNames())
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--rdma-addr", "10.0.0.1/24"}, "--rdma-addr needs --rdma"},
		{[]string{"--rdma", "auto", "--rdma-addr", "10.0.0.1"}, "--rdma-addr"},
		{[]string{"--rdma", "auto", "--rdma-addr", "2001:db8::1/64"}, "--rdma-addr"},
		{[]string{"--rdma", "auto", "--rdma-cpu", "9999"}, "--rdma-cpu"},
		{[]string{"--rdma", "rxe0"}, "--rdma rxe0"},
		{[]string{"--rdma", "rxe0", "--listen", "127.0.0.1:0"}, "--rdma none"},
	} {
		var stderr bytes.Buffer
		args := append([]string{"--app-socket", filepath.Join(t.TempDir(), "app.sock"), "--control", filepath.Join(t.TempDir(), "ctl.sock")}, tc.args...)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := run(ctx, args, &stderr)
		cancel()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error mentioning %q", tc.args, err, tc.want)
		}
	}
}

// TestNoRDMAFallsBackToUDP: on a host without RDMA devices (this one; in a
// build without RDMA, any host) veloced --rdma auto says so in its log and
// runs on kernel UDP; a stream asking for acceleration gets UDP with the
// policy's warning, which the application sees.
func TestNoRDMAFallsBackToUDP(t *testing.T) {
	testutil.RequiresRoot(t)
	if rdma.Available() && len(irdma.DeviceNames()) > 0 {
		t.Skipf("this machine has RDMA devices %v", irdma.DeviceNames())
	}
	dir := t.TempDir()
	app := filepath.Join(dir, "app.sock")
	ctx, stderr, _ := inProcess(t, nil, "--app-socket", app, "--control", filepath.Join(dir, "control.sock"),
		"--listen", "127.0.0.1:0", "--rdma", "auto")
	octx, ocancel := context.WithTimeout(ctx, 30*time.Second)
	defer ocancel()
	s, err := guestlib.Open(octx, guestlib.Options{Socket: app})
	if err != nil {
		t.Fatalf("open a session: %v\n%s", err, stderr.String())
	}
	defer s.Close()
	st, err := s.CreateStream(octx, guestlib.StreamOptions{Acceleration: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.Datapath != "udp" || !strings.Contains(st.Warning, "no accelerated datapath") {
		t.Errorf("stream asking for acceleration: datapath %q, warning %q; want udp and a warning", st.Datapath, st.Warning)
	}
	want := "no RDMA device"
	if !rdma.Available() {
		want = "RDMA unavailable"
	}
	if log := stderr.String(); !strings.Contains(log, want) {
		t.Errorf("veloced did not log %q:\n%s", want, log)
	}
}
