package guestlib_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/testutil"
)

// TestOpenWithoutDaemonSaysWhatIsMissing: Open fails at once, not when
// its context ends, and the error names what to check.
func TestOpenWithoutDaemonSaysWhatIsMissing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	t.Run("host socket missing", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "app.sock")
		_, err := guestlib.Open(ctx, guestlib.Options{Socket: sock})
		if !errors.Is(err, guestlib.ErrNoDaemon) || !strings.Contains(err.Error(), "is veloced running with --app-socket") || !strings.Contains(err.Error(), sock) {
			t.Errorf("err = %v, want ErrNoDaemon naming %s and --app-socket", err, sock)
		}
	})
	t.Run("host socket nobody listens on", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "app.sock")
		l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
		if err != nil {
			t.Fatal(err)
		}
		l.SetUnlinkOnClose(false)
		l.Close() // the file stays, nobody listens: a daemon that died
		_, err = guestlib.Open(ctx, guestlib.Options{Socket: sock})
		if !errors.Is(err, guestlib.ErrNoDaemon) || !strings.Contains(err.Error(), "--app-socket") {
			t.Errorf("err = %v, want ErrNoDaemon about --app-socket", err)
		}
	})
	t.Run("service address silent", func(t *testing.T) {
		// A UDP socket that takes the requests and never answers: a VM
		// whose NIC goes nowhere (no daemon behind the link).
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		svc := pc.LocalAddr().(*net.UDPAddr).AddrPort()
		_, err = guestlib.Open(ctx, guestlib.Options{Service: netip.AddrPortFrom(svc.Addr().Unmap(), svc.Port()), OpenTimeout: 500 * time.Millisecond})
		if !errors.Is(err, guestlib.ErrNoDaemon) || !strings.Contains(err.Error(), "is this VM's NIC attached to veloced") {
			t.Errorf("err = %v, want ErrNoDaemon asking about the VM's NIC", err)
		}
		if ctx.Err() != nil {
			t.Errorf("Open waited for its caller's context")
		}
		var b [64]byte
		pc.SetReadDeadline(time.Now().Add(time.Minute))
		if n, _, err := pc.ReadFromUDP(b[:]); err != nil || n == 0 {
			t.Errorf("no open request reached the service address: %v", err)
		}
	})
	t.Run("caller's context first", func(t *testing.T) {
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		svc := pc.LocalAddr().(*net.UDPAddr).AddrPort()
		cctx, ccancel := context.WithCancel(ctx)
		ccancel()
		_, err = guestlib.Open(cctx, guestlib.Options{Service: netip.AddrPortFrom(svc.Addr().Unmap(), svc.Port())})
		if !errors.Is(err, context.Canceled) || errors.Is(err, guestlib.ErrNoDaemon) {
			t.Errorf("err = %v, want the caller's context.Canceled", err)
		}
	})
}

// TestBufferSendsOnlyWhatWasWritten: a buffer asked for at the largest
// size and cut to what was copied sends only those bytes.
func TestBufferSendsOnlyWhatWasWritten(t *testing.T) {
	_, sock := daemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := open(t, sock)
	st, err := s.CreateStream(ctx, guestlib.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sink, err := st.CreateSink(ctx, 5, guestlib.SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	src, err := st.CreateSource(ctx, 5)
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range []string{"hello", "", "a longer message than the first"} {
		b, err := src.GetBuffer(guestlib.MaxMessage)
		if err != nil {
			t.Fatal(err)
		}
		b.Truncate(copy(b.Data, msg))
		if _, err := src.Emit(b); err != nil {
			t.Fatal(err)
		}
		m, err := sink.Consume(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.Data) != msg {
			t.Errorf("received %d bytes %q, want %q", len(m.Data), m.Data, msg)
		}
		m.Release()
	}
	b, err := src.GetBuffer(4)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{-1, 5} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Truncate(%d) of a 4-byte buffer did not panic", n)
				}
			}()
			b.Truncate(n)
		}()
	}
	if _, err := src.Emit(b); err != nil {
		t.Fatal(err)
	}
}

// TestSinkCreatedAfterEmitMissesIt: the package doc's ordering rule. A
// message goes to the sinks its channel has when the daemon takes it; a
// sink created later gets only later messages.
func TestSinkCreatedAfterEmitMissesIt(t *testing.T) {
	_, sock := daemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	early, late, tx := open(t, sock), open(t, sock), open(t, sock)
	est, _ := early.CreateStream(ctx, guestlib.StreamOptions{})
	first, err := est.CreateSink(ctx, 9, guestlib.SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tst, _ := tx.CreateStream(ctx, guestlib.StreamOptions{})
	src, err := tst.CreateSource(ctx, 9)
	if err != nil {
		t.Fatal(err)
	}
	emit := func(msg string) {
		t.Helper()
		b, err := src.GetBuffer(len(msg))
		if err != nil {
			t.Fatal(err)
		}
		copy(b.Data, msg)
		if _, err := src.Emit(b); err != nil {
			t.Fatal(err)
		}
	}
	consume := func(sk *guestlib.Sink) string {
		t.Helper()
		m, err := sk.Consume(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Release()
		return string(m.Data)
	}
	emit("before")
	if got := consume(first); got != "before" { // the daemon has dispatched it
		t.Fatalf("early sink got %q", got)
	}
	lst, _ := late.CreateStream(ctx, guestlib.StreamOptions{})
	second, err := lst.CreateSink(ctx, 9, guestlib.SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	emit("after")
	if got := consume(second); got != "after" {
		t.Errorf("late sink's first message = %q, want \"after\" (it was created after \"before\" was emitted)", got)
	}
	if got := consume(first); got != "after" {
		t.Errorf("early sink's second message = %q", got)
	}
}

// TestOpenInAVMWithoutALink: a guest whose NIC is not configured (no
// route to the service address) gets ErrNoDaemon asking about the NIC,
// at once. The namespace stands in for such a guest: it has only lo.
func TestOpenInAVMWithoutALink(t *testing.T) {
	ns := testutil.NewNetns(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var err error
	if derr := ns.Do(func() error {
		_, err = guestlib.Open(ctx, guestlib.Options{Service: guestlib.DefaultService})
		return nil
	}); derr != nil {
		t.Fatal(derr)
	}
	if !errors.Is(err, guestlib.ErrNoDaemon) || !strings.Contains(err.Error(), "is this VM's NIC attached to veloced") {
		t.Errorf("err = %v, want ErrNoDaemon asking about the VM's NIC", err)
	}
	if ctx.Err() != nil {
		t.Error("Open waited for its context")
	}
}
