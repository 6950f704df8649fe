package control

import (
	"context"
	"net/http"
)

// The migration endpoints: `velocectl migrate` drives both daemons through
// them. The snapshot itself does not travel here: the source daemon sends
// it to the destination daemon's migration listener (veloced
// --migration-listen), authenticated with the shared migration key. A
// daemon serves these paths when its Service also implements
// MigrationService.
const (
	// PathMigration describes the daemon's migration setup (GET):
	// MigrationInfo.
	PathMigration = Prefix + "migration"
	// PathMigratePrepare readies a destination port (POST
	// MigratePrepareRequest): MigratePrepareResult.
	PathMigratePrepare = Prefix + "migration/prepare"
	// PathMigrateOut, on the source, freezes a port, exports its state
	// and hands it to the destination daemon (POST MigrateOutRequest):
	// MigrateOutResult.
	PathMigrateOut = Prefix + "migration/out"
	// PathMigrateCommit, on the source, ends a hand-off once the VM runs
	// on the destination (POST MigratePortRequest): MigrateCommitResult.
	PathMigrateCommit = Prefix + "migration/commit"
	// PathMigrateAbort, on the source, undoes a hand-off: the
	// destination drops the state, the port's streams resume here (POST
	// MigratePortRequest): MigrateAbortResult.
	PathMigrateAbort = Prefix + "migration/abort"
)

// MigrationService is what a daemon implements, beside Service, to take
// part in live migrations. Errors map to statuses as Service's do.
type MigrationService interface {
	// Migration describes the daemon's migration setup.
	Migration(ctx context.Context) (MigrationInfo, error)
	// MigratePrepare checks that a port can take a migrated guest's
	// state (it exists, or is created from the request, and is idle).
	MigratePrepare(ctx context.Context, req MigratePrepareRequest) (MigratePrepareResult, error)
	// MigrateOut hands a port's state to another daemon.
	MigrateOut(ctx context.Context, req MigrateOutRequest) (MigrateOutResult, error)
	// MigrateCommit ends a hand-off that succeeded.
	MigrateCommit(ctx context.Context, req MigratePortRequest) (MigrateCommitResult, error)
	// MigrateAbort undoes a hand-off.
	MigrateAbort(ctx context.Context, req MigratePortRequest) (MigrateAbortResult, error)
}

// MigrationInfo is PathMigration's answer.
type MigrationInfo struct {
	// Enabled says the daemon has a migration key: it can send and (with
	// Listen) receive stream state.
	Enabled bool `json:"enabled"`
	// Listen is the address of the migration listener, empty without one.
	Listen string `json:"listen,omitempty"`
	// Exported and Imported count the hand-offs that left and arrived.
	Exported uint64 `json:"exported"`
	Imported uint64 `json:"imported"`
	// Rejected counts incoming connections or snapshots refused: not
	// authenticated (no key, another key, a replay), corrupt, or not
	// fitting the port.
	Rejected uint64 `json:"rejected"`
	// Outgoing and Incoming name the ports with a hand-off under way.
	Outgoing []string `json:"outgoing"`
	Incoming []string `json:"incoming"`
}

// MigratePrepareRequest is PathMigratePrepare's body.
type MigratePrepareRequest struct {
	// Port is the destination port's name.
	Port string `json:"port"`
	// Socket, when the port does not exist, creates it (as add-port)
	// listening there (or, with Client, connecting there).
	Socket string `json:"socket,omitempty"`
	Client bool   `json:"client,omitempty"`
	Queues int    `json:"queues,omitempty"`
}

// MigratePrepareResult is PathMigratePrepare's answer.
type MigratePrepareResult struct {
	// Port is the port, ready for the import.
	Port PortInfo `json:"port"`
	// Created says the port was created by the request.
	Created bool `json:"created"`
	// Listen is the daemon's migration listener.
	Listen string `json:"listen"`
}

// MigrateOutRequest is PathMigrateOut's body.
type MigrateOutRequest struct {
	// Port is the source port.
	Port string `json:"port"`
	// Destination is the destination daemon's migration listener,
	// HOST:PORT.
	Destination string `json:"destination"`
	// DestinationPort is the port there; default Port.
	DestinationPort string `json:"destination_port,omitempty"`
}

// MigrateOutResult is PathMigrateOut's answer.
type MigrateOutResult struct {
	Port string `json:"port"`
	// Bytes is the size of the signed snapshot.
	Bytes    int `json:"bytes"`
	Sessions int `json:"sessions"`
	Streams  int `json:"streams"`
	Sources  int `json:"sources"`
	Sinks    int `json:"sinks"`
	// Queued is the messages that waited for the guest, moved with it.
	Queued int `json:"queued"`
	// HandoffMicros is how long the hand-off took, freeze to the
	// destination's answer, in µs.
	HandoffMicros int64 `json:"handoff_us"`
}

// MigratePortRequest names the port of a hand-off (commit, abort).
type MigratePortRequest struct {
	Port string `json:"port"`
}

// MigrateCommitResult is PathMigrateCommit's answer.
type MigrateCommitResult struct {
	Port string `json:"port"`
	// Forwarded is the messages that arrived here for the moved sinks
	// after the hand-off and were forwarded to the destination.
	Forwarded uint64 `json:"forwarded"`
}

// MigrateAbortResult is PathMigrateAbort's answer.
type MigrateAbortResult struct {
	Port string `json:"port"`
	// Resumed says the port's streams run here again.
	Resumed bool `json:"resumed"`
}

func init() {
	extensions = append(extensions, func(mux *http.ServeMux, s Service) {
		m, ok := s.(MigrationService)
		if !ok {
			return
		}
		Get(mux, PathMigration, m.Migration)
		Post(mux, PathMigratePrepare, m.MigratePrepare)
		Post(mux, PathMigrateOut, m.MigrateOut)
		Post(mux, PathMigrateCommit, m.MigrateCommit)
		Post(mux, PathMigrateAbort, m.MigrateAbort)
	})
}

// Migration describes the daemon's migration setup (GET PathMigration).
func (c *Client) Migration(ctx context.Context) (MigrationInfo, error) {
	var out MigrationInfo
	return out, c.do(ctx, http.MethodGet, PathMigration, nil, &out)
}

// MigratePrepare readies a destination port (POST PathMigratePrepare).
func (c *Client) MigratePrepare(ctx context.Context, req MigratePrepareRequest) (MigratePrepareResult, error) {
	var out MigratePrepareResult
	return out, c.do(ctx, http.MethodPost, PathMigratePrepare, req, &out)
}

// MigrateOut hands a port's state to the destination (POST PathMigrateOut).
func (c *Client) MigrateOut(ctx context.Context, req MigrateOutRequest) (MigrateOutResult, error) {
	var out MigrateOutResult
	return out, c.do(ctx, http.MethodPost, PathMigrateOut, req, &out)
}

// MigrateCommit ends a hand-off (POST PathMigrateCommit).
func (c *Client) MigrateCommit(ctx context.Context, req MigratePortRequest) (MigrateCommitResult, error) {
	var out MigrateCommitResult
	return out, c.do(ctx, http.MethodPost, PathMigrateCommit, req, &out)
}

// MigrateAbort undoes a hand-off (POST PathMigrateAbort).
func (c *Client) MigrateAbort(ctx context.Context, req MigratePortRequest) (MigrateAbortResult, error) {
	var out MigrateAbortResult
	return out, c.do(ctx, http.MethodPost, PathMigrateAbort, req, &out)
}
