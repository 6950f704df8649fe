package fd

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func isOpen(raw int) bool {
	_, err := unix.FcntlInt(uintptr(raw), unix.F_GETFD, 0)
	return err == nil
}

func memfd(t *testing.T) int {
	t.Helper()
	raw, err := unix.MemfdCreate("fd-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestCloseIsIdempotentAndDisownTransfers(t *testing.T) {
	raw := memfd(t)
	f, err := New(raw)
	if err != nil {
		t.Fatal(err)
	}
	if f.Int() != raw {
		t.Fatalf("Int = %d, want %d", f.Int(), raw)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if isOpen(raw) || f.Int() != -1 {
		t.Fatalf("after Close: open %v, Int %d", isOpen(raw), f.Int())
	}
	// A second Close must not close the number again (it may be reused).
	reused := memfd(t)
	defer unix.Close(reused)
	if err := f.Close(); err != nil || !isOpen(reused) {
		t.Fatalf("second Close: %v, reused descriptor open %v", err, isOpen(reused))
	}

	g, _ := New(memfd(t))
	n := g.Disown()
	if n < 0 || g.Int() != -1 || g.Disown() != -1 {
		t.Fatalf("Disown = %d, then Int %d", n, g.Int())
	}
	g.Close()
	if !isOpen(n) {
		t.Fatal("Close after Disown closed the descriptor")
	}
	unix.Close(n)

	var none *FD
	if none.Int() != -1 || none.Close() != nil || none.Disown() != -1 {
		t.Fatal("nil FD is not 'none'")
	}
	if _, err := New(-1); !errors.Is(err, ErrBadFD) {
		t.Fatalf("New(-1) = %v, want ErrBadFD", err)
	}
}

func TestEventFDSignalDrainWait(t *testing.T) {
	e, err := NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if e.Drain() {
		t.Fatal("fresh eventfd drained as signalled")
	}
	e.Signal()
	e.Signal()
	if !e.Drain() || e.Drain() {
		t.Fatal("Drain after two Signals")
	}
	if n := testing.AllocsPerRun(100, func() { e.Signal(); e.Drain() }); n != 0 && !raceEnabled {
		t.Errorf("Signal+Drain allocate %v times", n)
	}
	e.Signal()
	if err := e.Wait(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- e.Wait() }()
	e.Signal()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	go func() { done <- e.Wait() }()
	e.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait across Close = %v, want ErrClosed", err)
	}
	e.Signal() // after Close: nothing
	if e.Drain() || e.Int() != -1 {
		t.Fatal("closed eventfd still usable")
	}
}

// TestSignalNeverBlocks fills the counter, as a hostile peer can; Signal
// must return at once (EAGAIN means already signalled).
func TestSignalNeverBlocks(t *testing.T) {
	raw, err := unix.Eventfd(0, unix.EFD_CLOEXEC) // blocking, as a peer may send it
	if err != nil {
		t.Fatal(err)
	}
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], ^uint64(0)-1)
	if _, err := unix.Write(raw, b[:]); err != nil {
		t.Fatal(err)
	}
	f, _ := New(raw)
	e, err := NewEventFDFrom(f)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	done := make(chan struct{})
	go func() { e.Signal(); close(done) }()
	<-done // a hang here fails the test by its timeout
}

func TestIsEventFD(t *testing.T) {
	e, _ := NewEventFD()
	defer e.Close()
	sp, _ := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	var pp [2]int
	unix.Pipe2(pp[:], unix.O_CLOEXEC)
	mf := memfd(t)
	for _, raw := range []int{sp[0], sp[1], pp[0], pp[1], mf} {
		defer unix.Close(raw)
	}
	if ok, err := IsEventFD(e.Int()); !ok || err != nil {
		t.Errorf("IsEventFD(eventfd) = %v, %v", ok, err)
	}
	for name, raw := range map[string]int{"socket": sp[0], "pipe": pp[0], "memfd": mf} {
		if ok, err := IsEventFD(raw); ok || err != nil {
			t.Errorf("IsEventFD(%s) = %v, %v", name, ok, err)
		}
		dup, _ := unix.Dup(raw)
		f, _ := New(dup)
		_, err := NewEventFDFrom(f)
		var ne *NotEventFDError
		if !errors.Is(err, ErrNotEventFD) || !errors.As(err, &ne) || ne.FD != dup {
			t.Errorf("NewEventFDFrom(%s) = %v, want a NotEventFDError", name, err)
		}
		if isOpen(dup) && dup != raw {
			t.Errorf("NewEventFDFrom(%s) left the descriptor open", name)
		}
	}
	if _, err := IsEventFD(-1); err == nil {
		t.Error("IsEventFD(-1) without error")
	}
}

func unixPair(t *testing.T) (a, b *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(raw int) *net.UnixConn {
		f := os.NewFile(uintptr(raw), "sock")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

func TestRecvMsg(t *testing.T) {
	a, b := unixPair(t)
	e1, _ := NewEventFD()
	e2, _ := NewEventFD()
	defer e1.Close()
	defer e2.Close()
	if _, _, err := a.WriteMsgUnix([]byte("hello"), unix.UnixRights(e1.Int(), e2.Int()), nil); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, fds, err := RecvMsg(b, buf, oob, nil)
	if err != nil || string(buf[:n]) != "hello" || len(fds) != 2 {
		t.Fatalf("RecvMsg = %d %q, %d fds, %v", n, buf[:n], len(fds), err)
	}
	for _, f := range fds {
		if fl, _ := unix.FcntlInt(uintptr(f.Int()), unix.F_GETFD, 0); fl&unix.FD_CLOEXEC == 0 {
			t.Error("received descriptor is not close-on-exec")
		}
		if ok, _ := IsEventFD(f.Int()); !ok {
			t.Error("received descriptor is not the eventfd sent")
		}
		f.Close()
	}

	// Four descriptors into room for one: truncated, and nothing stays open.
	before := countFDs(t)
	a.WriteMsgUnix([]byte("x"), unix.UnixRights(e1.Int(), e2.Int(), e1.Int(), e2.Int()), nil)
	prior, _ := New(memfd(t))
	defer prior.Close()
	_, got, err := RecvMsg(b, buf, make([]byte, unix.CmsgSpace(4)), []*FD{prior})
	if !errors.Is(err, ErrTruncated) || len(got) != 1 || got[0] != prior || prior.Int() < 0 {
		t.Fatalf("truncated RecvMsg = %d fds, %v", len(got), err)
	}
	if after := countFDs(t); after != before+1 { // +1: prior
		t.Errorf("%d descriptors before, %d after a truncated message", before, after)
	}
}

func countFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestLeakIsReportedAndClosed drops an open FD; the cleanup closes it and
// reports it with its creator's stack.
func TestLeakIsReportedAndClosed(t *testing.T) {
	leaks := make(chan Leak, 1)
	stop := TraceLeaks(func(l Leak) { leaks <- l })
	defer stop()
	raw := memfd(t)
	func() {
		f, _ := New(raw)
		_ = f.Int()
	}()
	deadline := time.After(time.Minute)
	for {
		runtime.GC()
		select {
		case l := <-leaks:
			if l.FD != raw || l.Stack == "" {
				t.Errorf("leak = %+v", l)
			}
			if isOpen(raw) {
				t.Error("leaked descriptor left open")
			}
			return
		case <-deadline:
			t.Fatal("leak never reported")
		case <-time.After(10 * time.Millisecond):
		}
	}
}
