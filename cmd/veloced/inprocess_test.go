package main

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/internal/testutil"
)

// inProcess runs veloced's run with args in the test's process — through
// do when it is set (a network namespace's Do), directly otherwise — and
// returns once the daemon is ready: a context that ends with the test,
// the daemon's log, and stop, which cancels the daemon and fails the test
// if it returned an error (stop runs at the end of the test too; running
// it again does nothing).
func inProcess(t *testing.T, do func(func() error) error, args ...string) (ctx context.Context, log *testutil.LineWatcher, stop func()) {
	t.Helper()
	log = testutil.WatchLine(control.ReadyLine, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	exited := make(chan struct{})
	if do == nil {
		do = func(f func() error) error { return f() }
	}
	go func() {
		defer close(exited)
		done <- do(func() error { return run(ctx, args, log) })
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("veloced: %v\n%s", err, log.String())
			}
		})
	}
	t.Cleanup(stop)
	log.Wait(t, exited, time.Minute)
	return ctx, log, stop
}
