package rdma_test

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/plugins/rdma"
)

// The runtime picks a plugin's threading model and routing by interface
// assertions at run time (backend/remote.go); these make a drift a
// compile error, with and without the rdma tag.
var (
	_ backend.Datapath         = (*rdma.Plugin)(nil)
	_ backend.Poller           = (*rdma.Plugin)(nil)
	_ backend.Reacher          = (*rdma.Plugin)(nil)
	_ backend.LiveReacher      = (*rdma.Plugin)(nil)
	_ backend.StatsReporter    = (*rdma.Plugin)(nil)
	_ backend.ReliableDatapath = (*rdma.Plugin)(nil) // RC carries reliable streams
)

// velocectl reads the plugin's Stats as control.RDMAStats: the JSON
// layouts must match field for field.
func TestStatsMatchControl(t *testing.T) {
	keys := func(v any) []string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		json.Unmarshal(b, &m)
		var out []string
		for k, x := range m {
			out = append(out, k)
			if l, ok := x.([]any); ok && len(l) > 0 {
				for k2 := range l[0].(map[string]any) {
					out = append(out, k+"."+k2)
				}
			}
		}
		slices.Sort(out)
		return out
	}
	p := keys(rdma.Stats{QueuePairs: []rdma.QueuePairInfo{{}}})
	c := keys(control.RDMAStats{QueuePairs: []control.RDMAQueuePair{{}}})
	if !slices.Equal(p, c) {
		t.Errorf("plugin stats %v\ncontrol stats %v", p, c)
	}
}
