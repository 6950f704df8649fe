package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/testutil"
)

// TestFiveDaemonsFindEachOtherInEtcd is a fleet without --peer: five
// veloced processes in five network namespaces on a bridge, with a real
// etcd (Debian's etcd-server) on the bridge too. Each daemon has a sink
// and sources toward the other four's channels; with interest learned
// from etcd alone, every one of the 20 pairs streams. While etcd is
// stopped the streams keep flowing on the last known directory and the
// daemons say etcd is down; they reconnect when it returns. A daemon
// killed with -9 (no lease revoked) leaves the others' peers once its
// lease expires; restarted, it is seen at once (a new boot id) and
// streams again.
func TestFiveDaemonsFindEachOtherInEtcd(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.RequiresCommand(t, "etcd", "etcd-server")
	dir := t.TempDir()
	veloced := filepath.Join(dir, "veloced")
	build := exec.Command("go", "build", "-o", veloced, "github.com/veloce-io/veloce/cmd/veloced")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build veloced: %v\n%s", err, b)
	}
	const n = 5
	const ttl = 3 * time.Second
	hub := testutil.NewNetns(t)
	br := testutil.NewBridge(t, hub, "10.95.0.100/24")
	var nss [n]*testutil.Netns
	for i := range nss {
		nss[i] = testutil.NewNetns(t)
		br.Attach(t, nss[i], fmt.Sprintf("10.95.0.%d/24", i+1))
	}
	e := testutil.StartEtcd(t, hub, "10.95.0.100")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	type daemon struct {
		i        int
		app, ctl string
		cmd      *exec.Cmd
		exited   chan struct{}
		sess     *guestlib.Session
		st       *guestlib.Stream
	}
	node := func(i int) uint32 { return uint32(i + 1) }
	channel := func(i int) uint32 { return uint32(200 + i) }
	// got[sink][from] counts the messages sink i received from node from.
	var mu sync.Mutex
	var got [n][n + 1]uint64
	start := func(i int) *daemon {
		d := &daemon{i: i, app: filepath.Join(dir, fmt.Sprintf("d%d.app", i)), ctl: filepath.Join(dir, fmt.Sprintf("d%d.ctl", i)), exited: make(chan struct{})}
		logf, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("d%d.log", i)), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		d.cmd = exec.Command("ip", "netns", "exec", nss[i].Name, veloced, "--app-socket", d.app, "--control", d.ctl,
			"--listen", fmt.Sprintf("10.95.0.%d:7078", i+1), "--node-id", fmt.Sprint(node(i)),
			"--etcd", e.Endpoint, "--etcd-ttl", ttl.String(), "--etcd-prefix", "/fleet-test", "--control-rate", "-1")
		ready := testutil.WatchLine(control.ReadyLine, logf)
		d.cmd.Stdout, d.cmd.Stderr = logf, ready
		d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := d.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { d.cmd.Wait(); logf.Close(); close(d.exited) }()
		t.Cleanup(func() {
			d.cmd.Process.Signal(syscall.SIGTERM)
			<-d.exited
			if t.Failed() {
				b, _ := os.ReadFile(logf.Name())
				t.Logf("daemon %d's log:\n%s", i, b)
			}
		})
		ready.Wait(t, d.exited, time.Minute)
		if d.sess, err = guestlib.Open(ctx, guestlib.Options{Socket: d.app}); err != nil {
			t.Fatalf("open a session on daemon %d: %v", i, err)
		}
		st, err := d.sess.CreateStream(ctx, guestlib.StreamOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d.st = st
		if _, err := st.CreateSink(ctx, channel(i), guestlib.SinkOptions{Callback: func(m *guestlib.Message) {
			mu.Lock()
			if from := m.Source >> 32; from <= n {
				got[i][from]++
			}
			mu.Unlock()
			m.Release()
		}}); err != nil {
			t.Fatal(err)
		}
		// Sources toward every other daemon's sink.
		var srcs []*guestlib.Source
		for j := range n {
			if j != i {
				so, err := st.CreateSource(ctx, channel(j))
				if err != nil {
					t.Fatal(err)
				}
				srcs = append(srcs, so)
			}
		}
		go func() { // a message on each source every 10 ms while the daemon lives
			for {
				select {
				case <-ctx.Done():
					return
				case <-d.exited:
					return
				case <-time.After(10 * time.Millisecond):
				}
				for _, so := range srcs {
					if b, err := so.GetBuffer(32); err == nil {
						so.Emit(b)
					}
				}
			}
		}()
		return d
	}
	var ds [n]*daemon
	for i := range ds {
		ds[i] = start(i)
	}
	remote := func(d *daemon) control.RemoteInfo {
		info, _ := control.NewClient(d.ctl).Remote(ctx)
		return info
	}
	// waitFor polls until ok, at most a minute.
	waitFor := func(what string, ok func() bool) time.Duration {
		t.Helper()
		t0 := time.Now()
		for !ok() {
			if ctx.Err() != nil || time.Since(t0) > time.Minute {
				for _, d := range ds {
					t.Logf("daemon %d: %+v", d.i, remote(d))
				}
				t.Fatalf("%s: not within a minute", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
		return time.Since(t0)
	}
	// allPairs reports whether every sink got messages from every other
	// daemon since reset.
	reset := func() { mu.Lock(); got = [n][n + 1]uint64{}; mu.Unlock() }
	allPairs := func() bool {
		mu.Lock()
		defer mu.Unlock()
		for i := range n {
			for j := range n {
				if i != j && got[i][node(j)] == 0 {
					return false
				}
			}
		}
		return true
	}
	took := waitFor("every pair streams", allPairs)
	t.Logf("all 20 pairs streaming %v after the last daemon was ready", took.Round(time.Millisecond))
	for _, d := range ds {
		info := remote(d)
		if len(info.Peers) != n-1 {
			t.Fatalf("daemon %d: %d peers, want %d: %+v", d.i, len(info.Peers), n-1, info.Peers)
		}
		for _, p := range info.Peers {
			if p.Source != "etcd" || len(p.Channels) != 1 || p.State != "up" {
				t.Errorf("daemon %d: peer %+v, want source etcd, one channel, up", d.i, p)
			}
		}
		if e := info.Directory.Etcd; e == nil || !e.Connected || e.Revision == 0 || e.Nodes != n-1 || e.Key != fmt.Sprintf("/fleet-test/nodes/%d", node(d.i)) {
			t.Errorf("daemon %d: directory %+v etcd %+v", d.i, info.Directory, e)
		} else {
			t.Logf("daemon %d: etcd revision %d, %d puts, %d watch events", d.i, e.Revision, e.Puts, e.Events)
		}
	}

	// etcd stops: the streams go on, the daemons say so.
	e.Stop()
	waitFor("the daemons see etcd down", func() bool {
		for _, d := range ds {
			if e := remote(d).Directory.Etcd; e == nil || e.Connected || e.LastError == "" {
				return false
			}
		}
		return true
	})
	reset()
	waitFor("every pair streams while etcd is down", allPairs)
	e.Start()
	waitFor("the daemons reconnect", func() bool {
		for _, d := range ds {
			if e := remote(d).Directory.Etcd; e == nil || !e.Connected {
				return false
			}
		}
		return true
	})

	// kill -9: no lease revoked, so it leaves when the lease expires.
	victim := ds[n-1]
	oldBoot := remote(victim).Boot
	victim.sess.Close()
	killed := time.Now()
	victim.cmd.Process.Signal(syscall.SIGKILL)
	<-victim.exited
	peerOf := func(d *daemon, node uint32) *control.PeerInfo {
		for _, p := range remote(d).Peers {
			if p.Node == node {
				return &p
			}
		}
		return nil
	}
	waitFor("the killed daemon leaves every peer table", func() bool {
		for _, d := range ds[:n-1] {
			if peerOf(d, node(n-1)) != nil {
				return false
			}
		}
		return true
	})
	t.Logf("killed daemon gone from the others' peers %v after SIGKILL (lease TTL %v)", time.Since(killed).Round(time.Millisecond), ttl)

	// Restarted: seen at once, with its new boot id, and streams resume.
	ds[n-1] = start(n - 1)
	restarted := time.Now()
	newBoot := remote(ds[n-1]).Boot
	if newBoot == oldBoot {
		t.Fatalf("the restarted daemon kept boot id %s", oldBoot)
	}
	waitFor("the restarted daemon is every daemon's peer", func() bool {
		for _, d := range ds[:n-1] {
			if p := peerOf(d, node(n-1)); p == nil || p.Boot != newBoot || len(p.Channels) != 1 {
				return false
			}
		}
		return true
	})
	t.Logf("restarted daemon in every peer table %v after it was ready", time.Since(restarted).Round(time.Millisecond))
	reset()
	waitFor("every pair streams after the restart", allPairs)

	// 10,000 channels across the five: the directory converges, and each
	// daemon's etcd traffic is printed.
	const per = 2000
	before := make([]control.EtcdInfo, n)
	for i, d := range ds {
		before[i] = *remote(d).Directory.Etcd
	}
	t0 := time.Now()
	var wg sync.WaitGroup
	for _, d := range ds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range per {
				if _, err := d.st.CreateSink(ctx, uint32(10000+d.i*per+k), guestlib.SinkOptions{Callback: func(m *guestlib.Message) { m.Release() }}); err != nil {
					t.Errorf("daemon %d: sink %d: %v", d.i, k, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	created := time.Since(t0)
	converged := waitFor("10,000 channels converge", func() bool {
		for _, d := range ds {
			ps := remote(d).Peers
			if len(ps) != n-1 {
				return false
			}
			for _, p := range ps {
				if len(p.Channels) != per+1 {
					return false
				}
			}
		}
		return true
	})
	t.Logf("10,000 sinks created in %v; every directory holds them %v later", created.Round(time.Millisecond), converged.Round(time.Millisecond))
	for i, d := range ds {
		a, b := remote(d).Directory.Etcd, before[i]
		t.Logf("daemon %d's etcd traffic for its 2,000 sinks and the others' 8,000: %d puts, %d bytes written; %d watch events, %d bytes read",
			d.i, a.Puts-b.Puts, a.PutBytes-b.PutBytes, a.Events-b.Events, a.ReadBytes-b.ReadBytes)
	}
	for _, d := range ds {
		d.sess.Close()
	}
}
