package benchdpdk

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
	"github.com/veloce-io/veloce/internal/dpdk"
	"github.com/veloce-io/veloce/internal/netstack"
	"github.com/veloce-io/veloce/internal/pkt"
)

// The raw reference: the least a DPDK application must do to exchange the
// same datagrams as the plugin. Each end is a net_af_packet port on its
// veth end with its own mbuf pool (the plugin's sizes) and a
// netstack.Host; a frame is built with Host.PutUDPFrame (the payload
// copied in once, the UDP checksum computed) and parsed with Host.Handle
// (checksums verified), exactly as plugins/dpdk does. What raw leaves out
// is Veloce's: the host transport between application and daemon, the
// wire header, the runtime's slots and queues, the flush from the
// runtime's queue, ARP (raw knows the peer's MAC).

const (
	rawUDPPort = 7000
	rawBurst   = 32
	rawMbufs   = 8191
	rawRoom    = 2048
	// lostAfter is how long a ping waits for its pong before it counts
	// as lost and the next one goes.
	lostAfter = time.Second
	// overtime is how long a ping-pong may run past its time limit to
	// collect minSamples (a stall of seconds, from other load on the
	// cores, must not leave a median of one sample).
	overtime = 10 * time.Second
	// deadAfter lost round trips in a row (seconds without an answer)
	// mean the link is dead.
	deadAfter = 5
	// stallAfter is how long a full throughput window may see no progress
	// before its messages are written off as lost.
	stallAfter = 50 * time.Millisecond
)

type rawPort struct {
	port *dpdk.Port
	pool *dpdk.Mempool
	host *netstack.Host
}

var rawSeq atomic.Uint32

// openRaw opens a net_af_packet port on iface inside ns.
func openRaw(ns *benchutil.Netns, iface string, addr netip.Prefix) (*rawPort, error) {
	n := rawSeq.Add(1)
	pool, err := dpdk.NewMempool(fmt.Sprintf("vbraw%d", n), rawMbufs, 256, rawRoom)
	if err != nil {
		return nil, err
	}
	var port *dpdk.Port
	devargs := fmt.Sprintf("net_af_packet_vbraw%d,iface=%s,framecnt=8192", n, iface)
	if err := ns.Do(func() (err error) {
		port, err = dpdk.OpenPort(devargs, dpdk.PortConfig{Pool: pool})
		return err
	}); err != nil {
		pool.Free()
		return nil, err
	}
	host, err := netstack.New(netstack.Config{MAC: pkt.MAC(port.MAC()), Addr: addr})
	if err != nil {
		port.Close()
		pool.Free()
		return nil, err
	}
	return &rawPort{port: port, pool: pool, host: host}, nil
}

func (p *rawPort) close() error {
	err := p.port.Close()
	p.pool.Free()
	return err
}

// rawPair is the two raw ends: A pings or sends, B echoes or counts.
type rawPair struct {
	a, b       *rawPort
	cpuA, cpuB int
	dstMAC     pkt.MAC // B's
	dstIP      [4]byte
}

func openRawPair(h *hosts, cpuA, cpuB int) (*rawPair, error) {
	a, err := openRaw(h.a, h.va, dpdkAddrA)
	if err != nil {
		return nil, fmt.Errorf("raw port A: %w", err)
	}
	b, err := openRaw(h.b, h.vb, dpdkAddrB)
	if err != nil {
		a.close()
		return nil, fmt.Errorf("raw port B: %w", err)
	}
	return &rawPair{a: a, b: b, cpuA: cpuA, cpuB: cpuB, dstMAC: b.host.MAC(), dstIP: b.host.IP()}, nil
}

func (rp *rawPair) close() error { return errors.Join(rp.a.close(), rp.b.close()) }

// serve is B's busy-polling loop until stop: every datagram to the bench
// port is counted and, with echo, sent back to where it came from, in a
// fresh mbuf (one burst of replies per received burst).
func (p *rawPort) serve(stop *atomic.Bool, echo bool, count *atomic.Uint64) error {
	rx := make([]*dpdk.Mbuf, rawBurst)
	tx := make([]*dpdk.Mbuf, rawBurst)
	reply := make([]byte, rawRoom)
	var res netstack.Result
	for !stop.Load() {
		n := p.port.RxBurst(0, rx)
		if n == 0 {
			continue
		}
		if echo {
			if err := p.pool.AllocBulk(tx[:n]); err != nil {
				dpdk.FreeBulk(rx[:n])
				return err
			}
		}
		k := 0
		for _, m := range rx[:n] {
			p.host.Handle(m.Data(), reply, &res)
			if res.Verdict != netstack.VerdictDeliver || res.DstPort != rawUDPPort {
				continue
			}
			if echo {
				l, err := p.host.PutUDPFrame(tx[k].Room(), res.SrcMAC, res.Src.Addr().As4(), rawUDPPort, res.Src.Port(), res.Payload)
				if err != nil {
					continue
				}
				tx[k].SetLen(l)
			}
			k++
		}
		dpdk.FreeBulk(rx[:n])
		if echo {
			dpdk.FreeBulk(tx[k:n])
			for sent, tries := 0, 0; sent < k; tries++ {
				if tries == 1000 {
					dpdk.FreeBulk(tx[sent:k])
					break
				}
				sent += p.port.TxBurst(0, tx[sent:k])
			}
		}
		if k > 0 {
			count.Add(uint64(k))
		}
	}
	return nil
}

// put builds one datagram to B carrying payload in m.
func (rp *rawPair) put(m *dpdk.Mbuf, payload []byte) error {
	l, err := rp.a.host.PutUDPFrame(m.Room(), rp.dstMAC, rp.dstIP, rawUDPPort, rawUDPPort, payload)
	if err != nil {
		return err
	}
	m.SetLen(l)
	return nil
}

// withServer runs B's loop on its core while f runs on A's; f should
// give up when dead reports that B's loop ended (it failed).
func (rp *rawPair) withServer(echo bool, count *atomic.Uint64, f func(dead *atomic.Bool) error) error {
	var stop, dead atomic.Bool
	served := benchutil.OnEALCore(rp.cpuB, func() error {
		defer dead.Store(true)
		return rp.b.serve(&stop, echo, count)
	})
	err := <-benchutil.OnEALCore(rp.cpuA, func() error { return f(&dead) })
	stop.Store(true)
	return errors.Join(err, <-served)
}

// minSamples is how many measured round trips a ping-pong collects even
// past its time limit (at most overtime longer).
func minSamples(count int) int { return min(count, 100) }

var errServerDied = errors.New("raw: B's loop stopped")

// rtt: A sends one datagram of size bytes (its first 8 the round number),
// B echoes it, A busy-polls for it; the time from before building the
// frame to after parsing the echo is one sample. Up to warmup rounds
// first (at most maxTime), then up to count measured ones (at most
// maxTime, unless that leaves fewer than minSamples).
func (rp *rawPair) rtt(ctx context.Context, size, warmup, count int, maxTime time.Duration) (Latency, error) {
	var echoed atomic.Uint64
	rtts := make([]time.Duration, 0, count)
	lost := 0
	err := rp.withServer(true, &echoed, func(dead *atomic.Bool) error {
		a := rp.a
		payload := make([]byte, size)
		one := make([]*dpdk.Mbuf, 1)
		rx := make([]*dpdk.Mbuf, rawBurst)
		reply := make([]byte, rawRoom)
		var res netstack.Result
		measuring := warmup == 0
		end := time.Now().Add(maxTime) // of the warm-up, then of the measurement
		lostInRow := 0
		for i := uint64(0); len(rtts)+lost < count && ctx.Err() == nil; i++ {
			binary.LittleEndian.PutUint64(payload, i)
			t0 := time.Now()
			if err := a.pool.AllocBulk(one); err != nil {
				return err
			}
			if err := rp.put(one[0], payload); err != nil {
				dpdk.FreeBulk(one)
				return err
			}
			for tries := 0; a.port.TxBurst(0, one) == 0; tries++ {
				if tries == 1e6 {
					dpdk.FreeBulk(one)
					return errors.New("raw: the port never took a frame")
				}
			}
			got := false
			for polls := 1; !got; polls++ {
				n := a.port.RxBurst(0, rx)
				for _, m := range rx[:n] {
					a.host.Handle(m.Data(), reply, &res)
					if res.Verdict == netstack.VerdictDeliver && res.DstPort == rawUDPPort && len(res.Payload) == size &&
						binary.LittleEndian.Uint64(res.Payload) == i {
						got = true
					}
				}
				if n > 0 {
					dpdk.FreeBulk(rx[:n])
				}
				if !got && polls&4095 == 0 {
					if dead.Load() {
						return errServerDied
					}
					if time.Since(t0) > lostAfter {
						break
					}
				}
			}
			now := time.Now()
			switch {
			case !got:
				if lostInRow++; lostInRow == deadAfter {
					return fmt.Errorf("raw: %d round trips in a row lost: the link is dead", deadAfter)
				}
				if measuring {
					lost++
				}
			case measuring:
				lostInRow = 0
				rtts = append(rtts, now.Sub(t0))
			default:
				lostInRow = 0
			}
			if !measuring && (i+1 >= uint64(warmup) || now.After(end)) {
				measuring, end = true, now.Add(maxTime)
			} else if measuring && now.After(end) && (len(rtts) >= minSamples(count) || now.After(end.Add(overtime))) {
				break
			}
		}
		return nil
	})
	if err != nil {
		return Latency{}, err
	}
	l := Summarize(rtts)
	l.Lost = lost
	return l, ctx.Err()
}

// throughput: A sends as fast as the window allows, in bursts of up to 32
// frames (one TxBurst each), busy-polling B's count when the window is
// full; B counts what arrives.
func (rp *rawPair) throughput(ctx context.Context, size, window int, warm, dur time.Duration) (Throughput, error) {
	var got atomic.Uint64
	var th Throughput
	err := rp.withServer(false, &got, func(dead *atomic.Bool) error {
		a := rp.a
		payload := make([]byte, size)
		burst := make([]*dpdk.Mbuf, rawBurst)
		m := newMeter(size, window, warm, dur, got.Load)
		lastProgress, lastRecv := time.Now(), uint64(0)
		for i := 0; ; i++ {
			now := time.Now()
			if !m.tick(now) || ctx.Err() != nil {
				break
			}
			k := min(m.room(), rawBurst)
			if k == 0 {
				if dead.Load() {
					return errServerDied
				}
				if r := got.Load(); r != lastRecv {
					lastRecv, lastProgress = r, now
				} else if now.Sub(lastProgress) > stallAfter {
					m.stalled()
					lastProgress = now
				}
				continue
			}
			lastProgress = now
			if err := a.pool.AllocBulk(burst[:k]); err != nil {
				return err
			}
			for j, mb := range burst[:k] {
				binary.LittleEndian.PutUint64(payload, m.sent+uint64(j))
				if err := rp.put(mb, payload); err != nil {
					dpdk.FreeBulk(burst[:k])
					return err
				}
			}
			sent := a.port.TxBurst(0, burst[:k])
			if sent < k {
				dpdk.FreeBulk(burst[sent:k])
			}
			m.sent += uint64(sent)
		}
		th = m.drain(ctx)
		return nil
	})
	return th, errors.Join(err, ctx.Err())
}
