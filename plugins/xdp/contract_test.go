package xdp_test

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/plugins/xdp"
)

// The runtime picks a plugin's threading model and routing by interface
// assertions at run time (backend/remote.go): an XDP plugin that stopped
// being a Poller would silently move onto the receive-goroutine path.
// These make such a drift a compile error. They live in a test file
// because plugins never import backend in production code.
var (
	_ backend.Datapath      = (*xdp.Plugin)(nil)
	_ backend.Poller        = (*xdp.Plugin)(nil)
	_ backend.Reacher       = (*xdp.Plugin)(nil)
	_ backend.StatsReporter = (*xdp.Plugin)(nil)
)

// velocectl reads the plugin's Stats as control.XDPStats: the JSON
// layouts must match field for field.
func TestStatsMatchControl(t *testing.T) {
	keys := func(v any) []string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		var out []string
		for k := range m {
			out = append(out, k)
		}
		slices.Sort(out)
		return out
	}
	p := keys(xdp.Stats{Dropped: map[string]uint64{"x": 1}})
	c := keys(control.XDPStats{Dropped: map[string]uint64{"x": 1}})
	if !slices.Equal(p, c) {
		t.Errorf("plugin stats %v\ncontrol stats %v", p, c)
	}
}
