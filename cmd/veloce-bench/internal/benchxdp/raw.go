package benchxdp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
	"github.com/veloce-io/veloce/internal/netstack"
	"github.com/veloce-io/veloce/internal/pkt"
	ixdp "github.com/veloce-io/veloce/internal/xdp"
)

// The raw reference: an AF_XDP socket on each veth end, written for the
// benchmark with the same mechanics the plugin uses (internal/xdp: the
// program, the socket, its UMEM and rings) and nothing else: no runtime,
// no wire header, no applications. A's pinger builds an
// Ethernet/IPv4/UDP frame (internal/netstack) in a TX frame, kicks, and
// spins on its RX ring for the answer; B's echoer spins on its RX ring,
// swaps the frame's addresses and ports in place (the checksums stay
// valid: both are sums over the swapped fields) and transmits the same
// UMEM frame back. Both spin on locked OS threads: the best AF_XDP on
// this link does, at the cost of a core each.

const (
	rawFrames    = 2048 // per socket: half fill, half TX
	rawFrameSize = 2048
	rawBatch     = 32
)

// rawEnd is one raw AF_XDP socket with its program.
type rawEnd struct {
	prog  *ixdp.Program
	sock  *ixdp.Socket
	host  *netstack.Host
	free  []uint64 // TX frames not in flight
	descs []unix.XDPDesc
	addrs []uint64
}

func openRawEnd(ns *benchutil.Netns, iface string, addr netip.Prefix, port uint16) (*rawEnd, error) {
	e := &rawEnd{descs: make([]unix.XDPDesc, rawBatch), addrs: make([]uint64, rawFrames/2)}
	err := ns.Do(func() error {
		ifc, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		mac, _ := pkt.MACFrom(ifc.HardwareAddr)
		if e.host, err = netstack.New(netstack.Config{MAC: mac, Addr: addr}); err != nil {
			return err
		}
		if e.prog, err = ixdp.LoadProgram(ixdp.ProgramConfig{Ifindex: ifc.Index, Queues: 1, IP: addr.Addr().As4(), Port: port}); err != nil {
			return err
		}
		if e.sock, err = ixdp.OpenSocket(ixdp.SocketConfig{Ifindex: ifc.Index, Frames: rawFrames, FrameSize: rawFrameSize}); err != nil {
			return err
		}
		return e.prog.Register(0, e.sock.FD())
	})
	if err != nil {
		e.close()
		return nil, fmt.Errorf("raw AF_XDP on %s: %w", iface, err)
	}
	fill := make([]uint64, rawFrames/2)
	for i := range fill {
		fill[i] = uint64(i) * rawFrameSize
	}
	e.sock.Fill(fill)
	for i := rawFrames / 2; i < rawFrames; i++ {
		e.free = append(e.free, uint64(i)*rawFrameSize)
	}
	return e, nil
}

func (e *rawEnd) close() error {
	var errs []error
	if e.prog != nil {
		errs = append(errs, e.prog.Close())
	}
	if e.sock != nil {
		errs = append(errs, e.sock.Close())
	}
	return errors.Join(errs...)
}

// reap takes sent TX frames back.
func (e *rawEnd) reap() {
	n := e.sock.Complete(e.addrs[:cap(e.free)-len(e.free)])
	e.free = append(e.free, e.addrs[:n]...)
}

// send transmits up to n copies of a frame to dst (payload stamped with
// seq, seq+1, ...) in one burst and returns how many went.
func (e *rawEnd) send(dstMAC pkt.MAC, dst netip.AddrPort, port uint16, payload []byte, seq uint64, n int) int {
	e.reap()
	k := 0
	for k < n && k < len(e.descs) && len(e.free) > 0 {
		addr := e.free[len(e.free)-1]
		f := e.sock.Frame(addr)
		binary.LittleEndian.PutUint64(payload, seq+uint64(k))
		l, err := e.host.PutUDPFrame(f, dstMAC, dst.Addr().As4(), port, dst.Port(), payload)
		if err != nil {
			break
		}
		e.free = e.free[:len(e.free)-1]
		e.descs[k] = unix.XDPDesc{Addr: addr, Len: uint32(l)}
		k++
	}
	m := e.sock.Transmit(e.descs[:k])
	for _, d := range e.descs[m:k] {
		e.free = append(e.free, d.Addr)
	}
	if m > 0 && e.sock.TxNeedsWakeup() {
		e.sock.Kick()
	}
	return m
}

// receive takes what the RX ring has, calls f on each frame and gives
// the frames back to the fill ring.
func (e *rawEnd) receive(f func(frame []byte)) int {
	n := e.sock.Receive(e.descs)
	for i := range n {
		d := e.descs[i]
		f(e.sock.Data(d.Addr, d.Len))
		e.addrs[i] = e.sock.Base(d.Addr)
	}
	if n > 0 {
		e.sock.Fill(e.addrs[:n])
		if e.sock.FillNeedsWakeup() {
			e.sock.WakeRx()
		}
	}
	return n
}

// echo runs B's echoer until stop: each frame goes back out of the same
// UMEM frame with its Ethernet, IPv4 and UDP endpoints swapped. With
// count set it counts frames instead (throughput).
func (e *rawEnd) echo(stop *atomic.Bool, count *atomic.Uint64) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	comp := make([]uint64, rawFrames/2)
	for !stop.Load() {
		n := e.sock.Receive(e.descs)
		if n == 0 {
			if k := e.sock.Complete(comp); k > 0 {
				for i := range comp[:k] {
					comp[i] = e.sock.Base(comp[i])
				}
				e.sock.Fill(comp[:k])
			}
			if e.sock.FillNeedsWakeup() {
				e.sock.WakeRx()
			}
			continue
		}
		if count != nil {
			for i := range n {
				e.addrs[i] = e.sock.Base(e.descs[i].Addr)
			}
			e.sock.Fill(e.addrs[:n])
			count.Add(uint64(n))
			continue
		}
		for i := range n {
			f := e.sock.Data(e.descs[i].Addr, e.descs[i].Len)
			if len(f) < netstack.UDPFrameHeaderLen {
				continue
			}
			swap(f[0:6], f[6:12])
			swap(f[26:30], f[30:34])
			swap(f[34:36], f[36:38])
		}
		if m := e.sock.Transmit(e.descs[:n]); m < n {
			for i := m; i < n; i++ {
				e.addrs[i-m] = e.sock.Base(e.descs[i].Addr)
			}
			e.sock.Fill(e.addrs[:n-m])
		}
		if e.sock.TxNeedsWakeup() {
			e.sock.Kick()
		}
	}
}

func swap(a, b []byte) {
	for i := range a {
		a[i], b[i] = b[i], a[i]
	}
}

// rawPair is the two raw ends.
type rawPair struct {
	a, b       *rawEnd
	macA, macB pkt.MAC
	dstB       netip.AddrPort
}

func openRawPair(h *hosts) (*rawPair, error) {
	a, err := openRawEnd(h.a, h.va, addrA, rawPort)
	if err != nil {
		return nil, err
	}
	b, err := openRawEnd(h.b, h.vb, addrB, rawPort)
	if err != nil {
		a.close()
		return nil, err
	}
	ma, _ := pkt.MACFrom(h.macA)
	mb, _ := pkt.MACFrom(h.macB)
	return &rawPair{a: a, b: b, macA: ma, macB: mb, dstB: netip.AddrPortFrom(addrB.Addr(), rawPort)}, nil
}

func (rp *rawPair) close() error { return errors.Join(rp.a.close(), rp.b.close()) }

// rtt measures ping-pong round trips of size-byte UDP payloads.
func (rp *rawPair) rtt(ctx context.Context, cfg *Config, size int) (Latency, error) {
	var stop atomic.Bool
	done := make(chan struct{})
	go func() { defer close(done); rp.b.echo(&stop, nil) }()
	defer func() { stop.Store(true); <-done }()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	payload := make([]byte, max(size, 8))
	rtts := make([]time.Duration, 0, cfg.RoundTrips)
	lost := 0
	end := time.Now().Add(cfg.MaxRTTTime)
	for i := 0; i < cfg.Warmup+cfg.RoundTrips; i++ {
		if ctx.Err() != nil {
			return Latency{}, ctx.Err()
		}
		if i >= cfg.Warmup && time.Now().After(end) {
			break
		}
		t0 := time.Now()
		if rp.a.send(rp.macB, rp.dstB, rawPort, payload, uint64(i), 1) != 1 {
			return Latency{}, errors.New("raw AF_XDP: TX ring full in a ping-pong")
		}
		got := false
		for deadline := t0.Add(time.Second); !got; {
			var want = uint64(i)
			rp.a.receive(func(f []byte) {
				if len(f) >= netstack.UDPFrameHeaderLen+8 && binary.LittleEndian.Uint64(f[netstack.UDPFrameHeaderLen:]) == want {
					got = true
				}
			})
			if !got && time.Now().After(deadline) {
				break
			}
		}
		if !got {
			lost++
			continue
		}
		if i >= cfg.Warmup {
			rtts = append(rtts, time.Since(t0))
		}
	}
	l := summarize(rtts)
	l.Lost = lost
	return l, nil
}

// throughput sends size-byte datagrams from A as fast as window in
// flight allows (sent, not yet counted by B) and returns B's rate.
func (rp *rawPair) throughput(ctx context.Context, cfg *Config, size, window int) (Throughput, error) {
	var stop atomic.Bool
	var count atomic.Uint64
	done := make(chan struct{})
	go func() { defer close(done); rp.b.echo(&stop, &count) }()
	defer func() { stop.Store(true); <-done }()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	payload := make([]byte, max(size, 8))
	var sent uint64
	return meter(ctx, cfg, window, func(room int) int {
		k := rp.a.send(rp.macB, rp.dstB, rawPort, payload, sent, min(room, rawBatch))
		sent += uint64(k)
		return k
	}, count.Load)
}
