package benchv2v

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchvhost"
	"github.com/veloce-io/veloce/internal/dpdk"
	"github.com/veloce-io/veloce/internal/guestproto"
	"github.com/veloce-io/veloce/internal/testpmd"
	dpdkplug "github.com/veloce-io/veloce/plugins/dpdk"
)

// channel is the channel guest 1's source and guest 2's sink meet on.
const channel = 1

// errNoDPDK: the Veloce side's guests are the project's DPDK binding.
var errNoDPDK = errors.New("veloce-bench v2v needs DPDK: build with -tags dpdk and cgo (make build)")

// veloce measures one round of Veloce: a daemon in this process with two
// vhost-user ports in one tenant, guest 1 emitting on channel, guest 2
// counting deliveries. It returns the per-second delivered rates of the
// window (packets per second) and guest 1's sending rate over it.
func veloce(ctx context.Context, cfg *Config, round int) (recv []float64, send float64, err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute+time.Duration(cfg.Warmup+cfg.Samples)*time.Second)
	defer cancel()
	dir := cfg.Dir
	opts := backend.DaemonOptions{ControlSocket: filepath.Join(dir, fmt.Sprintf("control-%d.sock", round))}
	var socks []string
	for _, n := range []string{"vm1", "vm2"} {
		s := filepath.Join(dir, fmt.Sprintf("veloce-%s-%d.sock", n, round))
		socks = append(socks, s)
		opts.Ports = append(opts.Ports, backend.PortOptions{Name: n, Socket: s, Tenant: "v2v", PollCPUs: cfg.hostCPUs()})
	}
	d, err := backend.NewDaemon(opts)
	if err != nil {
		return nil, 0, err
	}
	if err := d.Start(ctx); err != nil {
		return nil, 0, err
	}
	defer d.Close()

	tx, err := openGuest(socks[0])
	if err != nil {
		return nil, 0, err
	}
	defer tx.close()
	rx, err := openGuest(socks[1])
	if err != nil {
		return nil, 0, err
	}
	defer rx.close()

	sess2, st2, err := rx.openSession(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("guest 2: %w", err)
	}
	r, err := rx.call(ctx, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateSink, Session: sess2}, Stream: st2, Channel: channel})
	if err != nil {
		return nil, 0, fmt.Errorf("guest 2: %w", err)
	}
	sink := r.ID
	rx.credit(sess2, sink, 0, creditWindow) // the sink's first window, as guestlib grants it
	sess1, st1, err := tx.openSession(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("guest 1: %w", err)
	}
	r, err = tx.call(ctx, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateSource, Session: sess1}, Stream: st1, Channel: channel})
	if err != nil {
		return nil, 0, fmt.Errorf("guest 1: %w", err)
	}
	frame, err := tx.emitFrame(sess1, r.ID, cfg.Size)
	if err != nil {
		return nil, 0, err
	}
	cfg.frameLen = len(frame)
	cfg.logf("veloce round %d: sink %d, source %d, %d-byte Emit frames", round+1, sink, r.ID, len(frame))

	var stop atomic.Bool
	var c counters
	done := benchutil.OnEALCore(cfg.GuestCPU, func() error { return pairLoop(&stop, tx, frame, rx, rx.deliverCounter(sess2, sink, true), &c) })
	stopProfile, perr := cfg.startProfile()
	recv, send, werr := sampleCounters(ctx, cfg, &c.got, &c.sent)
	stopProfile()
	werr = errors.Join(werr, perr)
	stop.Store(true)
	err = errors.Join(werr, <-done)
	st := d.Ports()
	cfg.logf("veloce round %d: sent %d, delivered %d, outcomes %d, other frames %d; ports %+v", round+1, c.sent.Load(), c.got.Load(), c.back.Load(), c.other.Load(), st)
	if err == nil && c.got.Load() == 0 {
		err = errors.New("guest 2 received no Deliver frames")
	}
	return recv, send, err
}

// sampleCounters reads got once a second: Warmup seconds are skipped,
// then the rates of Samples seconds are returned, with sent's mean rate
// over the same window.
func sampleCounters(ctx context.Context, cfg *Config, got, sent *atomic.Uint64) ([]float64, float64, error) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last, lastT := got.Load(), time.Now()
	var sent0 uint64
	var t0 time.Time
	var rates []float64
	for i := 0; len(rates) < cfg.Samples; i++ {
		select {
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		case <-t.C:
		}
		g, now := got.Load(), time.Now()
		if i == cfg.Warmup {
			sent0, t0 = sent.Load(), now
		}
		if i > cfg.Warmup {
			rates = append(rates, float64(g-last)/now.Sub(lastT).Seconds())
		}
		last, lastT = g, now
	}
	return rates, float64(sent.Load()-sent0) / time.Since(t0).Seconds(), nil
}

// reference measures one round of DPDK: testpmd io-forwarding between two
// net_vhost ports (the switch, its forwarding lcore on HostCPU), with the
// same two guests as veloce on them: guest 1 sends RefSize-byte UDP
// frames, guest 2 counts every frame it receives.
func reference(ctx context.Context, cfg *Config, round int) (recv []float64, send float64, err error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute+time.Duration(cfg.Warmup+cfg.Samples)*time.Second)
	defer cancel()
	a := filepath.Join(cfg.Dir, fmt.Sprintf("ref-a-%d.sock", round))
	b := filepath.Join(cfg.Dir, fmt.Sprintf("ref-b-%d.sock", round))
	main := cfg.GuestCPU
	if cfg.HostCPU < 0 {
		main = 0
	}
	host := cfg.HostCPU
	if host < 0 {
		host = 1 - main
	}
	o := testpmd.Options{
		Binary: cfg.Testpmd,
		Lcores: fmt.Sprintf("%d,%d", main, host), EALArgs: []string{"--main-lcore", fmt.Sprint(main)},
		Vdevs:       []string{fmt.Sprintf("net_vhost0,iface=%s,queues=1", a), fmt.Sprintf("net_vhost1,iface=%s,queues=1", b)},
		ForwardMode: "io", Args: []string{"--txq=1", "--rxq=1"},
		Prefix: fmt.Sprintf("veloce-v2v-%d-%d-%d", os.Getpid(), round, time.Now().UnixNano()),
	}
	sw, err := testpmd.Start(ctx, o)
	if err != nil {
		return nil, 0, err
	}
	defer func() {
		sw.Stop()
		os.RemoveAll(filepath.Join("/var/run/dpdk", o.Prefix))
	}()
	for _, s := range []string{a, b} {
		if err := sw.WaitSocket(ctx, s); err != nil {
			return nil, 0, fmt.Errorf("net_vhost socket: %w\n%s", err, tail(sw.Output()))
		}
	}
	tx, err := openGuest(a)
	if err != nil {
		return nil, 0, err
	}
	defer tx.close()
	rx, err := openGuest(b)
	if err != nil {
		return nil, 0, err
	}
	defer rx.close()
	frame, err := benchvhost.BuildUDPFrame(cfg.RefSize)
	if err != nil {
		return nil, 0, err
	}
	var stop atomic.Bool
	var c counters
	done := benchutil.OnEALCore(cfg.GuestCPU, func() error { return pairLoop(&stop, tx, frame, rx, nil, &c) })
	recv, send, werr := sampleCounters(ctx, cfg, &c.got, &c.sent)
	stop.Store(true)
	err = errors.Join(werr, <-done)
	cfg.logf("reference round %d: sent %d, received %d", round+1, c.sent.Load(), c.got.Load())
	if err == nil && c.got.Load() == 0 {
		err = fmt.Errorf("guest 2 received nothing through testpmd:\n%s", tail(sw.Output()))
	}
	return recv, send, err
}

// startProfile starts the CPU profile of the first Veloce round's window
// (Config.CPUProfile) and returns what stops it; a no-op when none is
// asked for or one was taken.
func (c *Config) startProfile() (stop func(), err error) {
	if c.CPUProfile == "" || c.profiled {
		return func() {}, nil
	}
	c.profiled = true
	f, err := os.Create(c.CPUProfile)
	if err != nil {
		return func() {}, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return func() {}, err
	}
	c.logf("CPU profile of this window: %s (go tool pprof -top %s)", c.CPUProfile, c.CPUProfile)
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

func tail(b []byte) string {
	s := string(b)
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return strings.TrimSpace(s)
}

// initEAL starts this process's EAL once (the guests' virtio-user ports).
func initEAL() error {
	if !dpdk.Available() {
		return errNoDPDK
	}
	if dpdk.Initialized() {
		return nil
	}
	if err := dpdk.Init(dpdkplug.DefaultEAL); err != nil {
		return fmt.Errorf("EAL (%s): %w", strings.Join(dpdkplug.DefaultEAL, " "), err)
	}
	return nil
}
