package backend

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/migration"
)

// Daemon to daemon: moving a port's stream state at the switchover of a
// live migration.
//
// # Trust
//
// Every daemon of a fleet holds one migration key (MigrationOptions.Key;
// veloced --migration-key, by default the --peer-key). A destination
// accepts stream state only over a connection whose every frame carries an
// HMAC-SHA256 under that key, bound to a fresh random challenge of its
// own, to the source's nonce and to a frame counter: a daemon without the
// key cannot plant sessions, and a recorded hand-off cannot be replayed
// (the challenge differs every time). The destination proves it holds the
// key too, in its first frame, so the source hands state only to a daemon
// of its fleet. The snapshot inside is signed as well
// (migration.EncodeSigned), so the same bytes are safe in the hypervisor's
// own migration stream (vhost-user DEVICE_STATE). A daemon without a key
// neither sends nor accepts state.
//
// # The hand-off
//
// The source, at the switchover (the guest paused, its rings stopped):
// freezes the port — the outbox is held, messages for the port's sinks are
// held in the order they arrive — exports the snapshot and sends it
// (IMPORT). The destination imports it all or nothing and answers. On a
// refusal the source thaws the port: the held messages go to the outbox
// after those already there, and nothing is lost. On success the source
// forwards the held messages, and all that still arrive for the moved
// sinks, to the destination (FORWARD), in order, until COMMIT plus
// MigrationOptions.ForwardGrace; then it releases the port's sessions and
// says END. The destination publishes the imported sinks at once, so its
// channel directory goes to the peers at once (not at the next periodic
// refresh); until END its imported sinks take messages through a filter
// that keeps each source's order and drops the copies a peer sent to both
// daemons while it listed both (a message that comes directly ahead of a
// gap waits for the forwarded ones, or for END). A connection that breaks
// before COMMIT drops the imported state on the destination: the guest
// still runs on the source (velocectl migrate then aborts, and the source
// resumes). After COMMIT a broken connection only ends the filter.
//
// Frames: type u8 | length u32 | body | HMAC-SHA256 (32), but the first
// (HELLO: magic | source nonce), which carries no MAC. The MAC covers a
// direction byte, the frame's counter (u64, from 0 per direction), both
// nonces, the type, the length and the body, under a key derived from the
// migration key.

// MigrationOptions configure a Daemon's part in live migrations.
type MigrationOptions struct {
	// Key is the fleet's migration key, at least migration.MinKeySize
	// bytes (LoadPeerKey reads one); nil: the daemon neither sends nor
	// accepts stream state.
	Key []byte
	// Listen is the TCP address (HOST:PORT) the daemon accepts stream
	// state at; empty: none (it can still send).
	Listen string
	// ForwardGrace is how long the source keeps forwarding after the
	// commit, while the peers move to the destination's directory;
	// default 3 s (three default directory intervals).
	ForwardGrace time.Duration
	// HandoffTimeout bounds a hand-off on the destination, import to
	// commit; past it the imported state is dropped. Default 5 min (a
	// migration under TCG is slow).
	HandoffTimeout time.Duration
	// Dial connects to another daemon's migration listener; default a
	// net.Dialer (tests dial inside a network namespace with it).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Errors of migrations.
var (
	// ErrMigrationDisabled: the daemon has no migration key.
	ErrMigrationDisabled = errors.New("migration not enabled: start veloced with --migration-key (or --peer-key)")
	// ErrUntrusted: the other daemon does not prove the migration key.
	ErrUntrusted = errors.New("migration peer not trusted")
	// ErrMigrating: the port already has a hand-off under way.
	ErrMigrating = errors.New("port already migrating")
	// ErrNoHandoff: commit or abort of a port with no hand-off.
	ErrNoHandoff = errors.New("no hand-off under way for the port")
)

const (
	frameHello     = 1
	frameChallenge = 2
	frameImport    = 3
	frameForward   = 4
	frameCommit    = 5
	frameEnd       = 6
	frameAbort     = 7
	frameResult    = 8

	migMagic     = "VELOCE-MIGRATE/1"
	nonceLen     = 32
	macLen       = sha256.Size
	maxFrameBody = migration.MaxSnapshotSize + 1024
	// maxIncoming bounds the migration connections served at once: before
	// its MAC is checked a frame may make the daemon read (and hold) up to
	// maxFrameBody, so unauthenticated callers must not multiply that.
	maxIncoming = 4
	// maxHeld bounds the messages a frozen port holds.
	maxHeld = 1 << 16
	// maxPending bounds the messages the destination's filter holds.
	maxPending = 1 << 14
)

// migrationState is a Daemon's migrations.
type migrationState struct {
	macKey   []byte
	ln       net.Listener
	exported atomic.Uint64
	imported atomic.Uint64
	rejected atomic.Uint64

	mu       sync.Mutex
	out      map[string]*outMove // +checklocks:mu
	incoming map[string]bool     // +checklocks:mu
	conns    map[net.Conn]bool   // +checklocks:mu
}

func deriveMACKey(key []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("veloce migration transfer v1"))
	return m.Sum(nil)
}

// startMigration opens the migration listener (when configured); Start
// calls it.
func (d *Daemon) startMigration(ctx context.Context) error {
	mo := &d.opts.Migration
	if mo.ForwardGrace <= 0 {
		mo.ForwardGrace = 3 * time.Second
	}
	if mo.HandoffTimeout <= 0 {
		mo.HandoffTimeout = 5 * time.Minute
	}
	d.mig.mu.Lock()
	d.mig.out, d.mig.incoming, d.mig.conns = map[string]*outMove{}, map[string]bool{}, map[net.Conn]bool{}
	d.mig.mu.Unlock()
	if mo.Key != nil {
		if len(mo.Key) < migration.MinKeySize {
			return fmt.Errorf("migration key: %d bytes, want at least %d", len(mo.Key), migration.MinKeySize)
		}
		d.mig.macKey = deriveMACKey(mo.Key)
	}
	if mo.Listen == "" {
		return nil
	}
	if mo.Key == nil {
		return fmt.Errorf("--migration-listen %s: %w", mo.Listen, ErrMigrationDisabled)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", mo.Listen)
	if err != nil {
		return fmt.Errorf("migration listener: %w", err)
	}
	d.mig.ln = ln
	d.life.Cleanup(func() {
		ln.Close()
		d.mig.mu.Lock()
		for c := range d.mig.conns {
			c.Close()
		}
		d.mig.mu.Unlock()
	})
	d.log.Info("accepting migrations", "listen", ln.Addr().String())
	d.life.Go(func(ctx context.Context) error {
		go func() { <-ctx.Done(); ln.Close() }()
		var wg sync.WaitGroup
		defer wg.Wait()
		slots := make(chan struct{}, maxIncoming)
		for {
			c, err := ln.Accept()
			if err != nil {
				if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
					return nil
				}
				time.Sleep(10 * time.Millisecond)
				continue
			}
			select {
			case slots <- struct{}{}:
			default:
				d.mig.rejected.Add(1)
				d.log.Warn("incoming migration refused: too many at once", "from", c.RemoteAddr().String(), "max", maxIncoming)
				c.Close()
				continue
			}
			d.mig.mu.Lock()
			d.mig.conns[c] = true
			d.mig.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-slots }()
				defer func() {
					c.Close()
					d.mig.mu.Lock()
					delete(d.mig.conns, c)
					d.mig.mu.Unlock()
				}()
				if err := d.serveMigration(ctx, c); err != nil {
					d.log.Warn("incoming migration failed", "from", c.RemoteAddr().String(), "err", err)
				}
			}()
		}
	})
	return nil
}

// MigrationAddr returns the migration listener's address, nil without one.
func (d *Daemon) MigrationAddr() net.Addr {
	if d.mig.ln == nil {
		return nil
	}
	return d.mig.ln.Addr()
}

// port returns the port called name, or nil.
func (d *Daemon) port(name string) *Port {
	for _, p := range d.portList() {
		if p.Name() == name {
			return p
		}
	}
	return nil
}

// --- framing ---

// frameConn is one side of a migration connection.
type frameConn struct {
	c       net.Conn
	r       *bufio.Reader
	w       *bufio.Writer // +checklocks:wmu
	key     []byte
	nonceS  []byte
	nonceD  []byte
	outDir  byte   // 'S' from the source, 'D' from the destination
	sendCtr uint64 // +checklocks:wmu
	recvCtr uint64 // the reader's own
	wmu     sync.Mutex
	scratch [5]byte // +checklocks:wmu
}

func newFrameConn(c net.Conn, key []byte, outDir byte) *frameConn {
	return &frameConn{c: c, r: bufio.NewReaderSize(c, 64<<10), w: bufio.NewWriterSize(c, 64<<10), key: key, outDir: outDir}
}

func (f *frameConn) mac(dir byte, ctr uint64, typ byte, body []byte) []byte {
	m := hmac.New(sha256.New, f.key)
	var h [1 + 8 + 1 + 4]byte
	h[0] = dir
	binary.LittleEndian.PutUint64(h[1:], ctr)
	h[9] = typ
	binary.LittleEndian.PutUint32(h[10:], uint32(len(body)))
	m.Write(h[:1+8])
	m.Write(f.nonceS)
	m.Write(f.nonceD)
	m.Write(h[9:])
	m.Write(body)
	return m.Sum(nil)
}

// write sends a frame (authenticated unless typ is frameHello); flush
// says whether to flush at once.
func (f *frameConn) write(typ byte, body []byte, flush bool) error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	f.scratch[0] = typ
	binary.LittleEndian.PutUint32(f.scratch[1:], uint32(len(body)))
	f.w.Write(f.scratch[:])
	f.w.Write(body)
	if typ != frameHello {
		f.w.Write(f.mac(f.outDir, f.sendCtr, typ, body))
		f.sendCtr++
	}
	if flush {
		return f.w.Flush()
	}
	return nil
}

func (f *frameConn) flush() error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	return f.w.Flush()
}

// read receives a frame; every frame but HELLO must carry a valid MAC
// (ErrUntrusted otherwise).
func (f *frameConn) read(deadline time.Time) (byte, []byte, error) {
	f.c.SetReadDeadline(deadline)
	var h [5]byte
	if _, err := io.ReadFull(f.r, h[:]); err != nil {
		return 0, nil, err
	}
	typ, n := h[0], binary.LittleEndian.Uint32(h[1:])
	if n > maxFrameBody {
		return 0, nil, fmt.Errorf("frame of %d bytes: %w", n, migration.ErrTooLarge)
	}
	if typ == frameHello && n != uint32(len(migMagic)+nonceLen) {
		return 0, nil, fmt.Errorf("hello of %d bytes: %w", n, ErrUntrusted)
	}
	// The body grows as its bytes arrive: a caller that claims 64 MiB and
	// sends little costs little (the MAC is checked only after it).
	var buf bytes.Buffer
	buf.Grow(int(min(n, 64<<10)))
	if _, err := io.CopyN(&buf, f.r, int64(n)); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	body := buf.Bytes()
	if typ == frameHello {
		return typ, body, nil
	}
	var tag [macLen]byte
	if _, err := io.ReadFull(f.r, tag[:]); err != nil {
		return 0, nil, err
	}
	in := byte('S')
	if f.outDir == 'S' {
		in = 'D'
	}
	if !hmac.Equal(tag[:], f.mac(in, f.recvCtr, typ, body)) {
		return 0, nil, fmt.Errorf("frame %d: bad MAC (another key, or a replay): %w", f.recvCtr, ErrUntrusted)
	}
	f.recvCtr++
	return typ, body, nil
}

func putStr(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func getStr(b []byte) (string, []byte, error) {
	if len(b) < 2 {
		return "", nil, migration.ErrTruncated
	}
	n := int(binary.LittleEndian.Uint16(b))
	if len(b) < 2+n {
		return "", nil, migration.ErrTruncated
	}
	return string(b[2 : 2+n]), b[2+n:], nil
}

func resultBody(err error) []byte {
	if err == nil {
		return []byte{0}
	}
	msg := err.Error()
	if len(msg) > 4096 {
		msg = msg[:4096]
	}
	return append([]byte{1}, msg...)
}

// remoteError is a refusal the other daemon reported.
type remoteError struct{ msg string }

func (e *remoteError) Error() string { return "destination daemon refused: " + e.msg }

func parseResult(body []byte) error {
	if len(body) == 0 {
		return &remoteError{"empty result"}
	}
	if body[0] == 0 {
		return nil
	}
	return &remoteError{string(body[1:])}
}

// --- source side ---

// outMove is a port's outgoing hand-off.
type outMove struct {
	d    *Daemon
	p    *Port
	fc   *frameConn
	kick chan struct{}

	mu sync.Mutex
	// state: moveHolding (freeze to the destination's answer),
	// moveForwarding, moveResumed (thawed: held messages went to the
	// outbox), moveDone.
	state      int           // +checklocks:mu
	held       []heldMessage // +checklocks:mu
	forwarded  uint64        // +checklocks:mu
	heldDrops  uint64        // +checklocks:mu
	committing bool          // +checklocks:mu
	sendErr    error         // +checklocks:mu
	fwdDone    chan struct{} // closed when the forwarder returned
	stop       context.CancelFunc
}

const (
	moveHolding = iota
	moveForwarding
	moveResumed
	moveDone
)

type heldMessage struct {
	sk          *Sink
	source, seq uint64
	payload     []byte
}

// hold takes a message for one of the port's sinks while it migrates.
func (m *outMove) hold(p *Port, sk *Sink, source, seq uint64, payload []byte) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch m.state {
	case moveResumed:
		return p.deliverOutbox(sk, source, seq, payload)
	case moveDone:
		return false
	}
	if len(m.held) >= maxHeld {
		m.heldDrops++
		return false
	}
	m.held = append(m.held, heldMessage{sk: sk, source: source, seq: seq, payload: clone(payload)})
	if m.state == moveForwarding {
		select {
		case m.kick <- struct{}{}:
		default:
		}
	}
	return true
}

// resume thaws the port: the held messages go to the outbox, after the
// frames already there, and from then on messages go there directly.
func (m *outMove) resume() {
	m.mu.Lock()
	m.state = moveResumed
	for _, h := range m.held {
		if !m.p.deliverOutbox(h.sk, h.source, h.seq, h.payload) {
			h.sk.dropped.Add(1)
		}
	}
	m.held = nil
	m.mu.Unlock()
	m.p.thaw()
}

// forward sends the held messages to the destination until ctx ends,
// then once more.
func (m *outMove) forward(ctx context.Context) {
	defer close(m.fwdDone)
	for {
		done := false
		select {
		case <-ctx.Done():
			done = true
		case <-m.kick:
		}
		m.sendHeld()
		if done {
			return
		}
	}
}

// sendHeld forwards what is held.
func (m *outMove) sendHeld() {
	m.mu.Lock()
	batch := m.held
	m.held = nil
	m.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	var err error
	buf := make([]byte, 0, 2048)
	for _, h := range batch {
		buf = buf[:0]
		buf = binary.LittleEndian.AppendUint32(buf, h.sk.session.ID)
		buf = binary.LittleEndian.AppendUint32(buf, h.sk.ID)
		buf = binary.LittleEndian.AppendUint64(buf, h.source)
		buf = binary.LittleEndian.AppendUint64(buf, h.seq)
		buf = append(buf, h.payload...)
		if err = m.fc.write(frameForward, buf, false); err != nil {
			break
		}
	}
	if err == nil {
		err = m.fc.flush()
	}
	m.mu.Lock()
	if err != nil && m.sendErr == nil {
		m.sendErr = err
	}
	if err == nil {
		m.forwarded += uint64(len(batch))
	}
	m.mu.Unlock()
}

// MigrateOut hands port's stream state to the daemon whose migration
// listener is at dest, into its port destPort (default port): see the
// comment at the top of migrate.go. It returns once the destination has
// imported the state, or with the error that kept it from doing so (the
// port then runs here as before, nothing lost). Errors wrap
// ErrMigrationDisabled, ErrNoPort, ErrMigrating, ErrUntrusted or carry
// the destination's refusal.
func (d *Daemon) MigrateOut(ctx context.Context, port, dest, destPort string) (control.MigrateOutResult, error) {
	res := control.MigrateOutResult{Port: port}
	fail := func(err error) (control.MigrateOutResult, error) {
		return res, fmt.Errorf("migrate port %s to %s: %w", port, dest, err)
	}
	if d.mig.macKey == nil {
		return fail(ErrMigrationDisabled)
	}
	if destPort == "" {
		destPort = port
	}
	p := d.port(port)
	if p == nil {
		return fail(ErrNoPort)
	}
	if p.rt == nil {
		return fail(ErrNoRuntime)
	}
	d.mig.mu.Lock()
	if d.mig.out[port] != nil {
		d.mig.mu.Unlock()
		return fail(fmt.Errorf("%w: commit or abort it first (velocectl migrate does)", ErrMigrating))
	}
	m := &outMove{d: d, p: p, kick: make(chan struct{}, 1), fwdDone: make(chan struct{})}
	d.mig.out[port] = m
	d.mig.mu.Unlock()
	release := func() {
		d.mig.mu.Lock()
		delete(d.mig.out, port)
		d.mig.mu.Unlock()
	}
	deadline := time.Now().Add(30 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	dial := d.opts.Migration.Dial
	if dial == nil {
		var dialer net.Dialer
		dial = dialer.DialContext
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	c, err := dial(dctx, "tcp", dest)
	cancel()
	if err != nil {
		release()
		return fail(fmt.Errorf("reach the destination's migration listener: %w (is its veloced started with --migration-listen?)", err))
	}
	stopWatch := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) }) // a cancelled request ends the hand-off
	defer stopWatch()
	fc := newFrameConn(c, d.mig.macKey, 'S')
	m.fc = fc
	closeFail := func(err error) (control.MigrateOutResult, error) {
		c.Close()
		release()
		return fail(err)
	}
	fc.nonceS = make([]byte, nonceLen)
	rand.Read(fc.nonceS)
	c.SetWriteDeadline(deadline)
	if err := fc.write(frameHello, append([]byte(migMagic), fc.nonceS...), true); err != nil {
		return closeFail(err)
	}
	typ, body, err := fc.readChallenge(deadline)
	if err != nil {
		return closeFail(err)
	}
	_ = typ
	_ = body

	start := time.Now()
	p.freeze(m)
	snap, err := p.Export()
	var b []byte
	if err == nil {
		b, err = migration.EncodeSigned(snap, d.opts.Migration.Key)
	}
	if err != nil {
		m.resume()
		return closeFail(err)
	}
	msg := putStr(nil, destPort)
	msg = putStr(msg, p.opts.Tenant)
	msg = append(msg, b...)
	if err := fc.write(frameImport, msg, true); err != nil {
		m.resume()
		return closeFail(fmt.Errorf("send the snapshot: %w", err))
	}
	typ, body, err = fc.read(deadline)
	if err == nil && typ != frameResult {
		err = fmt.Errorf("destination answered frame type %d, want a result", typ)
	}
	if err == nil {
		err = parseResult(body)
	}
	if err != nil {
		m.resume()
		return closeFail(err)
	}
	c.SetDeadline(time.Time{})
	res.HandoffMicros = time.Since(start).Microseconds()
	res.Bytes, res.Sessions, res.Streams, res.Sources, res.Sinks = len(b), len(snap.Sessions), len(snap.Streams), len(snap.Sources), len(snap.Sinks)
	for _, sk := range snap.Sinks {
		res.Queued += len(sk.Queued)
	}
	fctx, stop := context.WithCancel(context.Background())
	m.stop = stop
	m.mu.Lock()
	m.state = moveForwarding
	m.mu.Unlock()
	go m.forward(fctx)
	m.kick <- struct{}{}
	d.mig.exported.Add(1)
	d.log.Info("port state handed over", "port", port, "destination", dest, "bytes", len(b), "sessions", res.Sessions,
		"queued", res.Queued, "handoff", time.Since(start))
	return res, nil
}

// readChallenge reads the destination's challenge, whose MAC proves it
// holds the key.
func (f *frameConn) readChallenge(deadline time.Time) (byte, []byte, error) {
	// The MAC covers nonceD, which is the body: read it raw first.
	f.c.SetReadDeadline(deadline)
	var h [5]byte
	if _, err := io.ReadFull(f.r, h[:]); err != nil {
		return 0, nil, fmt.Errorf("read the destination's challenge: %w", err)
	}
	if h[0] != frameChallenge || binary.LittleEndian.Uint32(h[1:]) != nonceLen {
		return 0, nil, fmt.Errorf("destination's first frame is not a challenge: %w", ErrUntrusted)
	}
	nonce := make([]byte, nonceLen)
	var tag [macLen]byte
	if _, err := io.ReadFull(f.r, nonce); err != nil {
		return 0, nil, err
	}
	if _, err := io.ReadFull(f.r, tag[:]); err != nil {
		return 0, nil, err
	}
	f.nonceD = nonce
	if !hmac.Equal(tag[:], f.mac('D', 0, frameChallenge, nonce)) {
		return 0, nil, fmt.Errorf("the destination does not hold the migration key: %w", ErrUntrusted)
	}
	f.recvCtr = 1
	return frameChallenge, nonce, nil
}

// MigrateCommit ends port's hand-off once the VM runs on the destination:
// the destination keeps the state for good, this daemon forwards for
// ForwardGrace more (the peers move to the destination meanwhile), then
// releases the port's sessions. It returns how many messages it
// forwarded.
func (d *Daemon) MigrateCommit(ctx context.Context, port string) (control.MigrateCommitResult, error) {
	res := control.MigrateCommitResult{Port: port}
	d.mig.mu.Lock()
	m := d.mig.out[port]
	d.mig.mu.Unlock()
	if m == nil {
		return res, fmt.Errorf("commit migration of port %s: %w", port, ErrNoHandoff)
	}
	m.mu.Lock()
	ok := m.state == moveForwarding && !m.committing
	m.committing = true
	m.mu.Unlock()
	if !ok {
		return res, fmt.Errorf("commit migration of port %s: %w: the hand-off is not done, or already ending", port, ErrMigrating)
	}
	// The sinks' channels move to the destination's entry in etcd in
	// one transaction, which the destination writes (fleetdir.go).
	var body []byte
	rm := m.p.rt.remote
	if leaving := rm.fleetLeaving(m.p); rm != nil && rm.registry.Load() != nil {
		body = commitBody(m.p.rt.opts.NodeID, leaving)
	}
	defer rm.fleetLeft() // after the sessions closed
	err := m.fc.write(frameCommit, body, true)
	select {
	case <-time.After(d.opts.Migration.ForwardGrace):
	case <-ctx.Done():
	}
	// The sessions go: the sinks leave the channel table (the peers get
	// this daemon's directory without them at once).
	m.p.rt.closeSessions(m.p)
	for m.p.inflight.Load() != 0 {
		time.Sleep(10 * time.Microsecond)
	}
	m.stop()
	<-m.fwdDone
	m.mu.Lock()
	m.state = moveDone
	res.Forwarded = m.forwarded
	if err == nil {
		err = m.sendErr
	}
	m.mu.Unlock()
	if err == nil {
		err = m.fc.write(frameEnd, nil, true)
	}
	if err == nil {
		var typ byte
		var body []byte
		typ, body, err = m.fc.read(time.Now().Add(10 * time.Second))
		if err == nil && typ == frameResult {
			err = parseResult(body)
		}
	}
	m.fc.c.Close()
	m.p.dropSessions() // frames that waited for the old guest
	m.p.thaw()
	d.mig.mu.Lock()
	delete(d.mig.out, port)
	d.mig.mu.Unlock()
	d.log.Info("migration committed", "port", port, "forwarded", res.Forwarded)
	if err != nil {
		// The VM runs on the destination either way; say what was lost.
		return res, fmt.Errorf("commit migration of port %s: forwarding ended early: %w", port, err)
	}
	return res, nil
}

// MigrateAbort undoes port's hand-off: the destination drops what it
// imported, and the port's streams resume here (held messages first).
// Messages already forwarded are the destination's, and lost to the
// guest: abort comes before the guest left, when there are none or few.
func (d *Daemon) MigrateAbort(ctx context.Context, port string) (control.MigrateAbortResult, error) {
	res := control.MigrateAbortResult{Port: port}
	d.mig.mu.Lock()
	m := d.mig.out[port]
	if m != nil {
		m.mu.Lock()
		forwarding := m.state == moveForwarding && !m.committing
		m.mu.Unlock()
		if !forwarding {
			d.mig.mu.Unlock()
			return res, fmt.Errorf("abort migration of port %s: %w: the hand-off is still under way or ending", port, ErrMigrating)
		}
		delete(d.mig.out, port)
	}
	d.mig.mu.Unlock()
	if m == nil {
		return res, fmt.Errorf("abort migration of port %s: %w", port, ErrNoHandoff)
	}
	m.stop()
	<-m.fwdDone
	m.fc.write(frameAbort, nil, true)
	m.fc.c.Close()
	m.resume()
	res.Resumed = true
	d.log.Warn("migration aborted: the port's streams resume here", "port", port)
	return res, nil
}

// --- destination side ---

// inMove filters the messages for a port's imported sinks during the
// hand-off: each (sink, source) is delivered in sequence order, once. It
// is also the port's overflow while the guest is paused: the hand-off
// comes in a burst (the messages held during the downtime), more than the
// outbox holds, so what finds the outbox full waits in the backlog, in
// order, until the guest takes frames again; later messages queue behind
// it.
type inMove struct {
	sinks map[*Sink]bool      // fixed before the inMove is published
	byID  map[[2]uint32]*Sink // session, sink id -> sink; fixed too
	wake  chan struct{}       // the drainer: something is in the backlog

	mu      sync.Mutex
	last    map[sinkSource]uint64 // +checklocks:mu
	pending []heldMessage         // +checklocks:mu
	backlog []heldMessage         // +checklocks:mu
	// ended: END came (or the connection went after the commit); the
	// drainer unpublishes the inMove once the backlog is empty.
	ended bool // +checklocks:mu
	// closed: unpublished; messages go straight to the outbox.
	closed   bool   // +checklocks:mu
	dups     uint64 // +checklocks:mu
	fwd      uint64 // +checklocks:mu
	overflow uint64 // +checklocks:mu
}

// maxBacklog bounds the backlog (a minute of a busy stream's messages).
const maxBacklog = 1 << 17

type sinkSource struct {
	sk     *Sink
	source uint64
}

func (h *inMove) owns(sk *Sink) bool { return h.sinks[sk] }

// direct takes a message a peer (or a local source) sent to this daemon.
func (h *inMove) direct(p *Port, sk *Sink, source, seq uint64, payload []byte) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return p.deliverOutbox(sk, source, seq, payload)
	}
	if h.ended && len(h.backlog) > 0 {
		h.enqueueLocked(p, sk, source, seq, payload)
		return true
	}
	k := sinkSource{sk, source}
	last, ok := h.last[k]
	switch {
	case h.ended:
		h.enqueueLocked(p, sk, source, seq, payload)
		return true
	case ok && seq <= last:
		h.dups++
		return true
	case ok && seq == last+1, len(h.pending) >= maxPending:
		h.deliverLocked(p, k, seq, payload)
		return true
	}
	h.pending = append(h.pending, heldMessage{sk: sk, source: source, seq: seq, payload: clone(payload)})
	return true
}

// forwarded takes a message the source daemon forwarded.
func (h *inMove) forwarded(p *Port, session, sink uint32, source, seq uint64, payload []byte) {
	sk := h.byID[[2]uint32{session, sink}]
	if sk == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fwd++
	k := sinkSource{sk, source}
	if last, ok := h.last[k]; ok && seq <= last {
		h.dups++
		return
	}
	sk.delivered.Add(1)
	h.deliverLocked(p, k, seq, payload)
}

// enqueueLocked puts a message in the outbox, or behind the backlog.
//
// +checklocks:h.mu
func (h *inMove) enqueueLocked(p *Port, sk *Sink, source, seq uint64, payload []byte) {
	if h.closed || sk.closed.Load() || len(h.backlog) == 0 && p.deliverOutbox(sk, source, seq, payload) {
		return
	}
	if len(h.backlog) >= maxBacklog {
		h.overflow++
		sk.dropped.Add(1)
		return
	}
	h.backlog = append(h.backlog, heldMessage{sk: sk, source: source, seq: seq, payload: clone(payload)})
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// deliverLocked delivers and then releases the pending messages that
// follow in k's sequence.
//
// +checklocks:h.mu
func (h *inMove) deliverLocked(p *Port, k sinkSource, seq uint64, payload []byte) {
	h.enqueueLocked(p, k.sk, k.source, seq, payload)
	h.last[k] = seq
	for progress := true; progress; {
		progress = false
		for i := 0; i < len(h.pending); i++ {
			m := h.pending[i]
			if m.sk != k.sk || m.source != k.source || m.seq > h.last[k]+1 {
				continue
			}
			h.pending = slices.Delete(h.pending, i, i+1)
			i--
			if m.seq <= h.last[k] {
				h.dups++
				continue
			}
			m.sk.delivered.Add(1)
			h.enqueueLocked(p, m.sk, m.source, m.seq, m.payload)
			h.last[k] = m.seq
			progress = true
		}
	}
}

// drain moves the backlog into the outbox as the guest frees room, until
// the hand-off ended and the backlog is empty (then it unpublishes the
// inMove) or the inMove was dropped.
func (h *inMove) drain(p *Port) {
	for {
		h.mu.Lock()
		for len(h.backlog) > 0 {
			m := &h.backlog[0]
			// A sink closed meanwhile (its guest gone, or moved on
			// again) gets nothing: its frames would sit in the outbox
			// as stale state that blocks the port's next import.
			if !m.sk.closed.Load() && !p.deliverOutbox(m.sk, m.source, m.seq, m.payload) {
				break
			}
			h.backlog[0] = heldMessage{}
			h.backlog = h.backlog[1:]
		}
		if len(h.backlog) == 0 {
			h.backlog = nil
		}
		busy := len(h.backlog) > 0
		finished := h.ended && !busy
		if finished || p.handoff.Load() != h {
			h.closed = true
			p.handoff.CompareAndSwap(h, nil)
			h.mu.Unlock()
			return
		}
		h.mu.Unlock()
		if busy {
			time.Sleep(200 * time.Microsecond)
			continue
		}
		select {
		case <-h.wake:
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// finish delivers what is pending, in each source's order, and ends the
// filter (the backlog drains on).
func (h *inMove) finish(p *Port) {
	h.mu.Lock()
	defer h.mu.Unlock()
	pending := h.pending
	slices.SortStableFunc(pending, func(a, b heldMessage) int { return cmp.Compare(a.seq, b.seq) })
	for _, m := range pending {
		k := sinkSource{m.sk, m.source}
		if last, ok := h.last[k]; ok && m.seq <= last {
			h.dups++
			continue
		}
		m.sk.delivered.Add(1)
		h.enqueueLocked(p, m.sk, m.source, m.seq, m.payload)
		h.last[k] = m.seq
	}
	h.pending = nil
	h.ended = true
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// drop unpublishes the inMove at once (the import is undone).
func (h *inMove) drop(p *Port) {
	h.mu.Lock()
	h.closed = true
	h.backlog, h.pending = nil, nil
	p.handoff.CompareAndSwap(h, nil)
	h.mu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// serveMigration runs one incoming hand-off.
func (d *Daemon) serveMigration(ctx context.Context, c net.Conn) error {
	fc := newFrameConn(c, d.mig.macKey, 'D')
	reject := func(err error) error {
		d.mig.rejected.Add(1)
		return err
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	typ, body, err := fc.read(time.Now().Add(10 * time.Second))
	if err != nil {
		return reject(fmt.Errorf("read hello: %w", err))
	}
	if typ != frameHello || len(body) != len(migMagic)+nonceLen || string(body[:len(migMagic)]) != migMagic {
		return reject(fmt.Errorf("not a veloce migration hello: %w", ErrUntrusted))
	}
	fc.nonceS = body[len(migMagic):]
	fc.nonceD = make([]byte, nonceLen)
	rand.Read(fc.nonceD)
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := fc.write(frameChallenge, fc.nonceD, true); err != nil {
		return reject(err)
	}
	fc.recvCtr = 0
	typ, body, err = fc.read(time.Now().Add(time.Minute))
	if err != nil {
		return reject(fmt.Errorf("read the snapshot: %w", err))
	}
	if typ != frameImport {
		return reject(fmt.Errorf("frame type %d before the snapshot", typ))
	}
	answer := func(err error) error {
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		return fc.write(frameResult, resultBody(err), true)
	}
	p, h, err := d.importFrame(body)
	if err != nil {
		answer(err)
		return reject(err)
	}
	d.mig.mu.Lock()
	d.mig.incoming[p.Name()] = true
	d.mig.mu.Unlock()
	leave := func() {
		d.mig.mu.Lock()
		delete(d.mig.incoming, p.Name())
		d.mig.mu.Unlock()
	}
	defer leave()
	if err := answer(nil); err != nil {
		if p.rt != nil {
			p.rt.remote.fleetHide(p, false)
		}
		h.drop(p)
		p.dropSessions()
		return fmt.Errorf("answer the import: %w: imported state dropped", err)
	}
	d.mig.imported.Add(1)
	committed := false
	var rm *remote
	if p.rt != nil {
		rm = p.rt.remote
	}
	moved := make(chan struct{}) // the directory move, closed when done
	close(moved)
	broke := func(err error) error {
		if committed {
			<-moved
			h.finish(p)
			return nil // the source went early: the state is ours
		}
		rm.fleetHide(p, false)
		h.drop(p)
		p.dropSessions()
		return fmt.Errorf("the source daemon went before committing (%w): imported state of port %s dropped", err, p.Name())
	}
	deadline := time.Now().Add(d.opts.Migration.HandoffTimeout)
	for {
		typ, body, err := fc.read(deadline)
		if err != nil {
			return broke(err)
		}
		switch typ {
		case frameForward:
			if len(body) < 24 {
				return broke(fmt.Errorf("short forward frame: %w", migration.ErrTruncated))
			}
			le := binary.LittleEndian
			h.forwarded(p, le.Uint32(body), le.Uint32(body[4:]), le.Uint64(body[8:]), le.Uint64(body[16:]), body[24:])
		case frameCommit:
			if committed {
				return broke(errors.New("a second commit frame"))
			}
			committed = true
			deadline = time.Now().Add(d.opts.Migration.ForwardGrace*4 + time.Minute)
			from, leaving, ask, err := parseCommitBody(body)
			if err != nil {
				d.log.Warn("migration commit: the directory move is not understood; ordered updates instead", "port", p.Name(), "err", err)
				ask = false
			}
			moved = make(chan struct{})
			go func() {
				defer close(moved)
				mctx, cancel := context.WithTimeout(ctx, time.Minute)
				defer cancel()
				if asked, err := rm.fleetMoveIn(mctx, p, from, leaving, ask); err != nil {
					d.log.Warn("migration commit: the sinks' move in etcd failed; the source drops them after the forwarding grace",
						"port", p.Name(), "source node", from, "err", err)
				} else if asked {
					d.log.Info("migration commit: the sinks moved in etcd in one transaction", "port", p.Name(), "source node", from, "channels", len(leaving))
				}
			}()
		case frameEnd:
			<-moved
			h.finish(p)
			h.mu.Lock()
			d.log.Info("incoming migration done", "port", p.Name(), "forwarded", h.fwd, "duplicates", h.dups, "backlog", len(h.backlog), "overflow", h.overflow)
			h.mu.Unlock()
			leave() // before the answer: the source's caller may look next
			answer(nil)
			return nil
		case frameAbort:
			rm.fleetHide(p, false)
			h.drop(p)
			p.dropSessions()
			d.log.Warn("incoming migration aborted by the source: imported state dropped", "port", p.Name())
			return nil
		default:
			return broke(fmt.Errorf("unexpected frame type %d", typ))
		}
	}
}

// importFrame imports an IMPORT frame's snapshot into its port, with the
// hand-off filter in place before the sinks are published.
func (d *Daemon) importFrame(body []byte) (*Port, *inMove, error) {
	name, rest, err := getStr(body)
	if err != nil {
		return nil, nil, err
	}
	tenant, snap, err := getStr(rest)
	if err != nil {
		return nil, nil, err
	}
	p := d.port(name)
	if p == nil {
		return nil, nil, fmt.Errorf("port %s: %w: create it first (velocectl migrate does, with --dest-socket)", name, ErrNoPort)
	}
	if tenant != p.opts.Tenant {
		return nil, nil, fmt.Errorf("port %s: %w: the guest is tenant %q there, port %s here is tenant %q: give it the same --tenant",
			name, ErrSnapshotMismatch, tenant, name, p.opts.Tenant)
	}
	s, err := migration.DecodeSigned(snap, d.opts.Migration.Key, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("port %s: %w", name, err)
	}
	h := &inMove{byID: map[[2]uint32]*Sink{}, last: map[sinkSource]uint64{}, wake: make(chan struct{}, 1)}
	var rm *remote
	if p.rt != nil {
		rm = p.rt.remote
	}
	rm.fleetHide(p, true) // out of the etcd entry until the commit's move (fleetdir.go)
	_, err = p.importState(s, func(sinks map[*Sink]bool) {
		h.sinks = sinks
		for sk := range sinks {
			h.byID[[2]uint32{sk.session.ID, sk.ID}] = sk
		}
		h.mu.Lock()
		for i := range s.Sinks {
			for _, m := range s.Sinks[i].Queued {
				if sk := h.byID[[2]uint32{streamSession(s, s.Sinks[i].Stream), s.Sinks[i].ID}]; sk != nil {
					h.last[sinkSource{sk, m.Source}] = m.Seq
				}
			}
		}
		h.mu.Unlock()
		p.handoff.Store(h)
	})
	if err != nil {
		rm.fleetHide(p, false)
		return nil, nil, err
	}
	go h.drain(p) // ends with the hand-off (finish or drop)
	return p, h, nil
}

func streamSession(s *migration.PortSnapshot, stream uint32) uint32 {
	for _, st := range s.Streams {
		if st.ID == stream {
			return st.Session
		}
	}
	return 0
}

// --- the control API ---

var _ control.MigrationService = daemonService{}

func (s daemonService) Migration(context.Context) (control.MigrationInfo, error) {
	d := s.d
	info := control.MigrationInfo{Enabled: d.mig.macKey != nil, Exported: d.mig.exported.Load(), Imported: d.mig.imported.Load(),
		Rejected: d.mig.rejected.Load(), Outgoing: []string{}, Incoming: []string{}}
	if a := d.MigrationAddr(); a != nil {
		info.Listen = a.String()
	}
	d.mig.mu.Lock()
	for name := range d.mig.out {
		info.Outgoing = append(info.Outgoing, name)
	}
	for name := range d.mig.incoming {
		info.Incoming = append(info.Incoming, name)
	}
	d.mig.mu.Unlock()
	sort.Strings(info.Outgoing)
	sort.Strings(info.Incoming)
	return info, nil
}

func (s daemonService) MigratePrepare(_ context.Context, req control.MigratePrepareRequest) (control.MigratePrepareResult, error) {
	d := s.d
	var res control.MigratePrepareResult
	if d.mig.macKey == nil || d.mig.ln == nil {
		return res, statusError{fmt.Errorf("prepare port %s: this daemon does not accept migrations: start it with --migration-key and --migration-listen", req.Port), control.ErrBadRequest}
	}
	res.Listen = d.mig.ln.Addr().String()
	p := d.port(req.Port)
	if p == nil {
		if req.Socket == "" {
			return res, statusError{fmt.Errorf("prepare port %s: %w: give --dest-socket to create it", req.Port, ErrNoPort), control.ErrNotFound}
		}
		info, err := d.AddPort(PortOptions{Name: req.Port, Socket: req.Socket, Client: req.Client, QueuePairs: req.Queues})
		if err != nil {
			return res, apiError(err)
		}
		res.Port, res.Created = info, true
		return res, nil
	}
	if p.rt == nil {
		return res, statusError{fmt.Errorf("prepare port %s: %w", req.Port, ErrNoRuntime), control.ErrBadRequest}
	}
	if n := p.sessions.Len(); n > 0 {
		return res, statusError{fmt.Errorf("prepare port %s: %w: %d sessions (a guest uses it)", req.Port, ErrPortBusy, n), control.ErrBadRequest}
	}
	res.Port = p.Info()
	return res, nil
}

func (s daemonService) MigrateOut(ctx context.Context, req control.MigrateOutRequest) (control.MigrateOutResult, error) {
	res, err := s.d.MigrateOut(ctx, req.Port, req.Destination, req.DestinationPort)
	return res, migrationAPIError(err)
}

func (s daemonService) MigrateCommit(ctx context.Context, req control.MigratePortRequest) (control.MigrateCommitResult, error) {
	res, err := s.d.MigrateCommit(ctx, req.Port)
	return res, migrationAPIError(err)
}

func (s daemonService) MigrateAbort(ctx context.Context, req control.MigratePortRequest) (control.MigrateAbortResult, error) {
	res, err := s.d.MigrateAbort(ctx, req.Port)
	return res, migrationAPIError(err)
}

func migrationAPIError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNoPort), errors.Is(err, ErrNoHandoff):
		return statusError{err, control.ErrNotFound}
	case errors.Is(err, ErrMigrationDisabled), errors.Is(err, ErrMigrating), errors.Is(err, ErrNoRuntime):
		return statusError{err, control.ErrBadRequest}
	}
	return err
}
