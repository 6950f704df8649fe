package fleet

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Defaults of Options.
const (
	DefaultPrefix      = "/veloce"
	DefaultTTL         = 10 * time.Second
	DefaultDialTimeout = 5 * time.Second
	DefaultMinInterval = 250 * time.Millisecond
)

// Options configure a Registry.
type Options struct {
	// Endpoints are the etcd cluster's client URLs (http://host:2379 or
	// https://...).
	Endpoints []string
	// Prefix is where the fleet's keys live; default DefaultPrefix.
	Prefix string
	// TTL is the lease's: a daemon that stops keeping it alive drops out
	// of the directory this long after; default DefaultTTL, at least 2s.
	TTL time.Duration
	// DialTimeout bounds connecting to etcd; default DefaultDialTimeout.
	DialTimeout time.Duration
	// TLS, when set, is the client's TLS configuration (CA, client
	// certificate).
	TLS *tls.Config
	// Self is this daemon's entry; its ID names the key, and Channels is
	// the initial set (SetChannels changes it).
	Self Node
	// MinInterval is the least time between two puts of the entry (the
	// channel set changing faster is coalesced); default
	// DefaultMinInterval.
	MinInterval time.Duration
	// OnEvent receives the other nodes' events, one at a time, from the
	// registry's watcher goroutine; it must not block for long.
	OnEvent func(Event)
	// Logger; nil: slog.Default().
	Logger *slog.Logger
}

// EventKind says what happened to a node's key.
type EventKind int

const (
	// Added: a node appeared (or the registry (re)started and found it).
	Added EventKind = iota + 1
	// Updated: its value changed (channels, addresses, or a new boot id:
	// a restart).
	Updated
	// Removed: its key is gone (lease expired, revoked).
	Removed
)

func (k EventKind) String() string {
	switch k {
	case Added:
		return "added"
	case Updated:
		return "updated"
	case Removed:
		return "removed"
	}
	return "unknown"
}

// Event is one change of another node's entry. For Removed, Node has only
// its ID.
type Event struct {
	Kind EventKind
	Node Node
	// Revision is the store revision of the entry's last write (for
	// Removed, of the deletion): of two entries, the later written has
	// the higher one.
	Revision int64
}

// Health is the registry's state, for velocectl.
type Health struct {
	Endpoints []string
	// Connected: the last request to etcd succeeded and the watch runs.
	Connected bool
	// LastError is the last failure talking to etcd, empty before one.
	LastError string
	// Revision is the store revision the directory is current to.
	Revision int64
	// Nodes is how many other nodes the directory holds.
	Nodes int
	// Puts counts this daemon's writes of its entry, PutBytes their
	// values' bytes.
	Puts, PutBytes uint64
	// Moves counts the migrations' one-transaction moves this daemon
	// wrote (Move), Conflicts the writes of its entry refused because
	// another had written it meanwhile (each read again and retried).
	Moves, Conflicts uint64
	// Events counts the watch events received; ReadBytes, the values'
	// bytes read (lists and watch events).
	Events, ReadBytes uint64
}

// Registry keeps this daemon's entry in etcd and watches the others'.
type Registry struct {
	opts Options
	cli  *clientv3.Client
	log  *slog.Logger

	dirty chan struct{} // buffered 1: the entry needs a put
	// registered is closed after the first put: the watch starts then,
	// so that this daemon's entry is in the store before it learns (and
	// sends to) anyone, and the others learn it first.
	registered     chan struct{}
	registeredOnce sync.Once

	// putMu orders the writes of this daemon's entry: the session's puts
	// and Move's transaction. Every write is conditional on the entry's
	// mod revision being the one last written or read (myRev), so a
	// write by another daemon (a migration's Move, which rewrites this
	// entry) is seen, never overwritten blindly.
	putMu sync.Mutex
	// +checklocks:putMu
	lease clientv3.LeaseID // the session's, 0 before the first
	// +checklocks:putMu
	myRev int64 // the entry's mod revision as last written or read; 0: none

	mu sync.Mutex
	// +checklocks:mu
	self Node
	// +checklocks:mu
	health Health
	// +checklocks:mu
	known map[uint32]knownNode // the other nodes, as last delivered
	// leaving are channels another daemon's Move takes out of this
	// entry (Leaving); left is set once this registry saw that it did,
	// and from then on its puts leave them out.
	// +checklocks:mu
	leaving []uint32
	// +checklocks:mu
	left bool

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// knownNode is another node's entry as the watch last delivered it.
type knownNode struct {
	node  Node
	rev   int64 // its mod revision
	lease int64 // the lease it is attached to
}

// New connects a client (lazily: etcd need not be up yet) and returns a
// Registry to Start. The Registry owns the client; Close releases it.
func New(opts Options) (*Registry, error) {
	if len(opts.Endpoints) == 0 {
		return nil, errors.New("fleet: no etcd endpoints")
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.TTL == 0 {
		opts.TTL = DefaultTTL
	}
	if opts.TTL < 2*time.Second {
		return nil, fmt.Errorf("fleet: TTL %v: at least 2s (etcd's lease granularity is a second)", opts.TTL)
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = DefaultDialTimeout
	}
	if opts.MinInterval <= 0 {
		opts.MinInterval = DefaultMinInterval
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.OnEvent == nil {
		opts.OnEvent = func(Event) {}
	}
	if opts.Self.Boot == "" {
		return nil, errors.New("fleet: Self has no boot id")
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: opts.Endpoints, DialTimeout: opts.DialTimeout, TLS: opts.TLS,
		Logger: zap.NewNop(), DialKeepAliveTime: opts.TTL / 2, DialKeepAliveTimeout: opts.DialTimeout})
	if err != nil {
		return nil, fmt.Errorf("fleet: connect to etcd: %w", err)
	}
	self := opts.Self
	self.Channels = slices.Clone(self.Channels)
	return &Registry{opts: opts, cli: cli, log: opts.Logger, dirty: make(chan struct{}, 1), registered: make(chan struct{}), self: self,
		known: map[uint32]knownNode{}, health: Health{Endpoints: slices.Clone(opts.Endpoints)}}, nil
}

// Key returns this daemon's key.
func (r *Registry) Key() string { return nodeKey(r.opts.Prefix, r.opts.Self.ID) }

// Start registers the entry and starts watching, in goroutines that retry
// until ctx ends or Close: etcd being down delays both, it does not fail
// Start.
func (r *Registry) Start(ctx context.Context) {
	ctx, r.cancel = context.WithCancel(ctx)
	r.wg.Add(2)
	go func() { defer r.wg.Done(); r.register(ctx) }()
	go func() { defer r.wg.Done(); r.watch(ctx) }()
}

// Close stops the registry and revokes the lease (best effort, within the
// dial timeout), so the others see this daemon leave at once.
func (r *Registry) Close() error {
	if r.cancel != nil {
		r.cancel()
	}
	r.wg.Wait()
	return r.cli.Close()
}

// SetChannels publishes the local channel set (sorted, deduplicated
// here). Puts are coalesced: at most one per Options.MinInterval.
func (r *Registry) SetChannels(chans []uint32) {
	c := slices.Clone(chans)
	slices.Sort(c)
	c = slices.Compact(c)
	r.mu.Lock()
	same := slices.Equal(c, r.self.Channels)
	r.self.Channels = c
	r.mu.Unlock()
	if !same {
		select {
		case r.dirty <- struct{}{}:
		default:
		}
	}
}

// Health returns the registry's state.
func (r *Registry) Health() Health {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.health
	h.Endpoints = slices.Clone(h.Endpoints)
	h.Nodes = len(r.known)
	return h
}

func (r *Registry) fail(what string, err error) {
	r.mu.Lock()
	first := r.health.Connected || r.health.LastError == ""
	r.health.Connected = false
	r.health.LastError = what + ": " + err.Error()
	r.mu.Unlock()
	if first {
		r.log.Warn("fleet directory: etcd unavailable; the last known directory stays in use", "step", what, "err", err)
	}
}

func (r *Registry) ok(rev int64) {
	r.mu.Lock()
	if !r.health.Connected && r.health.LastError != "" {
		r.log.Info("fleet directory: etcd reachable again")
	}
	r.health.Connected = true
	if rev > r.health.Revision {
		r.health.Revision = rev
	}
	r.mu.Unlock()
}

// register grants a lease, puts the entry under it and keeps it alive;
// it puts again when the channels change and starts over when the lease
// is lost.
func (r *Registry) register(ctx context.Context) {
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		if err := r.session(ctx); err != nil && ctx.Err() == nil {
			r.fail("register", err)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, r.opts.TTL/2)
			continue
		}
		backoff = 200 * time.Millisecond
	}
}

// session is one lease's life: it returns when the lease is lost (nil)
// or a request failed.
func (r *Registry) session(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, r.opts.DialTimeout)
	lease, err := r.cli.Grant(rctx, int64((r.opts.TTL+time.Second-1)/time.Second))
	cancel()
	if err != nil {
		return fmt.Errorf("grant lease: %w", err)
	}
	defer func() {
		// Stopping: revoke, so that the others see this daemon leave at
		// once (a daemon killed does not get here: its lease expires).
		// A session that failed keeps its lease: the next one's put
		// moves the key to a new lease without deleting it (the others
		// see an update, not a leave and a join), and the old lease
		// expires with nothing attached.
		if ctx.Err() == nil {
			return
		}
		rctx, cancel := context.WithTimeout(context.Background(), r.opts.DialTimeout)
		r.cli.Revoke(rctx, lease.ID)
		cancel()
	}()
	kctx, kcancel := context.WithCancel(ctx)
	defer kcancel()
	alive, err := r.cli.KeepAlive(kctx, lease.ID)
	if err != nil {
		return fmt.Errorf("keep lease alive: %w", err)
	}
	var last time.Time
	put := func() error {
		if err := r.write(ctx, lease.ID); err != nil {
			return err
		}
		r.registeredOnce.Do(func() { close(r.registered) })
		last = time.Now()
		return nil
	}
	if err := put(); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-alive:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return errors.New("lease keepalive ended (lease expired or etcd unreachable)")
			}
		case <-r.dirty:
			if wait := r.opts.MinInterval - time.Since(last); wait > 0 {
				select { // coalesce: changes meanwhile go in the same put
				case <-ctx.Done():
					return nil
				case <-time.After(wait):
				}
			}
			if err := put(); err != nil {
				select { // put again on the next session
				case r.dirty <- struct{}{}:
				default:
				}
				return err
			}
		}
	}
}

// maxConflicts bounds the conditional writes of the entry that another
// writer's change refuses in a row: past it, the entry is written
// unconditionally (it is this daemon's).
const maxConflicts = 8

// write puts this daemon's entry under lease, conditional on its mod
// revision (putMu's comment): refused, it reads the entry, takes note of
// what the other writer did (sawOwn) and writes again.
func (r *Registry) write(ctx context.Context, lease clientv3.LeaseID) error {
	r.putMu.Lock()
	defer r.putMu.Unlock()
	r.lease = lease
	key := r.Key()
	for try := 0; ; try++ {
		r.mu.Lock()
		val, err := r.publishedLocked().Marshal()
		r.mu.Unlock()
		if err != nil {
			return err
		}
		put := clientv3.OpPut(key, string(val), clientv3.WithLease(lease))
		pctx, cancel := context.WithTimeout(ctx, r.opts.DialTimeout)
		txn := r.cli.Txn(pctx)
		if try < maxConflicts {
			txn = txn.If(clientv3.Compare(clientv3.ModRevision(key), "=", r.myRev)).Then(put).Else(clientv3.OpGet(key))
		} else {
			txn = txn.Then(put)
		}
		resp, err := txn.Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("put %s: %w", key, err)
		}
		if !resp.Succeeded {
			r.myRev = 0
			if rr := resp.Responses[0].GetResponseRange(); rr != nil && len(rr.Kvs) == 1 {
				r.myRev = rr.Kvs[0].ModRevision
				r.sawOwn(rr.Kvs[0].Value)
			}
			r.mu.Lock()
			r.health.Conflicts++
			r.mu.Unlock()
			continue
		}
		r.myRev = resp.Header.Revision
		r.mu.Lock()
		r.health.Puts++
		r.health.PutBytes += uint64(len(val))
		r.mu.Unlock()
		r.ok(resp.Header.Revision)
		return nil
	}
}

// publishedLocked is the entry to write: self, less the leaving channels
// once another daemon's Move took them.
//
// +checklocks:r.mu
func (r *Registry) publishedLocked() Node {
	n := r.self
	if r.left {
		n.Channels = Without(n.Channels, r.leaving)
	}
	return n
}

// sawOwn takes this daemon's entry as another writer left it: when it no
// longer lists any leaving channel, a Move took them (under r.putMu).
func (r *Registry) sawOwn(val []byte) {
	n, err := ParseNode(val)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil || len(r.leaving) == 0 || r.left {
		return
	}
	for _, c := range r.leaving {
		if _, ok := slices.BinarySearch(n.Channels, c); ok {
			return
		}
	}
	r.left = true
	r.log.Info("fleet directory: a migration moved channels out of this daemon's entry", "channels", len(r.leaving))
}

// Leaving says that chans (this daemon's, through a migrating port's
// sinks) are about to move to another daemon, whose Move writes both
// entries in one transaction: until this registry sees that it did, its
// puts still list them (the sinks are still here), and after, they leave
// them out, so that a put after the Move cannot bring them back. The
// caller clears it (Leaving(nil)) once the sinks are gone here. A Move
// that never comes changes nothing: the channels leave with the sinks.
func (r *Registry) Leaving(chans []uint32) {
	c := slices.Clone(chans)
	slices.Sort(c)
	c = slices.Compact(c)
	r.mu.Lock()
	r.leaving, r.left = c, false
	r.mu.Unlock()
}

// Errors of Move. The trailing checklocksignore silences the analyzer's
// hint that two of them, returned only under putMu, need a guard.
var (
	// ErrNotRegistered: this daemon's entry is not in etcd (yet).
	ErrNotRegistered = errors.New("fleet: this daemon's entry is not registered") // +checklocksignore
	// ErrNoEntry: the node the channels move from has no entry.
	ErrNoEntry = errors.New("fleet: the source node has no entry")
	// ErrMoveConflict: the entries kept changing under the transaction.
	ErrMoveConflict = errors.New("fleet: the entries kept changing under the move") // +checklocksignore
)

// maxMoveTries bounds Move's transactions that a concurrent write to
// either entry refuses.
const maxMoveTries = 5

// Move is a migration's commit on its destination: in one transaction,
// this daemon's entry gets channels (its whole new set, the migrated
// sinks' included) and node from's entry loses leaving (the channels it
// gives up, which its registry was told with Leaving), so that every
// revision of the store has the migrated channels in exactly one of
// them. The transaction holds if neither entry changed since it was
// read (the watch's copy of from's first, then a fresh read); it is
// tried again at most a few times. On an error the channels are still
// this daemon's and its entry is put as usual (the caller falls back to
// the ordered updates: the destination adds, the source drops later).
func (r *Registry) Move(ctx context.Context, from uint32, leaving, channels []uint32) error {
	c := slices.Clone(channels)
	slices.Sort(c)
	c = slices.Compact(c)
	lv := slices.Clone(leaving)
	slices.Sort(lv)
	lv = slices.Compact(lv)
	r.putMu.Lock()
	defer r.putMu.Unlock()
	r.mu.Lock()
	r.self.Channels = c
	k, have := r.known[from]
	r.mu.Unlock()
	if r.lease == 0 || r.myRev == 0 {
		return r.putLater(ErrNotRegistered)
	}
	if from == r.opts.Self.ID {
		return r.putLater(fmt.Errorf("%w: node %d is this daemon", ErrNoEntry, from))
	}
	key, srcKey := r.Key(), nodeKey(r.opts.Prefix, from)
	for try := 0; try < maxMoveTries; try++ {
		if !have {
			gctx, cancel := context.WithTimeout(ctx, r.opts.DialTimeout)
			resp, err := r.cli.Get(gctx, srcKey)
			cancel()
			if err != nil {
				return r.putLater(fmt.Errorf("fleet: read %s: %w", srcKey, err))
			}
			if len(resp.Kvs) == 0 {
				return r.putLater(fmt.Errorf("%w: no key %s", ErrNoEntry, srcKey))
			}
			n, err := ParseNode(resp.Kvs[0].Value)
			if err != nil {
				return r.putLater(fmt.Errorf("%w: %s: %v", ErrNoEntry, srcKey, err))
			}
			k = knownNode{node: n, rev: resp.Kvs[0].ModRevision, lease: resp.Kvs[0].Lease}
		}
		have = false
		src := k.node
		src.Channels = Without(src.Channels, lv)
		srcVal, err := src.Marshal()
		if err != nil {
			return r.putLater(err)
		}
		r.mu.Lock()
		val, err := r.publishedLocked().Marshal()
		r.mu.Unlock()
		if err != nil {
			return r.putLater(err)
		}
		tctx, cancel := context.WithTimeout(ctx, r.opts.DialTimeout)
		resp, err := r.cli.Txn(tctx).
			If(clientv3.Compare(clientv3.ModRevision(srcKey), "=", k.rev), clientv3.Compare(clientv3.ModRevision(key), "=", r.myRev)).
			Then(clientv3.OpPut(key, string(val), clientv3.WithLease(r.lease)),
				clientv3.OpPut(srcKey, string(srcVal), clientv3.WithLease(clientv3.LeaseID(k.lease)))).
			Else(clientv3.OpGet(key)).
			Commit()
		cancel()
		if err != nil {
			return r.putLater(fmt.Errorf("fleet: move %s to %s: %w", srcKey, key, err))
		}
		if resp.Succeeded {
			r.myRev = resp.Header.Revision
			r.mu.Lock()
			r.health.Moves++
			r.health.Puts++
			r.health.PutBytes += uint64(len(val) + len(srcVal))
			r.mu.Unlock()
			r.ok(resp.Header.Revision)
			return nil
		}
		r.myRev = 0
		if rr := resp.Responses[0].GetResponseRange(); rr != nil && len(rr.Kvs) == 1 {
			r.myRev = rr.Kvs[0].ModRevision
		}
		r.mu.Lock()
		r.health.Conflicts++
		r.mu.Unlock()
		if r.myRev == 0 {
			return r.putLater(ErrNotRegistered)
		}
	}
	return r.putLater(ErrMoveConflict)
}

// putLater has the put loop write the entry (a Move that failed leaves
// its channel set to it) and returns err.
func (r *Registry) putLater(err error) error {
	select {
	case r.dirty <- struct{}{}:
	default:
	}
	return err
}

// Without returns the sorted list a less the sorted list b, a new slice.
func Without(a, b []uint32) []uint32 {
	out := make([]uint32, 0, len(a))
	for _, c := range a {
		if _, ok := slices.BinarySearch(b, c); !ok {
			out = append(out, c)
		}
	}
	return out
}

// watch lists the prefix and watches it from the next revision, and
// lists again after a failure (a compacted revision, etcd restarted),
// delivering the difference.
func (r *Registry) watch(ctx context.Context) {
	prefix := nodesPrefix(r.opts.Prefix)
	select {
	case <-ctx.Done():
		return
	case <-r.registered:
	}
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		err := r.watchOnce(ctx, prefix)
		if ctx.Err() != nil {
			return
		}
		r.fail("watch", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, r.opts.TTL/2)
	}
}

func (r *Registry) watchOnce(ctx context.Context, prefix string) error {
	gctx, cancel := context.WithTimeout(ctx, r.opts.DialTimeout)
	resp, err := r.cli.Get(gctx, prefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return fmt.Errorf("list %s: %w", prefix, err)
	}
	r.ok(resp.Header.Revision)
	seen := map[uint32]bool{}
	for _, kv := range resp.Kvs {
		r.mu.Lock()
		r.health.ReadBytes += uint64(len(kv.Value))
		r.mu.Unlock()
		if id, ok := r.take(string(kv.Key), kv.Value, kv.ModRevision, kv.Lease); ok {
			seen[id] = true
		}
	}
	r.mu.Lock()
	var gone []uint32
	for id := range r.known {
		if !seen[id] {
			gone = append(gone, id)
		}
	}
	r.mu.Unlock()
	for _, id := range gone {
		r.remove(id)
	}
	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer wcancel()
	for wr := range r.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watch %s: %w", prefix, err)
		}
		r.ok(wr.Header.Revision)
		for _, ev := range wr.Events {
			r.mu.Lock()
			r.health.Events++
			r.health.ReadBytes += uint64(len(ev.Kv.Value))
			r.mu.Unlock()
			key := string(ev.Kv.Key)
			if ev.Type == clientv3.EventTypeDelete {
				if id, ok := parseKey(r.opts.Prefix, key); ok {
					r.remove(id)
				}
				continue
			}
			r.take(key, ev.Kv.Value, ev.Kv.ModRevision, ev.Kv.Lease)
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("watch ended")
}

// take delivers a put of key: Added or Updated when it is another node's
// valid entry that changed. It reports the node id when the key is a
// node's (valid or not: a bad value keeps the node's last good one).
func (r *Registry) take(key string, val []byte, rev, lease int64) (uint32, bool) {
	id, ok := parseKey(r.opts.Prefix, key)
	if !ok {
		return 0, false
	}
	if id == r.opts.Self.ID {
		return id, true
	}
	n, err := ParseNode(val)
	if err == nil && n.ID != id {
		err = fmt.Errorf("%w: node %d under key %s", ErrBadNode, n.ID, key)
	}
	if err != nil {
		r.log.Warn("fleet directory: ignoring a bad entry", "key", key, "err", err)
		r.mu.Lock()
		_, had := r.known[id]
		r.mu.Unlock()
		return id, had
	}
	r.mu.Lock()
	k, had := r.known[id]
	old := k.node
	r.known[id] = knownNode{node: n, rev: rev, lease: lease}
	r.mu.Unlock()
	switch {
	case !had:
		r.opts.OnEvent(Event{Kind: Added, Node: n, Revision: rev})
	case old.Boot != n.Boot || !slices.Equal(old.Addrs, n.Addrs) || !slices.Equal(old.Channels, n.Channels):
		r.opts.OnEvent(Event{Kind: Updated, Node: n, Revision: rev})
	}
	return id, true
}

func (r *Registry) remove(id uint32) {
	if id == r.opts.Self.ID {
		return
	}
	r.mu.Lock()
	_, had := r.known[id]
	delete(r.known, id)
	r.mu.Unlock()
	if had {
		r.opts.OnEvent(Event{Kind: Removed, Node: Node{ID: id}})
	}
}
