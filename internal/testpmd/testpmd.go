// Package testpmd runs DPDK's testpmd as a peer for tests and benchmarks:
// a vhost-user backend nobody here wrote (net_vhost), a virtio-user
// frontend (net_virtio_user), a traffic generator (txonly) or sink
// (rxonly). It starts testpmd non-interactively, waits for what it prints,
// and on Stop parses the forward statistics it prints when it exits.
//
// Machine facts (DESIGN.md): two lcores, --no-huge -m 512
// --single-file-segments, --total-num-mbufs=32768, and --stats-period so
// that testpmd runs until signalled instead of exiting when stdin closes.
package testpmd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Options configure one testpmd process.
type Options struct {
	// Binary is the testpmd executable; default dpdk-testpmd.
	Binary string
	// Lcores is the EAL core list (-l); default "0,1".
	Lcores string
	// Vdevs are virtual devices, e.g. "net_vhost0,iface=/tmp/s,queues=1".
	Vdevs []string
	// ForwardMode is testpmd's --forward-mode: io, icmpecho, txonly,
	// rxonly, macswap...; default io.
	ForwardMode string
	// TxPktLen sets --txpkts for txonly (bytes per packet, with headers).
	TxPktLen int
	// StatsPeriod is --stats-period in seconds; default 1.
	StatsPeriod int
	// Args are extra application arguments (after --).
	Args []string
	// EALArgs are extra EAL arguments (before --).
	EALArgs []string
	// Prefix is the EAL --file-prefix; default a unique one, so several
	// testpmds (and DPDK programs) can run at once.
	Prefix string
}

// Process is a running testpmd.
type Process struct {
	cmd    *exec.Cmd
	prefix string
	out    syncBuffer
	done   chan struct{}
	err    error // exit status, valid after done
}

// Stats are the accumulated forward statistics for all ports, as testpmd
// prints them when it exits.
type Stats struct {
	RXPackets, RXDropped, TXPackets, TXDropped uint64
}

// Start launches testpmd. The process is killed if ctx is cancelled.
func Start(ctx context.Context, o Options) (*Process, error) {
	if o.Binary == "" {
		o.Binary = "dpdk-testpmd"
	}
	if o.Lcores == "" {
		o.Lcores = "0,1"
	}
	if o.ForwardMode == "" {
		o.ForwardMode = "io"
	}
	if o.StatsPeriod == 0 {
		o.StatsPeriod = 1
	}
	if o.Prefix == "" {
		o.Prefix = fmt.Sprintf("veloce-testpmd-%d-%d", os.Getpid(), time.Now().UnixNano())
	}
	args := []string{"-l", o.Lcores, "--no-huge", "-m", "512", "--single-file-segments", "--no-pci",
		"--file-prefix", o.Prefix, "--log-level", "pmd.net.vhost:info"}
	for _, v := range o.Vdevs {
		args = append(args, "--vdev", v)
	}
	args = append(args, o.EALArgs...)
	args = append(args, "--", "--total-num-mbufs=32768", "--forward-mode="+o.ForwardMode,
		"--stats-period", strconv.Itoa(o.StatsPeriod))
	if o.TxPktLen > 0 {
		args = append(args, "--txpkts="+strconv.Itoa(o.TxPktLen))
	}
	args = append(args, o.Args...)
	p := &Process{done: make(chan struct{}), prefix: o.Prefix}
	p.cmd = exec.CommandContext(ctx, o.Binary, args...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start testpmd: %w", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Output returns everything testpmd printed so far.
func (p *Process) Output() []byte { return p.out.bytes() }

// WaitOutput waits until testpmd has printed s.
func (p *Process) WaitOutput(ctx context.Context, s string) error {
	for {
		if bytes.Contains(p.out.bytes(), []byte(s)) {
			return nil
		}
		select {
		case <-p.done:
			if bytes.Contains(p.out.bytes(), []byte(s)) {
				return nil
			}
			return fmt.Errorf("testpmd exited (%v) before printing %q:\n%s", p.err, s, tailBytes(p.out.bytes(), 2000))
		case <-ctx.Done():
			return fmt.Errorf("wait for testpmd to print %q: %w:\n%s", s, ctx.Err(), tailBytes(p.out.bytes(), 2000))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// WaitSocket waits until a vhost-user socket path exists (net_vhost
// creates it when its port starts).
func (p *Process) WaitSocket(ctx context.Context, path string) error {
	for {
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("testpmd exited (%v) before creating %s:\n%s", p.err, path, tailBytes(p.out.bytes(), 2000))
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w:\n%s", path, ctx.Err(), tailBytes(p.out.bytes(), 2000))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ErrNoStats means testpmd exited without printing its statistics.
var ErrNoStats = errors.New("testpmd printed no accumulated statistics")

// Stop interrupts testpmd (SIGINT: it stops forwarding, prints statistics
// and exits), kills it after 20 s, and returns the parsed statistics.
func (p *Process) Stop() (*Stats, error) {
	select {
	case <-p.done:
	default:
		p.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
	}
	// EAL leaves its runtime directory behind (as root, /var/run/dpdk).
	os.RemoveAll(filepath.Join("/var/run/dpdk", p.prefix))
	return ParseStats(p.out.bytes())
}

var statsRE = regexp.MustCompile(`(?s)Accumulated forward statistics for all ports.*?RX-packets:\s*(\d+)\s+RX-dropped:\s*(\d+).*?TX-packets:\s*(\d+)\s+TX-dropped:\s*(\d+)`)

// ParseStats finds the last accumulated statistics block in testpmd's output.
func ParseStats(out []byte) (*Stats, error) {
	all := statsRE.FindAllSubmatch(out, -1)
	if len(all) == 0 {
		return nil, fmt.Errorf("%w:\n%s", ErrNoStats, tailBytes(out, 2000))
	}
	m := all[len(all)-1]
	n := func(b []byte) uint64 { v, _ := strconv.ParseUint(string(b), 10, 64); return v }
	return &Stats{RXPackets: n(m[1]), RXDropped: n(m[2]), TXPackets: n(m[3]), TXDropped: n(m[4])}, nil
}

func tailBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

type syncBuffer struct {
	mu sync.Mutex
	b  []byte // +checklocks:mu
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	s.b = append(s.b, p...)
	s.mu.Unlock()
	return len(p), nil
}

func (s *syncBuffer) bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b)
}
