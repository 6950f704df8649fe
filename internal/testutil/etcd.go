package testutil

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Etcd is a real etcd server (Debian's etcd-server, /usr/bin/etcd) a test
// started in a temporary directory: the fleet directory's store. It is
// stopped when the test ends.
type Etcd struct {
	// Endpoint is its client URL (http://IP:PORT).
	Endpoint string
	dir      string
	args     []string
	ns       *Netns
	cmd      *exec.Cmd
	exited   chan struct{}
	log      *os.File
	t        testing.TB
}

// StartEtcd starts etcd listening on ip (loopback "127.0.0.1" with free
// ports, or an address of ns, nil for the test's own namespace) and
// waits until it accepts clients. It needs etcd (apt-get install
// etcd-server; make deps installs it).
func StartEtcd(t testing.TB, ns *Netns, ip string) *Etcd {
	t.Helper()
	bin := RequiresCommand(t, "etcd", "etcd-server")
	dir := t.TempDir()
	client, peer := 2379, 2380
	if ns == nil {
		client, peer = freePort(t, ip), freePort(t, ip)
	}
	e := &Etcd{Endpoint: fmt.Sprintf("http://%s:%d", ip, client), dir: dir, ns: ns, t: t}
	peerURL := fmt.Sprintf("http://%s:%d", ip, peer)
	e.args = []string{bin, "--name", "test", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", e.Endpoint, "--advertise-client-urls", e.Endpoint,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "test=" + peerURL, "--initial-cluster-state", "new",
		"--heartbeat-interval", "50", "--election-timeout", "500"}
	var err error
	if e.log, err = os.Create(filepath.Join(dir, "etcd.log")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Stop(); e.log.Close() })
	e.Start()
	return e
}

// Start starts the server again after Stop (same data) and waits until it
// accepts clients.
func (e *Etcd) Start() {
	e.t.Helper()
	args := e.args
	if e.ns != nil {
		args = append([]string{"ip", "netns", "exec", e.ns.Name}, args...)
	}
	e.cmd = exec.Command(args[0], args[1:]...)
	e.cmd.Stdout, e.cmd.Stderr = e.log, e.log
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := e.cmd.Start(); err != nil {
		e.t.Fatalf("start etcd: %v", err)
	}
	e.exited = make(chan struct{})
	go func() { e.cmd.Wait(); close(e.exited) }()
	host := e.Endpoint[len("http://"):]
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-e.exited:
			b, _ := os.ReadFile(e.log.Name())
			e.t.Fatalf("etcd exited at start:\n%s", b)
		default:
		}
		ok := false
		dial := func() error {
			c, err := net.DialTimeout("tcp", host, 200*time.Millisecond)
			if err == nil {
				c.Close()
				ok = true
			}
			return nil
		}
		if e.ns != nil {
			e.ns.Do(dial)
		} else {
			dial()
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(e.log.Name())
			e.t.Fatalf("etcd did not listen on %s within 30s:\n%s", host, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops the server (SIGTERM, then SIGKILL after 5s) and waits.
func (e *Etcd) Stop() {
	if e.cmd == nil {
		return
	}
	e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.exited:
	case <-time.After(5 * time.Second):
		e.cmd.Process.Kill()
		<-e.exited
	}
	e.cmd = nil
}

// freePort returns a TCP port free on ip now.
func freePort(t testing.TB, ip string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, p, _ := net.SplitHostPort(l.Addr().String())
	n, _ := strconv.Atoi(p)
	return n
}
