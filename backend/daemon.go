package backend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/internal/lifecycle"
	"github.com/veloce-io/veloce/internal/sockfile"
)

// DefaultControlSocket is where veloced listens for velocectl.
const DefaultControlSocket = control.DefaultSocket

// Errors of the lifecycle of a Daemon, Port and Runtime (New, Start,
// Wait, Close).
var (
	// ErrStarted: Start on something already started or closed.
	ErrStarted = lifecycle.ErrStarted
	// ErrNotStarted: Wait on something never started.
	ErrNotStarted = lifecycle.ErrNotStarted
)

// DaemonOptions configure a Daemon.
type DaemonOptions struct {
	// Ports are the VM ports to serve.
	Ports []PortOptions
	// RingStateDir is the default of the ports' RingStateDir (those
	// added later included): where they keep packed rings' positions for
	// the next daemon.
	RingStateDir string
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
	// SocketMode and SocketGroup are the permission bits (0: 0660) and
	// group (a name or gid; empty: the daemon's) of every port's
	// listening socket that does not set its own. Give QEMU's group
	// (libvirt-qemu under libvirt) to let it connect.
	SocketMode  os.FileMode
	SocketGroup string
	// ControlSocketMode and ControlSocketGroup are the control socket's
	// (0: 0660; empty: the daemon's): kept apart from the ports', so
	// that letting QEMU reach a vhost-user socket does not let it drive
	// velocectl.
	ControlSocketMode  os.FileMode
	ControlSocketGroup string
	// AppSocketMode and AppSocketGroup are the host-application socket's
	// (0: 0660; empty: the daemon's): host applications of other users
	// need the group, or a mode such as 0666.
	AppSocketMode  os.FileMode
	AppSocketGroup string
	// MaxAppClients caps the host-application sessions open at once
	// (each holds a 3 MiB shared region); an application past it gets
	// guestlib.ErrLimit. 0 means DefaultMaxAppClients; negative, no cap.
	MaxAppClients int
	// Limits bound each port's guest and each host tenant's applications
	// (their sessions, streams, sources, sinks, control rate); a port's
	// own PortOptions.Limits fields, where set, win. Zero fields take
	// DefaultLimits.
	Limits Limits
	// AppTenants map host applications to tenants by their peer
	// credentials; see AppTenant for the defaults. Channels are scoped to
	// tenants but for Runtime.SharedChannels.
	AppTenants []AppTenant
	// Admin configures run-time administration (AddPort, DelPort, the log
	// level); see daemon_admin.go.
	Admin AdminOptions
	// Migration configures live migration of the ports' stream state
	// (migrate.go).
	Migration MigrationOptions
}

// DefaultMaxAppClients is DaemonOptions.MaxAppClients's default.
const DefaultMaxAppClients = 256

// Daemon is veloced: ports plus the control API. NewDaemon, then Start
// (ready once it returns), then Wait or Close; Run is Start and Wait.
type Daemon struct {
	opts  DaemonOptions
	log   *slog.Logger
	rt    *Runtime
	ports []*Port                  // guarded by admin.mu once Start returned: replaced whole, never changed in place (daemon_admin.go)
	admin adminState               // run-time administration (daemon_admin.go)
	apps  atomic.Pointer[hostApps] // the host transport while the daemon serves it
	life  lifecycle.Group          // Start, Wait, Close
	mig   migrationState           // live migrations (migrate.go)
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
	if opts.MaxAppClients == 0 {
		opts.MaxAppClients = DefaultMaxAppClients
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
			for _, p := range d.ports {
				p.Close()
			}
			return nil, fmt.Errorf("port %s: socket %s given twice", po.Name, po.Socket)
		}
		names[po.Name], sockets[po.Socket] = true, true
		if po.Logger == nil {
			po.Logger = log
		}
		if po.SocketMode == 0 {
			po.SocketMode = opts.SocketMode
		}
		if po.SocketGroup == "" {
			po.SocketGroup = opts.SocketGroup
		}
		if po.RingStateDir == "" {
			po.RingStateDir = opts.RingStateDir
		}
		po.Runtime = d.rt
		po.Limits = po.Limits.or(opts.Limits)
		withDeviceState(&po, opts.Migration.Key)
		p, err := NewPort(po)
		if err != nil {
			for _, p := range d.ports { // their sockets listen already
				p.Close()
			}
			return nil, fmt.Errorf("port %s: %w", po.Name, err)
		}
		d.ports = append(d.ports, p)
	}
	return d, nil
}

// Ports returns the ports' current information.
func (d *Daemon) Ports() []PortInfo {
	ports := d.portList() // a snapshot: AddPort and DelPort replace the slice
	out := make([]PortInfo, len(ports))
	for i, p := range ports {
		out[i] = p.Info()
	}
	return out
}

// Streams returns the runtime's streams.
// Remote returns the datapaths to other hosts and the peers (Runtime.Remote).
func (d *Daemon) Remote() RemoteInfo { return d.rt.Remote() }

func (d *Daemon) Streams() []StreamInfo {
	s := d.rt.Streams()
	if s == nil {
		s = []StreamInfo{}
	}
	return s
}

// Start serves the runtime, every port, the app socket and the control
// API, and returns once every socket listens: the daemon is ready (a
// client-mode port is ready once its first connection attempt is under
// way). It serves until ctx ends, Close is called or a part fails (Wait
// returns that failure). If a socket cannot be created (another veloced
// serves the control socket, a directory is missing), Start stops and
// removes whatever it had started and returns the error. A Daemon starts
// once (ErrStarted).
func (d *Daemon) Start(ctx context.Context) error {
	ctx, err := d.life.Begin(ctx)
	if err != nil {
		return fmt.Errorf("start daemon: %w", err)
	}
	// Sockets first, in the order that refuses a second daemon before
	// touching anything of the first one's; each is served once all
	// listen.
	// internal/sockfile refuses a socket another daemon serves and a
	// path that is not a socket, and replaces only a stale socket.
	ln, err := sockfile.Listen("unix", d.opts.ControlSocket, sockfile.Options{Mode: d.opts.ControlSocketMode, Group: d.opts.ControlSocketGroup})
	if err != nil {
		return d.life.Abort(fmt.Errorf("control socket: %w", err))
	}
	srv := &http.Server{Handler: control.Handler(daemonService{d}), ReadHeaderTimeout: 5 * time.Second}
	d.life.Cleanup(func() { ln.Close() }) // Serve closes it too; this covers a failed Start
	if err := d.rt.Start(ctx); err != nil {
		return d.life.Abort(err)
	}
	// Each part is also closed (and waited for) as a cleanup, so that it
	// has stopped before Wait returns even if the context ended while
	// Start ran; Close after a stop is a no-op.
	d.life.Cleanup(func() { d.rt.Close() })
	d.life.Go(func(context.Context) error { return d.rt.Wait() })
	for _, p := range d.ports {
		if err := p.Start(ctx); err != nil {
			return d.life.Abort(err)
		}
		d.life.Cleanup(func() { p.Close() })
		d.log.Info("port up", "port", p.Name(), "socket", p.opts.Socket, "client", p.opts.Client)
		d.life.Go(func(context.Context) error {
			if err := p.Wait(); err != nil {
				return fmt.Errorf("port %s: %w", p.Name(), err)
			}
			return nil
		})
	}
	d.adminReady(ctx) // AddPort and DelPort work from here on
	if err := d.startMigration(ctx); err != nil {
		return d.life.Abort(err)
	}
	if d.opts.AppSocket != "" {
		apps, err := listenHostApps(d.rt, d.opts.AppSocket,
			sockfile.Options{Mode: d.opts.AppSocketMode, Group: d.opts.AppSocketGroup}, d.opts.MaxAppClients)
		if err != nil {
			return d.life.Abort(err)
		}
		apps.tenants, apps.limits, apps.log = d.opts.AppTenants, d.opts.Limits, d.log
		d.apps.Store(apps)
		d.life.Cleanup(func() { d.apps.Store(nil); apps.conn.Close() }) // run closes it too; this covers a stop before run
		d.life.Go(func(ctx context.Context) error { apps.run(ctx); return nil })
	}
	d.life.Go(func(ctx context.Context) error {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
				d.rt.reapIdle(monoNow() - int64(d.opts.SessionTimeout))
			}
		}
	})
	d.life.Go(func(context.Context) error {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("control API: %w", err)
		}
		return nil
	})
	d.life.Go(func(ctx context.Context) error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		return nil
	})
	return nil
}

// Wait blocks until the daemon stopped, every part of it returned and its
// sockets are removed, and returns the first failure of a part (nil when
// it stopped because its context ended or Close was called).
func (d *Daemon) Wait() error { return d.life.Wait() }

// Close stops the daemon and waits for it, returning what Wait returns.
// It may be called more than once, and before Start (which then fails).
func (d *Daemon) Close() error { return d.life.Close() }

// Run is Start then Wait: it serves until ctx ends, then stops everything
// and returns.
func (d *Daemon) Run(ctx context.Context) error {
	if err := d.Start(ctx); err != nil {
		return err
	}
	return d.Wait()
}

// daemonService serves the control API (package control) from a Daemon.
type daemonService struct{ d *Daemon }

var _ control.Service = daemonService{}

func (s daemonService) Ports(context.Context) ([]control.PortInfo, error) { return s.d.Ports(), nil }

func (s daemonService) Streams(context.Context) ([]control.StreamInfo, error) {
	return s.d.Streams(), nil
}

var _ control.QoSService = daemonService{}

// SetStreamQoS serves velocectl streams set-qos (Runtime.SetStreamQoS).
func (s daemonService) SetStreamQoS(_ context.Context, id uint32, opts control.StreamOptions) (control.StreamInfo, error) {
	info, err := s.d.rt.SetStreamQoS(id, StreamOptions(opts))
	switch {
	case errors.Is(err, ErrNotFound):
		return control.StreamInfo{}, statusError{fmt.Errorf("%w (velocectl streams lists the streams)", err), control.ErrNotFound}
	case errors.Is(err, ErrBadQoS):
		return control.StreamInfo{}, statusError{err, control.ErrBadRequest}
	case err != nil:
		return control.StreamInfo{}, err
	}
	return info, nil
}

func (s daemonService) Apps(context.Context) (control.HostAppsInfo, error) {
	return s.d.HostApps(), nil
}

func (s daemonService) Remote(context.Context) (control.RemoteInfo, error) {
	return s.d.rt.Remote(), nil
}
