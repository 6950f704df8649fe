package rdma_test

import (
	"github.com/veloce-io/veloce/backend"
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
