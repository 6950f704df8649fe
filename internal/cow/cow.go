// Package cow is the copy-on-write table the datapath reads without a
// lock: the runtime's channels (sinks by channel id), each session's
// sources, each VM port's sessions, and the neighbour table of
// internal/netstack.
//
// A Map is a persistent hash array mapped trie behind an atomic pointer.
// Readers load the root and walk immutable nodes: no lock, no allocation,
// a consistent snapshot for as long as they look. A writer copies only the
// path from the root to the entry it changes — one node per level, each
// at most 32 entries, about log32(n) levels (3 at 10,000 entries) — and
// publishes the new root with one atomic store. A change therefore costs
// O(log n), not O(n): the earlier design, a whole Go map copied on every
// change, made opening a session (a port's sessions table) and creating a
// sink on a new channel (the channels table) slower the more sessions
// existed.
//
// Why a trie rather than the alternatives:
//
//   - A mutex-guarded map would put a lock on the per-packet path; the
//     tables above are read on every message. (The tables only the
//     control path reads — the runtime's sessions, a session's streams and
//     sinks — are plain maps under the runtime's mutex, not Maps.)
//   - Sharding a copied map divides the copy by a constant; it still grows
//     with the table.
//   - sync.Map boxes keys and values in interfaces (a uint32 key boxed per
//     lookup may allocate) and is not typed; a Map is generic and its Get
//     allocates nothing.
//
// Writers are serialised by the Map's own mutex; a caller that needs a
// change spanning several keys to be atomic for other writers (an
// eviction, a read-modify-write) holds its own lock around them, as the
// runtime does. Readers never wait for writers. Keys are hashed with
// hash/maphash and a per-process random seed, so a peer choosing keys (a
// guest's channel ids) cannot aim for collisions; full 64-bit collisions
// are chained and still correct.
package cow

import (
	"hash/maphash"
	"iter"
	"math/bits"
	"sync"
	"sync/atomic"
)

const (
	levelBits = 5 // 32 entries per node
	levelMask = 1<<levelBits - 1
)

var seed = maphash.MakeSeed()

// Map is a copy-on-write map from K to V; see the package doc. The zero
// value is an empty map ready to use. A Map must not be copied after
// first use.
type Map[K comparable, V any] struct {
	mu   sync.Mutex // serialises writers
	root atomic.Pointer[tree[K, V]]
}

type tree[K comparable, V any] struct {
	root *node[K, V] // nil when empty
	n    int
}

// node is one level of the trie: bitmap says which of the 32 slots for
// the level's 5 bits of hash are present, kids holds them in order.
type node[K comparable, V any] struct {
	bitmap uint32
	kids   []kid[K, V]
}

// kid is a subtree or a leaf (exactly one is set).
type kid[K comparable, V any] struct {
	node *node[K, V]
	leaf *leaf[K, V]
}

// leaf is an entry; next chains entries with the same full hash.
type leaf[K comparable, V any] struct {
	hash uint64
	key  K
	val  V
	next *leaf[K, V]
}

func hashOf[K comparable](k K) uint64 { return maphash.Comparable(seed, k) }

func index(h uint64, shift uint) (bit uint32) { return 1 << ((h >> shift) & levelMask) }

func (n *node[K, V]) pos(bit uint32) int { return bits.OnesCount32(n.bitmap & (bit - 1)) }

// Lookup returns the value stored for k. It takes no lock and does not
// allocate.
func (m *Map[K, V]) Lookup(k K) (v V, ok bool) {
	t := m.root.Load()
	if t == nil {
		return v, false
	}
	return t.root.lookup(hashOf(k), k)
}

func (n *node[K, V]) lookup(h uint64, k K) (v V, ok bool) {
	for shift := uint(0); n != nil; shift += levelBits {
		bit := index(h, shift)
		if n.bitmap&bit == 0 {
			return v, false
		}
		c := &n.kids[n.pos(bit)]
		if c.leaf != nil {
			for l := c.leaf; l != nil; l = l.next {
				if l.hash == h && l.key == k {
					return l.val, true
				}
			}
			return v, false
		}
		n = c.node
	}
	return v, false
}

// Get returns the value stored for k, or V's zero value.
func (m *Map[K, V]) Get(k K) V {
	v, _ := m.Lookup(k)
	return v
}

// Len returns the number of entries.
func (m *Map[K, V]) Len() int {
	if t := m.root.Load(); t != nil {
		return t.n
	}
	return 0
}

// All iterates over a snapshot of the map taken when iteration starts, in
// no particular order. Changes made meanwhile are not seen.
func (m *Map[K, V]) All() iter.Seq2[K, V] {
	t := m.root.Load()
	return func(yield func(K, V) bool) {
		if t != nil && t.root != nil {
			t.root.each(yield)
		}
	}
}

func (n *node[K, V]) each(yield func(K, V) bool) bool {
	for i := range n.kids {
		c := &n.kids[i]
		if c.node != nil {
			if !c.node.each(yield) {
				return false
			}
			continue
		}
		for l := c.leaf; l != nil; l = l.next {
			if !yield(l.key, l.val) {
				return false
			}
		}
	}
	return true
}

// Store sets k's value.
func (m *Map[K, V]) Store(k K, v V) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.storeLocked(k, v)
}

func (m *Map[K, V]) storeLocked(k K, v V) {
	t := m.load()
	root, added := t.root.insert(0, &leaf[K, V]{hash: hashOf(k), key: k, val: v})
	n := t.n
	if added {
		n++
	}
	m.root.Store(&tree[K, V]{root: root, n: n})
}

// Update sets k's value to what f returns given the current one (ok says
// whether there is one), or deletes k when f returns keep false, as one
// change no other writer comes between. f must not use m.
func (m *Map[K, V]) Update(k K, f func(old V, ok bool) (v V, keep bool)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old, ok := m.Lookup(k)
	if v, keep := f(old, ok); keep {
		m.storeLocked(k, v)
	} else if ok {
		m.deleteLocked(k)
	}
}

// Delete removes k and reports whether it was there.
func (m *Map[K, V]) Delete(k K) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.deleteLocked(k)
}

func (m *Map[K, V]) deleteLocked(k K) bool {
	t := m.load()
	if t.root == nil {
		return false
	}
	root, removed := t.root.remove(0, hashOf(k), k)
	if !removed {
		return false
	}
	m.root.Store(&tree[K, V]{root: root, n: t.n - 1})
	return true
}

// DeleteFunc removes every entry for which del returns true.
func (m *Map[K, V]) DeleteFunc(del func(K, V) bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var gone []K
	for k, v := range m.All() {
		if del(k, v) {
			gone = append(gone, k)
		}
	}
	for _, k := range gone {
		m.deleteLocked(k)
	}
}

// Clear removes every entry.
func (m *Map[K, V]) Clear() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.root.Store(&tree[K, V]{})
}

func (m *Map[K, V]) load() *tree[K, V] {
	if t := m.root.Load(); t != nil {
		return t
	}
	return &tree[K, V]{}
}

// insert returns a copy of n (nil: empty) with l stored, and whether l's
// key is new.
func (n *node[K, V]) insert(shift uint, l *leaf[K, V]) (*node[K, V], bool) {
	bit := index(l.hash, shift)
	if n == nil {
		return &node[K, V]{bitmap: bit, kids: []kid[K, V]{{leaf: l}}}, true
	}
	i := n.pos(bit)
	if n.bitmap&bit == 0 {
		kids := make([]kid[K, V], len(n.kids)+1)
		copy(kids, n.kids[:i])
		kids[i] = kid[K, V]{leaf: l}
		copy(kids[i+1:], n.kids[i:])
		return &node[K, V]{bitmap: n.bitmap | bit, kids: kids}, true
	}
	c := n.kids[i]
	var next kid[K, V]
	added := true
	switch {
	case c.node != nil:
		var sub *node[K, V]
		sub, added = c.node.insert(shift+levelBits, l)
		next = kid[K, V]{node: sub}
	case c.leaf.hash == l.hash:
		var chain *leaf[K, V]
		chain, added = c.leaf.with(l)
		next = kid[K, V]{leaf: chain}
	default:
		next = kid[K, V]{node: pair(c.leaf, l, shift+levelBits)}
	}
	kids := make([]kid[K, V], len(n.kids))
	copy(kids, n.kids)
	kids[i] = next
	return &node[K, V]{bitmap: n.bitmap, kids: kids}, added
}

// pair returns a node holding a and b, whose hashes differ.
func pair[K comparable, V any](a, b *leaf[K, V], shift uint) *node[K, V] {
	ba, bb := index(a.hash, shift), index(b.hash, shift)
	if ba == bb {
		return &node[K, V]{bitmap: ba, kids: []kid[K, V]{{node: pair(a, b, shift+levelBits)}}}
	}
	if ba > bb {
		a, b = b, a
	}
	return &node[K, V]{bitmap: ba | bb, kids: []kid[K, V]{{leaf: a}, {leaf: b}}}
}

// with returns a copy of the chain l (same hash as nl) with nl's key
// stored, and whether the key is new. nl.next must be nil.
func (l *leaf[K, V]) with(nl *leaf[K, V]) (*leaf[K, V], bool) {
	if l == nil {
		return nl, true
	}
	if l.key == nl.key {
		nl.next = l.next
		return nl, false
	}
	rest, added := l.next.with(nl)
	return &leaf[K, V]{hash: l.hash, key: l.key, val: l.val, next: rest}, added
}

// without returns a copy of the chain l without k (nil when it empties),
// and whether k was there.
func (l *leaf[K, V]) without(k K) (*leaf[K, V], bool) {
	if l == nil {
		return nil, false
	}
	if l.key == k {
		return l.next, true
	}
	rest, removed := l.next.without(k)
	if !removed {
		return l, false
	}
	return &leaf[K, V]{hash: l.hash, key: l.key, val: l.val, next: rest}, true
}

// remove returns a copy of n without k (nil when it empties), and whether
// k was there.
func (n *node[K, V]) remove(shift uint, h uint64, k K) (*node[K, V], bool) {
	bit := index(h, shift)
	if n.bitmap&bit == 0 {
		return n, false
	}
	i := n.pos(bit)
	c := n.kids[i]
	var next kid[K, V]
	if c.node != nil {
		sub, removed := c.node.remove(shift+levelBits, h, k)
		if !removed {
			return n, false
		}
		switch {
		case sub == nil:
		case len(sub.kids) == 1 && sub.kids[0].leaf != nil:
			next = sub.kids[0] // a lone leaf moves up a level
		default:
			next = kid[K, V]{node: sub}
		}
	} else {
		if c.leaf.hash != h {
			return n, false
		}
		chain, removed := c.leaf.without(k)
		if !removed {
			return n, false
		}
		if chain != nil {
			next = kid[K, V]{leaf: chain}
		}
	}
	if next.node == nil && next.leaf == nil {
		if len(n.kids) == 1 {
			return nil, true
		}
		kids := make([]kid[K, V], 0, len(n.kids)-1)
		kids = append(kids, n.kids[:i]...)
		kids = append(kids, n.kids[i+1:]...)
		return &node[K, V]{bitmap: n.bitmap &^ bit, kids: kids}, true
	}
	kids := make([]kid[K, V], len(n.kids))
	copy(kids, n.kids)
	kids[i] = next
	return &node[K, V]{bitmap: n.bitmap, kids: kids}, true
}
