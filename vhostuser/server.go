package vhostuser

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/veloce-io/veloce/internal/lifecycle"
	"github.com/veloce-io/veloce/internal/sockfile"
)

// Server serves one vhost-user device on one unix socket, in either role:
// listening for the frontend (QEMU's "-chardev socket,path=..." without
// server=on; DPDK virtio-user) or connecting to a frontend that listens
// (QEMU "server=on"; Cloud Hypervisor's default), reconnecting whenever the
// connection drops.
//
// Set the fields, then Start (or Run); Wait or Close end it. A Server is
// used once.
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
	// SocketMode and SocketGroup say who may connect to the listening
	// socket: its permission bits (0: 0660) and its group (a name or a
	// gid; empty: the process's), set before any frontend can connect. A
	// frontend running as another user (QEMU under libvirt runs as
	// libvirt-qemu) needs the group, or the daemon connects to it
	// instead (Client). Client mode ignores both.
	SocketMode  os.FileMode
	SocketGroup string
	// Logger receives the connection's events (connected, disconnected,
	// waiting for a frontend to listen), each once per connection; nil
	// discards. Give it the port's fields (Logger.With).
	Logger *slog.Logger

	life   lifecycle.Group // Start, Wait, Close
	mu     sync.Mutex
	ln     *sockfile.Listener // guarded by mu
	active *net.UnixConn      // guarded by mu
}

// Errors of the Server lifecycle.
var (
	// ErrStarted: Start on a Server already started or closed.
	ErrStarted = lifecycle.ErrStarted
	// ErrNotStarted: Wait on a Server never started.
	ErrNotStarted = lifecycle.ErrNotStarted
)

// Start begins serving and returns once the server is ready: in listening
// mode once the socket listens (a stale socket file removed first), in
// client mode at once, with the first connection attempt under way. It
// serves until ctx ends or Close is called. If the socket cannot be
// created, Start returns the error and nothing runs. A Server starts once
// (ErrStarted).
func (s *Server) Start(ctx context.Context) error {
	if s.Device == nil {
		return errors.New("start vhost-user server: Server.Device is nil")
	}
	ctx, err := s.life.Begin(ctx)
	if err != nil {
		return fmt.Errorf("start vhost-user server %s: %w", s.Path, err)
	}
	// Ending the context ends the accept or dial loop and the connection
	// being served.
	s.life.Go(func(ctx context.Context) error {
		<-ctx.Done()
		s.closeAll()
		return nil
	})
	if s.Client {
		s.life.Go(s.runClient)
		return nil
	}
	ln, err := s.listen()
	if err != nil {
		return s.life.Abort(err)
	}
	s.life.Cleanup(func() { ln.Close() }) // should ctx have ended already
	s.life.Go(func(ctx context.Context) error { return s.accept(ctx, ln) })
	return nil
}

// Wait blocks until the server stopped (its context ended or Close was
// called) and every connection it served ended; in listening mode the
// socket file is gone by then. It returns nil, or ErrNotStarted.
func (s *Server) Wait() error { return s.life.Wait() }

// Close stops the server and waits for it, as Wait. It may be called
// more than once, and before Start (which then fails).
func (s *Server) Close() error { return s.life.Close() }

// Run is Start then Wait: it serves until ctx ends. In listening mode it
// removes a stale socket file first and removes its own on return.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Start(ctx); err != nil {
		return err
	}
	return s.Wait()
}

func (s *Server) listen() (*sockfile.Listener, error) {
	// A socket file left by a daemon that died is replaced; a socket
	// another process serves, or a path that is not a socket, is refused
	// and left alone (internal/sockfile).
	ln, err := sockfile.Listen("unix", s.Path, sockfile.Options{Mode: s.SocketMode, Group: s.SocketGroup, NoMkdir: true})
	if err != nil {
		return nil, fmt.Errorf("vhost-user socket: %w", err)
	}
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	return ln, nil
}

func (s *Server) accept(ctx context.Context, ln *sockfile.Listener) error {
	defer ln.Close()
	for {
		conn, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			time.Sleep(10 * time.Millisecond) // EMFILE and the like
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
	waiting := false // logged once until the next connection
	for ctx.Err() == nil {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", s.Path)
		if err != nil {
			if !waiting && ctx.Err() == nil {
				waiting = true
				s.logger().Info("waiting for the frontend to listen", "socket", s.Path, "err", err,
					"hint", "start the VM with this socket in server mode (QEMU -chardev socket,server=on; libvirt mode='server'; Cloud Hypervisor vhost_mode=client)")
			}
			select {
			case <-ctx.Done():
			case <-time.After(interval):
			}
			continue
		}
		waiting = false
		s.serve(ctx, c.(*net.UnixConn))
	}
	return nil
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func (s *Server) mode() string {
	if s.Client {
		return "client"
	}
	return "server"
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
	log := s.logger()
	log.Info("frontend connected", "socket", s.Path, "mode", s.mode())
	err := s.Device.Serve(conn)
	conn.Close()
	s.mu.Lock()
	s.active = nil
	s.mu.Unlock()
	switch {
	case err == nil || ctx.Err() != nil:
		log.Info("frontend disconnected", "socket", s.Path)
	default:
		hint := "the port waits for the frontend to reconnect"
		if !s.Client {
			hint = "the port listens again: restart or reconnect the VM's NIC (QEMU reconnect=1 reconnects by itself)"
		}
		log.Warn("frontend disconnected", "socket", s.Path, "err", err, "hint", hint)
	}
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
