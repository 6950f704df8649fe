package vhostuser

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// Server serves one vhost-user device on one unix socket, in either role:
// listening for the frontend (QEMU's "-chardev socket,path=..." without
// server=on; DPDK virtio-user) or connecting to a frontend that listens
// (QEMU "server=on"; Cloud Hypervisor's default), reconnecting whenever the
// connection drops.
type Server struct {
	// Path is the socket path.
	Path string
	// Client makes the device connect to Path instead of listening on it.
	Client bool
	// RetryInterval is the wait between connection attempts in client
	// mode; default 100 ms (Cloud Hypervisor retries at the same pace).
	RetryInterval time.Duration
	// Device serves the connection.
	Device *NetDevice
	// OnError, when set, is told of every connection that ended with an
	// error (the server goes on).
	OnError func(error)
	// OnDisconnect, when set, is called after every connection ended,
	// cleanly or not, once the device has stopped its rings.
	OnDisconnect func()

	mu     sync.Mutex
	ln     *net.UnixListener
	active *net.UnixConn
}

// Run serves until ctx ends. In listening mode it removes a stale socket
// file first and removes its own on return.
func (s *Server) Run(ctx context.Context) error {
	if s.Device == nil {
		return errors.New("vhostuser: Server.Device is nil")
	}
	if s.Client {
		return s.runClient(ctx)
	}
	return s.runListener(ctx)
}

func (s *Server) runListener(ctx context.Context) error {
	if fi, err := os.Lstat(s.Path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		// A socket file left by a daemon that died: nobody can be
		// listening on it if a connect fails.
		if c, err := net.Dial("unix", s.Path); err == nil {
			c.Close()
			return fmt.Errorf("listen %s: another backend is serving this socket", s.Path)
		}
		os.Remove(s.Path)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: s.Path, Net: "unix"})
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.Path, err)
	}
	ln.SetUnlinkOnClose(true)
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { s.closeAll() })
	defer stop()
	defer ln.Close()
	for {
		conn, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.serve(ctx, conn)
	}
}

func (s *Server) runClient(ctx context.Context) error {
	interval := s.RetryInterval
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	stop := context.AfterFunc(ctx, func() { s.closeAll() })
	defer stop()
	for ctx.Err() == nil {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", s.Path)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(interval):
			}
			continue
		}
		s.serve(ctx, c.(*net.UnixConn))
	}
	return nil
}

// serve runs one connection to its end.
func (s *Server) serve(ctx context.Context, conn *net.UnixConn) {
	s.mu.Lock()
	if ctx.Err() != nil {
		// ctx ended between accept/dial and here: closeAll has run (or
		// will, and finds no active connection), so nobody would ever
		// close conn and Run would not return.
		s.mu.Unlock()
		conn.Close()
		return
	}
	s.active = conn
	s.mu.Unlock()
	err := s.Device.Serve(conn)
	conn.Close()
	s.mu.Lock()
	s.active = nil
	s.mu.Unlock()
	if err != nil && s.OnError != nil {
		s.OnError(err)
	}
	if s.OnDisconnect != nil {
		s.OnDisconnect()
	}
}

func (s *Server) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		s.ln.Close()
	}
	if s.active != nil {
		s.active.Close()
	}
}
