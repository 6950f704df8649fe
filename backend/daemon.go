package backend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultControlSocket is where veloced listens for velocectl.
const DefaultControlSocket = "/run/veloce/control.sock"

// DaemonOptions configure a Daemon.
type DaemonOptions struct {
	// Ports are the VM ports to serve.
	Ports []PortOptions
	// ControlSocket is the unix socket of the control API; default
	// DefaultControlSocket. Its directory is created.
	ControlSocket string
	// Logger receives the daemon's events; nil discards.
	Logger *slog.Logger
	// Runtime configures the stream runtime the ports' guests use.
	Runtime RuntimeOptions
	// AppSocket is the unix socket host applications reach the daemon at
	// (guestlib's host transport); empty means none.
	AppSocket string
	// SessionTimeout releases a session that sent nothing (guestlib pings
	// every second) for this long: its application died. Default 10s.
	SessionTimeout time.Duration
}

// Daemon is veloced: ports plus the control API. New, then Run.
type Daemon struct {
	opts  DaemonOptions
	log   *slog.Logger
	rt    *Runtime
	ports []*Port
	apps  atomic.Pointer[hostApps] // the host transport while Run serves it
}

// NewDaemon validates opts and creates the ports; nothing runs yet.
func NewDaemon(opts DaemonOptions) (*Daemon, error) {
	if opts.ControlSocket == "" {
		opts.ControlSocket = DefaultControlSocket
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.SessionTimeout <= 0 {
		opts.SessionTimeout = 10 * time.Second
	}
	if opts.Runtime.Logger == nil {
		opts.Runtime.Logger = log
	}
	d := &Daemon{opts: opts, log: log, rt: NewRuntime(opts.Runtime)}
	names := map[string]bool{}
	sockets := map[string]bool{}
	for i, po := range opts.Ports {
		if po.Name == "" {
			po.Name = filepath.Base(po.Socket)
		}
		if names[po.Name] {
			po.Name = fmt.Sprintf("%s-%d", po.Name, i)
		}
		if sockets[po.Socket] {
			return nil, fmt.Errorf("port %s: socket %s given twice", po.Name, po.Socket)
		}
		names[po.Name], sockets[po.Socket] = true, true
		if po.Logger == nil {
			po.Logger = log
		}
		po.Runtime = d.rt
		p, err := NewPort(po)
		if err != nil {
			return nil, fmt.Errorf("port %s: %w", po.Name, err)
		}
		d.ports = append(d.ports, p)
	}
	return d, nil
}

// Ports returns the ports' current information.
func (d *Daemon) Ports() []PortInfo {
	out := make([]PortInfo, len(d.ports))
	for i, p := range d.ports {
		out[i] = p.Info()
	}
	return out
}

// Streams returns the runtime's streams.
func (d *Daemon) Streams() []StreamInfo {
	s := d.rt.Streams()
	if s == nil {
		s = []StreamInfo{}
	}
	return s
}

// Run serves every port and the control API until ctx ends, then stops
// them all and returns. A port that cannot start (its socket cannot be
// created) fails Run before anything is served.
func (d *Daemon) Run(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(d.opts.ControlSocket), 0o755); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if c, err := net.Dial("unix", d.opts.ControlSocket); err == nil {
		c.Close()
		return fmt.Errorf("control socket %s: another veloced is running", d.opts.ControlSocket)
	}
	os.Remove(d.opts.ControlSocket)
	var apps *hostApps
	if d.opts.AppSocket != "" {
		var err error
		if apps, err = listenHostApps(d.rt, d.opts.AppSocket); err != nil {
			return err
		}
		d.apps.Store(apps)
		defer d.apps.Store(nil)
	}
	ln, err := net.Listen("unix", d.opts.ControlSocket)
	if err != nil {
		if apps != nil {
			apps.conn.Close()
		}
		return fmt.Errorf("control socket: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv := &http.Server{Handler: d.controlHandler(), ReadHeaderTimeout: 5 * time.Second}
	var wg sync.WaitGroup
	errs := make(chan error, len(d.ports)+1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs <- fmt.Errorf("control API: %w", err)
		}
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.rt.Run(ctx)
	}()
	if apps != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			apps.run(ctx)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tick.C:
				d.rt.reapIdle(now.Add(-d.opts.SessionTimeout).UnixNano())
			}
		}
	}()
	for _, p := range d.ports {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.log.Info("port up", "port", p.Name(), "socket", p.opts.Socket, "client", p.opts.Client)
			if err := p.Run(ctx); err != nil {
				errs <- fmt.Errorf("port %s: %w", p.Name(), err)
				cancel()
			}
		}()
	}
	<-ctx.Done()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	srv.Shutdown(sctx)
	scancel()
	wg.Wait()
	os.Remove(d.opts.ControlSocket)
	close(errs)
	return <-errs // nil when no port failed
}

func (d *Daemon) controlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/ports", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, d.Ports())
	})
	mux.HandleFunc("GET /v1/streams", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, d.Streams())
	})
	mux.HandleFunc("GET /v1/remote", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, d.rt.Remote())
	})
	mux.HandleFunc("GET /v1/apps", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, d.HostApps())
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// ControlClient talks to a daemon's control API.
type ControlClient struct {
	c *http.Client
}

// NewControlClient returns a client for the control socket at path.
func NewControlClient(path string) *ControlClient {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &ControlClient{c: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

// Ports lists the daemon's ports.
func (c *ControlClient) Ports(ctx context.Context) ([]PortInfo, error) {
	var out []PortInfo
	return out, c.get(ctx, "/v1/ports", &out)
}

// Streams lists the daemon's streams.
func (c *ControlClient) Streams(ctx context.Context) ([]StreamInfo, error) {
	var out []StreamInfo
	return out, c.get(ctx, "/v1/streams", &out)
}

// Apps returns the daemon's host applications (the host transport).
func (c *ControlClient) Apps(ctx context.Context) (HostAppsInfo, error) {
	var out HostAppsInfo
	return out, c.get(ctx, "/v1/apps", &out)
}

// Remote returns the daemon's datapaths to other hosts and its peers.
func (c *ControlClient) Remote(ctx context.Context) (RemoteInfo, error) {
	var out RemoteInfo
	return out, c.get(ctx, "/v1/remote", &out)
}

func (c *ControlClient) get(ctx context.Context, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://veloced"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.c.Do(req)
	if err != nil {
		return fmt.Errorf("veloced control API: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("veloced control API: GET %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
