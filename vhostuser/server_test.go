package vhostuser_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
)

// runServer runs s until the returned stop is called; stop waits for Run
// and returns its result.
func runServer(t testing.TB, s *vhostuser.Server) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stopped := false
	var result error
	stop = func() error {
		if stopped {
			return result
		}
		stopped = true
		cancel()
		select {
		case result = <-done:
		case <-time.After(waitFor):
			t.Fatalf("Server.Run did not return after its context ended")
		}
		return result
	}
	t.Cleanup(func() { stop() })
	return stop
}

// dialRetry connects to a listening server, retrying while the socket is
// not there yet.
func dialRetry(t testing.TB, path string) *testFrontend {
	t.Helper()
	var c *net.UnixConn
	eventually(t, "connect to "+path, func() bool {
		var err error
		c, err = net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
		return err == nil
	})
	t.Cleanup(func() { c.Close() })
	return &testFrontend{t: t, fe: &vhostusertest.Frontend{Conn: c}}
}

// exchangeARP gets one ARP request through fg's first queue pair.
func exchangeARP(t testing.TB, fg *fakeGuest, rec *recorder, tag byte) {
	t.Helper()
	fg.rx(0).post(vhostusertest.Buf{WriteLen: 1526})
	fg.tx(0).post(txChain(arpRequest(tag), false)...)
	if got := rec.next(t); got.frame[41] != tag {
		t.Fatalf("handler got tag %d, want %d", got.frame[41], tag)
	}
	fg.tx(0).waitUsed()
	fg.rx(0).waitUsed()
}

// TestServerListensForFrontends follows QEMU's "-chardev socket,path=P"
// (QEMU connects): the server removes a stale socket file, serves
// frontends one after the other, and on shutdown returns and removes its
// socket.
func TestServerListensForFrontends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vhost.sock")
	// A socket file left behind by a daemon that died.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()

	rec := newRecorder(func(_ int, frame, reply []byte) int { return arpReply(frame, reply) })
	dev := newNetDevice(t, 1, rec)
	var errs []error
	stop := runServer(t, &vhostuser.Server{Path: path, Device: dev, OnError: func(err error) { errs = append(errs, err) }})
	for i := range 2 {
		f := dialRetry(t, path)
		fg := newFakeGuest(t, 1)
		f.startQEMU(fg, linuxFeatures)
		exchangeARP(t, fg, rec, byte(i+1))
		f.fe.Conn.Close()
		eventually(t, "device sees the hang-up", func() bool { return !dev.State().Connected })
	}
	if err := stop(); err != nil {
		t.Errorf("Run = %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after shutdown: %v", err)
	}
	if len(errs) != 0 {
		t.Errorf("OnError got %v for clean disconnects", errs)
	}
}

// TestServerClientModeReconnects follows QEMU "server=on": the device
// connects to the frontend's socket, and connects again when the
// frontend drops the connection (QEMU restarting the vhost-user netdev).
func TestServerClientModeReconnects(t *testing.T) {
	path := filepath.Join(t.TempDir(), "qemu.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rec := newRecorder(func(_ int, frame, reply []byte) int { return arpReply(frame, reply) })
	dev := newNetDevice(t, 1, rec)
	stop := runServer(t, &vhostuser.Server{Path: path, Client: true, RetryInterval: 10 * time.Millisecond, Device: dev})
	for i := range 2 {
		ln.SetDeadline(time.Now().Add(waitFor))
		c, err := ln.AcceptUnix()
		if err != nil {
			t.Fatal(err)
		}
		f := &testFrontend{t: t, fe: &vhostusertest.Frontend{Conn: c}}
		fg := newFakeGuest(t, 1)
		f.startQEMU(fg, linuxFeatures)
		exchangeARP(t, fg, rec, byte(i+1))
		c.Close()
	}
	if err := stop(); err != nil {
		t.Errorf("Run = %v", err)
	}
}

// TestServerStopsWhileServing checks that ending the context ends a
// connection in progress.
func TestServerStopsWhileServing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vhost.sock")
	dev := newNetDevice(t, 1, newRecorder(nil))
	stop := runServer(t, &vhostuser.Server{Path: path, Device: dev})
	f := dialRetry(t, path)
	f.startQEMU(newFakeGuest(t, 1), linuxFeatures)
	if err := stop(); err != nil {
		t.Errorf("Run = %v", err)
	}
	if dev.State().Connected {
		t.Error("device still connected after Run returned")
	}
}
