package benchrdma

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/wire"
	"github.com/veloce-io/veloce/plugins/rdma"
)

// median returns the median of ds in µs (0 for none).
func median(ds []time.Duration) float64 {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return float64(ds[len(ds)/2]) / 1e3
}

// pluginPair is two RDMA datapaths in this process, a on rxe0 and b on
// rxe1: the runtime's datapath without the daemons around it.
type pluginPair struct {
	a, b    *rdma.Plugin
	cancel  context.CancelFunc
	done    chan struct{}
	echo    atomic.Bool
	counted atomic.Uint64
	back    []wire.Packet // b's echo batch, on b's polling thread
}

func openPluginPair() (*pluginPair, error) {
	// Slots for the largest message and its wire header.
	const slot = 8192
	a, err := rdma.New(rdma.Options{Addr: addrA, Port: portPlugins, CPU: -1, SlotSize: slot})
	if err != nil {
		return nil, err
	}
	b, err := rdma.New(rdma.Options{Addr: addrB, Port: portPlugins, CPU: -1, SlotSize: slot})
	if err != nil {
		a.Close()
		return nil, err
	}
	pp := &pluginPair{a: a, b: b, done: make(chan struct{}), back: make([]wire.Packet, 32)}
	pp.echo.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	pp.cancel = cancel
	go func() { defer close(pp.done); b.Poll(ctx, pp.handleB, nil) }()
	pctx, pcancel := context.WithTimeout(context.Background(), time.Minute)
	defer pcancel()
	if err := a.Probe(pctx, b.LocalAddr()); err != nil {
		pp.close()
		return nil, fmt.Errorf("connect the datapaths: %w", err)
	}
	return pp, nil
}

// handleB echoes each message back to a (ping-pong) or counts it.
func (pp *pluginPair) handleB(pkts []wire.Packet) {
	if !pp.echo.Load() {
		pp.counted.Add(uint64(len(pkts)))
		return
	}
	n := copy(pp.back, pkts)
	for done := 0; done < n; {
		k, err := pp.b.SendBatch(pp.back[done:n])
		done += k
		if err != nil {
			done++ // cannot go: a's ping times out and is sent again
		}
	}
}

func (pp *pluginPair) close() {
	pp.cancel()
	<-pp.done
	pp.a.Close()
	pp.b.Close()
}

// packet makes a wire data message of size payload bytes for dst.
func packet(dst netip.AddrPort, size int, seq uint64) wire.Packet {
	buf := make([]byte, wire.HeaderLen+size)
	h := wire.Header{Kind: wire.KindData, FragCount: 1, Channel: 1, Source: wire.NewSourceID(1, 1), Seq: seq}
	n, err := h.MarshalPacket(buf, buf[wire.HeaderLen:])
	if err != nil {
		panic(err)
	}
	return wire.Packet{Addr: dst, Buf: buf, N: n}
}

// rtt measures count round trips a -> b -> a (after a warm-up).
func (pp *pluginPair) rtt(ctx context.Context, size, count int) (float64, error) {
	pp.echo.Store(true)
	out := []wire.Packet{packet(pp.b.LocalAddr(), size, 0)}
	in := []wire.Packet{{Buf: make([]byte, wire.HeaderLen+size+64)}}
	rtts := make([]time.Duration, 0, count)
	lost := 0
	for i := -count / 10; i < count && ctx.Err() == nil; i++ {
		start := time.Now()
		for {
			k, err := pp.a.SendBatch(out)
			if err != nil {
				return 0, err
			}
			if k == 1 {
				break
			}
		}
		k, err := pp.a.RecvBatch(in, time.Second)
		if err != nil {
			return 0, err
		}
		if k == 0 {
			if lost++; lost > 10 {
				return 0, errors.New("more than 10 round trips lost")
			}
			continue
		}
		if i >= 0 {
			rtts = append(rtts, time.Since(start))
		}
	}
	return median(rtts), ctx.Err()
}

// throughput sends from a as fast as its queue takes for dur and returns
// the rate b received at.
func (pp *pluginPair) throughput(ctx context.Context, size int, dur time.Duration) (float64, error) {
	pp.echo.Store(false)
	defer func() {
		time.Sleep(200 * time.Millisecond) // let the queue drain before the next ping-pong
		pp.echo.Store(true)
	}()
	batch := make([]wire.Packet, 32)
	for i := range batch {
		batch[i] = packet(pp.b.LocalAddr(), size, uint64(i))
	}
	warm := time.Now().Add(dur / 4)
	var c0 uint64
	var t0 time.Time
	for ctx.Err() == nil {
		now := time.Now()
		if t0.IsZero() && now.After(warm) {
			t0, c0 = now, pp.counted.Load()
		}
		if !t0.IsZero() && now.Sub(t0) >= dur {
			return float64(pp.counted.Load()-c0) / now.Sub(t0).Seconds(), nil
		}
		if _, err := pp.a.SendBatch(batch); err != nil {
			return 0, err
		}
	}
	return 0, ctx.Err()
}

// appPair is two daemons with the RDMA datapath and an application on
// each: A's sources channel 1 (pings), B's sink on 1 echoes on channel 2.
type appPair struct {
	dir        string
	dA, dB     *backend.Daemon
	cancel     context.CancelFunc
	wg         sync.WaitGroup
	sA, sB     *guestlib.Session
	srcA, srcB *guestlib.Source
	echo       atomic.Bool
	counted    atomic.Uint64
	pong       chan uint64
}

func openAppPair(ctx context.Context) (ap *appPair, err error) {
	pa, err := rdma.New(rdma.Options{Addr: addrA, Port: portDaemons, CPU: -1})
	if err != nil {
		return nil, err
	}
	pb, err := rdma.New(rdma.Options{Addr: addrB, Port: portDaemons, CPU: -1})
	if err != nil {
		pa.Close()
		return nil, err
	}
	ap = &appPair{pong: make(chan uint64, 16)}
	ap.echo.Store(true)
	if ap.dir, err = os.MkdirTemp("", "veloce-bench-rdma-"); err != nil {
		return nil, err
	}
	mk := func(node uint32, name string, dp *rdma.Plugin, peer netip.AddrPort) (*backend.Daemon, error) {
		return backend.NewDaemon(backend.DaemonOptions{ControlSocket: filepath.Join(ap.dir, name+".ctl"), AppSocket: filepath.Join(ap.dir, name+".app"),
			Runtime: backend.RuntimeOptions{NodeID: node, Remote: backend.RemoteOptions{Accelerated: []backend.Datapath{dp},
				Peers: []netip.AddrPort{peer}, DirectoryInterval: 200 * time.Millisecond}}})
	}
	if ap.dA, err = mk(1, "a", pa, pb.LocalAddr()); err == nil {
		ap.dB, err = mk(2, "b", pb, pa.LocalAddr())
	}
	if err != nil {
		pa.Close()
		pb.Close()
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.Background())
	ap.cancel = cancel
	for _, d := range []*backend.Daemon{ap.dA, ap.dB} {
		ap.wg.Add(1)
		go func() { defer ap.wg.Done(); d.Run(rctx) }() // the runtime closes its datapath
	}
	defer func() {
		if err != nil {
			ap.close()
		}
	}()
	if err = ap.sessions(ctx); err != nil {
		return nil, err
	}
	return ap, ap.ready(ctx)
}

func (ap *appPair) sessions(ctx context.Context) (err error) {
	open := func(sock string) (*guestlib.Session, error) {
		deadline := time.Now().Add(30 * time.Second)
		for {
			s, err := guestlib.Open(ctx, guestlib.Options{Socket: sock})
			if err == nil || time.Now().After(deadline) {
				return s, err
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if ap.sA, err = open(filepath.Join(ap.dir, "a.app")); err != nil {
		return err
	}
	if ap.sB, err = open(filepath.Join(ap.dir, "b.app")); err != nil {
		return err
	}
	stA, err := ap.sA.CreateStream(ctx, guestlib.StreamOptions{Acceleration: true})
	if err != nil {
		return err
	}
	stB, err := ap.sB.CreateStream(ctx, guestlib.StreamOptions{Acceleration: true})
	if err != nil {
		return err
	}
	if stA.Datapath != backend.DatapathRDMA || stB.Datapath != backend.DatapathRDMA {
		return fmt.Errorf("streams got datapaths %q and %q, want rdma (%s)", stA.Datapath, stB.Datapath, stA.Warning)
	}
	if ap.srcA, err = stA.CreateSource(ctx, 1); err != nil {
		return err
	}
	if ap.srcB, err = stB.CreateSource(ctx, 2); err != nil {
		return err
	}
	if _, err = stA.CreateSink(ctx, 2, guestlib.SinkOptions{Callback: ap.deliverA}); err != nil {
		return err
	}
	_, err = stB.CreateSink(ctx, 1, guestlib.SinkOptions{Callback: ap.deliverB})
	return err
}

// emit sends size bytes from src, the first 8 of them v.
func emit(src *guestlib.Source, size int, v uint64) error {
	b, err := src.GetBuffer(size)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint64(b.Data, v)
	_, err = src.Emit(b)
	return err
}

// ready pings until a pong comes (the directories are exchanged).
func (ap *appPair) ready(ctx context.Context) error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		emit(ap.srcA, 64, ^uint64(0))
		select {
		case <-ap.pong:
			time.Sleep(100 * time.Millisecond)
			for len(ap.pong) > 0 {
				<-ap.pong
			}
			return nil
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return errors.New("the daemons never exchanged a message")
}

func (ap *appPair) deliverB(m *guestlib.Message) {
	defer m.Release()
	if !ap.echo.Load() {
		ap.counted.Add(1)
		return
	}
	b, err := ap.srcB.GetBuffer(len(m.Data))
	if err != nil {
		return // A's ping times out and goes again
	}
	copy(b.Data, m.Data)
	ap.srcB.Emit(b)
}

func (ap *appPair) deliverA(m *guestlib.Message) {
	defer m.Release()
	if len(m.Data) >= 8 {
		select {
		case ap.pong <- binary.LittleEndian.Uint64(m.Data):
		default:
		}
	}
}

func (ap *appPair) rtt(ctx context.Context, size, count int) (float64, error) {
	ap.echo.Store(true)
	rtts := make([]time.Duration, 0, count)
	lost := 0
	for i := -count / 10; i < count && ctx.Err() == nil; i++ {
		v := uint64(i + count)
		start := time.Now()
		if err := emit(ap.srcA, size, v); err != nil {
			time.Sleep(time.Millisecond)
			continue
		}
		timeout := time.After(time.Second)
	wait:
		for {
			select {
			case got := <-ap.pong:
				if got == v {
					break wait
				}
			case <-timeout:
				if lost++; lost > 10 {
					return 0, errors.New("more than 10 round trips lost")
				}
				break wait
			}
		}
		if i >= 0 {
			rtts = append(rtts, time.Since(start))
		}
	}
	return median(rtts), ctx.Err()
}

func (ap *appPair) throughput(ctx context.Context, size int, dur time.Duration) (float64, error) {
	ap.echo.Store(false)
	defer func() {
		time.Sleep(300 * time.Millisecond)
		ap.echo.Store(true)
	}()
	warm := time.Now().Add(dur / 4)
	var c0 uint64
	var t0 time.Time
	for ctx.Err() == nil {
		now := time.Now()
		if t0.IsZero() && now.After(warm) {
			t0, c0 = now, ap.counted.Load()
		}
		if !t0.IsZero() && now.Sub(t0) >= dur {
			return float64(ap.counted.Load()-c0) / now.Sub(t0).Seconds(), nil
		}
		if err := emit(ap.srcA, size, 0); err != nil {
			time.Sleep(20 * time.Microsecond) // every TX slot in flight
		}
	}
	return 0, ctx.Err()
}

func (ap *appPair) close() {
	for _, s := range []*guestlib.Session{ap.sA, ap.sB} {
		if s != nil {
			s.Close()
		}
	}
	if ap.cancel != nil {
		ap.cancel()
	}
	ap.wg.Wait()
	os.RemoveAll(ap.dir)
}
