package backend

import (
	"maps"

	"github.com/veloce-io/veloce/internal/cow"
)

// cowMap is the copy-on-write table the datapath reads without a lock
// (internal/cow: a persistent trie, changed in O(log n)). The runtime
// keeps three: channels (sinks by channel), a session's sources, and a
// port's sessions. The control-path tables (the runtime's sessions, a
// session's streams and sinks) are plain maps under Runtime.mu.
type cowMap[K comparable, V any] struct {
	cow.Map[K, V]
}

// Load returns a copy of the table as a Go map, for listings; it
// allocates in proportion to the table, so the datapath uses Get and
// Lookup, and counting uses Len.
func (m *cowMap[K, V]) Load() map[K]V { return maps.Collect(m.All()) }
