package benchxdp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/plugins/udp"
	"github.com/veloce-io/veloce/plugins/xdp"
)

// Veloce: two daemons (backend.Daemon, what veloced runs) in this
// process, A with its datapath on the veth end in namespace a, B on the
// end in b, each the other's peer, each with an app socket. The
// applications are host applications, as veloce-perf is: guestlib
// sessions over the host transport, streams asking for acceleration with
// frugal resource use (the policy's XDP case). A's application emits on
// channel 1; B's consumes each message and emits it back on channel 2;
// A's consumes it: application to application.

const (
	chanPing = 1
	chanPong = 2
)

// daemons are the two in-process daemons of one path.
type daemons struct {
	kind         string
	sockA, sockB string
	dA, dB       *backend.Daemon
	xa, xb       *xdp.Plugin
	cancel       context.CancelFunc
	wg           sync.WaitGroup
}

func startDaemons(ctx context.Context, cfg *Config, h *hosts, kind, dir string) (_ *daemons, err error) {
	ds := &daemons{kind: kind, sockA: filepath.Join(dir, kind+"-a.sock"), sockB: filepath.Join(dir, kind+"-b.sock")}
	var dpA, dpB backend.Datapath
	switch kind {
	case PathXDP:
		open := func(ns *benchutil.Netns, iface string) (p *xdp.Plugin, err error) {
			err = ns.Do(func() error {
				p, err = xdp.New(xdp.Options{Interface: iface, Port: veloceXDPPort, BusyPoll: cfg.BusyPoll, SpinIdle: cfg.SpinIdle})
				return err
			})
			return p, err
		}
		if ds.xa, err = open(h.a, h.va); err != nil {
			return nil, err
		}
		if ds.xb, err = open(h.b, h.vb); err != nil {
			ds.xa.Close()
			return nil, err
		}
		dpA, dpB = ds.xa, ds.xb
	default:
		open := func(ns *benchutil.Netns, addr netip.Prefix) (p *udp.Plugin, err error) {
			err = ns.Do(func() error {
				p, err = udp.New(udp.Options{Listen: netip.AddrPortFrom(addr.Addr(), veloceUDPPort), RecvBuffer: 16 << 20, SendBuffer: 16 << 20})
				return err
			})
			return p, err
		}
		ua, err := open(h.a, addrA)
		if err != nil {
			return nil, err
		}
		ub, err := open(h.b, addrB)
		if err != nil {
			ua.Close()
			return nil, err
		}
		dpA, dpB = ua, ub
	}
	mk := func(dp, peer backend.Datapath, node uint32, name, sock string) (*backend.Daemon, error) {
		ro := backend.RemoteOptions{Peers: []netip.AddrPort{peer.LocalAddr()}, DirectoryInterval: 100 * time.Millisecond}
		if kind == PathXDP {
			ro.Accelerated = []backend.Datapath{dp}
		} else {
			ro.Datapath = dp
		}
		return backend.NewDaemon(backend.DaemonOptions{ControlSocket: filepath.Join(dir, kind+"-control-"+name+".sock"), AppSocket: sock,
			Runtime: backend.RuntimeOptions{NodeID: node, Remote: ro}})
	}
	if ds.dA, err = mk(dpA, dpB, 1, "a", ds.sockA); err == nil {
		ds.dB, err = mk(dpB, dpA, 2, "b", ds.sockB)
	}
	if err != nil {
		dpA.Close()
		dpB.Close()
		return nil, err
	}
	rctx, cancel := context.WithCancel(ctx)
	ds.cancel = cancel
	for _, d := range []*backend.Daemon{ds.dA, ds.dB} {
		ds.wg.Add(1)
		go func() { defer ds.wg.Done(); d.Run(rctx) }()
	}
	for _, sock := range []string{ds.sockA, ds.sockB} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			s, err := guestlib.Open(ctx, guestlib.Options{Socket: sock, RequestTimeout: 50 * time.Millisecond})
			if err == nil {
				s.Close()
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				ds.stop()
				return nil, fmt.Errorf("daemon at %s did not answer: %w", sock, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return ds, nil
}

func (ds *daemons) stop() {
	ds.cancel()
	ds.wg.Wait()
}

// apps are A's and B's application sessions with the ping and pong
// streams: A's source on chanPing and sink on chanPong, B's the reverse.
type apps struct {
	sa, sb       *guestlib.Session
	srcA, srcB   *guestlib.Source
	sinkA, sinkB *guestlib.Sink
	datapath     string
}

func (ds *daemons) apps(ctx context.Context) (_ *apps, err error) {
	a := &apps{}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	open := func(sock string) (*guestlib.Session, error) {
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return guestlib.Open(c, guestlib.Options{Socket: sock})
	}
	if a.sa, err = open(ds.sockA); err != nil {
		return nil, err
	}
	if a.sb, err = open(ds.sockB); err != nil {
		return nil, err
	}
	qos := guestlib.StreamOptions{Acceleration: ds.kind == PathXDP, Frugal: true}
	stA, err := a.sa.CreateStream(ctx, qos)
	if err != nil {
		return nil, err
	}
	a.datapath = stA.Datapath
	if a.srcA, err = stA.CreateSource(ctx, chanPing); err != nil {
		return nil, err
	}
	if a.sinkA, err = stA.CreateSink(ctx, chanPong, guestlib.SinkOptions{Queue: 8192}); err != nil {
		return nil, err
	}
	stB, err := a.sb.CreateStream(ctx, qos)
	if err != nil {
		return nil, err
	}
	if a.sinkB, err = stB.CreateSink(ctx, chanPing, guestlib.SinkOptions{Queue: 8192}); err != nil {
		return nil, err
	}
	if a.srcB, err = stB.CreateSource(ctx, chanPong); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *apps) close() {
	if a.sa != nil {
		a.sa.Close()
	}
	if a.sb != nil {
		a.sb.Close()
	}
}

func emit(ctx context.Context, src *guestlib.Source, size int) error {
	b, err := src.GetBufferContext(ctx, size)
	if err != nil {
		return err
	}
	_, err = src.Emit(b)
	return err
}

// veloceRTT: B echoes every message; A pings until the directories are
// exchanged (an answer comes), drains, then measures.
func (a *apps) rtt(ctx context.Context, cfg *Config, size int) (Latency, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for {
			m, err := a.sinkB.Consume(ctx)
			if err != nil {
				return
			}
			b, err := a.srcB.GetBufferContext(ctx, len(m.Data))
			if err != nil {
				m.Release()
				return
			}
			copy(b.Data, m.Data)
			m.Release()
			if _, err := a.srcB.Emit(b); err != nil {
				return
			}
		}
	}()
	if err := a.ready(ctx, size, a.sinkA); err != nil {
		return Latency{}, err
	}
	rtts := make([]time.Duration, 0, cfg.RoundTrips)
	lost := 0
	end := time.Now().Add(cfg.MaxRTTTime)
	for i := 0; i < cfg.Warmup+cfg.RoundTrips; i++ {
		if i >= cfg.Warmup && time.Now().After(end) {
			break
		}
		t0 := time.Now()
		if err := emit(ctx, a.srcA, size); err != nil {
			return Latency{}, err
		}
		c, ccancel := context.WithTimeout(ctx, time.Second)
		m, err := a.sinkA.Consume(c)
		ccancel()
		if err != nil {
			if ctx.Err() != nil {
				return Latency{}, ctx.Err()
			}
			lost++
			continue
		}
		m.Release()
		if i >= cfg.Warmup {
			rtts = append(rtts, time.Since(t0))
		}
	}
	l := summarize(rtts)
	l.Lost = lost
	return l, nil
}

// ready emits probes until sk gets one (the daemons learned each other's
// sinks), then drops stragglers until sk is quiet for 50 ms.
func (a *apps) ready(ctx context.Context, size int, sk *guestlib.Sink) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := emit(ctx, a.srcA, size); err != nil {
			return err
		}
		c, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		m, err := sk.Consume(c)
		cancel()
		if err == nil {
			m.Release()
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return errors.New("the daemons never exchanged a message (directory)")
		}
	}
	for quiet := time.Now(); time.Since(quiet) < 50*time.Millisecond; {
		if m, ok := sk.TryConsume(); ok {
			m.Release()
			quiet = time.Now()
			continue
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// throughput: A emits as fast as window allows; B's sink counts.
func (a *apps) throughput(ctx context.Context, cfg *Config, size, window int) (Throughput, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	count := benchutil.NewProgress()
	first := make(chan struct{}, 1)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }() // the counter ends with ctx
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			m, err := a.sinkB.Consume(ctx)
			if err != nil {
				return
			}
			m.Release()
			count.Add(1)
			select {
			case first <- struct{}{}:
			default:
			}
		}
	}()
	// Probe until B counts one, then let the probes settle.
	deadline := time.Now().Add(10 * time.Second)
	for len(first) == 0 {
		if err := emit(ctx, a.srcA, size); err != nil {
			return Throughput{}, err
		}
		time.Sleep(20 * time.Millisecond)
		if time.Now().After(deadline) {
			return Throughput{}, errors.New("the daemons never exchanged a message (directory)")
		}
	}
	for last := count.Count(); ; {
		time.Sleep(50 * time.Millisecond)
		if n := count.Count(); n == last {
			break
		} else {
			last = n
		}
	}
	base := count.Count()
	return meter(ctx, cfg, window, func(int) int {
		if emit(ctx, a.srcA, size) != nil {
			return 0
		}
		return 1
	}, func() uint64 { return count.Count() - base })
}

// IdleCPU is one veloced process's CPU time over an idle interval.
type IdleCPU struct {
	// Path is the daemon's datapath (xdp or udp).
	Path string `json:"path"`
	// Seconds is the interval; CPUms the CPU time (user and system, all
	// threads: /proc/PID/task/*/schedstat) veloced used in it, Percent
	// that as a share of one core.
	Seconds float64 `json:"seconds"`
	CPUms   float64 `json:"cpu_ms"`
	Percent float64 `json:"percent_of_a_core"`
	// Sleeps are the XDP polling thread's sleeps in poll(2) in the
	// interval (xdp only).
	Sleeps uint64 `json:"sleeps,omitempty"`
}

// idleCPU starts two veloced processes (the binary at bin), one per
// namespace, peered over the veth on path (xdp: --xdp; udp: --listen),
// waits until both are ready and a second more, and measures daemon A's
// CPU time over cfg.Idle with nothing to carry but the directories.
func idleCPU(ctx context.Context, cfg *Config, h *hosts, bin, path, dir string) (IdleCPU, error) {
	res := IdleCPU{Path: path}
	type proc struct {
		cmd *exec.Cmd
		ctl string
	}
	var procs []*proc
	defer func() {
		for _, p := range procs {
			p.cmd.Process.Signal(os.Interrupt)
			p.cmd.Wait()
		}
	}()
	for i, end := range []struct {
		ns         *benchutil.Netns
		iface      string
		addr, peer netip.Addr
	}{{h.a, h.va, addrA.Addr(), addrB.Addr()}, {h.b, h.vb, addrB.Addr(), addrA.Addr()}} {
		name := fmt.Sprintf("idle-%s-%d", path, i)
		p := &proc{ctl: filepath.Join(dir, name+".ctl")}
		args := []string{"netns", "exec", end.ns.Name, bin, "--app-socket", filepath.Join(dir, name+".app"), "--control", p.ctl,
			"--node-id", strconv.Itoa(i + 1), "--log-level", "warn"}
		if path == PathXDP {
			args = append(args, "--xdp", end.iface, "--peer", netip.AddrPortFrom(end.peer, veloceXDPPort).String())
		} else {
			args = append(args, "--listen", netip.AddrPortFrom(end.addr, veloceUDPPort).String(), "--peer", netip.AddrPortFrom(end.peer, veloceUDPPort).String())
		}
		p.cmd = exec.CommandContext(ctx, "ip", args...)
		stderr, err := p.cmd.StderrPipe()
		if err != nil {
			return res, err
		}
		if err := p.cmd.Start(); err != nil {
			return res, fmt.Errorf("start %s: %w", bin, err)
		}
		procs = append(procs, p)
		ready := make(chan error, 1)
		go func() {
			sc := bufio.NewScanner(stderr)
			var lines []string
			for sc.Scan() {
				if sc.Text() == control.ReadyLine {
					ready <- nil
					for sc.Scan() {
					}
					return
				}
				lines = append(lines, sc.Text())
			}
			ready <- fmt.Errorf("veloced exited before it was ready:\n%s", strings.Join(lines, "\n"))
		}()
		select {
		case err := <-ready:
			if err != nil {
				return res, err
			}
		case <-time.After(30 * time.Second):
			return res, errors.New("veloced not ready within 30 s")
		}
	}
	time.Sleep(time.Second) // past start-up and the first directories
	pid := procs[0].cmd.Process.Pid
	sleeps := func() uint64 {
		info, err := control.NewClient(procs[0].ctl).Remote(ctx)
		if err != nil || len(info.Datapaths) == 0 {
			return 0
		}
		for _, d := range info.Datapaths {
			if s, err := control.DecodeXDPStats(d); err == nil {
				return s.Sleeps
			}
		}
		return 0
	}
	if path == PathXDP {
		info, err := control.NewClient(procs[0].ctl).Remote(ctx)
		if err != nil || len(info.Datapaths) == 0 || info.Datapaths[0].Name != control.DatapathXDP {
			return res, fmt.Errorf("veloced --xdp has no XDP datapath (XDP did not attach?): %+v %v", info, err)
		}
	}
	c0, err := cpuTime(pid)
	if err != nil {
		return res, err
	}
	s0, t0 := sleeps(), time.Now()
	select {
	case <-time.After(cfg.Idle):
	case <-ctx.Done():
		return res, ctx.Err()
	}
	c1, err := cpuTime(pid)
	if err != nil {
		return res, err
	}
	el := time.Since(t0)
	res.Seconds = benchutil.Round2(el.Seconds())
	res.CPUms = benchutil.Round2(float64(c1-c0) / 1e6)
	res.Percent = benchutil.Round4(100 * float64(c1-c0) / float64(el))
	if path == PathXDP {
		res.Sleeps = sleeps() - s0
	}
	return res, nil
}

// cpuTime is the CPU time of every thread of pid, in nanoseconds
// (/proc/PID/task/TID/schedstat: its first field).
func cpuTime(pid int) (int64, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", dir, err)
	}
	var total int64
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "schedstat"))
		if err != nil {
			continue // the thread exited
		}
		f := strings.Fields(string(b))
		if len(f) > 0 {
			v, _ := strconv.ParseInt(f[0], 10, 64)
			total += v
		}
	}
	return total, nil
}
