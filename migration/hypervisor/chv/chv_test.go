package chv_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/veloce-io/veloce/migration/hypervisor"
	"github.com/veloce-io/veloce/migration/hypervisor/chv"
	"github.com/veloce-io/veloce/migration/hypervisor/chv/chvtest"
)

func startFake(t *testing.T, name string, opts chvtest.Options) *chvtest.Server {
	t.Helper()
	opts.Socket = filepath.Join(t.TempDir(), name+".sock")
	s, err := chvtest.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func freeTCP(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return "tcp:" + l.Addr().String()
}

// phaseLog records a fake's migration phases.
type phaseLog struct {
	mu     sync.Mutex
	phases []chvtest.Phase // +checklocks:mu
}

func (l *phaseLog) on(_ context.Context, p chvtest.Phase) error {
	l.mu.Lock()
	l.phases = append(l.phases, p)
	l.mu.Unlock()
	return nil
}

func (l *phaseLog) get() []chvtest.Phase {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]chvtest.Phase(nil), l.phases...)
}

func body(t *testing.T, c chvtest.Call) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(c.Body, &m); err != nil {
		t.Fatalf("%s %s body %q: %v", c.Method, c.Path, c.Body, err)
	}
	return m
}

// findCall returns the last call to path: the driver sends
// vm.send-migration again while the destination is not listening yet.
func findCall(t *testing.T, s *chvtest.Server, path string) chvtest.Call {
	t.Helper()
	calls := s.Calls()
	for i := len(calls) - 1; i >= 0; i-- {
		if c := calls[i]; c.Path == path {
			return c
		}
	}
	t.Fatalf("no call to %s in %+v", path, s.Calls())
	return chvtest.Call{}
}

// TestSendAndReceiveMigration: vm.receive-migration on the destination,
// vm.send-migration on the source, over unix and tcp; the source ends
// Shutdown, the destination Running, and the hook runs after send answers.
func TestSendAndReceiveMigration(t *testing.T) {
	for _, tc := range []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"unix", func(t *testing.T) string { return "unix:" + filepath.Join(t.TempDir(), "migrate.sock") }},
		{"tcp", freeTCP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var srcPhases, dstPhases phaseLog
			src := startFake(t, "src", chvtest.Options{State: chvtest.StateRunning, OnPhase: srcPhases.on})
			dst := startFake(t, "dst", chvtest.Options{OnPhase: dstPhases.on})
			url := tc.url(t)
			var (
				mu       sync.Mutex
				hookSaw  []string
				statuses []hypervisor.Status
			)
			d, err := chv.New(chv.Options{
				SourceSocket: src.Socket(), DestinationSocket: dst.Socket(), URL: url,
				Downtime: 200 * time.Millisecond, Timeout: time.Minute,
				Hooks: hypervisor.Hooks{
					Switchover: func(context.Context) error {
						mu.Lock()
						hookSaw = append(hookSaw, src.State()+" -> "+dst.State())
						mu.Unlock()
						return nil
					},
					Progress: func(p hypervisor.Progress) {
						mu.Lock()
						statuses = append(statuses, p.Status)
						mu.Unlock()
						if p.Reported {
							t.Errorf("progress %v claims figures Cloud Hypervisor does not report", p)
						}
					},
					ProgressInterval: 10 * time.Millisecond,
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := d.Prepare(ctx); err != nil {
				t.Fatal(err)
			}
			if err := d.Start(ctx); err != nil {
				t.Fatal(err)
			}
			sum, err := d.Wait(ctx)
			if err != nil {
				t.Fatalf("Wait: %v", err)
			}
			if sum.Status != hypervisor.StatusCompleted || !sum.SwitchoverRan || sum.DowntimeReported || sum.TotalTime <= 0 {
				t.Errorf("summary %+v", *sum)
			}
			if src.State() != chvtest.StateShutdown || dst.State() != chvtest.StateRunning {
				t.Errorf("after migration: source %q, destination %q; want Shutdown, Running", src.State(), dst.State())
			}
			if dst.Received() != 1<<20 {
				t.Errorf("destination received %d bytes of memory, want 1 MiB", dst.Received())
			}
			mu.Lock()
			if len(hookSaw) != 1 || hookSaw[0] != "Shutdown -> Running" {
				t.Errorf("hook saw %q, want once Shutdown -> Running (it runs after send-migration answers)", hookSaw)
			}
			if len(statuses) < 3 || statuses[0] != hypervisor.StatusActive || statuses[len(statuses)-1] != hypervisor.StatusCompleted {
				t.Errorf("progress statuses %v", statuses)
			}
			mu.Unlock()

			recv := findCall(t, dst, "/vm.receive-migration")
			if recv.Method != http.MethodPut || recv.Status != http.StatusNoContent || body(t, recv)["receiver_url"] != url {
				t.Errorf("receive call %+v", recv)
			}
			send := findCall(t, src, "/vm.send-migration")
			b := body(t, send)
			if send.Method != http.MethodPut || send.Status != http.StatusNoContent || b["destination_url"] != url ||
				b["local"] != false || b["downtime_ms"] != 200.0 || b["timeout_s"] != 60.0 {
				t.Errorf("send call %+v body %v", send, b)
			}
			wantSrc := []chvtest.Phase{chvtest.PhaseSendConnected, chvtest.PhaseDirtyLogStart, chvtest.PhaseMemory,
				chvtest.PhasePaused, chvtest.PhaseDirtyLogStop, chvtest.PhaseSendState, chvtest.PhaseSendComplete}
			if got := srcPhases.get(); !equal(got, wantSrc) {
				t.Errorf("source phases %v, want %v", got, wantSrc)
			}
			wantDst := []chvtest.Phase{chvtest.PhaseReceiveListening, chvtest.PhaseReceiveConnected,
				chvtest.PhaseReceiveState, chvtest.PhaseReceiveResumed}
			if got := dstPhases.get(); !equal(got, wantDst) {
				t.Errorf("destination phases %v, want %v", got, wantDst)
			}
			if err := d.Cancel(ctx); !errors.Is(err, hypervisor.ErrCompleted) {
				t.Errorf("Cancel after completion: %v, want ErrCompleted", err)
			}
		})
	}
}

func equal(a, b []chvtest.Phase) bool {
	return strings.Join(phaseStrings(a), ",") == strings.Join(phaseStrings(b), ",")
}

func phaseStrings(ps []chvtest.Phase) []string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = string(p)
	}
	return s
}

// TestSendMigrationAnswers500: Cloud Hypervisor refuses to send; Wait says
// so with its text, the destination is released and the source runs.
func TestSendMigrationAnswers500(t *testing.T) {
	src := startFake(t, "src", chvtest.Options{State: chvtest.StateRunning})
	dst := startFake(t, "dst", chvtest.Options{})
	src.FailNext("/vm.send-migration", http.StatusInternalServerError, "Error sending migration: disk not migratable")
	d, err := chv.New(chv.Options{SourceSocket: src.Socket(), DestinationSocket: dst.Socket(),
		URL: "unix:" + filepath.Join(t.TempDir(), "m.sock")})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	sum, err := d.Wait(ctx)
	if !errors.Is(err, hypervisor.ErrFailed) || !strings.Contains(err.Error(), "disk not migratable") || sum.Status != hypervisor.StatusFailed {
		t.Fatalf("Wait: %v (summary %+v), want ErrFailed with Cloud Hypervisor's text", err, sum)
	}
	if c := findCall(t, dst, "/vm.receive-migration"); c.Status != http.StatusInternalServerError {
		t.Errorf("destination's receive answered %d, want 500 (released)", c.Status)
	}
	if src.State() != chvtest.StateRunning || dst.State() != "" {
		t.Errorf("source %q, destination %q; want Running and no VM", src.State(), dst.State())
	}
}

// TestMigrationFailingMidwayLeavesSourceRunning: the source fails while
// sending device state (the vhost-user hook of the fake); both ends answer
// 500 and the guest stays on the source.
func TestMigrationFailingMidwayLeavesSourceRunning(t *testing.T) {
	broken := errors.New("backend refused GET_DEVICE_STATE")
	src := startFake(t, "src", chvtest.Options{State: chvtest.StateRunning, OnPhase: func(_ context.Context, p chvtest.Phase) error {
		if p == chvtest.PhaseSendState {
			return broken
		}
		return nil
	}})
	dst := startFake(t, "dst", chvtest.Options{})
	d, err := chv.New(chv.Options{SourceSocket: src.Socket(), DestinationSocket: dst.Socket(), URL: freeTCP(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = d.Wait(ctx)
	if !errors.Is(err, hypervisor.ErrFailed) || !strings.Contains(err.Error(), broken.Error()) {
		t.Fatalf("Wait: %v", err)
	}
	if src.State() != chvtest.StateRunning || dst.State() != "" {
		t.Errorf("source %q, destination %q; want Running and no VM", src.State(), dst.State())
	}
	if err := d.Cancel(ctx); err != nil {
		t.Errorf("Cancel after a failed migration: %v", err)
	}
}

// TestAPISocketMissing: the error says what to check.
func TestAPISocketMissing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nothing.sock")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	want := "is cloud-hypervisor running with --api-socket " + missing + "?"

	d, err := chv.New(chv.Options{SourceSocket: missing, URL: "unix:/tmp/x.sock"})
	if err != nil {
		t.Fatal(err)
	}
	err = d.Start(ctx)
	if !errors.Is(err, hypervisor.ErrUnavailable) || !strings.Contains(err.Error(), want) {
		t.Errorf("Start: %v, want ErrUnavailable saying %q", err, want)
	}
	if _, werr := d.Wait(ctx); !errors.Is(werr, hypervisor.ErrUnavailable) {
		t.Errorf("Wait after a failed Start: %v", werr)
	}

	d2, err := chv.New(chv.Options{SourceSocket: missing, DestinationSocket: missing, URL: "unix:/tmp/x.sock"})
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.Prepare(ctx); !errors.Is(err, hypervisor.ErrUnavailable) || !strings.Contains(err.Error(), want) {
		t.Errorf("Prepare: %v, want ErrUnavailable saying %q", err, want)
	}
}

// TestCancel: before Start, Cancel releases the waiting destination; while
// Cloud Hypervisor sends, it cannot cancel and says so.
func TestCancel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t.Run("before start", func(t *testing.T) {
		src := startFake(t, "src", chvtest.Options{State: chvtest.StateRunning})
		dst := startFake(t, "dst", chvtest.Options{})
		d, err := chv.New(chv.Options{SourceSocket: src.Socket(), DestinationSocket: dst.Socket(),
			URL: "unix:" + filepath.Join(t.TempDir(), "m.sock")})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		if err := d.Cancel(ctx); !errors.Is(err, hypervisor.ErrNotStarted) {
			t.Errorf("Cancel before Prepare: %v", err)
		}
		if err := d.Prepare(ctx); err != nil {
			t.Fatal(err)
		}
		if err := d.Cancel(ctx); err != nil {
			t.Fatal(err)
		}
		if c := findCall(t, dst, "/vm.receive-migration"); c.Status != http.StatusInternalServerError || dst.State() != "" {
			t.Errorf("receive answered %d, destination %q: want 500 and no VM", c.Status, dst.State())
		}
		if src.State() != chvtest.StateRunning {
			t.Errorf("source %q", src.State())
		}
	})
	t.Run("while sending", func(t *testing.T) {
		paused, release := make(chan struct{}), make(chan struct{})
		src := startFake(t, "src", chvtest.Options{State: chvtest.StateRunning, OnPhase: func(ctx context.Context, p chvtest.Phase) error {
			if p == chvtest.PhasePaused {
				close(paused)
				select {
				case <-release:
				case <-ctx.Done():
				}
			}
			return nil
		}})
		dst := startFake(t, "dst", chvtest.Options{})
		device := make(chan struct{})
		var once sync.Once
		d, err := chv.New(chv.Options{SourceSocket: src.Socket(), DestinationSocket: dst.Socket(),
			URL: "unix:" + filepath.Join(t.TempDir(), "m.sock"),
			Hooks: hypervisor.Hooks{ProgressInterval: 5 * time.Millisecond, Progress: func(p hypervisor.Progress) {
				if p.Status == hypervisor.StatusDevice {
					once.Do(func() { close(device) })
				}
			}}})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		if err := d.Prepare(ctx); err != nil {
			t.Fatal(err)
		}
		if err := d.Start(ctx); err != nil {
			t.Fatal(err)
		}
		<-paused
		select {
		case <-device:
		case <-ctx.Done():
			t.Fatal("no progress report with the source paused (device)")
		}
		if err := d.Cancel(ctx); !errors.Is(err, hypervisor.ErrNotSupported) {
			t.Errorf("Cancel while sending: %v, want ErrNotSupported", err)
		}
		close(release)
		if _, err := d.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// TestPrepareRefusesBusyDestination: a destination that already runs a VM
// is not one to migrate into.
func TestPrepareRefusesBusyDestination(t *testing.T) {
	src := startFake(t, "src", chvtest.Options{State: chvtest.StateRunning})
	dst := startFake(t, "dst", chvtest.Options{State: chvtest.StateRunning})
	d, err := chv.New(chv.Options{SourceSocket: src.Socket(), DestinationSocket: dst.Socket(), URL: "unix:/tmp/unused.sock"})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Prepare(context.Background()); !errors.Is(err, hypervisor.ErrDestination) {
		t.Errorf("Prepare: %v, want ErrDestination", err)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	for _, o := range []chv.Options{
		{URL: "unix:/x"},
		{SourceSocket: "/s", URL: "http://x"},
		{SourceSocket: "/s", URL: "tcp:1.2.3.4:5", Local: true},
	} {
		if _, err := chv.New(o); !errors.Is(err, hypervisor.ErrInvalid) {
			t.Errorf("New(%+v): %v, want ErrInvalid", o, err)
		}
	}
}
