package backend

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/guestproto"
	"github.com/veloce-io/veloce/internal/shm"
	"github.com/veloce-io/veloce/internal/slots"
)

// hostDaemon runs a daemon with only the app socket (listening: the
// daemon started) and checks that it answers there.
func hostDaemon(t *testing.T) (*Daemon, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "app.sock")
	d, _ := startDaemonWith(t, func(o *DaemonOptions) { o.AppSocket = sock })
	openApp(t, sock).Close()
	return d, sock
}

// openApp opens a guestlib session on the host transport of a started
// daemon.
func openApp(t *testing.T, sock string) *guestlib.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := guestlib.Open(ctx, guestlib.Options{Socket: sock})
	if err != nil {
		t.Fatalf("open session at %s: %v", sock, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// eventually waits up to 10 s for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func sinkInfo(d *Daemon, session uint32) []SinkInfo {
	var out []SinkInfo
	for _, st := range d.Streams() {
		if st.Session == session {
			out = append(out, st.Sinks...)
		}
	}
	return out
}

// pattern fills b with message i's bytes; check says whether b holds them.
func pattern(b []byte, i uint64) {
	binary.LittleEndian.PutUint64(b, i)
	for j := 8; j < len(b); j++ {
		b[j] = byte(i*7 + uint64(j))
	}
}

func checkPattern(b []byte, i uint64) bool {
	if len(b) < 8 || binary.LittleEndian.Uint64(b) != i {
		return false
	}
	for j := 8; j < len(b); j++ {
		if b[j] != byte(i*7+uint64(j)) {
			return false
		}
	}
	return true
}

// stream emits n messages of varying size from src while at most window
// are unconsumed (consumed counts what the receiving side took).
func stream(ctx context.Context, src *guestlib.Source, n uint64, window int64, consumed *atomic.Int64) error {
	for i := uint64(1); i <= n; i++ {
		for int64(i)-consumed.Load() > window {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			time.Sleep(20 * time.Microsecond)
		}
		b, err := src.GetBufferContext(ctx, 8+int(i%600))
		if err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
		pattern(b.Data, i)
		if _, err := src.Emit(b); err != nil {
			return fmt.Errorf("emit %d: %w", i, err)
		}
	}
	return nil
}

// receive consumes n messages from sink and checks order and content.
func receive(ctx context.Context, sink *guestlib.Sink, n uint64, consumed *atomic.Int64) error {
	for i := uint64(1); i <= n; i++ {
		m, err := sink.Consume(ctx)
		if err != nil {
			return fmt.Errorf("after %d messages: %w (dropped %d)", i-1, err, sink.Dropped())
		}
		if m.Seq != i || len(m.Data) != 8+int(i%600) || !checkPattern(m.Data, i) {
			err = fmt.Errorf("message %d: seq %d, %d bytes, intact %v", i, m.Seq, len(m.Data), checkPattern(m.Data, m.Seq))
		}
		m.Release()
		consumed.Add(1)
		if err != nil {
			return err
		}
	}
	return nil
}

// TestHostAppsExchangeInOrder: two host applications stream 100,000
// messages each to the other through the daemon's shared memory, at the
// same time; every message arrives once, in order, intact.
func TestHostAppsExchangeInOrder(t *testing.T) {
	d, sock := hostDaemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const n = 100000
	a, b := openApp(t, sock), openApp(t, sock)
	type end struct {
		src  *guestlib.Source
		sink *guestlib.Sink
	}
	mk := func(s *guestlib.Session, out, in uint32) end {
		st, err := s.CreateStream(ctx, guestlib.StreamOptions{})
		if err != nil {
			t.Fatal(err)
		}
		src, err := st.CreateSource(ctx, out)
		if err != nil {
			t.Fatal(err)
		}
		sink, err := st.CreateSink(ctx, in, guestlib.SinkOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return end{src, sink}
	}
	ea, eb := mk(a, 1, 2), mk(b, 2, 1)
	var toA, toB atomic.Int64
	errs := make(chan error, 4)
	start := time.Now()
	go func() { errs <- stream(ctx, ea.src, n, 512, &toB) }()
	go func() { errs <- stream(ctx, eb.src, n, 512, &toA) }()
	go func() { errs <- receive(ctx, eb.sink, n, &toB) }()
	go func() { errs <- receive(ctx, ea.sink, n, &toA) }()
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	el := time.Since(start)
	t.Logf("%d messages each way in %v: %.0f messages/s", n, el.Round(time.Millisecond), 2*n/el.Seconds())
	for _, s := range []*guestlib.Session{a, b} {
		eventually(t, "every message counted", func() bool {
			sk := sinkInfo(d, s.ID())[0]
			return sk.Delivered+sk.Dropped == n
		})
		for _, sk := range sinkInfo(d, s.ID()) {
			if sk.Delivered != n || sk.Dropped != 0 {
				t.Errorf("session %d sink %d: delivered %d, dropped %d", s.ID(), sk.ID, sk.Delivered, sk.Dropped)
			}
		}
	}
	if ea.sink.Dropped() != 0 || eb.sink.Dropped() != 0 {
		t.Errorf("guestlib dropped %d and %d", ea.sink.Dropped(), eb.sink.Dropped())
	}
	if info := d.HostApps(); info.Malformed != 0 {
		t.Errorf("%d malformed entries from guestlib", info.Malformed)
	}
}

// TestHostAppThatStopsReadingFillsOnlyItsPool: an application that holds
// every message it gets exhausts its own RX slots; from then on
// deliveries to it are dropped and counted on its sink, while another
// application on the same channel gets every message. Once it releases
// them, it receives again.
func TestHostAppThatStopsReadingFillsOnlyItsPool(t *testing.T) {
	d, sock := hostDaemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const n = 5000
	sink := func(s *guestlib.Session) *guestlib.Sink {
		st, _ := s.CreateStream(ctx, guestlib.StreamOptions{})
		sk, err := st.CreateSink(ctx, 5, guestlib.SinkOptions{Queue: 1 << 16})
		if err != nil {
			t.Fatal(err)
		}
		return sk
	}
	stuckS, goodS, srcS := openApp(t, sock), openApp(t, sock), openApp(t, sock)
	stuck, good := sink(stuckS), sink(goodS)
	st, _ := srcS.CreateStream(ctx, guestlib.StreamOptions{})
	src, err := st.CreateSource(ctx, 5)
	if err != nil {
		t.Fatal(err)
	}
	var consumed atomic.Int64
	errs := make(chan error, 2)
	go func() { errs <- stream(ctx, src, n, 256, &consumed) }()
	go func() { errs <- receive(ctx, good, n, &consumed) }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// (The runtime counts a delivery after handing it over: wait for the
	// last count.)
	eventually(t, "every message counted", func() bool {
		sk, gk := sinkInfo(d, stuckS.ID())[0], sinkInfo(d, goodS.ID())[0]
		return sk.Delivered+sk.Dropped == n && gk.Delivered+gk.Dropped == n
	})
	sk := sinkInfo(d, stuckS.ID())[0]
	if sk.Delivered != hostRXSlots || sk.Dropped != n-hostRXSlots {
		t.Errorf("stuck sink: delivered %d, dropped %d; want %d and %d", sk.Delivered, sk.Dropped, hostRXSlots, n-hostRXSlots)
	}
	if gk := sinkInfo(d, goodS.ID())[0]; gk.Delivered != n || gk.Dropped != 0 {
		t.Errorf("good sink: %+v", gk)
	}
	for _, c := range d.HostApps().Clients {
		if c.Session == stuckS.ID() && c.RXWithApp != hostRXSlots {
			t.Errorf("stuck application holds %d RX slots, want all %d", c.RXWithApp, hostRXSlots)
		}
	}
	eventually(t, "the stuck sink's messages queued", func() bool { return stuck.DataAvailable() == hostRXSlots })
	// It catches up: its messages are the first hostRXSlots, in order.
	for i := uint64(1); i <= hostRXSlots; i++ {
		m, ok := stuck.TryConsume()
		if !ok || m.Seq != i || !checkPattern(m.Data, i) {
			t.Fatalf("stuck sink's message %d: %v", i, ok)
		}
		m.Release()
	}
	b, _ := src.GetBuffer(8)
	pattern(b.Data, n+1)
	src.Emit(b)
	for _, sk := range []*guestlib.Sink{stuck, good} {
		m, err := sk.Consume(ctx)
		if err != nil || m.Seq != n+1 {
			t.Fatalf("after catching up: %v", err)
		}
		m.Release()
	}
}

// rawApp is a host application on the wire protocol alone — the socket,
// the region, its rings — free to misbehave.
type rawApp struct {
	conn           *net.UnixConn
	region         *shm.Region
	txNote, rxNote *shm.Notifier
	session        uint32
	tx             shm.Producer
	done           shm.Consumer
	rx             shm.Consumer
	free           shm.Producer
	nextReq        uint32
}

func dialRaw(t *testing.T, sock string) *rawApp {
	t.Helper()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	a := &rawApp{conn: c}
	res, fds := a.request(t, guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession}})
	if res.Status != guestproto.StatusOK || len(fds) != 3 {
		t.Fatalf("open session: %+v, %d descriptors", res, len(fds))
	}
	a.session = res.ID
	if a.region, err = shm.Open(fds[0]); err != nil {
		t.Fatal(err)
	}
	a.txNote, _ = shm.NotifierFromFD(fds[1])
	a.rxNote, _ = shm.NotifierFromFD(fds[2])
	a.tx, a.done = a.region.TXProducer(), a.region.DoneConsumer()
	a.rx, a.free = a.region.RXConsumer(), a.region.FreeProducer()
	t.Cleanup(a.close)
	return a
}

func (a *rawApp) close() {
	a.conn.Close()
	a.txNote.Close()
	a.rxNote.Close()
	a.region.Close()
}

// request sends a control request and returns its reply, skipping
// outcomes.
func (a *rawApp) request(t *testing.T, m guestproto.Message) (guestproto.Result, []int) {
	t.Helper()
	a.nextReq++
	m.RequestID, m.Session = a.nextReq, a.session
	var b [64]byte
	n, err := guestproto.PutRequest(b[:], &m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.conn.Write(b[:n]); err != nil {
		t.Fatal(err)
	}
	buf, oob := make([]byte, 4096), make([]byte, 256)
	a.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		n, fds, err := shm.ReadMsg(a.conn, buf, oob)
		if err != nil {
			t.Fatalf("%v: %v", m.Type, err)
		}
		var r guestproto.Message
		if err := guestproto.Parse(buf[:n], &r); err != nil {
			t.Fatal(err)
		}
		if r.Type == guestproto.Reply && r.RequestID == m.RequestID {
			res := r.Result
			res.Plugin, res.Message = append([]byte(nil), res.Plugin...), append([]byte(nil), res.Message...)
			return res, fds
		}
		shm.CloseFDs(fds)
	}
}

func (a *rawApp) create(t *testing.T, typ guestproto.Type, stream, channel uint32) uint32 {
	t.Helper()
	res, _ := a.request(t, guestproto.Message{Header: guestproto.Header{Type: typ}, Stream: stream, Channel: channel})
	if res.Status != guestproto.StatusOK {
		t.Fatalf("%v: %+v", typ, res)
	}
	return res.ID
}

// put32 writes a word anywhere in the region, as a hostile application
// may. Offsets are internal/shm's layout (see its package doc).
func put32(region *shm.Region, off int, v uint32) {
	binary.LittleEndian.PutUint32(region.Bytes()[off:], v)
}

const (
	lineTXHead, lineTXTail, lineDoneHead, lineDoneTail = 64, 128, 192, 256
	lineRXHead, lineRXTail, lineFreeHead, lineFreeTail = 320, 384, 448, 512
	lineDaemonWait                                     = 576
)

// TestHostileAppIsCountedAndDisturbsNoOne: an application writes garbage
// into its rings — slots out of range, absurd lengths, unknown sources, a
// TX head a ring ahead, slots it does not hold freed, the daemon's own
// counters scribbled over — floods its eventfd and never reads its
// socket. The daemon counts the bad entries, answers what deserves an
// answer, and a stream between two other applications loses nothing.
func TestHostileAppIsCountedAndDisturbsNoOne(t *testing.T) {
	d, sock := hostDaemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const n = 20000
	rxS, txS := openApp(t, sock), openApp(t, sock)
	rst, _ := rxS.CreateStream(ctx, guestlib.StreamOptions{})
	goodSink, err := rst.CreateSink(ctx, 9, guestlib.SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tst, _ := txS.CreateStream(ctx, guestlib.StreamOptions{})
	goodSrc, err := tst.CreateSource(ctx, 9)
	if err != nil {
		t.Fatal(err)
	}

	bad := dialRaw(t, sock)
	st := bad.create(t, guestproto.CreateStream, 0, 0)
	badSrc := bad.create(t, guestproto.CreateSource, st, 10)
	bad.create(t, guestproto.CreateSink, st, 9) // it gets the good stream too
	if res, _ := bad.request(t, guestproto.Message{Header: guestproto.Header{Type: guestproto.CloseSink}, ID: 999999}); res.Status != guestproto.StatusNotFound {
		t.Errorf("closing an unknown sink: %+v", res)
	}

	var consumed atomic.Int64
	errs := make(chan error, 2)
	go func() { errs <- stream(ctx, goodSrc, n, 256, &consumed) }()
	go func() { errs <- receive(ctx, goodSink, n, &consumed) }()

	l := bad.region.Layout()
	emit := func(e shm.TXEntry) bool {
		if ctx.Err() != nil {
			t.Fatal("the hostile client's TX ring never drained")
		}
		if bad.tx.Space(1) == 0 {
			return false
		}
		shm.PutTX(bad.tx.Entry(0), e)
		bad.tx.Publish(1)
		bad.txNote.Signal()
		return true
	}
	var wantMalformed uint64
	for round := 0; round < 50; round++ {
		for _, e := range []shm.TXEntry{
			{Slot: l.TXSlots, Len: 8, Source: badSrc},                  // slot out of range
			{Slot: 1 << 31, Len: 8, Source: badSrc},                    // far out
			{Slot: 1, Len: 1 << 31, Source: badSrc},                    // absurd length: a run past the pool
			{Slot: l.TXSlots - 1, Len: l.SlotSize + 1, Source: badSrc}, // a run one slot past the pool
			{Slot: 3, Len: uint32(hostMaxMessage) + 1, Source: badSrc}, // too large (a run that fits): an outcome
			{Slot: 4, Len: 8, Source: 424242},                          // unknown source: an outcome
			{Slot: 5, Len: 16, Source: badSrc},                         // fine (channel 10: no sinks)
			{Slot: hostTXSlots, Len: 3 * l.SlotSize, Source: badSrc},   // a fine run
		} {
			for !emit(e) {
				time.Sleep(time.Millisecond)
			}
		}
		wantMalformed += 4
		// RX slots it does not hold, and out of range.
		// A slot of the runs' part that starts no run lent.
		for _, id := range []uint32{l.RXSlots, 1 << 30, uint32(round % 4), hostRXSlots + uint32(round)} {
			if bad.free.Space(1) > 0 {
				shm.PutID(bad.free.Entry(0), id)
				bad.free.Publish(1)
			}
		}
		// The daemon's own counters and flags: it never reads them back.
		for _, off := range []int{lineDoneHead, lineRXHead, lineFreeTail, lineDaemonWait} {
			put32(bad.region, off, uint32(round*7919))
		}
		for range 10 {
			bad.txNote.Signal()
		}
		time.Sleep(time.Millisecond)
	}
	// Lose track of it all: heads a ring ahead.
	time.Sleep(20 * time.Millisecond)
	put32(bad.region, lineTXTail, 12345)
	put32(bad.region, lineTXHead, 1<<20)
	put32(bad.region, lineFreeHead, 1<<20)
	bad.txNote.Signal()
	wantMalformed++

	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	var badInfo HostClientInfo
	eventually(t, "the hostile client's entries counted", func() bool {
		for _, c := range d.HostApps().Clients {
			if c.Session == bad.session {
				badInfo = c
				return c.Malformed >= wantMalformed
			}
		}
		return false
	})
	t.Logf("hostile client: %+v", badInfo)
	for _, c := range d.HostApps().Clients {
		if c.Session != bad.session && c.Malformed != 0 {
			t.Errorf("client %+v: malformed entries it did not send", c)
		}
	}
	eventually(t, "every message counted", func() bool { gk := sinkInfo(d, rxS.ID())[0]; return gk.Delivered+gk.Dropped == n })
	if gk := sinkInfo(d, rxS.ID())[0]; gk.Delivered != n || gk.Dropped != 0 {
		t.Errorf("good sink: %+v", gk)
	}
	// It answered the refused emits (the ones that fit the socket buffer).
	bad.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	seen := map[guestproto.Status]bool{}
	for buf := make([]byte, 256); len(seen) < 2; {
		k, err := bad.conn.Read(buf)
		if err != nil {
			t.Fatalf("outcomes: %v (seen %v)", err, seen)
		}
		var m guestproto.Message
		if guestproto.Parse(buf[:k], &m) == nil && m.Type == guestproto.Outcome {
			seen[m.Status] = true
		}
	}
	if !seen[guestproto.StatusTooLarge] || !seen[guestproto.StatusNotFound] {
		t.Errorf("outcomes %v", seen)
	}
	// And when it goes, everything it held goes with it.
	bad.close()
	eventually(t, "the hostile client gone", func() bool { return len(d.HostApps().Clients) == 2 })
}

// TestKilledHostAppReleasesSessionAndRegion: an application process
// killed with SIGKILL while holding buffers and messages: the daemon sees
// its connection close and releases its session, streams and shared
// region at once (no session timeout).
func TestKilledHostAppReleasesSessionAndRegion(t *testing.T) {
	d, sock := hostDaemon(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperHostApp$", "-test.v")
	cmd.Env = append(os.Environ(), "VELOCE_TEST_HELPER_SOCKET="+sock)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "helper ready" {
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatal("helper never ready")
	}
	memfd := fmt.Sprintf("memfd:veloce-host:pid %d ", cmd.Process.Pid)
	maps := func() int {
		b, _ := os.ReadFile("/proc/self/maps")
		return strings.Count(string(b), memfd)
	}
	info := d.HostApps()
	if info.Sessions != 1 || len(info.Clients) != 1 || info.MappedBytes != int64(hostLayout.Size()) || maps() != 1 {
		t.Fatalf("with the helper running: %+v, %d mappings of %q", info, maps(), memfd)
	}
	if len(d.Streams()) != 1 {
		t.Fatalf("streams %+v", d.Streams())
	}
	killed := time.Now()
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	eventually(t, "the killed application's session released", func() bool {
		i := d.HostApps()
		return i.Sessions == 0 && len(i.Clients) == 0 && i.MappedBytes == 0 && len(d.Streams()) == 0 && maps() == 0
	})
	t.Logf("released %v after SIGKILL", time.Since(killed).Round(time.Millisecond))
}

// TestHelperHostApp is the application TestKilledHostAppReleasesSessionAndRegion
// kills; it runs only as that test's child process.
func TestHelperHostApp(t *testing.T) {
	sock := os.Getenv("VELOCE_TEST_HELPER_SOCKET")
	if sock == "" {
		t.Skip("the child process of TestKilledHostAppReleasesSessionAndRegion")
	}
	ctx := context.Background()
	s, err := guestlib.Open(ctx, guestlib.Options{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := s.CreateStream(ctx, guestlib.StreamOptions{})
	sink, err := st.CreateSink(ctx, 77, guestlib.SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	src, _ := st.CreateSource(ctx, 77)
	var held []*guestlib.Buffer
	for i := range 20 {
		b, err := src.GetBuffer(100)
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			held = append(held, b) // never emitted
			continue
		}
		src.Emit(b)
	}
	for range 10 {
		if _, err := sink.Consume(ctx); err != nil { // never released
			t.Fatal(err)
		}
	}
	fmt.Println("helper ready")
	select {}
}

// newTestClient is a client with its region and session but no socket
// peer or drain goroutine: the test drives both ends.
func newTestClient(t testing.TB, h *hostApps) *hostClient {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "test-client")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	peer := os.NewFile(uintptr(fds[1]), "test-peer")
	c := newHostClient(h, fc.(*net.UnixConn))
	if _, err := c.open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if s := c.sess.Load(); s != nil {
			s.Close()
		}
		c.closed.Store(true)
		c.txNote.Close()
		c.rxNote.Close()
		c.region.Close()
		c.conn.Close()
		peer.Close()
	})
	return c
}

// testApp is the application's ends of a test client's rings.
type testApp struct {
	r      *shm.Region
	tx     shm.Producer
	done   shm.Consumer
	rx     shm.Consumer
	free   shm.Producer
	txFree []uint32
}

func newTestApp(c *hostClient) *testApp {
	a := &testApp{r: c.region, tx: c.region.TXProducer(), done: c.region.DoneConsumer(), rx: c.region.RXConsumer(), free: c.region.FreeProducer()}
	for i := uint32(0); i < hostTXSlots; i++ {
		a.txFree = append(a.txFree, i)
	}
	return a
}

// emit writes payload into a free TX slot and publishes it.
func (a *testApp) emit(source uint32, payload []byte) bool {
	if len(a.txFree) == 0 {
		if n, _ := a.done.Available(); n > 0 {
			for k := uint32(0); k < n; k++ {
				a.txFree = append(a.txFree, shm.GetID(a.done.Entry(k)))
			}
			a.done.Release(n)
		}
	}
	if len(a.txFree) == 0 || a.tx.Space(1) == 0 {
		return false
	}
	id := a.txFree[len(a.txFree)-1]
	a.txFree = a.txFree[:len(a.txFree)-1]
	copy(a.r.TXSlot(id), payload)
	shm.PutTX(a.tx.Entry(0), shm.TXEntry{Slot: id, Len: uint32(len(payload)), Source: source})
	a.tx.Publish(1)
	return true
}

// take consumes one delivered message, checks it with f and frees its
// slot.
func (a *testApp) take(f func(e shm.RXEntry, data []byte)) bool {
	n, _ := a.rx.Available()
	if n == 0 {
		return false
	}
	e := shm.GetRX(a.rx.Entry(0))
	a.rx.Release(1)
	f(e, a.r.RXSlot(e.Slot)[:e.Len])
	shm.PutID(a.free.Entry(0), e.Slot)
	a.free.Publish(1)
	return true
}

// spyEndpoint is a session's endpoint that remembers where the last
// payload it was handed lives.
type spyEndpoint struct{ at *byte }

func (e *spyEndpoint) deliver(_ *Sink, _, _ uint64, p []byte) bool { e.at = &p[0]; return true }
func (e *spyEndpoint) String() string                              { return "spy" }
func (e *spyEndpoint) sessionClosed(*Session)                      {}

// clientPair makes two clients of one runtime's host transport, src
// with a source (so, on stream sst) and dst with a sink (sk) on channel 3.
func clientPair(t *testing.T) (h *hostApps, src, dst *hostClient, sst *Stream, so *Source, sk *Sink) {
	h = &hostApps{rt: NewRuntime(RuntimeOptions{}), clients: map[*hostClient]struct{}{}}
	src, dst = newTestClient(t, h), newTestClient(t, h)
	ss, ds := src.sess.Load(), dst.sess.Load()
	sst, _ = ss.CreateStream(StreamOptions{})
	so, _ = ss.CreateSource(sst.ID, 3)
	dst2, _ := ds.CreateStream(StreamOptions{})
	sk, _ = ds.CreateSink(dst2.ID, 3)
	return h, src, dst, sst, so, sk
}

// TestHostDrainAllocatesNothing: the daemon's per-message path — a TX
// entry drained, emitted, delivered into another client's RX slot,
// published, its slot reclaimed — allocates nothing; the runtime gets the
// message in the TX slot itself (no copy on the way in), and the one copy
// is into the RX slot.
func TestHostDrainAllocatesNothing(t *testing.T) {
	h, src, dst, _, so, sk := clientPair(t)
	spy := &spyEndpoint{}
	spyS := h.rt.OpenSession(spy, netip.AddrPort{})
	spySt, _ := spyS.CreateStream(StreamOptions{})
	spyS.CreateSink(spySt.ID, 3)
	app, sinkApp := newTestApp(src), newTestApp(dst)
	inSlot := func(p *byte) bool {
		for id := uint32(0); id < hostTXSlots; id++ {
			if p == &src.region.TXSlot(id)[0] {
				return true
			}
		}
		return false
	}
	payload := make([]byte, 200)
	var i, got uint64
	step := func() {
		i++
		binary.LittleEndian.PutUint64(payload, i)
		if !app.emit(so.ID, payload) {
			t.Fatal("no TX slot")
		}
		if src.drainOnce(false) != 1 {
			t.Fatal("nothing drained")
		}
		if i == 1 && !inSlot(spy.at) {
			t.Fatal("the runtime got a copy of the message, not its TX slot")
		}
		sinkApp.take(func(e shm.RXEntry, data []byte) {
			if e.Sink == sk.ID && e.Seq == i && e.Source == so.Global && binary.LittleEndian.Uint64(data) == i {
				got++
			}
		})
	}
	for range 3 * hostRXSlots { // every slot and ring position used once
		step()
	}
	allocs := testing.AllocsPerRun(5000, step)
	if allocs != 0 {
		t.Errorf("%.2f allocations per message", allocs)
	}
	if got != i || sk.delivered.Load() != i || sk.dropped.Load() != 0 {
		t.Errorf("%d messages, %d arrived intact, delivered %d, dropped %d", i, got, sk.delivered.Load(), sk.dropped.Load())
	}
	if src.malformed.Load()+dst.malformed.Load() != 0 {
		t.Errorf("malformed %d, %d", src.malformed.Load(), dst.malformed.Load())
	}
}

// TestHostDeliverFromManyGoroutines: deliveries to one client from
// several goroutines at once (the combining publisher, reclaiming): none is lost or
// duplicated, each goroutine's stay in order.
func TestHostDeliverFromManyGoroutines(t *testing.T) {
	h := &hostApps{rt: NewRuntime(RuntimeOptions{}), clients: map[*hostClient]struct{}{}}
	c := newTestClient(t, h)
	app := newTestApp(c)
	const producers, per = 4, 20000
	sk := &Sink{ID: 1}
	var wg sync.WaitGroup
	var inFlight atomic.Int64 // delivered, not yet taken: stays below the pool
	var refused atomic.Uint64
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := uint64(1); i <= per; {
				if inFlight.Load() >= hostRXSlots/2 {
					time.Sleep(10 * time.Microsecond)
					continue
				}
				inFlight.Add(1)
				if !c.deliver(sk, uint64(p), i, []byte{byte(p), byte(i)}) {
					inFlight.Add(-1)
					refused.Add(1)
					continue
				}
				i++
			}
		}()
	}
	last := make([]uint64, producers)
	for taken := 0; taken < producers*per; {
		if !app.take(func(e shm.RXEntry, data []byte) {
			if e.Seq != last[e.Source]+1 || data[0] != byte(e.Source) || data[1] != byte(e.Seq) {
				t.Fatalf("producer %d: seq %d after %d", e.Source, e.Seq, last[e.Source])
			}
			last[e.Source] = e.Seq
		}) {
			runtime.Gosched()
			continue
		}
		inFlight.Add(-1)
		taken++
	}
	wg.Wait()
	if n, _ := app.rx.Available(); n != 0 {
		t.Errorf("%d extra entries", n)
	}
	if refused.Load() != 0 {
		t.Errorf("%d deliveries refused with half the slots free (malformed %d, free %d, ready %d)", refused.Load(), c.malformed.Load(), c.rxSlots.Free(), c.ready.Len())
	}
}

// FuzzHostClient: whatever an application writes into its region (its
// ring positions and entries, the flags, the daemon's own counters) and
// whatever request it sends, the daemon does not panic or touch memory
// outside the region, and its slot accounting holds: every RX slot is
// free, queued or the application's, exactly once.
//
// ops is a list of 9-byte operations: kind (mod 8, see the switch), then
// two little-endian u32 arguments a and b; request is one control
// message. The seed corpus (testdata/fuzz/FuzzHostClient) has a
// well-formed emit, slots and lengths out of range, a head a ring ahead,
// double and out-of-range frees, an RX tail past the head, a scribbled
// control page with a CloseSession, garbage requests, and runs (large
// messages) emitted and delivered.
func FuzzHostClient(f *testing.F) {
	rt := NewRuntime(RuntimeOptions{})
	large := make([]byte, hostMaxMessage+1) // one byte too many at most
	f.Fuzz(func(t *testing.T, ops, request []byte) {
		h := &hostApps{rt: rt, clients: map[*hostClient]struct{}{}}
		c := newTestClient(t, h)
		s := c.sess.Load()
		st, _ := s.CreateStream(StreamOptions{})
		so, _ := s.CreateSource(st.ID, 1)
		sk, _ := s.CreateSink(st.ID, 1)
		reply := make([]byte, 4096)
		c.handle(request, reply)
		r := c.region
		tx, free := r.TXProducer(), r.FreeProducer()
		payload := make([]byte, hostSlotSize+1) // one byte too many at most
		var batch deliveryBatch
		for ; len(ops) >= 9; ops = ops[9:] {
			a, b := binary.LittleEndian.Uint32(ops[1:]), binary.LittleEndian.Uint32(ops[5:])
			switch ops[0] % 8 {
			case 0: // a TX entry, at ring index a
				src := so.ID
				if a&1 != 0 {
					src = a
				}
				slot, n := b, b>>16
				if a&2 != 0 { // a run, mostly within the pool: slot b's low 12 bits, length the upper 20
					slot, n = b&0xfff, b>>12
				}
				shm.PutTX(tx.Entry(a%hostTXSlots), shm.TXEntry{Slot: slot, Len: n, Source: src, Token: uint64(a)})
			case 1: // the TX head
				put32(r, lineTXHead, a)
			case 2: // an RX-free entry, at ring index a
				shm.PutID(free.Entry(a%hostRXSlots), b)
			case 3: // the RX-free head
				put32(r, lineFreeHead, a)
			case 4: // the application's tails
				put32(r, lineDoneTail, a)
				put32(r, lineRXTail, b)
			case 5: // the drain goroutine's, or (a odd) the polling thread's
				c.drainOnce(a&1 != 0)
			case 6: // a delivery: one slot, or (a odd) a run; (a&2) as part of a batch, flushed when a&4
				if a&1 != 0 {
					c.deliver(sk, uint64(a), uint64(b), large[:b%uint32(len(large)+1)])
					continue
				}
				if a&2 != 0 {
					c.deliverHeld(&batch, sk, uint64(a), uint64(b), payload[:b%uint32(len(payload)+1)])
					if a&4 != 0 {
						batch.flush()
					}
					continue
				}
				c.deliver(sk, uint64(a), uint64(b), payload[:b%uint32(len(payload)+1)])
			case 7: // any word of the control page, flags and daemon counters included
				put32(r, int(a%(shm.ControlSize/4))*4, b)
			}
		}
		batch.flush()
		c.drainOnce(false)
		c.deliver(sk, 1, 1, payload[:8])
		// Slot accounting: take every free slot, check, put them back.
		// (Get panics on a free-list slot that is not free, such as one
		// also the application's.)
		seen := make([]bool, hostRXSlots)
		var ids []uint32
		for {
			id, ok := c.rxSlots.Get()
			if !ok {
				break
			}
			if id >= hostRXSlots || seen[id] {
				t.Fatalf("free slot %d: twice, or also the application's", id)
			}
			seen[id] = true
			ids = append(ids, id)
		}
		for _, id := range ids {
			c.rxSlots.Put(id)
		}
		held := 0
		for i := range uint32(hostRXSlots) {
			if c.rxSlots.State(i) == slots.Lent {
				held++
			}
		}
		// Runs: the free run slots are as many as the allocator says,
		// each once.
		c.runMu.Lock()
		want := c.runs.FreeSlots()
		var runIDs []uint32
		for {
			id, ok := c.runs.Alloc(1)
			if !ok {
				break
			}
			runIDs = append(runIDs, id)
		}
		for _, id := range runIDs {
			c.runs.Free(id)
		}
		c.runMu.Unlock()
		if uint32(len(runIDs)) != want {
			t.Fatalf("%d run slots free, the allocator says %d", len(runIDs), want)
		}
		// One-slot slots: free, queued or the application's, exactly once
		// (ready also queues runs).
		queued, n := 0, c.ready.Len()
		for range n {
			id, _ := c.ready.Pop()
			if id < hostRXSlots {
				queued++
			}
			c.ready.Push(id)
		}
		if len(ids)+queued+held != hostRXSlots {
			t.Fatalf("%d free + %d queued + %d with the application != %d slots", len(ids), queued, held, hostRXSlots)
		}
	})
}

// TestEmitsBeforeCloseAreDelivered: an application that closes right
// after its last Emit (or dies) loses nothing it emitted: the daemon
// drains the TX ring once more when the connection goes.
func TestEmitsBeforeCloseAreDelivered(t *testing.T) {
	_, sock := hostDaemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sinkApp := openApp(t, sock)
	defer sinkApp.Close()
	sst, err := sinkApp.CreateStream(ctx, guestlib.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sink, err := sst.CreateSink(ctx, 77, guestlib.SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	const rounds, perRound = 20, 400 // under the sink's 1024 RX slots per round
	for r := 0; r < rounds; r++ {
		src := openApp(t, sock)
		st, err := src.CreateStream(ctx, guestlib.StreamOptions{})
		if err != nil {
			t.Fatal(err)
		}
		so, err := st.CreateSource(ctx, 77)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < perRound; i++ {
			b, err := so.GetBufferContext(ctx, 16)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := so.Emit(b); err != nil {
				t.Fatal(err)
			}
		}
		src.Close() // at once: some emits may still be on the TX ring
		for i := 0; i < perRound; i++ {
			m, err := sink.Consume(ctx)
			if err != nil {
				t.Fatalf("round %d: got %d of %d: %v", r, i, perRound, err)
			}
			m.Release()
		}
	}
}

// TestPolledDrainNeverWaits: the polling thread serves every polling
// client, so its drain waits for none. A message on a stream that would
// wait (paused, as set-qos pauses it) stays on the TX ring, with the
// messages after it, and goes once the stream resumes, in order and
// counted once; the drain goroutine's drain (not polled) would have
// waited for it.
func TestPolledDrainNeverWaits(t *testing.T) {
	_, src, dst, sst, so, sk := clientPair(t)
	app, sinkApp := newTestApp(src), newTestApp(dst)
	payload := make([]byte, 8)
	for i := range uint64(3) {
		binary.LittleEndian.PutUint64(payload, i)
		if !app.emit(so.ID, payload) {
			t.Fatal("no TX slot")
		}
	}
	if !sst.gate.pause(time.Now().Add(time.Second)) {
		t.Fatal("cannot pause the stream")
	}
	for range 3 {
		if n := src.drainOnce(true); n != 0 {
			t.Fatalf("polled drain of a paused stream's messages took %d entries off the ring, want 0", n)
		}
	}
	if n, _ := src.tx.Available(); n != 3 {
		t.Fatalf("%d entries left on the TX ring, want the 3 emitted", n)
	}
	sst.gate.resume()
	if n := src.drainOnce(true); n != 3 {
		t.Fatalf("polled drain after resume took %d entries, want 3", n)
	}
	var got []uint64
	for sinkApp.take(func(e shm.RXEntry, data []byte) {
		if e.Sink == sk.ID {
			got = append(got, binary.LittleEndian.Uint64(data))
		}
	}) {
	}
	if !slices.Equal(got, []uint64{0, 1, 2}) {
		t.Errorf("delivered %v, want [0 1 2]", got)
	}
	if e := so.emitted.Load(); e != 3 {
		t.Errorf("source counts %d emits, want 3", e)
	}
}
