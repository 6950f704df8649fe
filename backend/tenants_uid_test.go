package backend

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/testutil"
)

// TestHostAppsOfTwoUIDsAreTwoTenants: a host application of uid 0 (the
// operator tenant "host") and one of uid 65534 (tenant "uid:65534") sink
// on the same channel id: each gets only its own tenant's messages. On a
// shared channel the root application gets the other's.
func TestHostAppsOfTwoUIDsAreTwoTenants(t *testing.T) {
	testutil.RequiresRoot(t)
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} { // uid 65534 reaches the socket and the binary
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(dir, "app.sock")
	// uid 65534 must be able to connect: the app socket is 0660 by default.
	d, _ := startDaemonWith(t, func(o *DaemonOptions) {
		o.AppSocket, o.AppSocketMode = sock, 0o666
		o.Runtime.SharedChannels = []uint32{9}
	})
	// The test binary may sit in a directory only root can enter.
	bin := filepath.Join(dir, "backend.test")
	copyFile(t, os.Args[0], bin)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root := openApp(t, sock)
	st, _ := root.CreateStream(ctx, guestlib.StreamOptions{})
	private, err := st.CreateSink(ctx, 5, guestlib.SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	shared, err := st.CreateSink(ctx, 9, guestlib.SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}

	cmd := exec.CommandContext(ctx, bin, "-test.run=^TestHelperTenantApp$")
	cmd.Env = append(os.Environ(), "VELOCE_TEST_TENANT_SOCKET="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	done := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if line := sc.Text(); len(line) > 6 && line[:6] == "tenant" {
				done <- line
			}
		}
		close(done)
	}()
	select {
	case line, ok := <-done:
		if !ok || line != "tenant helper: 100 of its own" {
			t.Fatalf("helper: %q", line)
		}
	case <-ctx.Done():
		t.Fatal("helper never done")
	}
	eventually(t, "the shared channel's messages", func() bool { return shared.DataAvailable() == 100 })
	if n := private.DataAvailable(); n != 0 {
		t.Errorf("root's sink on channel 5 got %d of uid 65534's messages", n)
	}
	tenants := map[string]uint32{}
	for _, c := range d.HostApps().Clients {
		tenants[c.Tenant] = c.UID
	}
	if len(tenants) != 2 || tenants["host"] != 0 || tenants["uid:65534"] != 65534 {
		t.Errorf("clients' tenants %v", tenants)
	}
	for _, s := range d.Streams() {
		if s.Session == root.ID() && s.Tenant != HostTenant {
			t.Errorf("root's stream in tenant %q", s.Tenant)
		}
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestHelperTenantApp is the uid-65534 application of
// TestHostAppsOfTwoUIDsAreTwoTenants; it runs only as its child process.
// It sinks and emits 100 messages on channel 5, emits 100 on shared
// channel 9, reports how many of its own it got, and waits for stdin to
// close.
func TestHelperTenantApp(t *testing.T) {
	sock := os.Getenv("VELOCE_TEST_TENANT_SOCKET")
	if sock == "" {
		t.Skip("the child process of TestHostAppsOfTwoUIDsAreTwoTenants")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := guestlib.Open(ctx, guestlib.Options{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, _ := s.CreateStream(ctx, guestlib.StreamOptions{})
	sink, err := st.CreateSink(ctx, 5, guestlib.SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range []uint32{5, 9} {
		src, err := st.CreateSource(ctx, ch)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 100 {
			b, err := src.GetBufferContext(ctx, 16)
			if err != nil {
				t.Fatal(err)
			}
			pattern(b.Data, uint64(i))
			if _, err := src.Emit(b); err != nil {
				t.Fatal(err)
			}
		}
	}
	got := 0
	for ; got < 100; got++ {
		m, err := sink.Consume(ctx)
		if err != nil {
			break
		}
		m.Release()
	}
	fmt.Printf("tenant helper: %d of its own\n", got)
	io.Copy(io.Discard, os.Stdin)
}
