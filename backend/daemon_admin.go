package backend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/veloce-io/veloce/control"
)

// Run-time administration of a Daemon: ports added and removed while it
// serves (velocectl add-port, del-port, like ovs-vsctl add-port) and its
// log level (velocectl log-level).
//
// # How the port list stays safe
//
// Daemon.ports is copy-on-write: AddPort and DelPort build a new slice and
// swap it in under admin.mu; nothing changes a published slice in place.
// Ports (and so every control-API listing) takes the slice under admin.mu
// and calls Info on each port with no lock held, so a slow Info never
// blocks an administrator and an administrator never blocks a listing. A
// deleted port's Info stays valid (it reports its last counters). AddPort
// and DelPort are serialised by admin.op, held across the whole change
// (check, start or stop, publish), so two requests cannot both take one
// name or socket.

// AdminOptions configure a Daemon's run-time administration.
type AdminOptions struct {
	// LogLevel is the level of DaemonOptions.Logger's handler, which
	// LogLevel shows and SetLogLevel changes; nil: the level is fixed and
	// SetLogLevel fails (ErrLevelFixed).
	LogLevel *slog.LevelVar
	// PortDefaults fill the fields an AddPort leaves zero: QueuePairs,
	// Link, PollCPUs, SocketMode, SocketGroup, Logger (veloced passes what
	// its flags gave the ports it started with).
	PortDefaults PortOptions
}

// Errors of the administration methods.
var (
	// ErrPortExists: AddPort with the name or socket of a port the daemon
	// has.
	ErrPortExists = errors.New("port exists")
	// ErrNoPort: DelPort of a name no port has.
	ErrNoPort = errors.New("no such port")
	// ErrNotRunning: AddPort or DelPort before Start returned, or once the
	// daemon stops.
	ErrNotRunning = errors.New("daemon not running")
	// ErrBadPortOptions: AddPort with options it cannot serve.
	ErrBadPortOptions = errors.New("bad port options")
	// ErrLevelFixed: SetLogLevel on a daemon given no AdminOptions.LogLevel.
	ErrLevelFixed = errors.New("log level fixed at start")
)

// adminState is the Daemon's administration state.
type adminState struct {
	op sync.Mutex // serialises AddPort and DelPort
	mu sync.Mutex // guards Daemon.ports (after Start), ctx and stopped
	// ctx is the daemon's context once Start served every port; nil before.
	ctx context.Context // +checklocks:mu
	// stopped: the daemon stopped; ports are no longer added.
	stopped bool // +checklocks:mu
}

// portList returns the ports; the slice is never changed in place, so the
// caller may range over it without a lock.
func (d *Daemon) portList() []*Port {
	d.admin.mu.Lock()
	defer d.admin.mu.Unlock()
	return d.ports
}

// adminReady is called by Start once every configured port started: from
// then on AddPort and DelPort change the ports, and when the daemon stops
// every port still listed is closed (those added at run time included).
func (d *Daemon) adminReady(ctx context.Context) {
	d.admin.mu.Lock()
	d.admin.ctx = ctx
	d.admin.mu.Unlock()
	d.life.Cleanup(func() {
		d.admin.mu.Lock()
		d.admin.stopped = true
		ports := d.ports
		d.admin.mu.Unlock()
		for _, p := range ports {
			p.Close() // a no-op for a port already stopped
		}
	})
}

// running returns the daemon's context, or ErrNotRunning.
func (d *Daemon) running() (context.Context, error) {
	d.admin.mu.Lock()
	defer d.admin.mu.Unlock()
	if d.admin.ctx == nil || d.admin.stopped || d.admin.ctx.Err() != nil {
		return nil, fmt.Errorf("%w: start it first (or it is stopping)", ErrNotRunning)
	}
	return d.admin.ctx, nil
}

// AddPort creates a port and starts it, as if it had been in
// DaemonOptions.Ports: it returns once the socket listens (in client mode,
// once the first connection attempt is under way). Zero fields of opts take
// AdminOptions.PortDefaults; opts.Runtime is the daemon's. It returns an
// error wrapping ErrPortExists for a name or socket another port has,
// ErrBadPortOptions for a missing name, a relative socket path or a bad
// queue count, ErrNotRunning outside Start..Close, or the port's Start
// error (a missing directory, a socket another process serves).
func (d *Daemon) AddPort(opts PortOptions) (PortInfo, error) {
	d.admin.op.Lock()
	defer d.admin.op.Unlock()
	ctx, err := d.running()
	if err != nil {
		return PortInfo{}, fmt.Errorf("add port %s: %w", opts.Name, err)
	}
	def := d.opts.Admin.PortDefaults
	if opts.QueuePairs == 0 {
		opts.QueuePairs = def.QueuePairs
	}
	if reflect.ValueOf(opts.Link).IsZero() {
		opts.Link = def.Link
	}
	if opts.PollCPUs == nil {
		opts.PollCPUs = def.PollCPUs
	}
	if opts.SocketMode == 0 {
		opts.SocketMode = cmpOr(def.SocketMode, d.opts.SocketMode)
	}
	if opts.SocketGroup == "" {
		opts.SocketGroup = cmpOr(def.SocketGroup, d.opts.SocketGroup)
	}
	if opts.Logger == nil {
		opts.Logger = def.Logger
	}
	if opts.RingStateDir == "" {
		opts.RingStateDir = d.opts.RingStateDir
	}
	if opts.Logger == nil {
		opts.Logger = d.log
	}
	opts.Runtime = d.rt
	if err := checkNewPort(opts, d.portList()); err != nil {
		return PortInfo{}, fmt.Errorf("add port %s: %w", opts.Name, err)
	}
	withDeviceState(&opts, d.opts.Migration.Key)
	p, err := NewPort(opts)
	if err != nil {
		return PortInfo{}, fmt.Errorf("add port %s: %v: %w", opts.Name, err, ErrBadPortOptions)
	}
	if err := p.Start(ctx); err != nil {
		return PortInfo{}, fmt.Errorf("add port %s: %w", opts.Name, err)
	}
	d.life.Go(func(context.Context) error {
		if err := p.Wait(); err != nil {
			return fmt.Errorf("port %s: %w", p.Name(), err)
		}
		return nil
	})
	d.admin.mu.Lock()
	if d.admin.stopped {
		d.admin.mu.Unlock()
		p.Close()
		return PortInfo{}, fmt.Errorf("add port %s: %w: it stopped meanwhile", opts.Name, ErrNotRunning)
	}
	d.ports = append(slices.Clip(d.ports), p) // a new array: listings hold the old one
	d.admin.mu.Unlock()
	d.log.Info("port added", "port", p.Name(), "socket", opts.Socket, "client", opts.Client, "queues", opts.QueuePairs)
	return p.Info(), nil
}

// checkNewPort refuses options AddPort cannot serve next to ports.
func checkNewPort(opts PortOptions, ports []*Port) error {
	if opts.Name == "" || strings.ContainsAny(opts.Name, " \t\n/") {
		return fmt.Errorf("%w: name %q: give a name without spaces or slashes", ErrBadPortOptions, opts.Name)
	}
	if !filepath.IsAbs(opts.Socket) {
		return fmt.Errorf("%w: socket %q: give an absolute path", ErrBadPortOptions, opts.Socket)
	}
	if opts.QueuePairs < 0 || opts.QueuePairs > maxQueuePairs {
		return fmt.Errorf("%w: %d queue pairs: give 1 to %d", ErrBadPortOptions, opts.QueuePairs, maxQueuePairs)
	}
	sock := filepath.Clean(opts.Socket)
	for _, p := range ports {
		switch {
		case p.Name() == opts.Name:
			return fmt.Errorf("%w: port %s serves %s: pick another name, or remove it first (velocectl del-port %s)", ErrPortExists, p.Name(), p.opts.Socket, p.Name())
		case filepath.Clean(p.opts.Socket) == sock:
			return fmt.Errorf("%w: socket %s is port %s's: give another socket", ErrPortExists, sock, p.Name())
		}
	}
	return nil
}

// maxQueuePairs is the most queue pairs a port offers (vhostuser's bound).
const maxQueuePairs = 128

// DelPort stops the port called name and removes it: its frontend is
// disconnected, its sessions are released and, in server mode, its socket
// file is removed once DelPort returns. It returns the port's last
// information, or an error wrapping ErrNoPort or ErrNotRunning.
func (d *Daemon) DelPort(name string) (PortInfo, error) {
	d.admin.op.Lock()
	defer d.admin.op.Unlock()
	if _, err := d.running(); err != nil {
		return PortInfo{}, fmt.Errorf("delete port %s: %w", name, err)
	}
	d.admin.mu.Lock()
	i := slices.IndexFunc(d.ports, func(p *Port) bool { return p.Name() == name })
	if i < 0 {
		names := make([]string, len(d.ports))
		for j, p := range d.ports {
			names[j] = p.Name()
		}
		d.admin.mu.Unlock()
		return PortInfo{}, fmt.Errorf("delete port %q: %w (ports: %s)", name, ErrNoPort, strings.Join(names, ", "))
	}
	p := d.ports[i]
	d.ports = slices.Delete(slices.Clone(d.ports), i, i+1) // a new array: listings hold the old one
	d.admin.mu.Unlock()
	err := p.Close()
	p.dev.RemoveRingState() // no next daemon serves this port
	d.log.Info("port deleted", "port", name, "socket", p.opts.Socket)
	if err != nil {
		return p.Info(), fmt.Errorf("delete port %s: %w", name, err)
	}
	return p.Info(), nil
}

// LogLevel returns the daemon's log level (AdminOptions.LogLevel), and
// whether it can be changed.
func (d *Daemon) LogLevel() (slog.Level, bool) {
	if lv := d.opts.Admin.LogLevel; lv != nil {
		return lv.Level(), true
	}
	// A fixed level: what the logger lets through.
	for _, l := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn} {
		if d.log.Enabled(context.Background(), l) {
			return l, false
		}
	}
	return slog.LevelError, false
}

// SetLogLevel sets the daemon's log level; it fails with ErrLevelFixed
// when the daemon was given no AdminOptions.LogLevel.
func (d *Daemon) SetLogLevel(l slog.Level) error {
	lv := d.opts.Admin.LogLevel
	if lv == nil {
		return fmt.Errorf("set log level: %w (this daemon was started without AdminOptions.LogLevel)", ErrLevelFixed)
	}
	old := lv.Level()
	lv.Set(l)
	d.log.Log(context.Background(), max(l, old), "log level set", "level", l, "was", old)
	return nil
}

func cmpOr[T comparable](a, b T) T {
	var zero T
	if a != zero {
		return a
	}
	return b
}

// The control API's administration endpoints (control.AdminService).

var _ control.AdminService = daemonService{}

// statusError gives a backend error the control sentinel that sets its
// HTTP status, keeping its message.
type statusError struct {
	err, status error
}

func (e statusError) Error() string   { return e.err.Error() }
func (e statusError) Unwrap() []error { return []error{e.err, e.status} }

// apiError maps an administration error to its control status.
func apiError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNoPort):
		return statusError{err, control.ErrNotFound}
	case errors.Is(err, ErrPortExists), errors.Is(err, ErrBadPortOptions), errors.Is(err, ErrLevelFixed):
		return statusError{err, control.ErrBadRequest}
	}
	return err
}

func (s daemonService) AddPort(_ context.Context, req control.AddPortRequest) (control.PortInfo, error) {
	info, err := s.d.AddPort(PortOptions{Name: req.Name, Socket: req.Socket, Client: req.Client, QueuePairs: req.Queues})
	return info, apiError(err)
}

func (s daemonService) DelPort(_ context.Context, req control.DelPortRequest) (control.PortInfo, error) {
	info, err := s.d.DelPort(req.Name)
	return info, apiError(err)
}

func (s daemonService) LogLevel(context.Context) (control.LogLevelInfo, error) {
	l, _ := s.d.LogLevel()
	return control.LogLevelInfo{Level: l.String()}, nil
}

func (s daemonService) SetLogLevel(_ context.Context, req control.LogLevelRequest) (control.LogLevelInfo, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(req.Level)); err != nil {
		return control.LogLevelInfo{}, fmt.Errorf("log level %q: give debug, info, warn or error: %w", req.Level, control.ErrBadRequest)
	}
	if err := s.d.SetLogLevel(l); err != nil {
		return control.LogLevelInfo{}, apiError(err)
	}
	return s.LogLevel(context.Background())
}
