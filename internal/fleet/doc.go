// Package fleet is the fleet directory in etcd: each daemon registers one
// key, PREFIX/nodes/NODEID, under a lease (Options.TTL, kept alive), whose
// value is a Node in JSON — node id, boot id, datapath addresses and the
// sorted channels it has sinks for — and watches the prefix, so it learns
// the other daemons and their interest as the store changes, with no
// polling interval in the path. A daemon that dies drops out when its
// lease expires; one that restarts writes a new boot id at once.
//
// Plug it in with New(Options) → Start(ctx) → Close; Options.OnEvent
// receives every other node's Add, Update and Remove, in the store's
// order, from one goroutine. Registry.SetChannels publishes the local
// channel set, coalesced (at most one put per Options.MinInterval).
// ParseNode is the bounded parser for values read from the store.
package fleet
