package dpdk_test

import (
	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/plugins/dpdk"
)

// The runtime picks a plugin's threading model and routing by interface
// assertions at run time (backend/remote.go): a DPDK plugin that stopped
// being a Poller would silently move onto the receive-goroutine path.
// These make such a drift a compile error, with and without the dpdk tag
// (the stub build has the same API). They live in a test file because
// plugins never import backend in production code.
var (
	_ backend.Datapath      = (*dpdk.Plugin)(nil)
	_ backend.Poller        = (*dpdk.Plugin)(nil)
	_ backend.Reacher       = (*dpdk.Plugin)(nil)
	_ backend.StatsReporter = (*dpdk.Plugin)(nil)
	_ backend.SlotMemory    = (*dpdk.Plugin)(nil)
)
