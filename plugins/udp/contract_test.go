package udp_test

import (
	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/plugins/udp"
)

// The runtime picks a plugin's threading model and routing by interface
// assertions at run time (backend/remote.go); these make a signature drift
// a compile error instead of a silent change of path. They live in a test
// file because plugins never import backend in production code. Kernel UDP
// is driven by the runtime's receive goroutine (not a Poller).
var (
	_ backend.Datapath      = (*udp.Plugin)(nil)
	_ backend.Reacher       = (*udp.Plugin)(nil)
	_ backend.StatsReporter = (*udp.Plugin)(nil)
)
