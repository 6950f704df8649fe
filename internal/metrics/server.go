package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/internal/sockfile"
)

// Path is where a Server serves the metrics.
const Path = "/metrics"

// UnixPrefix marks an Options.Addr that is a unix socket's path.
const UnixPrefix = "unix:"

// Options configure a Server.
type Options struct {
	// Addr is where to listen: host:port for TCP (e.g. 127.0.0.1:9464),
	// or "unix:" and a path for a unix socket (e.g.
	// unix:/run/veloce/metrics.sock; its directory is created).
	// Required.
	Addr string
	// Service is the daemon's state, read on every scrape. Required.
	Service control.Service
	// SocketMode and SocketGroup are a unix socket's permission bits
	// (0: 0660) and group (empty: the daemon's), as for the daemon's
	// other sockets.
	SocketMode  os.FileMode
	SocketGroup string
	// Version is veloce_build_info's version label (CollectorOptions).
	Version string
	// Timeout bounds a scrape's reads of Service; default 5s.
	Timeout time.Duration
	// Logger receives the server's errors; nil discards them.
	Logger *slog.Logger
}

// Server serves /metrics: the daemon's Collector plus Go's runtime and
// the process's collectors. New, then Start, then Close.
type Server struct {
	opts Options
	log  *slog.Logger
	reg  *prometheus.Registry

	mu   sync.Mutex
	ln   net.Listener // +checklocks:mu
	srv  *http.Server // +checklocks:mu
	done chan struct{}
	err  error // Serve's error; read after done closes
}

// New checks opts and registers the collectors; nothing listens yet.
func New(opts Options) (*Server, error) {
	if opts.Addr == "" {
		return nil, errors.New("metrics: no address")
	}
	if opts.Service == nil {
		return nil, errors.New("metrics: no Service")
	}
	s := &Server{opts: opts, log: opts.Logger, reg: prometheus.NewRegistry()}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.reg.MustRegister(
		NewCollector(CollectorOptions{Service: opts.Service, Timeout: opts.Timeout, Version: opts.Version, Logger: s.log}),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return s, nil
}

// Handler serves the metrics of s's registry (at any path).
func (s *Server) Handler() http.Handler {
	return promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{
		ErrorLog:      slogAdapter{s.log},
		ErrorHandling: promhttp.ContinueOnError, // one failed part leaves the rest
	})
}

// Start listens on opts.Addr and serves until ctx ends or Close is
// called. It returns once the socket listens, or the listen error
// (naming --metrics' address).
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return errors.New("metrics: started twice")
	}
	ln, err := Listen(s.opts.Addr, sockfile.Options{Mode: s.opts.SocketMode, Group: s.opts.SocketGroup})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle(Path, s.Handler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "veloced metrics: %s\n", Path)
	})
	s.ln, s.done = ln, make(chan struct{})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	s.srv = srv
	go func() {
		defer close(s.done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			s.err = err
			s.log.Error("metrics server stopped", "addr", s.opts.Addr, "err", err)
		}
	}()
	context.AfterFunc(ctx, func() { s.Close() })
	s.log.Info("serving metrics", "addr", ln.Addr().String(), "path", Path)
	return nil
}

// Addr returns the listening address (nil before Start).
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Close stops serving, waits for the server and removes a unix socket.
// It may be called more than once, and before Start.
func (s *Server) Close() error {
	s.mu.Lock()
	srv, done := s.srv, s.done
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	err := srv.Close()
	<-done
	if s.err != nil {
		return s.err
	}
	return err
}

// Listen listens on addr: "unix:PATH" (a unix socket placed with opts,
// see package sockfile) or a TCP host:port. Its errors start with
// "--metrics ADDR:".
func Listen(addr string, opts sockfile.Options) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, UnixPrefix); ok {
		if path == "" {
			return nil, fmt.Errorf("--metrics %s: no socket path", addr)
		}
		ln, err := sockfile.Listen("unix", path, opts)
		if err != nil {
			return nil, fmt.Errorf("--metrics %s: %w", addr, err)
		}
		return ln, nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("--metrics %s: want host:port or unix:PATH: %w", addr, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics %s: %w", addr, err)
	}
	return ln, nil
}

// slogAdapter is promhttp's error log.
type slogAdapter struct{ log *slog.Logger }

func (a slogAdapter) Println(v ...any) {
	a.log.Warn("metrics: " + strings.TrimSpace(fmt.Sprintln(v...)))
}
