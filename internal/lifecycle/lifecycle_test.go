package lifecycle_test

import (
	"context"
	"errors"
	"testing"

	"github.com/veloce-io/veloce/internal/lifecycle"
)

func TestGroupStopsOnContextAndCleansUp(t *testing.T) {
	var g lifecycle.Group
	if err := g.Wait(); !errors.Is(err, lifecycle.ErrNotStarted) {
		t.Fatalf("Wait before Begin = %v, want ErrNotStarted", err)
	}
	parent, cancel := context.WithCancel(context.Background())
	if _, err := g.Begin(parent); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Begin(parent); !errors.Is(err, lifecycle.ErrStarted) {
		t.Fatalf("second Begin = %v, want ErrStarted", err)
	}
	var order []string
	ran := make(chan struct{})
	g.Cleanup(func() { order = append(order, "first registered") })
	g.Cleanup(func() { order = append(order, "last registered") })
	g.Go(func(ctx context.Context) error { close(ran); <-ctx.Done(); return nil })
	<-ran
	cancel()
	if err := g.Wait(); err != nil {
		t.Fatalf("Wait = %v", err)
	}
	if len(order) != 2 || order[0] != "last registered" {
		t.Errorf("cleanups ran %v, want last registered first", order)
	}
	if err := g.Close(); err != nil {
		t.Errorf("Close after stop = %v", err)
	}
}

func TestGroupFailureStopsTheRest(t *testing.T) {
	var g lifecycle.Group
	if _, err := g.Begin(context.Background()); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	g.Go(func(ctx context.Context) error { <-ctx.Done(); return nil })
	g.Go(func(ctx context.Context) error { return boom })
	if err := g.Wait(); !errors.Is(err, boom) {
		t.Fatalf("Wait = %v, want boom", err)
	}
	if err := g.Close(); !errors.Is(err, boom) {
		t.Fatalf("Close = %v, want boom again", err)
	}
}

func TestAbortAndCloseBeforeBegin(t *testing.T) {
	var g lifecycle.Group
	if _, err := g.Begin(context.Background()); err != nil {
		t.Fatal(err)
	}
	cleaned := false
	g.Cleanup(func() { cleaned = true })
	bad := errors.New("listen: no")
	if err := g.Abort(bad); err != bad || !cleaned {
		t.Fatalf("Abort = %v, cleaned %v", err, cleaned)
	}
	var h lifecycle.Group
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Begin(context.Background()); !errors.Is(err, lifecycle.ErrStarted) {
		t.Fatalf("Begin after Close = %v, want ErrStarted", err)
	}
	if err := h.Wait(); err != nil {
		t.Fatalf("Wait after Close = %v", err)
	}
}
