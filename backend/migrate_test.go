package backend

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/guestproto"
)

// migrationDaemon starts a daemon with one port "vm" (no frontend), the
// migration key and a listener on loopback.
func migrationDaemon(t testing.TB, key []byte) *Daemon {
	t.Helper()
	dir := t.TempDir()
	opts := DaemonOptions{ControlSocket: filepath.Join(dir, "control.sock"),
		Ports:     []PortOptions{{Name: "vm", Socket: filepath.Join(dir, "vm.sock")}},
		Runtime:   RuntimeOptions{SharedChannels: []uint32{5}},
		Migration: MigrationOptions{Key: key, ForwardGrace: 200 * time.Millisecond, HandoffTimeout: time.Minute}}
	if key != nil {
		opts.Migration.Listen = "127.0.0.1:0"
	}
	d, err := NewDaemon(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// guestCaller returns a control-request function for d's port vm, as
// guestPortOn does.
func guestCaller(t *testing.T, p *Port, guest netip.AddrPort) func(*guestproto.Message) guestproto.Result {
	t.Helper()
	reply := make([]byte, 4096)
	return func(m *guestproto.Message) guestproto.Result {
		t.Helper()
		var b [64]byte
		n, err := guestproto.PutRequest(b[:], m)
		if err != nil {
			t.Fatal(err)
		}
		rn := p.handleGuest(guest, b[:n], reply)
		var r guestproto.Message
		if rn == 0 || guestproto.Parse(reply[DatagramHeaderLen:rn], &r) != nil {
			t.Fatalf("no reply to %v", m.Type)
		}
		return r.Result
	}
}

// migWait polls cond until it holds or a minute passes.
func migWait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestMigrateOutHandsOverAndForwards: the source daemon hands a port's
// state to the destination over the authenticated connection; messages
// that still reach the source for the moved sink are forwarded; copies a
// peer sends to both daemons are dropped; the guest's sink sees every
// message once, in order. Afterwards the destination lists the streams
// and the source does not.
func TestMigrateOutHandsOverAndForwards(t *testing.T) {
	guest := netip.MustParseAddrPort("169.254.77.2:40000")
	src, dst := migrationDaemon(t, testMigrationKey), migrationDaemon(t, testMigrationKey)
	ps, pd := src.port("vm"), dst.port("vm")
	_, host := guestState(t, src.rt, ps, guestCaller(t, ps, guest), 5, 100)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	res, err := src.MigrateOut(ctx, "vm", dst.MigrationAddr().String(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("hand-off: %+v", res)
	if res.Queued != 100 || res.Sessions != 1 || res.Sinks != 1 || res.Bytes == 0 {
		t.Errorf("hand-off result %+v", res)
	}
	// Messages that still reach the source: forwarded (101..200).
	for i := 100; i < 200; i++ {
		src.rt.Emit(host, []byte{byte(i), 'm'})
	}
	// A peer that lists both daemons sends the destination copies
	// (150..250), some ahead of the forwarded ones.
	sk := func() *Sink {
		for _, s := range pd.sessions.All() {
			for _, k := range s.sinks.All() {
				return k
			}
		}
		return nil
	}()
	if sk == nil {
		t.Fatal("no imported sink on the destination")
	}
	for seq := uint64(150); seq <= 250; seq++ {
		pd.deliver(sk, host.Global, seq, []byte{byte(seq - 1), 'm'})
	}
	// The rest reaches the source too (201..250): duplicates.
	for i := 200; i < 250; i++ {
		src.rt.Emit(host, []byte{byte(i), 'm'})
	}
	cres, err := src.MigrateCommit(ctx, "vm")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("commit: %+v", cres)
	if cres.Forwarded != 150 {
		t.Errorf("forwarded %d, want 150", cres.Forwarded)
	}
	migWait(t, "the destination's filter to end", func() bool { return pd.handoff.Load() == nil })
	got := drainOutbox(t, pd)
	if len(got) != 250 {
		t.Errorf("guest got %d messages, want 250", len(got))
	}
	for i, m := range got {
		if m.Seq != uint64(i+1) || m.Source != host.Global || m.Payload[0] != byte(i) {
			t.Fatalf("message %d: seq %d source %#x payload %v", i, m.Seq, m.Source, m.Payload)
		}
	}
	if s := src.Streams(); len(s) != 1 || s[0].Endpoint != "host" { // only the host session's stream
		t.Errorf("source still lists: %+v", s)
	}
	if s := dst.Streams(); len(s) != 1 || s[0].Endpoint != "vm:vm" || len(s[0].Sinks) != 1 || len(s[0].Sources) != 1 {
		t.Errorf("destination lists: %+v", s)
	}
	if ps.sessions.Len() != 0 || ps.frozen.Load() || ps.moving.Load() != nil {
		t.Errorf("source port after commit: %d sessions, frozen %v", ps.sessions.Len(), ps.frozen.Load())
	}
	mi, _ := daemonService{dst}.Migration(ctx)
	if mi.Imported != 1 || mi.Rejected != 0 {
		t.Errorf("destination migration info %+v", mi)
	}
}

// TestMigrateOutRefusedResumesSource: a destination with another key, a
// daemon without a key, a destination port that is busy: the hand-off is
// refused, nothing is imported, and the source's port runs on with every
// message (those queued before and those held during the attempt).
func TestMigrateOutRefusedResumesSource(t *testing.T) {
	guest := netip.MustParseAddrPort("169.254.77.2:40000")
	src := migrationDaemon(t, testMigrationKey)
	other := migrationDaemon(t, []byte("a key of another fleet, 32 bytes or more!"))
	busy := migrationDaemon(t, testMigrationKey)
	guestCaller(t, busy.port("vm"), guest)(&guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession}})
	ps := src.port("vm")
	_, host := guestState(t, src.rt, ps, guestCaller(t, ps, guest), 1, 10)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	_, err := src.MigrateOut(ctx, "vm", other.MigrationAddr().String(), "")
	if !errors.Is(err, ErrUntrusted) {
		t.Errorf("to a daemon with another key: %v, want ErrUntrusted", err)
	}
	t.Log(err)
	_, err = src.MigrateOut(ctx, "vm", busy.MigrationAddr().String(), "")
	if err == nil {
		t.Errorf("to a busy port: no error")
	}
	t.Log(err)
	nokey := migrationDaemon(t, nil)
	if _, err := nokey.MigrateOut(ctx, "vm", busy.MigrationAddr().String(), ""); !errors.Is(err, ErrMigrationDisabled) {
		t.Errorf("from a daemon without a key: %v", err)
	}
	migWait(t, "rejections counted", func() bool { return other.mig.rejected.Load() == 1 && busy.mig.rejected.Load() == 1 })
	if other.port("vm").sessions.Len() != 0 || len(other.Streams()) != 0 || busy.port("vm").sessions.Len() != 1 {
		t.Errorf("a refused hand-off changed a destination")
	}
	src.rt.Emit(host, []byte{10, 'm'})
	got := drainOutbox(t, ps)
	if len(got) != 11 {
		t.Fatalf("source guest got %d messages after refused hand-offs, want 11", len(got))
	}
	for i, m := range got {
		if m.Seq != uint64(i+1) {
			t.Fatalf("message %d has seq %d", i, m.Seq)
		}
	}
}

// TestMigrateAbortResumesSource: a hand-off that succeeded and is then
// aborted (the hypervisor's migration failed after the switchover): the
// destination drops what it imported, the source runs on, and the
// messages held meanwhile reach the source's guest.
func TestMigrateAbortResumesSource(t *testing.T) {
	guest := netip.MustParseAddrPort("169.254.77.2:40000")
	src, dst := migrationDaemon(t, testMigrationKey), migrationDaemon(t, testMigrationKey)
	ps, pd := src.port("vm"), dst.port("vm")
	_, host := guestState(t, src.rt, ps, guestCaller(t, ps, guest), 1, 10)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := src.MigrateOut(ctx, "vm", dst.MigrationAddr().String(), ""); err != nil {
		t.Fatal(err)
	}
	if pd.sessions.Len() != 1 {
		t.Fatalf("destination did not import")
	}
	if _, err := src.MigrateAbort(ctx, "vm"); err != nil {
		t.Fatal(err)
	}
	migWait(t, "the destination to drop the state", func() bool { return pd.sessions.Len() == 0 && len(dst.Streams()) == 0 })
	src.rt.Emit(host, []byte{10, 'm'})
	if got := drainOutbox(t, ps); len(got) != 11 || got[10].Seq != 11 {
		t.Errorf("source guest after abort: %d messages", len(got))
	}
	if ps.sessions.Len() != 1 || len(src.Streams()) != 2 {
		t.Errorf("source lost its state: %d sessions", ps.sessions.Len())
	}
}

// TestMigrationReplayRejected: the bytes of a recorded hand-off, sent
// again to the destination, do not import: its challenge is new, so
// nothing of the old connection verifies.
func TestMigrationReplayRejected(t *testing.T) {
	guest := netip.MustParseAddrPort("169.254.77.2:40000")
	src, dst := migrationDaemon(t, testMigrationKey), migrationDaemon(t, testMigrationKey)
	ps, pd := src.port("vm"), dst.port("vm")
	guestState(t, src.rt, ps, guestCaller(t, ps, guest), 1, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// A recording proxy between the daemons.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var rec recorder
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		up, err := net.Dial("tcp", dst.MigrationAddr().String())
		if err != nil {
			return
		}
		defer up.Close()
		go io.Copy(c, up)
		io.Copy(io.MultiWriter(up, &rec), c)
	}()
	if _, err := src.MigrateOut(ctx, "vm", ln.Addr().String(), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := src.MigrateAbort(ctx, "vm"); err != nil {
		t.Fatal(err)
	}
	migWait(t, "the destination to drop the state", func() bool { return pd.sessions.Len() == 0 })
	// Replay what the source sent.
	c, err := net.Dial("tcp", dst.MigrationAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Write(rec.bytes())
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	io.Copy(io.Discard, c) // the destination hangs up
	c.Close()
	migWait(t, "the replay to be rejected", func() bool { return dst.mig.rejected.Load() == 1 })
	if pd.sessions.Len() != 0 || len(dst.Streams()) != 0 {
		t.Errorf("a replayed hand-off imported state")
	}
}

type recorder struct {
	mu sync.Mutex
	b  []byte // +checklocks:mu
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.b = append(r.b, p...)
	return len(p), nil
}

func (r *recorder) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]byte(nil), r.b...)
}

// TestMigrateOutBurstExceedsOutbox: the guest is paused through the
// hand-off, so what reaches the destination meanwhile — the queued
// messages and the burst the source held — can be more than the port's
// outbox holds. None is dropped: the rest waits, in order, until the
// guest takes frames again.
func TestMigrateOutBurstExceedsOutbox(t *testing.T) {
	guest := netip.MustParseAddrPort("169.254.77.2:40000")
	src, dst := migrationDaemon(t, testMigrationKey), migrationDaemon(t, testMigrationKey)
	ps, pd := src.port("vm"), dst.port("vm")
	_, host := guestState(t, src.rt, ps, guestCaller(t, ps, guest), 1, 1000)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := src.MigrateOut(ctx, "vm", dst.MigrationAddr().String(), ""); err != nil {
		t.Fatal(err)
	}
	const total = 4000
	for i := 1000; i < total; i++ {
		src.rt.Emit(host, []byte{byte(i), 'm'})
	}
	done := make(chan error, 1)
	go func() { _, err := src.MigrateCommit(ctx, "vm"); done <- err }()
	var got []guestproto.Message
	migWait(t, "every message at the destination's guest", func() bool {
		got = append(got, drainOutbox(t, pd)...)
		return len(got) >= total
	})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i, m := range got {
		if m.Seq != uint64(i+1) {
			t.Fatalf("message %d has seq %d", i, m.Seq)
		}
	}
	migWait(t, "the filter to end", func() bool { return pd.handoff.Load() == nil })
	if s := dst.Streams(); len(s) != 1 || s[0].Sinks[0].Dropped != 0 {
		t.Errorf("destination streams %+v", s)
	}
}

// FuzzMigrationConn feeds a destination's migration listener arbitrary
// bytes from a sender without the key: nothing is ever imported, and
// the daemon neither panics nor hangs (every read has a deadline).
func FuzzMigrationConn(f *testing.F) {
	hello := append([]byte{frameHello, byte(len(migMagic) + nonceLen), 0, 0, 0}, migMagic...)
	hello = append(hello, make([]byte, nonceLen)...)
	f.Add(hello)
	f.Add(append(append([]byte(nil), hello...), frameImport, 4, 0, 0, 0, 1, 2, 3, 4))
	f.Add(append(append([]byte(nil), hello...), frameImport, 0xff, 0xff, 0xff, 0x7f))
	f.Add([]byte{frameImport, 0, 0, 0, 0})
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	d := migrationDaemon(f, testMigrationKey)
	p := d.port("vm")
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer a.Close()
			d.serveMigration(context.Background(), a)
		}()
		go io.Copy(io.Discard, b)
		b.SetWriteDeadline(time.Now().Add(time.Second))
		b.Write(data)
		b.Close()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("serveMigration did not return")
		}
		if p.sessions.Len() != 0 || p.handoff.Load() != nil {
			t.Fatalf("imported from a sender without the key")
		}
	})
}

// TestMigrationListenerBoundsStrangers: before any MAC is checked, a
// caller gets little of the destination: a hello that claims 64 MiB is
// refused at its header (nothing read or allocated for it), and more than
// maxIncoming connections at once are turned away; a trusted hand-off
// still goes through once they are gone.
func TestMigrationListenerBoundsStrangers(t *testing.T) {
	dst := migrationDaemon(t, testMigrationKey)
	addr := dst.MigrationAddr().String()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var h [5]byte
	h[0] = frameHello
	binary.LittleEndian.PutUint32(h[1:], maxFrameBody)
	c.Write(h[:])
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, _ := io.Copy(io.Discard, c); n != 0 {
		t.Errorf("the destination answered a 64 MiB hello with %d bytes", n)
	}
	c.Close()
	migWait(t, "the oversize hello to be rejected", func() bool { return dst.mig.rejected.Load() == 1 })

	// Silent strangers fill the slots; the next is closed at once.
	var idle []net.Conn
	for range maxIncoming {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	migWait(t, "the strangers to be served", func() bool {
		dst.mig.mu.Lock()
		defer dst.mig.mu.Unlock()
		return len(dst.mig.conns) == maxIncoming
	})
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	extra.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err == nil {
		t.Error("a connection past maxIncoming was served")
	}
	extra.Close()
	for _, c := range idle {
		c.Close()
	}
	migWait(t, "the slots to be freed", func() bool {
		dst.mig.mu.Lock()
		defer dst.mig.mu.Unlock()
		return len(dst.mig.conns) == 0
	})

	guest := netip.MustParseAddrPort("169.254.77.2:40000")
	src := migrationDaemon(t, testMigrationKey)
	ps := src.port("vm")
	guestState(t, src.rt, ps, guestCaller(t, ps, guest), 1, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := src.MigrateOut(ctx, "vm", addr, ""); err != nil {
		t.Fatalf("a trusted hand-off after the strangers: %v", err)
	}
	if _, err := src.MigrateAbort(ctx, "vm"); err != nil {
		t.Fatal(err)
	}
}
