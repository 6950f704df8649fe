package backend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/internal/guestproto"
	"github.com/veloce-io/veloce/internal/ring"
	"github.com/veloce-io/veloce/internal/shm"
	"github.com/veloce-io/veloce/internal/slots"
	"github.com/veloce-io/veloce/internal/sockfile"
)

// The host transport: applications on the host (guestlib with
// Options.Socket, $VELOCE_APP_SOCKET or DefaultAppSocket) connect to the
// daemon's unix SOCK_SEQPACKET socket (veloced --app-socket), one
// connection per session, and their messages travel in shared memory with
// zero copies on the way in and one on the way out — the INSANE paper's
// figure 4 on one host.
//
//   - Control: guestproto requests and replies, one per seqpacket message.
//     The first request is OpenSession; its reply carries three
//     descriptors (SCM_RIGHTS): the client's region (a memfd the daemon
//     created, sealed against resizing, so the client cannot truncate it
//     under the daemon's mapping and fault it) and two eventfds, "TX"
//     (the application signals the daemon) and "RX" (the reverse). The
//     daemon creates the region so that it alone sizes and accounts for
//     it. A refused emit is answered with an Outcome message.
//   - Data: internal/shm's rings. Emit: the application writes into a TX
//     slot in place and puts (slot, length, source, token) on the TX
//     ring; the client's drain goroutine hands the slot, read in place, to
//     Runtime.Emit (whose local sinks and remote peers copy it as their
//     datapath needs) and returns the slot on the TX-done ring. Deliver:
//     deliver copies the message once into a free RX slot and puts (slot,
//     length, sink, source, seq) on the RX ring; the application reads it
//     in place and returns the slot on the RX-free ring when it releases
//     the message.
//   - Wake-ups only when the other side sleeps (internal/shm's wait flags,
//     then an eventfd write): a busy stream makes no system call per
//     message. The drain goroutine sleeps as soon as its ring is empty:
//     spinning first (yielding the processor) made round trips slower on
//     a two-core host, where the spinning goroutines took turns with the
//     ones that had work (veloce-bench streams: 64-B RTT 88 µs spinning
//     64 rounds, 56 µs not spinning).
//
// The application is not trusted. The daemon never reads back what it
// wrote to the region (it keeps its ring positions, the layout and the
// messages' metadata in its own memory), copies every ring entry out once
// before validating it, and counts (malformed) and drops entries with a
// slot, length or position out of range, and RX slots freed that the
// application did not hold. A client that never frees its RX slots only
// empties its own pool: deliveries to its sinks are then dropped and
// counted per sink, as for a VM's outbox. Writes to a client's socket
// never wait (a reply that does not fit its socket buffer is dropped), so
// a client that stops reading stalls no one.
//
// A connection is its session's lifetime: when the application dies the
// kernel closes its end, and the daemon closes the session and unmaps the
// region at once. While connected, the session counts as alive (no pings
// needed).
//
// Deliveries to one client may come from several goroutines at once (VM
// pollers, the remote receiver, other clients' drain goroutines). Each
// takes a free slot from a lock-free queue in daemon memory, copies the
// message and queues the slot; the RX ring has one producer, so whoever
// finds its try-lock free publishes every slot queued so far (combining:
// no goroutine waits for another). Taking freed slots back off the
// RX-free ring has its own lock, tried when the free queue runs low and
// waited for only when it is empty.
//
// A datapath's receiver delivers a received batch at a time
// (Runtime.deliverBatch): it takes the try-lock of each client it
// delivers to once, writes the batch's messages for that client straight
// into free RX slots and onto the RX ring, and publishes them with one
// store of the ring's head and at most one wake-up at the batch's end,
// instead of a queue, a publication and a look at the wait flag per
// message. The batch also tries the reclaim lock, and takes the slots the
// application freed straight off the RX-free ring as it needs them. A
// delivery that finds the ring held by another goroutine's batch is queued
// on ready, as before, and published at that batch's end; with the pool
// empty meanwhile it does not wait for the reclaim lock (the batch may be
// its own goroutine's), and is dropped if it cannot take it.

// DefaultAppSocket is where host applications reach veloced.
const DefaultAppSocket = "/run/veloce/app.sock"

const (
	// hostTXSlots and hostRXSlots are the one-slot pools: TX slots 0 to
	// hostTXSlots-1 are the application's for one-slot messages, RX
	// slots 0 to hostRXSlots-1 the daemon's; the slots past them are for
	// runs (large messages, hostLayoutFor).
	hostTXSlots = 512
	hostRXSlots = 1024
	// hostSlotSize holds one message of up to MaxGuestPayload bytes (a
	// VM's largest one-frame message) and more: larger ones take runs.
	hostSlotSize = 2048
	// hostBatch is how many TX entries the drain goroutine takes per round.
	hostBatch = 64
	// inlineBatch is the largest batch of TX entries whose messages to
	// peers the drain goroutine sends itself (flushInline): a short batch
	// is an application waiting for its messages to go, and sending them
	// saves the sender's wake-up; a longer one is a stream, which goes
	// faster with the sender sending one batch while the drain takes the
	// next (measured: 0.5-1 µs less per round trip inline, but 5 % less
	// throughput when every batch was sent inline).
	inlineBatch = 8
	// hostAlive is how often a connected client's session is marked alive.
	hostAlive = time.Second
)

// hostLayout is a client's region with the default largest message,
// hostMaxMessage the largest message it holds.
var hostLayout, hostMaxMessage = hostLayoutFor(DefaultMaxMessage)

// hostLayoutFor sizes a client's region for messages of up to
// maxMessage bytes (the daemon's --max-message) and returns the largest
// message the region takes. Past the one-slot pools, each pool has room
// for runs of two such messages (one when that would exceed
// shm.MaxSlots), rounded up to a power of two: for 1 MiB, 2,048 TX slots
// (3 MiB of runs) and 2,048 RX slots (2 MiB), 8 MiB in all, which the
// kernel backs only as they are written.
func hostLayoutFor(maxMessage int) (shm.Layout, int) {
	per := (maxMessage + hostSlotSize - 1) / hostSlotSize
	runs := 2 * per
	if hostRXSlots+runs > shm.MaxSlots {
		runs = per
	}
	pool := func(small int) uint32 {
		n := uint32(2)
		for int(n) < small+runs && n < shm.MaxSlots {
			n *= 2
		}
		return n
	}
	l := shm.Layout{SlotSize: hostSlotSize, TXSlots: pool(hostTXSlots), RXSlots: pool(hostRXSlots)}
	largest := min(maxMessage, int(l.TXSlots-hostTXSlots)*hostSlotSize, int(l.RXSlots-hostRXSlots)*hostSlotSize)
	return l, max(largest, hostSlotSize)
}

// hostApps serves the unix socket.
type hostApps struct {
	rt   *Runtime
	conn *sockfile.Listener // the Daemon closes it too (a stop before run)
	path string
	// max caps the sessions (regions) open at once; <= 0: no cap.
	max     int
	regions atomic.Int32 // sessions open: open adds, release subtracts
	// tenants map peer credentials to tenants; limits bound each tenant.
	tenants []AppTenant
	limits  Limits
	log     *slog.Logger

	acctMu sync.Mutex
	// accounts are by tenant, each created at first use.
	accounts map[string]*account // +checklocks:acctMu

	mu      sync.Mutex
	clients map[*hostClient]struct{} // +checklocks:mu
	wg      sync.WaitGroup           // one per client

	// gone sums the counters of clients that have left.
	goneMalformed, goneWakeups atomic.Uint64
}

// hostClient is one connection: one application's session and region.
type hostClient struct {
	apps *hostApps
	conn *net.UnixConn
	raw  syscall.RawConn
	name string

	// Set by open before the session exists; fixed afterwards.
	region *shm.Region
	layout shm.Layout
	maxMsg int           // the largest message, either way (hostLayoutFor)
	txNote *shm.Notifier // the application signals: TX entries wait
	rxNote *shm.Notifier // the daemon signals: RX or TX-done entries wait

	opened atomic.Bool // the fields above are set
	sess   atomic.Pointer[Session]
	closed atomic.Bool  // set before the region goes: no delivery starts
	active atomic.Int32 // deliveries in progress: the region stays while > 0

	// polling: the session polls (poll.go): the daemon's polling thread
	// drains the TX ring instead of drain, which waits on pollBack.
	polling atomic.Bool
	// pollBack is written by drain before it joins the poller.
	pollBack chan struct{}

	// TX side: the drain goroutine alone.
	tx        shm.Consumer
	done      shm.Producer
	outBuf    [guestproto.HeaderLen + 14]byte
	drainDone chan struct{}

	// RX side. rxSlots is a pool of ids over the region's RX slots, in
	// daemon memory: a delivering goroutine gets a slot, copies the
	// message into it, writes its metadata and queues it on ready (filled,
	// not yet on the RX ring); the publisher lends it to the application
	// as it puts it on the RX ring, and reclaimLocked takes back only the
	// slots lent (slots.Pool.Reclaim), so a slot the application did not
	// hold is refused. The ring ends have one user each: whoever holds
	// their try-lock.
	rxSlots *slots.Pool[hostRXMeta]
	ready   *ring.Queue
	pubLock atomic.Bool
	// pubAgain: a goroutine queued on ready and found pubLock taken, so
	// the holder must look at ready again after it lets the lock go
	// (publish).
	pubAgain atomic.Bool
	// testPublished, when set (tests, before the client is used), runs
	// after each publishing round, with pubLock still held.
	testPublished func()
	// rx is guarded by pubLock, an atomic try-lock checklocks cannot
	// follow (publish, publishLocked).
	rx shm.Producer // +checklocksignore
	// holder is the delivery batch holding pubLock across its messages
	// (deliverHeld), nil if none; heldN counts the entries it wrote to rx
	// and has not published (guarded by pubLock, as rx is).
	holder atomic.Pointer[deliveryBatch]
	heldN  uint32 // +checklocksignore
	// recHeld: the holding batch also holds recMu (tried when it took the
	// ring), and takes the slots the application freed straight off the
	// RX-free ring as it needs them (takeFreed); freedN of the freedAvail
	// entries it found there are taken, not yet released. Guarded by
	// pubLock, as heldN.
	recHeld    bool   // +checklocksignore
	freedN     uint32 // +checklocksignore
	freedAvail uint32 // +checklocksignore

	recMu  sync.Mutex
	rxFree shm.Consumer // +checklocks:recMu
	// RX slots from hostRXSlots on hold runs: a message larger than a
	// slot goes into a run of adjacent ones, allocated under runMu, its
	// metadata in runMeta (by slot - hostRXSlots), queued on ready and
	// lent as one-slot messages are. Lock order: recMu, then runMu.
	runMu   sync.Mutex
	runs    *shm.Runs // +checklocks:runMu
	runMeta []hostRXMeta

	malformed, wakeups, unsent atomic.Uint64

	// The application's peer credentials (SO_PEERCRED) and the tenant
	// they map to; tenant is empty (every request denied) if the kernel
	// gave no credentials.
	uid, gid uint32
	tenant   string
	acct     *account
}

type hostRXMeta struct {
	sink, len   uint32
	source, seq uint64
}

// AppTenant maps host applications to a tenant by their connection's
// peer credentials (SO_PEERCRED: the connecting process's effective uid
// and gid). A uid rule wins over a gid rule; without a rule, uid 0 is
// HostTenant and uid N the tenant "uid:N".
type AppTenant struct {
	// GID makes ID a group id (the process's effective gid, not its
	// supplementary groups); otherwise ID is a user id.
	GID bool
	// ID is the uid or gid.
	ID uint32
	// Tenant is the tenant's name.
	Tenant string
}

// String returns the rule as veloced's --app-tenant takes it.
func (a AppTenant) String() string {
	kind := "uid"
	if a.GID {
		kind = "gid"
	}
	return fmt.Sprintf("%s:%d=%s", kind, a.ID, a.Tenant)
}

// tenantFor returns the tenant of an application with uid and gid.
func (h *hostApps) tenantFor(uid, gid uint32) string {
	for _, r := range h.tenants {
		if !r.GID && r.ID == uid {
			return r.Tenant
		}
	}
	for _, r := range h.tenants {
		if r.GID && r.ID == gid {
			return r.Tenant
		}
	}
	if uid == 0 {
		return HostTenant
	}
	return fmt.Sprintf("uid:%d", uid)
}

// account returns tenant's account, shared by its applications.
func (h *hostApps) account(tenant string) *account {
	h.acctMu.Lock()
	defer h.acctMu.Unlock()
	a := h.accounts[tenant]
	if h.accounts == nil {
		h.accounts = map[string]*account{}
	}
	if a == nil {
		a = newAccount("tenant "+tenant, h.limits, h.log)
		h.accounts[tenant] = a
	}
	return a
}

func listenHostApps(rt *Runtime, path string, perm sockfile.Options, max int) (*hostApps, error) {
	ln, err := sockfile.Listen("unixpacket", path, perm)
	if err != nil {
		return nil, fmt.Errorf("app socket: %w", err)
	}
	return &hostApps{rt: rt, conn: ln, path: path, max: max, clients: map[*hostClient]struct{}{}}, nil
}

func (h *hostApps) run(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() { h.conn.Close() })
	defer stop()
	for {
		conn, err := h.conn.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				break
			}
			time.Sleep(10 * time.Millisecond) // EMFILE and the like
			continue
		}
		c := newHostClient(h, conn)
		h.mu.Lock()
		h.clients[c] = struct{}{}
		h.mu.Unlock()
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			c.serve()
			c.release()
			h.mu.Lock()
			delete(h.clients, c)
			h.mu.Unlock()
		}()
	}
	h.mu.Lock()
	for c := range h.clients {
		c.conn.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
}

var hostClientSeq atomic.Uint64

func newHostClient(h *hostApps, conn *net.UnixConn) *hostClient {
	c := &hostClient{apps: h, conn: conn}
	c.raw, _ = conn.SyscallConn()
	c.name = fmt.Sprintf("host:#%d", hostClientSeq.Add(1))
	c.raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			c.name = fmt.Sprintf("host:pid %d", cred.Pid)
			c.uid, c.gid = cred.Uid, cred.Gid
			c.tenant = h.tenantFor(cred.Uid, cred.Gid)
		}
	})
	if c.tenant != "" {
		c.acct = h.account(c.tenant)
	}
	return c
}

var _ endpoint = (*hostClient)(nil)

// String implements endpoint.
func (c *hostClient) String() string { return c.name }

// sessionClosed implements endpoint: the connection ends with its session
// (after the reply to a CloseSession, which is already on its way).
func (c *hostClient) sessionClosed(s *Session) {
	if c.sess.CompareAndSwap(s, nil) && !c.closed.Load() {
		c.conn.CloseRead()
	}
}

// serve reads the client's requests until its connection ends.
func (c *hostClient) serve() {
	buf := make([]byte, 2048)
	reply := make([]byte, 4096)
	for {
		c.conn.SetReadDeadline(time.Now().Add(hostAlive))
		n, err := c.conn.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if s := c.sess.Load(); s != nil {
					s.touch()
				}
				continue
			}
			return // EOF: the application closed or died
		}
		c.handle(buf[:n], reply)
	}
}

// handle serves one request.
func (c *hostClient) handle(b, reply []byte) {
	var m guestproto.Message
	if err := guestproto.Parse(b, &m); err != nil || m.Type >= guestproto.Reply {
		// Data travels in shared memory; only requests come this way.
		c.malformed.Add(1)
		return
	}
	var res guestproto.Result
	var fds []int
	s := c.sess.Load()
	var limited error
	if m.Type != guestproto.Ping {
		limited = c.acct.allowControl(time.Now().UnixNano())
	}
	switch {
	case c.tenant == "":
		res = guestproto.Result{Status: guestproto.StatusDenied, Message: []byte("no peer credentials on the connection: no tenant")}
	case limited != nil:
		res = errorResult(limited)
	case m.Type == guestproto.OpenSession && c.region != nil:
		res = guestproto.Result{Status: guestproto.StatusBadRequest, Message: []byte("one session per connection")}
	case m.Type == guestproto.OpenSession && c.apps.max > 0 && int(c.apps.regions.Load()) >= c.apps.max:
		res = guestproto.Result{Status: guestproto.StatusLimit, Plugin: []byte(guestproto.LimitAppClients),
			Message: fmt.Appendf(nil, "too many host applications (the daemon's limit is %d)", c.apps.max)}
	case m.Type == guestproto.OpenSession:
		s, err := c.open()
		if err != nil {
			res = errorResult(err)
			break
		}
		go c.drain()
		var mm [guestproto.MaxMessageLen]byte
		res = guestproto.Result{ID: s.ID, Plugin: guestproto.PutMaxMessage(&mm, uint32(c.maxMsg))}
		fds = []int{c.region.FD(), c.txNote.FD(), c.rxNote.FD()}
	case s == nil || m.Session != s.ID:
		res = guestproto.Result{Status: guestproto.StatusNoSession, Message: []byte(fmt.Sprintf("session %d: not this connection's", m.Session))}
	default:
		s.touch()
		res = runControl(s, &m)
	}
	if n, err := guestproto.PutReply(reply, m.Header, &res); err == nil {
		c.send(reply[:n], fds)
	}
	if fds != nil {
		c.region.CloseFD() // the application has its copy (or never will)
	}
}

// open creates the client's region and notifiers and its session; the
// caller starts drain.
func (c *hostClient) open() (*Session, error) {
	// The session first: a refused one (a limit) costs no region. It
	// has no sinks yet, so nothing is delivered before the region exists.
	s, err := c.apps.rt.openSession(c, netip.AddrPort{}, c.tenant, c.acct)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Session, error) {
		s.Close() // not yet c.sess: the connection stays open
		return nil, err
	}
	layout, maxMsg := hostLayoutFor(c.apps.rt.maxMessage())
	region, err := shm.Create("veloce-"+c.name, layout)
	if err != nil {
		return fail(err)
	}
	tx, err := shm.NewNotifier()
	if err != nil {
		region.Close()
		return fail(err)
	}
	rx, err := shm.NewNotifier()
	if err != nil {
		tx.Close()
		region.Close()
		return fail(err)
	}
	c.region, c.txNote, c.rxNote = region, tx, rx
	c.layout, c.maxMsg = layout, maxMsg
	c.tx, c.done = region.TXConsumer(), region.DoneProducer()
	// No other goroutine sees the ring ends before opened is set.
	c.rx, c.rxFree = region.RXProducer(), region.FreeConsumer()              // +checklocksignore
	c.rxSlots = slots.MustNew[hostRXMeta](slots.Options{Slots: hostRXSlots}) // the memory is the region's
	c.runMu.Lock()
	c.runs = shm.NewRuns(hostRXSlots, layout.RXSlots-hostRXSlots)
	c.runMu.Unlock()
	c.runMeta = make([]hostRXMeta, layout.RXSlots-hostRXSlots)
	c.ready, _ = ring.New(int(layout.RXSlots)) // one-slot messages and runs
	c.drainDone = make(chan struct{})
	c.apps.regions.Add(1)
	c.opened.Store(true)
	s.touch()
	c.sess.Store(s)
	return s, nil
}

// release closes the client's session and, once no goroutine can touch
// it, unmaps its region.
func (c *hostClient) release() {
	c.closed.Store(true)
	if c.region != nil {
		c.txNote.Close() // wakes the drain goroutine
		<-c.drainDone
		// What the application emitted before it went (a clean exit
		// right after its last Emit, or a crash) still goes out: drain
		// the TX ring once more. Bounded: a live, hostile process may
		// still have the region mapped and keep writing entries.
		for i := 0; i <= hostTXSlots/hostBatch && c.drainOnce(false) > 0; i++ {
		}
	}
	if s := c.sess.Load(); s != nil {
		s.Close() // its sinks leave their channels
	}
	if c.region != nil {
		// A delivery that read the channel's sinks before the session
		// closed may still be writing into the region.
		for c.active.Load() != 0 {
			runtime.Gosched()
		}
		c.rxNote.Close()
		c.region.Close()
		c.apps.regions.Add(-1)
	}
	c.conn.Close()
	c.apps.goneMalformed.Add(c.malformed.Load())
	c.apps.goneWakeups.Add(c.wakeups.Load())
}

func (c *hostClient) send(b []byte, fds []int) {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	var serr error
	err := c.raw.Write(func(fd uintptr) bool {
		serr = unix.Sendmsg(int(fd), b, oob, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		return true
	})
	if err != nil || serr != nil {
		c.unsent.Add(1)
	}
}

// wake signals the application's RX eventfd.
func (c *hostClient) wake() {
	c.wakeups.Add(1)
	c.rxNote.Signal()
}

// drain takes the client's emitted messages off its TX ring until the
// client goes. While the session polls, the daemon's polling thread has
// the ring (hostPoller) and drain waits for it back.
func (c *hostClient) drain() {
	defer close(c.drainDone)
	wait := c.region.DaemonWaiting()
	for !c.closed.Load() {
		if c.polling.Load() {
			c.apps.rt.hostPoller().join(c)
			continue
		}
		if c.drainOnce(false) > 0 {
			continue
		}
		wait.Set()
		if c.tx.Pending() || c.polling.Load() {
			wait.Clear()
			continue
		}
		if c.txNote.Wait() != nil {
			return
		}
		wait.Clear()
	}
}

// setPolling implements poller: the drain goroutine, asleep on txNote,
// is woken to hand the ring to the polling thread (off: the thread hands
// it back at its next round).
func (c *hostClient) setPolling(on bool) {
	c.polling.Store(on)
	if on {
		c.txNote.Signal()
	}
}

// drainOnce handles up to hostBatch TX entries and returns how many it
// looked at. It does not allocate (but for outcomes of refused emits) and
// takes no lock (but a delivery into a pool found empty, see put).
//
// polled says a polling thread calls it (poll.go), serving other
// clients too: then it never waits. A message that would wait (a
// reliable source's full window, a stream paused by set-qos) stays on
// the TX ring, and the entries after it, for a later round — the ring is
// the application's back-pressure — and an outcome the client's socket
// has no room for is dropped and counted (unsent) rather than waited
// for: one slow or hostile client does not stall the others.
func (c *hostClient) drainOnce(polled bool) int {
	n, ok := c.tx.Available()
	if !ok {
		c.malformed.Add(1)
		c.tx.Resync()
		return 1
	}
	if n == 0 {
		return 0
	}
	n = min(n, hostBatch)
	mode := drainMode{polled: polled}
	if rm := c.apps.rt.remote; rm != nil && !polled && n <= inlineBatch {
		// Messages to peers go out at the batch's end, from here
		// (flushInline); the polling thread sends its own in its round.
		mode.inline = true
		rm.batchEmits()
		defer rm.flushInline()
	}
	s := c.sess.Load()
	space := c.done.Space(n)
	var done uint32
	for k := uint32(0); k < n; k++ {
		e := shm.GetTX(c.tx.Entry(k)) // copied out once: the client may change it
		// One slot, or a run of the slots its length takes (a large
		// message), within the TX pool.
		if !c.layout.RunFits(e.Slot, e.Len, c.layout.TXSlots) {
			c.malformed.Add(1)
			continue
		}
		if !c.emit(s, e, mode) {
			n = k // this one and the rest wait on the ring
			break
		}
		if done == space {
			c.malformed.Add(1) // a client that does not take its slots back
			continue
		}
		shm.PutID(c.done.Entry(done), e.Slot)
		done++
	}
	c.tx.Release(n)
	if done > 0 {
		c.done.Publish(done)
		if c.region.AppWaitingTX().TakeIfSet() {
			c.wake()
		}
	}
	return int(n)
}

// drainMode is how a drainOnce runs.
type drainMode struct {
	// polled: on a polling thread, which never waits (drainOnce).
	polled bool
	// inline: in a batch of emits (remote.batchEmits) that the drain
	// flushes at its end.
	inline bool
}

// emit hands one emitted message to the runtime, or tells the client why
// not. Polled (see drainOnce), it does not wait: it returns false for a
// message that would, which the caller leaves on the ring.
func (c *hostClient) emit(s *Session, e shm.TXEntry, mode drainMode) bool {
	st := guestproto.StatusNoSession
	var sid uint32
	if s != nil {
		sid = s.ID
		switch so := s.Source(e.Source); {
		case int(e.Len) > c.maxMsg:
			st = guestproto.StatusTooLarge
		case so == nil:
			st = guestproto.StatusNotFound
		case so.Unreachable():
			st = guestproto.StatusPeerUnreachable // reliable.go
		default:
			// Back-pressure, as on the virtio transport: a message no
			// destination had room for is refused (guestlib's Outcome:
			// ErrNoBuffers), one that some took is not.
			// A reliable source waits for room instead (emitWait).
			// Read in place, a run as one message: no copy on the way in.
			payload := c.region.TXRun(e.Slot, c.layout.SlotsFor(e.Len))[:e.Len]
			if mode.polled {
				taken, full, reliable, paused := c.apps.rt.emitOnce(so, payload)
				if taken == 0 && full > 0 && (reliable || paused) {
					so.emitted.Add(^uint64(0)) // emitted again next round: counted once
					return false
				}
				if full == 0 || taken > 0 {
					return true
				}
			} else if taken, full := c.apps.rt.emitWait(so, payload, &c.closed, mode.inline); full == 0 || taken > 0 {
				return true
			}
			st = guestproto.StatusNoBuffers
		}
	}
	n, _ := guestproto.PutOutcome(c.outBuf[:], sid, e.Source, e.Token, st)
	c.sendOutcome(c.outBuf[:n], mode.polled)
	return true
}

// sendOutcome sends an Outcome, waiting (up to hostAlive) while the
// client's socket buffer is full: only the drain goroutine sends
// outcomes, so the wait slows down this client's own emits — the
// back-pressure it asks for — and no one else's. A client that does not
// read its socket for that long loses the outcome (counted: unsent).
//
// Polled (see drainOnce), it tries once.
func (c *hostClient) sendOutcome(b []byte, polled bool) {
	var serr error
	try := func(fd uintptr) bool {
		serr = unix.Sendmsg(int(fd), b, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		return true
	}
	deadline := time.Now().Add(hostAlive)
	for pause := time.Microsecond; ; pause = min(2*pause, time.Millisecond) {
		if err := c.raw.Write(try); err != nil {
			serr = err
			break
		}
		if serr != unix.EAGAIN || polled || c.closed.Load() || time.Now().After(deadline) {
			break
		}
		time.Sleep(pause)
	}
	if serr != nil {
		c.unsent.Add(1)
	}
}

// deliver implements endpoint: the message is copied into a free RX slot
// and published on the RX ring. It does not allocate, and takes a lock
// only when the free queue is empty.
func (c *hostClient) deliver(sk *Sink, source, seq uint64, payload []byte) bool {
	if len(payload) > c.maxMsg {
		return false
	}
	c.active.Add(1)
	var ok bool
	if len(payload) <= hostSlotSize {
		ok = !c.closed.Load() && c.put(sk.ID, source, seq, payload)
	} else {
		ok = !c.closed.Load() && c.putRun(sk.ID, source, seq, payload)
	}
	c.active.Add(-1)
	return ok
}

// deliverHeld is deliver as part of batch b (Runtime.deliverBatch): the
// first delivery of the batch to c takes c's publish try-lock and keeps
// it until b's flush (flushHeld); each message goes straight into a free
// RX slot and onto the RX ring, unpublished. When the lock is another
// goroutine's, or the message takes a run, it is delivered as deliver
// does (queued on ready, published by the lock's holder). The region
// stays mapped while b holds the lock (active). It does not allocate and
// takes no lock but, with the pool empty, recMu.
func (c *hostClient) deliverHeld(b *deliveryBatch, sk *Sink, source, seq uint64, payload []byte) bool {
	if len(payload) > hostSlotSize {
		return c.deliver(sk, source, seq, payload)
	}
	if c.holder.Load() != b {
		if c.closed.Load() || !c.pubLock.CompareAndSwap(false, true) {
			return c.deliver(sk, source, seq, payload)
		}
		c.active.Add(1)
		if c.closed.Load() { // release may be waiting for active to fall
			c.pubLock.Store(false)
			c.active.Add(-1)
			return false
		}
		c.holder.Store(b)
		c.heldN = 0
		c.holdRec()
		b.held = append(b.held, c)
		if _, wake := c.publishLocked(); wake { // what waits on ready goes first
			c.wake()
		}
	}
	if c.closed.Load() {
		return false
	}
	return c.putHeld(sk.ID, source, seq, payload)
}

// putHeld writes one message into a free RX slot and onto the RX ring,
// unpublished. When the pool is empty it publishes what it wrote (the
// application can free only what it sees) and takes back what the
// application freed, once; then the message is dropped. The caller holds
// pubLock for its batch.
//
// While messages wait on ready (one of this goroutine's among them,
// perhaps: a run, or one delivered before the batch took the ring), one
// written past them could overtake it: the message is queued behind
// them instead, and flushHeld publishes ready after the batch's entries.
func (c *hostClient) putHeld(sink uint32, source, seq uint64, payload []byte) bool {
	queue := c.ready.Len() > 0
	if !queue && c.rx.Space(c.heldN+1) <= c.heldN {
		c.publishHeld()
		if c.rx.Space(1) == 0 {
			return false
		}
	}
	id, ok := c.takeFreed()
	if !ok {
		id, ok = c.rxSlots.Get()
	}
	if !ok {
		c.publishHeld()
		if c.recHeld {
			c.reclaimHeld()
		} else {
			c.recMu.Lock()
			c.reclaimLocked()
			c.recMu.Unlock()
		}
		if id, ok = c.rxSlots.Get(); !ok {
			return false // the application holds every slot
		}
	}
	if queue {
		copy(c.region.RXSlot(id), payload)
		*c.rxSlots.Meta(id) = hostRXMeta{sink: sink, len: uint32(len(payload)), source: source, seq: seq}
		c.ready.PushWait(id)
		return true
	}
	copy(c.region.RXSlot(id), payload)
	shm.PutRX(c.rx.Entry(c.heldN), shm.RXEntry{Slot: id, Len: uint32(len(payload)), Sink: sink, Source: source, Seq: seq})
	// Lent before Publish: the application cannot free it sooner.
	c.rxSlots.Lend(id)
	c.heldN++
	return true
}

// holdRec tries recMu for the batch taking the ring (recHeld). The
// functions that use it while held (takeFreed, releaseFreed,
// reclaimHeld, unholdRec) run under pubLock, with recMu held across
// calls: checklocks follows neither, so they are exempt, and recHeld
// says whether the lock is held.
//
// +checklocksignore
func (c *hostClient) holdRec() {
	c.recHeld = c.recMu.TryLock()
	c.freedN, c.freedAvail = 0, 0
}

// unholdRec releases what takeFreed took and recMu, if held.
//
// +checklocksignore
func (c *hostClient) unholdRec() {
	if c.recHeld {
		c.releaseFreed()
		c.recHeld = false
		c.recMu.Unlock()
	}
}

// reclaimHeld is reclaimLocked for the holding batch, with recMu held.
//
// +checklocksignore
func (c *hostClient) reclaimHeld() {
	c.releaseFreed()
	c.reclaimLocked()
}

// takeFreed takes, for the holding batch, the next one-slot RX slot the
// application freed, straight off the RX-free ring (slots.Pool.ReclaimHeld:
// no trip through the pool's free list), checking it as reclaimLocked
// does: what is out of range or not the application's to free is counted
// (malformed) and skipped, a run freed goes back to the runs. It needs
// recMu (recHeld); false when it finds nothing.
//
// +checklocksignore
func (c *hostClient) takeFreed() (uint32, bool) {
	if !c.recHeld {
		return 0, false
	}
	for {
		if c.freedN == c.freedAvail {
			c.releaseFreed()
			n, ok := c.rxFree.Available()
			if !ok {
				c.malformed.Add(1)
				c.rxFree.Resync()
				return 0, false
			}
			if n == 0 {
				return 0, false
			}
			c.freedAvail = min(n, hostBatch) // released a batch at a time
		}
		id := shm.GetID(c.rxFree.Entry(c.freedN))
		c.freedN++
		if id < hostRXSlots {
			if c.rxSlots.ReclaimHeld(id) {
				return id, true
			}
		} else {
			c.runMu.Lock()
			_, ok := c.runs.Reclaim(id)
			c.runMu.Unlock()
			if ok {
				continue
			}
		}
		c.malformed.Add(1) // out of range, or not the application's to free
	}
}

// releaseFreed releases the RX-free entries takeFreed took.
//
// +checklocksignore
func (c *hostClient) releaseFreed() {
	if c.freedN > 0 {
		c.rxFree.Release(c.freedN)
	}
	c.freedN, c.freedAvail = 0, 0
}

// publishHeld publishes the entries the holding batch wrote and wakes the
// application if it sleeps. The caller holds pubLock for its batch.
func (c *hostClient) publishHeld() {
	if c.heldN == 0 {
		return
	}
	c.rx.Publish(c.heldN)
	c.heldN = 0
	if c.region.AppWaitingRX().TakeIfSet() {
		c.wake()
	}
}

// flushHeld ends a batch's hold (deliveryBatch.flush): it publishes the
// batch's entries and what other goroutines queued on ready meanwhile,
// with one look at the wait flag, and lets the lock go.
func (c *hostClient) flushHeld() {
	wrote := c.heldN
	if wrote > 0 {
		c.rx.Publish(wrote)
		c.heldN = 0
	}
	n, wake := c.publishLocked()
	if n == 0 && wrote > 0 {
		wake = c.region.AppWaitingRX().TakeIfSet()
	}
	c.unholdRec()
	c.holder.Store(nil)
	c.pubLock.Store(false)
	if wake {
		c.wake()
	}
	if c.ready.Len() > 0 {
		c.publish() // queued after publishLocked looked (publish reclaims too)
	} else {
		c.reclaimSome()
	}
	c.active.Add(-1)
}

// putRun is put for a message larger than a slot: it is copied once
// into a run of free RX slots (the application reads it in place, whole).
// When no run is free it takes back what the application freed, once;
// then the message is dropped (the sink counts it).
func (c *hostClient) putRun(sink uint32, source, seq uint64, payload []byte) bool {
	count := c.layout.SlotsFor(uint32(len(payload)))
	c.runMu.Lock()
	id, ok := c.runs.Alloc(count)
	c.runMu.Unlock()
	if !ok {
		c.reclaimOrBatch()
		c.runMu.Lock()
		id, ok = c.runs.Alloc(count)
		c.runMu.Unlock()
		if !ok {
			return false
		}
	}
	copy(c.region.RXRun(id, count), payload)
	c.runMeta[id-hostRXSlots] = hostRXMeta{sink: sink, len: uint32(len(payload)), source: source, seq: seq}
	c.ready.PushWait(id)
	c.publish()
	return true
}

func (c *hostClient) put(sink uint32, source, seq uint64, payload []byte) bool {
	id, ok := c.rxSlots.Get()
	for !ok {
		// None left: take back what the application freed (waiting for
		// the goroutine at it, if any: a short critical section).
		n, done := c.reclaimOrBatch()
		if id, ok = c.rxSlots.Get(); !ok && (n == 0 || !done) {
			return false // the application holds every slot
		}
	}
	copy(c.region.RXSlot(id), payload)
	*c.rxSlots.Meta(id) = hostRXMeta{sink: sink, len: uint32(len(payload)), source: source, seq: seq}
	c.ready.PushWait(id)
	c.publish()
	return true
}

// reclaimOrBatch takes back the slots the application freed and returns
// how many, waiting for another goroutine at it — but not while a
// delivery batch holds the ring: that batch may hold recMu too, and be
// this very goroutine (a reliable or large message delivered in the
// middle of its received batch). Then it only tries, and done is false
// if it could not: the batch takes the freed slots as it needs them.
//
// +checklocksignore
func (c *hostClient) reclaimOrBatch() (n int, done bool) {
	if c.holder.Load() != nil {
		if !c.recMu.TryLock() {
			return 0, false
		}
	} else {
		c.recMu.Lock()
	}
	n = c.reclaimLocked()
	c.recMu.Unlock()
	return n, true
}

// publish puts ready slots on the RX ring, unless another goroutine holds
// the lock: that one then publishes ours too. A goroutine that finds the
// lock taken raises pubAgain after its slot is on ready, and the holder
// looks at pubAgain after it lets the lock go: either it sees the flag and
// publishes again, or the flag was raised after that look, so the lock
// was already free for the goroutine that raised it. (Without the flag, a
// holder whose round found nothing — the head of ready still being written
// by its producer — stopped, and the slot queued meanwhile waited for the
// next delivery, for ever if none came.)
func (c *hostClient) publish() {
	c.pubAgain.Store(true)
	for c.pubAgain.Load() && c.pubLock.CompareAndSwap(false, true) {
		c.pubAgain.Store(false)
		n, wake := c.publishLocked()
		if c.testPublished != nil {
			c.testPublished()
		}
		c.pubLock.Store(false)
		if wake {
			c.wake()
		}
		// More ready than this round took: the ring was full, or more
		// came (a round that took nothing stops, unless pubAgain).
		if n > 0 && c.ready.Len() > 0 {
			c.pubAgain.Store(true)
		}
	}
	c.reclaimSome()
}

// reclaimSome takes back the slots the application freed once half the
// pool is out, unless another goroutine is at it.
func (c *hostClient) reclaimSome() {
	if c.rxSlots.Free() < hostRXSlots/2 && c.recMu.TryLock() {
		c.reclaimLocked() // +checklocksforce: TryLock succeeded
		c.recMu.Unlock()
	}
}

// publishLocked is publish's body; the caller holds pubLock.
func (c *hostClient) publishLocked() (n uint32, wake bool) {
	for c.rx.Space(n+1) > n {
		id, ok := c.ready.Pop()
		if !ok {
			break
		}
		if id >= hostRXSlots { // a run
			m := &c.runMeta[id-hostRXSlots]
			shm.PutRX(c.rx.Entry(n), shm.RXEntry{Slot: id, Len: m.len, Sink: m.sink, Source: m.source, Seq: m.seq})
			c.runMu.Lock()
			c.runs.Lend(id)
			c.runMu.Unlock()
			n++
			continue
		}
		m := c.rxSlots.Meta(id)
		shm.PutRX(c.rx.Entry(n), shm.RXEntry{Slot: id, Len: m.len, Sink: m.sink, Source: m.source, Seq: m.seq})
		c.rxSlots.Lend(id) // before Publish: the application cannot free it sooner
		n++
	}
	if n > 0 {
		c.rx.Publish(n)
		wake = c.region.AppWaitingRX().TakeIfSet()
	}
	return n, wake
}

// reclaimLocked takes back the slots the application freed and returns
// how many.
//
// +checklocks:c.recMu
func (c *hostClient) reclaimLocked() int {
	n, ok := c.rxFree.Available()
	if !ok {
		c.malformed.Add(1)
		c.rxFree.Resync()
		return 0
	}
	got := 0
	for k := uint32(0); k < n; k++ {
		id := shm.GetID(c.rxFree.Entry(k))
		ok := id < hostRXSlots && c.rxSlots.Reclaim(id)
		if id >= hostRXSlots {
			c.runMu.Lock()
			_, ok = c.runs.Reclaim(id) // only the first slot of a run lent
			c.runMu.Unlock()
		}
		if !ok {
			c.malformed.Add(1) // out of range, or not the application's to free
			continue
		}
		got++
	}
	if n > 0 {
		c.rxFree.Release(n)
	}
	return got
}

// HostAppsInfo describes the host transport (Daemon.HostApps).
type HostAppsInfo = control.HostAppsInfo

// HostClientInfo describes one connected host application.
type HostClientInfo = control.HostClientInfo

// TenantInfo is one host tenant's account.
type TenantInfo = control.TenantInfo

// HostApps reports the host transport's clients.
func (d *Daemon) HostApps() HostAppsInfo {
	h := d.apps.Load()
	if h == nil {
		return HostAppsInfo{Clients: []HostClientInfo{}}
	}
	return h.info()
}

func (h *hostApps) info() HostAppsInfo {
	out := HostAppsInfo{Socket: h.path, Clients: []HostClientInfo{},
		Malformed: h.goneMalformed.Load(), Wakeups: h.goneWakeups.Load()}
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.clients {
		ci := HostClientInfo{Name: c.name, Malformed: c.malformed.Load(), Wakeups: c.wakeups.Load(), Unsent: c.unsent.Load(), Tenant: c.tenant, UID: c.uid,
			Polling: c.polling.Load()}
		if s := c.sess.Load(); s != nil {
			ci.Session = s.ID
			out.Sessions++
		}
		if c.opened.Load() && !c.closed.Load() {
			ci.RegionBytes, ci.TXSlots, ci.RXSlots = c.layout.Size(), int(c.layout.TXSlots), int(c.layout.RXSlots)
			ci.RXWithApp = max(0, hostRXSlots-c.rxSlots.Free()-c.ready.Len())
			out.MappedBytes += int64(ci.RegionBytes)
		}
		out.Malformed += ci.Malformed
		out.Wakeups += ci.Wakeups
		out.Clients = append(out.Clients, ci)
	}
	h.acctMu.Lock()
	for name, a := range h.accounts {
		out.Tenants = append(out.Tenants, TenantInfo{Name: name, Sessions: a.held[limitSessions].Load(), Streams: a.held[limitStreams].Load(),
			Sources: a.held[limitSources].Load(), Sinks: a.held[limitSinks].Load(), LimitRefusals: a.refusals()})
	}
	h.acctMu.Unlock()
	slices.SortFunc(out.Tenants, func(a, b TenantInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// streamChanged implements streamNotifier: a StreamChanged datagram on
// the client's socket, as outcomes go.
func (c *hostClient) streamChanged(s *Session, streamID uint32, datapath, warning string) {
	b := make([]byte, guestproto.HeaderLen+8+len(datapath)+len(warning))
	if n, err := guestproto.PutStreamChanged(b, s.ID, streamID, []byte(datapath), []byte(warning)); err == nil && !c.closed.Load() {
		c.sendOutcome(b[:n], false)
	}
}
