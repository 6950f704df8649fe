package chvtest_test

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/veloce-io/veloce/migration/hypervisor/chv"
	"github.com/veloce-io/veloce/migration/hypervisor/chv/chvtest"
)

// TestRequestsCheckedAgainstSpec: bodies that do not fit the spec's
// ReceiveMigrationData / SendMigrationData get 400; unknown endpoints 404,
// wrong methods 405; vm.info 404 without a VM.
func TestRequestsCheckedAgainstSpec(t *testing.T) {
	s, err := chvtest.Start(chvtest.Options{Socket: filepath.Join(t.TempDir(), "api.sock")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := chv.NewClient(s.Socket())
	for _, tc := range []struct {
		name, method, path string
		body               any
		want               int
	}{
		{"receive without receiver_url", "PUT", "/vm.receive-migration", map[string]any{}, 400},
		{"receive with unknown field", "PUT", "/vm.receive-migration", map[string]any{"receiver_url": "unix:/x", "url": 1}, 400},
		{"receive url not a string", "PUT", "/vm.receive-migration", map[string]any{"receiver_url": 5}, 400},
		{"zone update without id", "PUT", "/vm.receive-migration", map[string]any{"receiver_url": "unix:/x", "zone_updates": []any{map[string]any{"host_numa_node": 0}}}, 400},
		{"send without destination_url", "PUT", "/vm.send-migration", map[string]any{"local": false}, 400},
		{"send local not boolean", "PUT", "/vm.send-migration", map[string]any{"destination_url": "unix:/x", "local": "no"}, 400},
		{"send connections above 128", "PUT", "/vm.send-migration", map[string]any{"destination_url": "tcp:h:1", "connections": 129}, 400},
		{"send downtime_ms zero", "PUT", "/vm.send-migration", map[string]any{"destination_url": "tcp:h:1", "downtime_ms": 0}, 400},
		{"send timeout_strategy not in enum", "PUT", "/vm.send-migration", map[string]any{"destination_url": "tcp:h:1", "timeout_strategy": "Maybe"}, 400},
		{"send memory_mode not in enum", "PUT", "/vm.send-migration", map[string]any{"destination_url": "tcp:h:1", "memory_mode": "Fast"}, 400},
		{"send without a VM", "PUT", "/vm.send-migration", map[string]any{"destination_url": "tcp:127.0.0.1:1"}, 500},
		{"GET on send", "GET", "/vm.send-migration", nil, 405},
		{"unknown endpoint", "PUT", "/vm.teleport", nil, 404},
		{"info without a VM", "GET", "/vm.info", nil, 404},
	} {
		err := c.Do(context.Background(), tc.method, tc.path, tc.body, nil, nil)
		var ae *chv.APIError
		if !errors.As(err, &ae) || ae.Status != tc.want {
			t.Errorf("%s: %v, want status %d", tc.name, err, tc.want)
		}
	}
	var ping struct {
		Version string `json:"version"`
	}
	if err := c.Do(context.Background(), http.MethodGet, "/vmm.ping", nil, &ping, nil); err != nil || ping.Version == "" {
		t.Errorf("vmm.ping: %+v, %v", ping, err)
	}
	if n := len(s.Calls()); n != 15 {
		t.Errorf("recorded %d calls, want 15", n)
	}
}
