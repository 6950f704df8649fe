package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/testutil"
)

func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--app-socket", ""}, "no ports"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--service-ip", "999.1.1.1"}, "--service-ip"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--guest-ip", "169.254.77.2"}, "--guest-ip"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--service-mac", "zz"}, "--service-mac"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--log-level", "loud"}, "--log-level"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--guest-ip", "10.0.0.2/24"}, "invalid"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--vhost-user", "/tmp/x.sock"}, "twice"},
		{[]string{"--vhost-user", "/tmp/x.sock", "extra"}, "unexpected argument"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--poll-cpus", "0,9999"}, "--poll-cpus"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--poll-cpus", "a"}, "--poll-cpus"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--peer", "127.0.0.1:7078"}, "--peer needs --listen or --dpdk"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--dpdk", "net_null0"}, "--dpdk needs --dpdk-addr"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--dpdk", "net_null0", "--dpdk-addr", "10.0.0.1"}, "--dpdk-addr"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--dpdk", "net_null0", "--dpdk-addr", "10.0.0.1/24", "--dpdk-cpu", "999"}, "--dpdk-cpu"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--listen", "nowhere"}, "--listen"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--tenant", "y.sock=a"}, "no port"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--tenant", "x.sock"}, "PORT=TENANT"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--app-tenant", "user:0=a"}, "--app-tenant"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--app-tenant", "uid:x=a"}, "--app-tenant"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--shared-channel", "1,b"}, "--shared-channel"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--listen", "127.0.0.1:0", "--peer", "x"}, "--peer"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--max-message", "100"}, "--max-message"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--max-message", "1000000000"}, "--max-message"},
	} {
		var stderr bytes.Buffer
		err := run(context.Background(), tc.args, &stderr)
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(tc.want)) {
			t.Errorf("%v: got %v, want an error mentioning %q", tc.args, err, tc.want)
		}
	}
}

// TestNoDPDKFallsBackToUDP: a DPDK device that cannot start (here bad
// device arguments; in a build without DPDK, any) leaves veloced running
// on kernel UDP, and a stream asking for acceleration gets UDP with the
// policy's warning, visible to the application and in the log.
func TestNoDPDKFallsBackToUDP(t *testing.T) {
	testutil.RequiresRoot(t)
	dir := t.TempDir()
	app := filepath.Join(dir, "app.sock")
	ctx, stderr, _ := inProcess(t, nil, "--app-socket", app, "--control", filepath.Join(dir, "control.sock"),
		"--listen", "127.0.0.1:0", "--dpdk", "net_bogus0,iface=nothing-here", "--dpdk-addr", "10.77.0.1/24")
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
	if log := stderr.String(); !strings.Contains(log, "DPDK datapath unavailable") {
		t.Errorf("veloced did not warn that DPDK is unavailable:\n%s", log)
	}
}

// A flag error found after --listen opened its UDP socket (a port given
// twice, a tenant for no port) closes the socket: the address is free
// for the next try, in the same process as in a test.
func TestFlagErrorAfterListenFreesTheSocket(t *testing.T) {
	for _, late := range [][]string{
		{"--vhost-user", filepath.Join(t.TempDir(), "x.sock"), "--tenant", "y.sock=a"},
		{"--vhost-user", "/tmp/veloce-twice.sock", "--vhost-user", "/tmp/veloce-twice.sock"},
	} {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		addr := c.LocalAddr().String()
		c.Close()
		args := append([]string{"--listen", addr, "--app-socket", "", "--control", filepath.Join(t.TempDir(), "c.sock")}, late...)
		if err := run(context.Background(), args, io.Discard); err == nil {
			t.Fatalf("%v: no error", args)
		}
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		if err != nil {
			t.Fatalf("%v failed, and left %s taken: %v", late, addr, err)
		}
		c.Close()
	}
}
