package backend

import (
	"maps"
	"sync/atomic"
)

// cowMap is a map the datapath reads without a lock: an immutable
// snapshot behind an atomic pointer, replaced by a modified copy on each
// update. Updates are rare (control path) and the caller serialises them.
type cowMap[K comparable, V any] struct {
	p atomic.Pointer[map[K]V]
}

// Load returns the current snapshot (nil before the first update); it
// must not be modified.
func (m *cowMap[K, V]) Load() map[K]V {
	if p := m.p.Load(); p != nil {
		return *p
	}
	return nil
}

// Get returns the value for k in the current snapshot.
func (m *cowMap[K, V]) Get(k K) V { return m.Load()[k] }

// Update stores f applied to a copy of the current snapshot.
func (m *cowMap[K, V]) Update(f func(map[K]V)) {
	old := m.Load()
	next := make(map[K]V, len(old)+1)
	maps.Copy(next, old)
	f(next)
	m.p.Store(&next)
}

// Reset stores an empty map.
func (m *cowMap[K, V]) Reset() { m.p.Store(&map[K]V{}) }
