// Package lifecycle is the New → Start(ctx) → Wait/Close machinery the
// project's long-running components share (vhostuser.Server, backend.Port,
// backend.Runtime, backend.Daemon): a [Group] of tracked goroutines that
// all stop when the component's context ends, when one of them fails, or
// when Close is called, followed by cleanups that run once every goroutine
// has returned.
//
// A component embeds a Group and builds its lifecycle from it:
//
//	func (c *C) Start(ctx context.Context) error {
//		ctx, err := c.life.Begin(ctx)
//		if err != nil {
//			return err // ErrStarted
//		}
//		ln, err := listen(...)
//		if err != nil {
//			return c.life.Abort(err) // stops what was started, waits, returns err
//		}
//		c.life.Cleanup(func() { ln.Close() })
//		c.life.Go(func(ctx context.Context) error { return serve(ctx, ln) })
//		return nil
//	}
//	func (c *C) Wait() error  { return c.life.Wait() }
//	func (c *C) Close() error { return c.life.Close() }
//
// The package imports nothing of the project.
package lifecycle

import (
	"context"
	"errors"
	"sync"
)

// Errors of the lifecycle calls. Components re-export them.
var (
	// ErrStarted: Start was called on a component already started or
	// closed; a component starts once.
	ErrStarted = errors.New("already started or closed") // +checklocksignore: a constant; Begin reads it under Group.mu
	// ErrNotStarted: Wait was called on a component never started.
	ErrNotStarted = errors.New("not started")
)

type state int

const (
	stateNew state = iota
	stateRunning
	stateClosed // Close before Start: nothing to wait for
)

// Group tracks a component's goroutines. The zero Group is ready to Begin.
type Group struct {
	mu    sync.Mutex
	state state // +checklocks:mu
	// stopping: Go refuses new goroutines.
	stopping bool // +checklocks:mu
	// cancel and ctx are set by Begin.
	cancel context.CancelFunc // +checklocks:mu
	ctx    context.Context    // +checklocks:mu
	// cleanups run LIFO after the goroutines.
	cleanups []func() // +checklocks:mu
	// err is the first failure.
	err error          // +checklocks:mu
	wg  sync.WaitGroup // the goroutines started by Go
	// done is closed once stopped and cleaned up; set by Begin.
	done chan struct{} // +checklocks:mu
}

// Begin starts the group: it returns the context its goroutines run
// under, which ends when parent ends, when a goroutine fails or when Stop
// or Close is called. A group begins once: later calls, and calls after
// Close, return ErrStarted.
func (g *Group) Begin(parent context.Context) (context.Context, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state != stateNew {
		return nil, ErrStarted
	}
	g.state = stateRunning
	g.ctx, g.cancel = context.WithCancel(parent)
	g.done = make(chan struct{})
	ctx, done := g.ctx, g.done
	// The monitor: once the context ends and every goroutine returned,
	// run the cleanups and release the waiters.
	go func() {
		<-ctx.Done()
		g.mu.Lock()
		g.stopping = true // no Go after this point: wg.Wait is safe
		g.mu.Unlock()
		g.wg.Wait()
		g.mu.Lock()
		cleanups := g.cleanups
		g.cleanups = nil
		g.mu.Unlock()
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		close(done)
	}()
	return ctx, nil
}

// Go runs f in a tracked goroutine with the group's context. A non-nil
// error from f is recorded (the first one is what Wait returns) and stops
// the group. Go after the group stopped does not run f.
func (g *Group) Go(f func(ctx context.Context) error) {
	g.mu.Lock()
	if g.state != stateRunning || g.stopping || g.ctx.Err() != nil {
		g.mu.Unlock()
		return
	}
	g.wg.Add(1)
	ctx := g.ctx
	g.mu.Unlock()
	go func() {
		defer g.wg.Done()
		if err := f(ctx); err != nil {
			g.Fail(err)
		}
	}()
}

// Cleanup registers f to run after every goroutine returned, before Wait
// returns; cleanups run last registered first. Cleanup on a group that
// is not running runs f at once.
func (g *Group) Cleanup(f func()) {
	g.mu.Lock()
	if g.state != stateRunning || g.stopping {
		g.mu.Unlock()
		f()
		return
	}
	g.cleanups = append(g.cleanups, f)
	g.mu.Unlock()
}

// Fail records err as the group's result if it is the first failure, and
// stops the group.
func (g *Group) Fail(err error) {
	g.mu.Lock()
	if g.err == nil {
		g.err = err
	}
	cancel := g.cancel
	g.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// Abort is for a Start that failed half-way: it stops the group, waits
// for what was started to stop and be cleaned up, and returns err.
func (g *Group) Abort(err error) error {
	g.Fail(err)
	g.Wait()
	return err
}

// Stop ends the group's context without waiting.
func (g *Group) Stop() {
	g.mu.Lock()
	cancel := g.cancel
	g.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// Done is closed once the group stopped and cleaned up; nil before
// Begin.
func (g *Group) Done() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.done
}

// Wait blocks until the group stopped and cleaned up, and returns the
// first failure (nil when it stopped because its context ended or Close
// was called). Wait on a group never begun returns ErrNotStarted; after
// Close without Begin, nil.
func (g *Group) Wait() error {
	g.mu.Lock()
	st, done := g.state, g.done
	g.mu.Unlock()
	switch st {
	case stateNew:
		return ErrNotStarted
	case stateClosed:
		return nil
	}
	<-done
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// Close stops the group and waits for it, returning what Wait returns.
// It may be called any number of times, before or after Begin; a group
// closed before Begin cannot begin.
func (g *Group) Close() error {
	g.mu.Lock()
	if g.state == stateNew {
		g.state = stateClosed
		g.mu.Unlock()
		return nil
	}
	g.mu.Unlock()
	g.Stop()
	return g.Wait()
}
