// Package hypervisor is the part of a live migration the hypervisor does:
// moving guest memory and device state from a source VM to a destination
// VM. It defines what `velocectl migrate` needs from any hypervisor — the
// [Driver] interface, the [Hooks] every driver takes, [Progress] updates
// and the final [Summary] — and leaves the mechanics to one package per
// hypervisor:
//
//   - migration/hypervisor/qemu drives QEMU over QMP (github.com/digitalocean/go-qemu);
//   - migration/hypervisor/chv drives Cloud Hypervisor over its HTTP API,
//     with a fake API server for tests in migration/hypervisor/chv/chvtest.
//
// Why a package per hypervisor: the two share a life cycle but nothing of
// their wire protocols, each needs its own test fake, and a caller that
// drives only one does not link the other's client.
//
// # Plugging in
//
// The caller builds a driver with its hypervisor's Options (which embed
// Hooks), then:
//
//	d, err := qemu.New(qemu.Options{Source: src, Destination: dst, URI: uri,
//		Hooks: hypervisor.Hooks{Switchover: handOverStreams, Progress: show}})
//	err = d.Prepare(ctx) // destination side: listen for the migration
//	err = d.Start(ctx)   // source side: begin; returns once it runs
//	sum, err := d.Wait(ctx)
//
// Cancel may be called at any time after Start from another goroutine.
// The stream hand-off between daemons plugs in as Hooks.Switchover: it
// runs while the guest is paused at switchover, before the destination
// resumes (see each driver for where exactly, and for the gap Cloud
// Hypervisor leaves).
package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Driver migrates one VM from a source hypervisor to a destination one.
// A Driver is used once: Prepare, Start, then Wait; Cancel from any
// goroutine after Start. Implementations are in the sibling packages; the
// interface is open so that other hypervisors (libvirt) and the stream
// hand-off's tests can provide their own.
type Driver interface {
	// Prepare readies the destination to receive the migration, where the
	// hypervisor needs it (QEMU started with -incoming defer; Cloud
	// Hypervisor's vm.receive-migration). It may return ErrDestination.
	Prepare(ctx context.Context) error
	// Start begins the migration and returns once the hypervisor has
	// accepted it; the migration then runs on its own. A second Start
	// returns ErrStarted.
	Start(ctx context.Context) error
	// Cancel stops a running migration and returns once the guest runs on
	// the source again. It returns ErrCompleted when the migration has
	// already completed, ErrNotSupported when the hypervisor cannot cancel
	// at this point, and ErrNotStarted before Start.
	Cancel(ctx context.Context) error
	// Wait waits until the migration has ended and returns its summary;
	// the error is the summary's Err (nil when it completed). An ended ctx
	// returns ctx's error and leaves the migration running.
	Wait(ctx context.Context) (*Summary, error)
}

// Hooks are the caller's part of a migration, the same for every driver.
type Hooks struct {
	// Switchover, when set, runs exactly once while the guest is paused at
	// switchover, before the destination resumes it: the place where the
	// daemons hand the streams' state over. Its context ends after
	// SwitchoverTimeout or when the migration is cancelled. An error
	// cancels the migration where the hypervisor allows it (QEMU) and is
	// returned by Wait wrapped in ErrSwitchover. Nil migrates without a
	// pause (the snapshot rides in the hypervisor's stream, or there is
	// none).
	Switchover func(ctx context.Context) error
	// SwitchoverTimeout bounds Switchover, since the guest is paused while
	// it runs; default 30 s.
	SwitchoverTimeout time.Duration
	// Progress, when set, is called every ProgressInterval and on each
	// change of Status, from one goroutine, never concurrently; the last
	// call carries the final status. It should return quickly: the driver
	// waits for it.
	Progress func(Progress)
	// ProgressInterval is the period of Progress calls; default 1 s.
	ProgressInterval time.Duration
}

// Defaults for Hooks.
const (
	DefaultSwitchoverTimeout = 30 * time.Second
	DefaultProgressInterval  = time.Second
)

// WithDefaults returns h with zero durations replaced by the defaults.
func (h Hooks) WithDefaults() Hooks {
	if h.SwitchoverTimeout <= 0 {
		h.SwitchoverTimeout = DefaultSwitchoverTimeout
	}
	if h.ProgressInterval <= 0 {
		h.ProgressInterval = DefaultProgressInterval
	}
	return h
}

// Status is the phase of a migration. The names are QEMU's MigrationStatus
// (qapi/migration.json); drivers for other hypervisors map to them.
type Status string

// Statuses a driver reports.
const (
	StatusNone          Status = "none"           // not started
	StatusSetup         Status = "setup"          // connecting, setting up
	StatusActive        Status = "active"         // copying memory, guest running
	StatusPreSwitchover Status = "pre-switchover" // guest paused, Switchover hook runs
	StatusDevice        Status = "device"         // guest paused, device state moves
	StatusCancelling    Status = "cancelling"
	StatusCancelled     Status = "cancelled" // guest runs on the source
	StatusCompleted     Status = "completed" // guest runs on the destination
	StatusFailed        Status = "failed"
)

// Done reports whether s is a final status.
func (s Status) Done() bool {
	return s == StatusCompleted || s == StatusFailed || s == StatusCancelled
}

// Progress is a migration's state at one moment. Figures the hypervisor
// does not report (Cloud Hypervisor reports none) are zero, with Reported
// false.
type Progress struct {
	// Status is the migration's phase.
	Status Status
	// Elapsed is the time since the migration started.
	Elapsed time.Duration
	// Reported says whether the hypervisor reports the figures below.
	Reported bool
	// Transferred is the guest memory sent so far, in bytes.
	Transferred uint64
	// Remaining is the guest memory still to send, in bytes.
	Remaining uint64
	// Total is the guest memory size, in bytes.
	Total uint64
	// DirtyRate is the rate at which the guest dirties pages, pages/s.
	DirtyRate uint64
	// ExpectedDowntime is the hypervisor's estimate of the downtime.
	ExpectedDowntime time.Duration
}

// String formats p for people: "active 12.0 MiB sent, 244.0 MiB left, ...".
func (p Progress) String() string {
	if !p.Reported {
		return fmt.Sprintf("%s after %v", p.Status, p.Elapsed.Round(time.Millisecond))
	}
	return fmt.Sprintf("%s after %v: %.1f MiB sent, %.1f MiB left, %d dirty pages/s, expected downtime %v",
		p.Status, p.Elapsed.Round(time.Millisecond), mib(p.Transferred), mib(p.Remaining), p.DirtyRate, p.ExpectedDowntime)
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// Summary is the outcome of a migration.
type Summary struct {
	// Status is the final status: completed, cancelled or failed.
	Status Status
	// TotalTime is the migration's duration: the hypervisor's figure where
	// it reports one (QEMU's total-time), else measured from Start.
	TotalTime time.Duration
	// Downtime is how long the guest was paused, as the hypervisor reports
	// it (QEMU's downtime, which includes the Switchover hook); zero with
	// DowntimeReported false when it reports none (Cloud Hypervisor).
	Downtime time.Duration
	// DowntimeReported says whether Downtime is the hypervisor's figure.
	DowntimeReported bool
	// Transferred is the guest memory sent, in bytes (0 when unreported).
	Transferred uint64
	// SwitchoverRan says whether the Switchover hook ran (successfully or
	// not).
	SwitchoverRan bool
	// Err is why the migration did not complete; nil when it did.
	Err error
}

// Errors drivers return; callers branch on them with errors.Is.
var (
	// ErrStarted: Start was called twice.
	ErrStarted = errors.New("migration already started")
	// ErrNotStarted: Cancel or Wait before Start.
	ErrNotStarted = errors.New("migration not started")
	// ErrCompleted: Cancel came after the migration completed.
	ErrCompleted = errors.New("migration already completed")
	// ErrCancelled: the migration was cancelled; the guest runs on the
	// source.
	ErrCancelled = errors.New("migration cancelled")
	// ErrFailed: the hypervisor reports the migration failed.
	ErrFailed = errors.New("migration failed")
	// ErrSwitchover: the Switchover hook returned an error.
	ErrSwitchover = errors.New("switchover hook failed")
	// ErrNotSupported: the hypervisor cannot do what was asked.
	ErrNotSupported = errors.New("not supported by the hypervisor")
	// ErrUnavailable: the hypervisor's API cannot be reached.
	ErrUnavailable = errors.New("hypervisor API unavailable")
	// ErrDestination: the destination is not waiting for this migration.
	ErrDestination = errors.New("destination not ready")
	// ErrInvalid: the driver's Options are incomplete or wrong.
	ErrInvalid = errors.New("invalid migration options")
)

// MigrationError is a migration the hypervisor ended without completing
// it; it matches ErrFailed or ErrCancelled (by Status) with errors.Is.
type MigrationError struct {
	// Status is StatusFailed or StatusCancelled.
	Status Status
	// Desc is the hypervisor's description, if any.
	Desc string
}

func (e *MigrationError) Error() string {
	if e.Desc == "" {
		return "migration " + string(e.Status)
	}
	return "migration " + string(e.Status) + ": " + e.Desc
}

// Is matches ErrFailed or ErrCancelled.
func (e *MigrationError) Is(target error) bool {
	return (target == ErrFailed && e.Status == StatusFailed) ||
		(target == ErrCancelled && e.Status == StatusCancelled)
}
