package vhostuser_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/sockfile"
	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
)

// runServer starts s (in listening mode its socket listens when
// runServer returns) until the returned stop is called; stop closes it and
// returns what Close returns.
func runServer(t testing.TB, s *vhostuser.Server) (stop func() error) {
	t.Helper()
	if err := s.Start(context.Background()); err != nil {
		t.Fatalf("Server.Start: %v", err)
	}
	stopped := false
	var result error
	stop = func() error {
		if stopped {
			return result
		}
		stopped = true
		closed := make(chan struct{})
		go func() { result = s.Close(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(waitFor):
			t.Fatalf("Server.Close did not return")
		}
		return result
	}
	t.Cleanup(func() { stop() })
	return stop
}

// dial connects to a listening server (started: its socket listens).
func dial(t testing.TB, path string) *testFrontend {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
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
		f := dial(t, path)
		fg := newFakeGuest(t, 1)
		f.startQEMU(fg, linuxFeatures)
		exchangeARP(t, fg, rec, byte(i+1))
		f.fe.Conn.Close()
		eventually(t, "device sees the hang-up", func() bool { return !dev.State().Connected })
	}
	if err := stop(); err != nil {
		t.Errorf("Close = %v", err)
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
		t.Errorf("Close = %v", err)
	}
}

// TestServerStopsWhileServing checks that ending the context ends a
// connection in progress.
func TestServerStopsWhileServing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vhost.sock")
	dev := newNetDevice(t, 1, newRecorder(nil))
	stop := runServer(t, &vhostuser.Server{Path: path, Device: dev})
	f := dial(t, path)
	f.startQEMU(newFakeGuest(t, 1), linuxFeatures)
	if err := stop(); err != nil {
		t.Errorf("Close = %v", err)
	}
	if dev.State().Connected {
		t.Error("device still connected after Close returned")
	}
}

// TestServerStartFailsAndLifecycle: Start reports a socket that cannot be
// created and leaves nothing running; a Server starts once; Close may be
// called again; Run is Start and Wait.
func TestServerStartFailsAndLifecycle(t *testing.T) {
	dev := newNetDevice(t, 1, newRecorder(nil))
	bad := &vhostuser.Server{Path: filepath.Join(t.TempDir(), "no", "such", "dir", "vhost.sock"), Device: dev}
	if err := bad.Start(context.Background()); err == nil {
		t.Fatal("Start on a socket in a missing directory succeeded")
	}
	if err := bad.Wait(); err == nil {
		t.Error("Wait after a failed Start = nil, want its error")
	}
	if err := bad.Close(); err == nil {
		t.Error("Close after a failed Start = nil, want its error")
	}

	path := filepath.Join(t.TempDir(), "vhost.sock")
	s := &vhostuser.Server{Path: path, Device: dev}
	if err := s.Wait(); !errors.Is(err, vhostuser.ErrNotStarted) {
		t.Errorf("Wait before Start = %v, want ErrNotStarted", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("socket after Start: %v", err)
	}
	if err := s.Start(ctx); !errors.Is(err, vhostuser.ErrStarted) {
		t.Errorf("second Start = %v, want ErrStarted", err)
	}
	// A second server on the same socket is refused: the first listens.
	other := &vhostuser.Server{Path: path, Device: newNetDevice(t, 1, newRecorder(nil))}
	if err := other.Run(ctx); !errors.Is(err, sockfile.ErrInUse) {
		t.Errorf("Run on a served socket = %v, want ErrInUse", err)
	}
	cancel()
	if err := s.Wait(); err != nil {
		t.Errorf("Wait after the context ended = %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after Wait: %v", err)
	}
	for range 2 {
		if err := s.Close(); err != nil {
			t.Errorf("Close after Wait = %v", err)
		}
	}
	closed := &vhostuser.Server{Path: path, Device: dev}
	closed.Close()
	if err := closed.Start(context.Background()); !errors.Is(err, vhostuser.ErrStarted) {
		t.Errorf("Start after Close = %v, want ErrStarted", err)
	}
}
