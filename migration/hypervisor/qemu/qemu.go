// Package qemu migrates a QEMU VM over QMP: a hypervisor.Driver for
// `velocectl migrate` (see package migration/hypervisor).
//
// The source QEMU gets the pause-before-switchover capability when a
// Switchover hook is set, then "migrate" to Options.URI (tcp:HOST:PORT or
// unix:PATH). The driver polls query-migrate: its figures (ram.transferred,
// ram.remaining, ram.dirty-pages-rate, expected-downtime) become Progress
// updates, and at status "pre-switchover" — the guest paused, device state
// not yet sent, the destination not yet running — it runs the hook, then
// migrate-continue. QEMU counts that pause in its downtime. A failing hook
// makes the driver migrate_cancel and wait until the migration is cancelled
// and the source runs again; so does Cancel.
//
// The destination is a QEMU started with "-incoming URI" (already
// listening) or "-incoming defer": given its monitor, Prepare checks it
// waits for a migration (query-status "inmigrate"), that it listens on
// Options.URI (query-migrate's socket-address) or otherwise sends it
// migrate-incoming, and after completion Wait waits until it has left
// "inmigrate".
//
// Known go-qemu pitfalls, handled here: its event channel must be drained
// or command replies block (Conn drains it); its Run and Events take no
// context (Conn runs commands so that ctx is honoured); the first
// query-migrate after "completed" may carry zero times (the driver asks
// again).
package qemu

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/veloce-io/veloce/migration/hypervisor"
)

// Options configure a QEMU migration.
type Options struct {
	// Hooks are the Switchover hook and the Progress callback.
	hypervisor.Hooks
	// Source is the monitor of the QEMU whose guest migrates; required.
	Source Monitor
	// Destination is the monitor of the QEMU receiving it; optional. With
	// it Prepare checks (and for -incoming defer, starts) the incoming
	// side, and Wait waits for the destination to take over.
	Destination Monitor
	// URI is where the source sends the migration and the destination
	// listens: "tcp:HOST:PORT" or "unix:PATH"; required.
	URI string
	// MaxBandwidth, when positive, is set as max-bandwidth (bytes/s)
	// before the migration starts; zero keeps QEMU's setting.
	MaxBandwidth int64
	// DowntimeLimit, when positive, is set as downtime-limit (QEMU rounds
	// to milliseconds); zero keeps QEMU's setting (300 ms by default).
	DowntimeLimit time.Duration
	// PollInterval is how often query-migrate runs; default 20 ms. The
	// hook starts at most this long after QEMU pauses the guest.
	PollInterval time.Duration
	// CommandTimeout bounds each QMP command the driver sends on its own
	// (outside a caller's ctx); default 10 s.
	CommandTimeout time.Duration
}

// Driver is one QEMU migration. Create it with New.
type Driver struct {
	opts Options

	mu      sync.Mutex
	started bool // +checklocks:mu
	// stop ends the monitoring.
	stop context.CancelFunc // +checklocks:mu

	cancelOnce sync.Once
	cancelReq  chan struct{} // closed by Cancel: send migrate_cancel

	done chan struct{} // closed once sum is final
	sum  *hypervisor.Summary
	wg   sync.WaitGroup // the monitoring goroutine
}

var _ hypervisor.Driver = (*Driver)(nil)

// New validates opts and returns a driver; it talks to no QEMU yet.
// It returns an error wrapping hypervisor.ErrInvalid when Source or URI
// is missing.
func New(opts Options) (*Driver, error) {
	if opts.Source == nil {
		return nil, fmt.Errorf("new qemu migration: no source monitor: %w", hypervisor.ErrInvalid)
	}
	if opts.URI == "" {
		return nil, fmt.Errorf("new qemu migration: no URI: %w", hypervisor.ErrInvalid)
	}
	opts.Hooks = opts.Hooks.WithDefaults()
	if opts.PollInterval <= 0 {
		opts.PollInterval = 20 * time.Millisecond
	}
	if opts.CommandTimeout <= 0 {
		opts.CommandTimeout = 10 * time.Second
	}
	return &Driver{opts: opts, done: make(chan struct{}), cancelReq: make(chan struct{})}, nil
}

// migrationInfo is the part of query-migrate's MigrationInfo the driver
// reads (qapi/migration.json).
type migrationInfo struct {
	Status           hypervisor.Status `json:"status"`
	TotalTime        int64             `json:"total-time"`
	ExpectedDowntime int64             `json:"expected-downtime"`
	Downtime         *int64            `json:"downtime"`
	RAM              *struct {
		Transferred uint64 `json:"transferred"`
		Remaining   uint64 `json:"remaining"`
		Total       uint64 `json:"total"`
		DirtyRate   uint64 `json:"dirty-pages-rate"`
	} `json:"ram"`
	ErrorDesc     string          `json:"error-desc"`
	SocketAddress []socketAddress `json:"socket-address"`
}

type socketAddress struct {
	Type string `json:"type"`
	Host string `json:"host"`
	Port string `json:"port"`
	Path string `json:"path"`
}

type runState struct {
	Status  string `json:"status"`
	Running bool   `json:"running"`
}

// Prepare readies the destination, when Options.Destination is set (else
// it does nothing). The destination must be waiting for a migration
// (run state "inmigrate"); if it was started with -incoming defer it gets
// migrate-incoming to Options.URI, and if it already listens elsewhere
// Prepare fails. Errors wrap hypervisor.ErrDestination or the QMP error.
func (d *Driver) Prepare(ctx context.Context) error {
	dst := d.opts.Destination
	if dst == nil {
		return nil
	}
	var rs runState
	if err := dst.QMP(ctx, "query-status", nil, &rs); err != nil {
		return fmt.Errorf("prepare destination: %w", err)
	}
	if rs.Status != "inmigrate" {
		return fmt.Errorf("prepare destination: run state %q, not inmigrate (start it with -incoming): %w", rs.Status, hypervisor.ErrDestination)
	}
	listening, err := d.destinationListens(ctx)
	if err != nil {
		return err
	}
	if listening {
		return nil
	}
	if err := dst.QMP(ctx, "migrate-incoming", map[string]any{"uri": d.opts.URI}, nil); err != nil {
		return fmt.Errorf("prepare destination: %w", err)
	}
	if listening, err = d.destinationListens(ctx); err != nil {
		return err
	}
	if !listening {
		return fmt.Errorf("prepare destination: migrate-incoming %s: not listening afterwards: %w", d.opts.URI, hypervisor.ErrDestination)
	}
	return nil
}

// destinationListens reports whether the destination listens (on the URI:
// else an error).
func (d *Driver) destinationListens(ctx context.Context) (bool, error) {
	var info migrationInfo
	if err := d.opts.Destination.QMP(ctx, "query-migrate", nil, &info); err != nil {
		return false, fmt.Errorf("prepare destination: %w", err)
	}
	if len(info.SocketAddress) == 0 {
		return false, nil
	}
	scheme, rest, _ := strings.Cut(d.opts.URI, ":")
	for _, a := range info.SocketAddress {
		switch {
		case scheme == "tcp" && a.Type == "inet" && strings.HasSuffix(rest, ":"+a.Port):
			return true, nil
		case scheme == "unix" && a.Type == "unix" && a.Path == rest:
			return true, nil
		case scheme != "tcp" && scheme != "unix":
			return true, nil // exec:, fd: ... nothing to compare
		}
	}
	return false, fmt.Errorf("prepare destination: it listens on %+v, not %s: %w", info.SocketAddress, d.opts.URI, hypervisor.ErrDestination)
}

// Start sets the migration capabilities and parameters on the source and
// sends "migrate"; it returns once QEMU has accepted it. The migration then
// runs on its own, watched by a goroutine that Wait and Close wait for;
// ctx governs only this call. Errors: hypervisor.ErrStarted on a second
// call or when the source already migrates, else the QMP error (then Wait
// returns the same error as a failed summary).
func (d *Driver) Start(ctx context.Context) error {
	d.mu.Lock()
	if d.started {
		d.mu.Unlock()
		return fmt.Errorf("start migration: %w", hypervisor.ErrStarted)
	}
	d.started = true
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	d.stop = stop
	d.mu.Unlock()

	begun := time.Now()
	wasRunning, err := d.begin(ctx)
	if err != nil {
		d.finish(&hypervisor.Summary{Status: hypervisor.StatusFailed, Err: err})
		stop()
		return err
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer stop()
		d.finish(d.watch(runCtx, begun, wasRunning))
	}()
	return nil
}

func (d *Driver) begin(ctx context.Context) (wasRunning bool, err error) {
	src := d.opts.Source
	var rs runState
	if err := src.QMP(ctx, "query-status", nil, &rs); err != nil {
		return false, fmt.Errorf("start migration: %w", err)
	}
	var info migrationInfo
	if err := src.QMP(ctx, "query-migrate", nil, &info); err != nil {
		return false, fmt.Errorf("start migration: %w", err)
	}
	switch info.Status {
	case "", hypervisor.StatusNone, hypervisor.StatusCompleted, hypervisor.StatusFailed, hypervisor.StatusCancelled:
	default:
		return false, fmt.Errorf("start migration: source already migrating (%s): %w", info.Status, hypervisor.ErrStarted)
	}
	caps := []map[string]any{{"capability": "pause-before-switchover", "state": d.opts.Switchover != nil}}
	if err := src.QMP(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}, nil); err != nil {
		return false, fmt.Errorf("start migration: %w", err)
	}
	params := map[string]any{}
	if d.opts.MaxBandwidth > 0 {
		params["max-bandwidth"] = d.opts.MaxBandwidth
	}
	if d.opts.DowntimeLimit > 0 {
		params["downtime-limit"] = max(d.opts.DowntimeLimit.Milliseconds(), 1)
	}
	if len(params) > 0 {
		if err := src.QMP(ctx, "migrate-set-parameters", params, nil); err != nil {
			return false, fmt.Errorf("start migration: %w", err)
		}
	}
	if err := src.QMP(ctx, "migrate", map[string]any{"uri": d.opts.URI}, nil); err != nil {
		return false, fmt.Errorf("start migration: %w", err)
	}
	return rs.Running, nil
}

// SetMaxBandwidth changes the bandwidth limit (bytes/s) of the source,
// also while the migration runs.
func (d *Driver) SetMaxBandwidth(ctx context.Context, bytesPerSecond int64) error {
	if err := d.opts.Source.QMP(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": bytesPerSecond}, nil); err != nil {
		return fmt.Errorf("set max bandwidth: %w", err)
	}
	return nil
}

// watch polls query-migrate until the migration ends and returns its
// summary. runCtx ends with Close; d.cancelReq is closed when Cancel asks
// for migrate_cancel.
func (d *Driver) watch(runCtx context.Context, begun time.Time, wasRunning bool) *hypervisor.Summary {
	sum := &hypervisor.Summary{}
	var (
		lastStatus   hypervisor.Status
		lastProgress time.Time
		hookErr      error
		cancelSent   bool
	)
	report := func(info *migrationInfo, force bool) {
		if d.opts.Progress == nil || (!force && info.Status == lastStatus && time.Since(lastProgress) < d.opts.ProgressInterval) {
			return
		}
		lastStatus, lastProgress = info.Status, time.Now()
		d.opts.Progress(progressOf(info, time.Since(begun)))
	}
	sendCancel := func() error {
		cancelSent = true
		return d.run(runCtx, d.opts.Source, "migrate_cancel", nil, nil)
	}
	ticker := time.NewTicker(d.opts.PollInterval)
	defer ticker.Stop()
	for {
		var info migrationInfo
		if err := d.run(runCtx, d.opts.Source, "query-migrate", nil, &info); err != nil {
			sum.Status, sum.Err = hypervisor.StatusFailed, fmt.Errorf("watch migration: %w", err)
			sum.TotalTime = time.Since(begun)
			return sum
		}
		switch info.Status {
		case hypervisor.StatusPreSwitchover:
			if sum.SwitchoverRan || cancelSent {
				break
			}
			report(&info, false)
			sum.SwitchoverRan = true
			hookErr = d.switchover(runCtx)
			if d.cancelRequested() {
				hookErr = nil // the caller cancelled; the hook only saw its ctx end
			} else if hookErr == nil {
				if err := d.run(runCtx, d.opts.Source, "migrate-continue", map[string]any{"state": "pre-switchover"}, nil); err != nil {
					sum.Status, sum.Err = hypervisor.StatusFailed, fmt.Errorf("continue migration: %w", err)
					return sum
				}
				continue
			}
			if err := sendCancel(); err != nil {
				sum.Status, sum.Err = hypervisor.StatusFailed, fmt.Errorf("cancel migration: %w", err)
				return sum
			}
			continue
		case hypervisor.StatusCompleted:
			if info.TotalTime == 0 || info.Downtime == nil {
				// go-qemu pitfall: the first answer after completion may
				// carry zero times.
				var again migrationInfo
				if err := d.run(runCtx, d.opts.Source, "query-migrate", nil, &again); err == nil && again.Status == hypervisor.StatusCompleted {
					info = again
				}
			}
			report(&info, true)
			fillSummary(sum, &info)
			if err := d.waitDestination(runCtx); err != nil {
				sum.Err = err
			}
			return sum
		case hypervisor.StatusFailed, hypervisor.StatusCancelled:
			report(&info, true)
			fillSummary(sum, &info)
			if sum.TotalTime == 0 {
				sum.TotalTime = time.Since(begun)
			}
			sum.Err = &hypervisor.MigrationError{Status: info.Status, Desc: info.ErrorDesc}
			if hookErr != nil {
				sum.Err = fmt.Errorf("%w: %w (%w)", hypervisor.ErrSwitchover, hookErr, sum.Err)
			}
			if err := d.waitSourceRunning(runCtx, wasRunning); err != nil {
				sum.Err = fmt.Errorf("%w; %w", sum.Err, err)
			}
			return sum
		}
		report(&info, false)
		select {
		case <-runCtx.Done():
			sum.Status, sum.Err = info.Status, fmt.Errorf("watch migration: %w", runCtx.Err())
			sum.TotalTime = time.Since(begun)
			return sum
		case <-d.cancelReq:
			if !cancelSent {
				if err := sendCancel(); err != nil {
					sum.Status, sum.Err = hypervisor.StatusFailed, fmt.Errorf("cancel migration: %w", err)
					return sum
				}
			}
			<-ticker.C
		case <-ticker.C:
		}
	}
}

// switchover runs the hook with its timeout; its ctx also ends on Cancel.
func (d *Driver) switchover(ctx context.Context) error {
	if d.opts.Switchover == nil {
		return nil
	}
	hctx, cancel := context.WithTimeout(ctx, d.opts.SwitchoverTimeout)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-d.cancelReq:
			cancel()
		case <-hctx.Done():
		}
	}()
	defer wg.Wait()
	defer cancel()
	return d.opts.Switchover(hctx)
}

func (d *Driver) cancelRequested() bool {
	select {
	case <-d.cancelReq:
		return true
	default:
		return false
	}
}

// waitSourceRunning waits, after a cancelled or failed migration, until
// the source guest runs again (QEMU restarts it; a guest left "paused" is
// continued), if it ran before.
func (d *Driver) waitSourceRunning(ctx context.Context, wasRunning bool) error {
	if !wasRunning {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, d.opts.CommandTimeout)
	defer cancel()
	for {
		var rs runState
		if err := d.opts.Source.QMP(ctx, "query-status", nil, &rs); err != nil {
			return fmt.Errorf("wait for the source to run: %w", err)
		}
		if rs.Running {
			return nil
		}
		if rs.Status == "paused" {
			if err := d.opts.Source.QMP(ctx, "cont", nil, nil); err != nil {
				return fmt.Errorf("resume source: %w", err)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the source to run (run state %q): %w", rs.Status, ctx.Err())
		case <-time.After(d.opts.PollInterval):
		}
	}
}

// waitDestination waits until the destination has left "inmigrate".
func (d *Driver) waitDestination(ctx context.Context) error {
	if d.opts.Destination == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, d.opts.CommandTimeout)
	defer cancel()
	for {
		var rs runState
		if err := d.opts.Destination.QMP(ctx, "query-status", nil, &rs); err != nil {
			return fmt.Errorf("wait for the destination: %w", err)
		}
		if rs.Status != "inmigrate" && rs.Status != "finish-migrate" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the destination (run state %q): %w", rs.Status, ctx.Err())
		case <-time.After(d.opts.PollInterval):
		}
	}
}

func (d *Driver) run(ctx context.Context, m Monitor, command string, args, out any) error {
	ctx, cancel := context.WithTimeout(ctx, d.opts.CommandTimeout)
	defer cancel()
	return m.QMP(ctx, command, args, out)
}

func progressOf(info *migrationInfo, elapsed time.Duration) hypervisor.Progress {
	p := hypervisor.Progress{
		Status:           info.Status,
		Elapsed:          elapsed,
		ExpectedDowntime: time.Duration(info.ExpectedDowntime) * time.Millisecond,
	}
	if info.RAM != nil {
		p.Reported = true
		p.Transferred, p.Remaining, p.Total, p.DirtyRate = info.RAM.Transferred, info.RAM.Remaining, info.RAM.Total, info.RAM.DirtyRate
	}
	return p
}

func fillSummary(sum *hypervisor.Summary, info *migrationInfo) {
	sum.Status = info.Status
	sum.TotalTime = time.Duration(info.TotalTime) * time.Millisecond
	if info.Downtime != nil {
		sum.Downtime, sum.DowntimeReported = time.Duration(*info.Downtime)*time.Millisecond, true
	}
	if info.RAM != nil {
		sum.Transferred = info.RAM.Transferred
	}
}

func (d *Driver) finish(sum *hypervisor.Summary) {
	d.sum = sum
	close(d.done)
}

// Cancel asks QEMU to cancel the migration (migrate_cancel) and waits
// until it is cancelled and the guest runs on the source again; the
// Switchover hook's context ends if it is running. It returns nil then, or
// when the migration had already failed or been cancelled;
// hypervisor.ErrCompleted when it completed first; hypervisor.ErrNotStarted
// before Start; ctx's error when ctx ends first (the cancellation goes on).
func (d *Driver) Cancel(ctx context.Context) error {
	d.mu.Lock()
	started := d.started
	d.mu.Unlock()
	if !started {
		return fmt.Errorf("cancel migration: %w", hypervisor.ErrNotStarted)
	}
	d.cancelOnce.Do(func() { close(d.cancelReq) })
	select {
	case <-d.done:
	case <-ctx.Done():
		return fmt.Errorf("cancel migration: %w", ctx.Err())
	}
	if d.sum.Status == hypervisor.StatusCompleted {
		return fmt.Errorf("cancel migration: %w", hypervisor.ErrCompleted)
	}
	return nil
}

// Wait waits until the migration has ended and returns its summary and
// the summary's Err: nil when it completed (and the destination, if
// given, left "inmigrate"); a *hypervisor.MigrationError (ErrFailed,
// ErrCancelled), wrapped in ErrSwitchover when the hook failed; a QMP
// error when QEMU could not be asked. hypervisor.ErrNotStarted before
// Start; ctx's error when ctx ends first.
func (d *Driver) Wait(ctx context.Context) (*hypervisor.Summary, error) {
	d.mu.Lock()
	started := d.started
	d.mu.Unlock()
	if !started {
		return nil, fmt.Errorf("wait for migration: %w", hypervisor.ErrNotStarted)
	}
	select {
	case <-d.done:
		return d.sum, d.sum.Err
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for migration: %w", ctx.Err())
	}
}

// Close stops watching the migration (it does not cancel it) and waits
// for the driver's goroutine. Wait returns afterwards.
func (d *Driver) Close() error {
	d.mu.Lock()
	stop := d.stop
	d.mu.Unlock()
	if stop != nil {
		stop()
	}
	d.wg.Wait()
	return nil
}
