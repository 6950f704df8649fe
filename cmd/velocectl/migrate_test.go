package main

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/migration/hypervisor/chv/chvtest"
)

var migrationKey = []byte("velocectl migrate test key, 32 bytes or more")

// migrationDaemon starts a daemon with the migration key and a listener
// on loopback, and port vm when withPort; it returns its control socket.
func migrationDaemon(t *testing.T, withPort bool) (ctl, dir string) {
	t.Helper()
	dir = t.TempDir()
	ctl = filepath.Join(dir, "control.sock")
	opts := backend.DaemonOptions{ControlSocket: ctl,
		Migration: backend.MigrationOptions{Key: migrationKey, Listen: "127.0.0.1:0", ForwardGrace: 100 * time.Millisecond}}
	if withPort {
		opts.Ports = []backend.PortOptions{{Name: "vm", Socket: filepath.Join(dir, "vm.sock")}}
	}
	d, err := backend.NewDaemon(opts)
	if err != nil {
		t.Fatal(err)
	}
	startAndClose(t, d)
	return ctl, dir
}

// migrationURL is where the fake Cloud Hypervisors migrate through: a
// unix socket, for which the driver's Prepare waits until the receiver
// listens (for tcp: it cannot probe without taking CH's single accept).
func migrationURL(t *testing.T) string {
	t.Helper()
	return "unix:" + filepath.Join(t.TempDir(), "migration.sock")
}

// TestMigrateCloudHypervisor: velocectl migrate --hypervisor chv drives the
// fake Cloud Hypervisor API (chvtest) through a migration, creates the
// destination port, hands the port's state over after the send completed
// and commits; -o json prints the summary. The destination daemon counts
// one import, the source one export.
func TestMigrateCloudHypervisor(t *testing.T) {
	srcCtl, _ := migrationDaemon(t, true)
	dstCtl, dstDir := migrationDaemon(t, false)
	src, err := chvtest.Start(chvtest.Options{Socket: filepath.Join(t.TempDir(), "src.sock"), State: chvtest.StateRunning})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := chvtest.Start(chvtest.Options{Socket: filepath.Join(t.TempDir(), "dst.sock")})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	out, errs, code := velocectl(t, "--control", srcCtl, "-o", "json", "migrate", "vm", "--to-control", dstCtl,
		"--dest-socket", filepath.Join(dstDir, "vm.sock"), "--hypervisor", "chv", "--api-socket", src.Socket(),
		"--dest-api-socket", dst.Socket(), "--uri", migrationURL(t))
	if code != 0 {
		t.Fatalf("migrate: exit %d\n%s\n%s", code, out, errs)
	}
	t.Logf("progress:\n%s", errs)
	var sum migrateSummary
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatalf("summary %q: %v", out, err)
	}
	t.Logf("summary: %+v", sum)
	if sum.Status != "completed" || sum.StateBytes == 0 || sum.DowntimeKnown || sum.Error != "" {
		t.Errorf("summary %+v", sum)
	}
	if src.State() != chvtest.StateShutdown || dst.State() != chvtest.StateRunning {
		t.Errorf("after the migration: source %q, destination %q", src.State(), dst.State())
	}
	ctx := context.Background()
	var dmi control.MigrationInfo
	if err := json.Unmarshal([]byte(mustRun(t, "--control", dstCtl, "migration", "-o", "json")), &dmi); err != nil || dmi.Imported != 1 || len(dmi.Incoming) != 0 || !dmi.Enabled {
		t.Errorf("destination: velocectl migration: %+v, %v", dmi, err)
	}
	if table := mustRun(t, "--control", dstCtl, "migration"); !strings.Contains(table, "IMPORTED") {
		t.Errorf("velocectl migration table:\n%s", table)
	}
	smi, err := control.NewClient(srcCtl).Migration(ctx)
	if err != nil || smi.Exported != 1 || len(smi.Outgoing) != 0 {
		t.Errorf("source migration info %+v, %v", smi, err)
	}
	ports, _ := control.NewClient(dstCtl).Ports(ctx)
	if len(ports) != 1 || ports[0].Name != "vm" {
		t.Errorf("destination ports: %+v", ports)
	}
}

// TestMigrateCloudHypervisorFails: a migration Cloud Hypervisor fails
// leaves the streams on the source (no hand-off happened) and exits 1 with
// the hypervisor's reason.
func TestMigrateCloudHypervisorFails(t *testing.T) {
	srcCtl, _ := migrationDaemon(t, true)
	dstCtl, dstDir := migrationDaemon(t, false)
	broken := errors.New("backend refused GET_DEVICE_STATE")
	src, err := chvtest.Start(chvtest.Options{Socket: filepath.Join(t.TempDir(), "src.sock"), State: chvtest.StateRunning,
		OnPhase: func(_ context.Context, p chvtest.Phase) error {
			if p == chvtest.PhaseSendState {
				return broken
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := chvtest.Start(chvtest.Options{Socket: filepath.Join(t.TempDir(), "dst.sock")})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	out, errs, code := velocectl(t, "--control", srcCtl, "-o", "json", "migrate", "vm", "--to-control", dstCtl,
		"--dest-socket", filepath.Join(dstDir, "vm.sock"), "--hypervisor", "chv", "--api-socket", src.Socket(),
		"--dest-api-socket", dst.Socket(), "--uri", migrationURL(t))
	if code != 1 || !strings.Contains(errs, broken.Error()) {
		t.Fatalf("migrate: exit %d\n%s\n%s", code, out, errs)
	}
	var sum migrateSummary
	if err := json.Unmarshal([]byte(out), &sum); err != nil || sum.Status != "failed" || !sum.StreamsResumed || sum.StateBytes != 0 {
		t.Errorf("summary %+v (%v)", sum, err)
	}
	dmi, _ := control.NewClient(dstCtl).Migration(context.Background())
	if dmi.Imported != 0 {
		t.Errorf("destination imported after a failed migration: %+v", dmi)
	}
}

// TestMigrateNeedsDestination: the command line names what is missing.
func TestMigrateNeedsDestination(t *testing.T) {
	_, errs, code := velocectl(t, "migrate", "vm", "--qmp", "/nonexistent", "--uri", "tcp:127.0.0.1:1")
	if code != 2 || !strings.Contains(errs, "--to-control") {
		t.Errorf("exit %d: %s", code, errs)
	}
}
