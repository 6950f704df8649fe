package backend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
)

// TestDaemonAddDelPortWhileListing: ports added and removed at run time
// while others list them (run with -race: the port list is copy-on-write).
func TestDaemonAddDelPortWhileListing(t *testing.T) {
	dir := t.TempDir()
	d, err := NewDaemon(DaemonOptions{ControlSocket: filepath.Join(dir, "c.sock"),
		Ports: []PortOptions{{Name: "vm0", Socket: filepath.Join(dir, "vm0.sock")}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.AddPort(PortOptions{Name: "early", Socket: filepath.Join(dir, "early.sock")}); !errors.Is(err, ErrNotRunning) {
		t.Errorf("AddPort before Start = %v, want ErrNotRunning", err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
					if ps := d.Ports(); len(ps) == 0 || ps[0].Name != "vm0" {
						t.Errorf("Ports = %+v", ps)
						return
					}
				}
			}
		})
	}
	for i := range 20 {
		name := fmt.Sprintf("vm%d", i+1)
		if _, err := d.AddPort(PortOptions{Name: name, Socket: filepath.Join(dir, name+".sock")}); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if _, err := d.DelPort(name); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(stop)
	wg.Wait()
	if n := len(d.Ports()); n != 11 {
		t.Errorf("%d ports, want 11", n)
	}
	if _, err := d.AddPort(PortOptions{Name: "vm2", Socket: filepath.Join(dir, "x.sock")}); !errors.Is(err, ErrPortExists) {
		t.Errorf("duplicate name: %v", err)
	}
	if _, err := d.AddPort(PortOptions{Name: "x", Socket: filepath.Join(dir, "vm2.sock")}); !errors.Is(err, ErrPortExists) {
		t.Errorf("duplicate socket: %v", err)
	}
	if _, err := d.AddPort(PortOptions{Name: "x", Socket: "rel.sock"}); !errors.Is(err, ErrBadPortOptions) {
		t.Errorf("relative socket: %v", err)
	}
	if _, err := d.DelPort("vm1"); !errors.Is(err, ErrNoPort) {
		t.Errorf("deleted twice: %v", err)
	}
	if err := d.SetLogLevel(slog.LevelDebug); !errors.Is(err, ErrLevelFixed) {
		t.Errorf("SetLogLevel without a LevelVar: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// Every port, those added at run time too, is gone with the daemon.
	if m, _ := filepath.Glob(filepath.Join(dir, "vm*.sock")); len(m) != 0 {
		t.Errorf("sockets left after Close: %v", m)
	}
	if _, err := d.DelPort("vm2"); !errors.Is(err, ErrNotRunning) {
		t.Errorf("DelPort after Close = %v, want ErrNotRunning", err)
	}
}
