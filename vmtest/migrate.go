package vmtest

import (
	"context"
	"fmt"
	"net"
	"time"
)

// MigrationStats are QEMU's figures for a finished migration (query-migrate).
type MigrationStats struct {
	Status string `json:"status"`
	// TotalTime and Downtime are in milliseconds.
	TotalTime int64 `json:"total-time"`
	Downtime  int64 `json:"downtime"`
	RAM       struct {
		Transferred  int64 `json:"transferred"`
		DirtySyncs   int64 `json:"dirty-sync-count"`
		DirtyPages   int64 `json:"dirty-pages-rate"`
		Precopy      int64 `json:"precopy-bytes"`
		Remaining    int64 `json:"remaining"`
		Total        int64 `json:"total"`
		Duplicate    int64 `json:"duplicate"`
		Normal       int64 `json:"normal"`
		NormalBytes  int64 `json:"normal-bytes"`
		PagesPerSecs int64 `json:"pages-per-second"`
	} `json:"ram"`
	ErrorDesc string `json:"error-desc,omitempty"`
}

// IncomingURI returns a tcp: migration URI on a free loopback port, for
// the destination's Options.Incoming.
func IncomingURI() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return "tcp:" + l.Addr().String(), nil
}

// Migrate live-migrates the running guest to the QEMU waiting at uri (a VM
// started with Options.Incoming = uri) and waits until QEMU reports the
// migration completed. A failed or cancelled migration returns an error
// with QEMU's description; the source keeps running then.
func (vm *VM) Migrate(ctx context.Context, uri string) (*MigrationStats, error) {
	if err := vm.QMP(ctx, "migrate", map[string]any{"uri": uri}, nil); err != nil {
		return nil, err
	}
	return vm.WaitMigration(ctx)
}

// WaitMigration polls query-migrate until the migration is no longer
// active and returns the final statistics.
func (vm *VM) WaitMigration(ctx context.Context) (*MigrationStats, error) {
	for {
		var st MigrationStats
		if err := vm.QMP(ctx, "query-migrate", nil, &st); err != nil {
			return nil, err
		}
		switch st.Status {
		case "completed":
			// go-qemu pitfall seen here: the first answer after
			// completion may carry zero times; ask once more.
			if st.TotalTime == 0 {
				var again MigrationStats
				if err := vm.QMP(ctx, "query-migrate", nil, &again); err == nil {
					st = again
				}
			}
			return &st, nil
		case "failed", "cancelled":
			return &st, fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return &st, fmt.Errorf("migration still %q: %w", st.Status, ctx.Err())
		case <-vm.done:
			return &st, fmt.Errorf("migration: %w", ErrExited)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
