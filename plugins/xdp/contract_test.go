package xdp_test

import (
	"github.com/veloce-io/veloce/backend"
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
