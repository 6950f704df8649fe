package benchv2v

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/internal/dpdk"
	"github.com/veloce-io/veloce/internal/guestproto"
	"github.com/veloce-io/veloce/internal/netstack"
	"github.com/veloce-io/veloce/internal/pkt"
)

// burst is how many frames a guest moves per RxBurst/TxBurst.
const burst = 32

// queueSize is the guests' virtqueue size (virtio-user queue_size).
const queueSize = 1024

// guest is one "VM": a DPDK virtio-user port attached to a veloced port,
// with internal/netstack as its IP stack (the guest's address, the
// daemon's defaults: 169.254.77.2/24 talking to 169.254.77.1:7077).
type guest struct {
	port    *dpdk.Port
	pool    *dpdk.Mempool
	host    *netstack.Host
	srcPort uint16
	svcMAC  pkt.MAC
	svcIP   [4]byte
	reqID   uint32
	one     []*dpdk.Mbuf // send's (C memory: see dpdk.NewMbufs)
}

var guestSeq atomic.Uint32

// openGuest attaches a virtio-user port to the vhost-user socket sock.
func openGuest(sock string) (*guest, error) {
	n := guestSeq.Add(1)
	pool, err := dpdk.NewMempool(fmt.Sprintf("v2v%d", n), 8191, 256, 2048+128)
	if err != nil {
		return nil, err
	}
	// RX checksum offload: the port negotiates VIRTIO_NET_F_GUEST_CSUM and
	// the switch may mark its frames DATA_VALID instead of summing their
	// payloads (veloced does; testpmd's vhost passes io-forwarded frames
	// as they came), as a virtio-net guest with its default offloads
	// would.
	port, err := dpdk.OpenPort(fmt.Sprintf("net_virtio_user_v2v%d,path=%s,queues=1,queue_size=%d", n, sock, queueSize),
		dpdk.PortConfig{Pool: pool, RxDesc: queueSize, TxDesc: queueSize, RxChecksum: true})
	if err != nil {
		pool.Free()
		return nil, fmt.Errorf("open virtio-user on %s: %w", sock, err)
	}
	mac := pkt.MAC(port.MAC())
	if mac.IsZero() || mac.IsMulticast() {
		mac = pkt.MAC{0x02, 0x56, 0x32, 0x56, 0, byte(n)}
	}
	host, err := netstack.New(netstack.Config{MAC: mac, Addr: backend.DefaultGuestIP, TrustChecksums: true})
	if err != nil {
		port.Close()
		pool.Free()
		return nil, err
	}
	return &guest{port: port, pool: pool, host: host, srcPort: 40000, svcMAC: pkt.MAC(backend.DefaultServiceMAC),
		svcIP: backend.DefaultServiceIP.As4(), one: dpdk.NewMbufs(1)}, nil
}

func (g *guest) close() error {
	err := g.port.Close()
	g.pool.Free()
	dpdk.FreeMbufs(g.one)
	return err
}

// send puts one datagram to the service address on the TX ring.
func (g *guest) send(payload []byte) error {
	m := g.one
	if err := g.pool.AllocBulk(m); err != nil {
		return err
	}
	l, err := g.host.PutUDPFrame(m[0].Room(), g.svcMAC, g.svcIP, g.srcPort, backend.DefaultServicePort, payload)
	if err != nil {
		dpdk.FreeBulk(m)
		return err
	}
	m[0].SetLen(l)
	if g.port.TxBurst(0, m) != 1 {
		dpdk.FreeBulk(m)
		return errors.New("tx ring full")
	}
	return nil
}

// call sends a control request and waits for its reply, resending it
// (same request id: the daemon answers a resend from its replay cache)
// until ctx ends; the first requests go out before the daemon's port is
// running and are lost.
func (g *guest) call(ctx context.Context, m *guestproto.Message) (guestproto.Result, error) {
	g.reqID++
	m.RequestID = g.reqID
	var req [64]byte
	n, err := guestproto.PutRequest(req[:], m)
	if err != nil {
		return guestproto.Result{}, err
	}
	rx := dpdk.NewMbufs(burst)
	defer dpdk.FreeMbufs(rx)
	scratch := make([]byte, 2048)
	var res netstack.Result
	for {
		if err := g.send(req[:n]); err != nil && !errors.Is(err, dpdk.ErrNoMbufs) {
			return guestproto.Result{}, err
		}
		resend := time.Now().Add(200 * time.Millisecond)
		for time.Now().Before(resend) {
			if ctx.Err() != nil {
				return guestproto.Result{}, fmt.Errorf("%v: no reply: %w", m.Type, ctx.Err())
			}
			k := g.port.RxBurst(0, rx)
			for _, mb := range rx[:k] {
				g.host.Handle(mb.Data(), scratch, &res)
				if res.Verdict != netstack.VerdictDeliver || res.DstPort != g.srcPort {
					continue
				}
				var r guestproto.Message
				if guestproto.Parse(res.Payload, &r) == nil && r.Type == guestproto.Reply && r.RequestID == m.RequestID {
					out := guestproto.Result{Status: r.Result.Status, ID: r.Result.ID}
					text := string(r.Result.Message)
					dpdk.FreeBulk(rx[:k])
					if out.Status != guestproto.StatusOK {
						return out, fmt.Errorf("%v: status %v: %s", m.Type, out.Status, text)
					}
					return out, nil
				}
			}
			dpdk.FreeBulk(rx[:k])
			if k == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}
}

// openSession opens a session with one stream and returns their ids.
func (g *guest) openSession(ctx context.Context) (sess, stream uint32, err error) {
	r, err := g.call(ctx, &guestproto.Message{Header: guestproto.Header{Type: guestproto.OpenSession}})
	if err != nil {
		return 0, 0, err
	}
	sess = r.ID
	r, err = g.call(ctx, &guestproto.Message{Header: guestproto.Header{Type: guestproto.CreateStream, Session: sess}})
	if err != nil {
		return 0, 0, err
	}
	return sess, r.ID, nil
}

// emitFrame returns the whole Ethernet frame of an Emit of a size-byte
// message from source src of session sess: the guest sends it as it is,
// again and again (the daemon numbers deliveries itself).
func (g *guest) emitFrame(sess, src uint32, size int) ([]byte, error) {
	msg := make([]byte, guestproto.EmitOverhead+size)
	for i := guestproto.EmitOverhead; i < len(msg); i++ {
		msg[i] = byte(i)
	}
	n, err := guestproto.PutEmit(msg, sess, src, 0, msg[guestproto.EmitOverhead:])
	if err != nil {
		return nil, err
	}
	frame := make([]byte, 2048)
	l, err := g.host.PutUDPFrame(frame, g.svcMAC, g.svcIP, g.srcPort, backend.DefaultServicePort, msg[:n])
	if err != nil {
		return nil, err
	}
	return frame[:l], nil
}

// counters are what a pair's loop counted.
type counters struct {
	sent  atomic.Uint64 // frames guest 1 put on its TX ring
	back  atomic.Uint64 // frames guest 1 received (Veloce: Outcome frames, back-pressure)
	got   atomic.Uint64 // frames guest 2 counted (Veloce: Deliver frames for its sink)
	other atomic.Uint64 // frames guest 2 received and did not count
}

// pairLoop is both guests' datapath on one thread, until stop: a burst of
// frame onto a's TX ring, then b's RX ring drained (up to four bursts),
// then a's. count says whether a frame b received counts (nil: every
// frame does). One thread for both guests makes the pair self-clocking:
// on a two-core machine the host side (veloced's pollers or testpmd's
// forwarding lcore) gets the other core, and no busy guest thread
// starves the other while sharing a core with it.
//
// The burst arrays are C memory (dpdk.NewMbufs): through Go arrays, cgo's
// pointer check of every burst call was a quarter of this thread's time.
func pairLoop(stop *atomic.Bool, a *guest, frame []byte, b *guest, count func([]byte) bool, c *counters) error {
	tx := dpdk.NewMbufs(burst)
	defer dpdk.FreeMbufs(tx)
	rx := dpdk.NewMbufs(burst)
	defer dpdk.FreeMbufs(rx)
	for !stop.Load() {
		if err := a.pool.AllocBulk(tx); err == nil {
			for _, m := range tx {
				copy(m.Room(), frame)
				m.SetLen(len(frame))
			}
			n := a.port.TxBurst(0, tx)
			if n < burst {
				dpdk.FreeBulk(tx[n:])
			}
			if n > 0 {
				c.sent.Add(uint64(n))
			}
		} else if !errors.Is(err, dpdk.ErrNoMbufs) {
			return err
		}
		for i := 0; i < 4; i++ {
			k := b.port.RxBurst(0, rx)
			if k == 0 {
				break
			}
			d := uint64(k)
			if count != nil {
				d = 0
				for _, m := range rx[:k] {
					if count(m.Data()) {
						d++
					}
				}
			}
			dpdk.FreeBulk(rx[:k])
			c.got.Add(d)
			if d < uint64(k) {
				c.other.Add(uint64(k) - d)
			}
		}
		if k := a.port.RxBurst(0, rx); k > 0 {
			c.back.Add(uint64(k))
			dpdk.FreeBulk(rx[:k])
		}
	}
	return nil
}

// creditWindow is guest 2's sink window, as guestlib sizes it for a
// queue of the RX ring's size (guestlib's maxCredit).
const creditWindow = 1024

// deliverCounter returns the count function of a Veloce receiver: a
// frame counts if it holds a Deliver for sink (see isDeliver). Like
// guestlib's sink, it grants the daemon creditWindow deliveries and
// sends a Credit (the last delivery index read, the window's room) every
// quarter window: what it counted, it consumed (credits false: it sends
// none, the daemon then applies no flow control).
func (g *guest) deliverCounter(sess, sink uint32, credits bool) func([]byte) bool {
	var res netstack.Result
	var msg guestproto.Message
	scratch := make([]byte, 2048)
	var last, since uint32
	return func(frame []byte) bool {
		if !g.isDeliver(frame, sink, scratch, &res, &msg) {
			return false
		}
		if msg.RequestID != 0 { // the delivery index
			last = msg.RequestID
		}
		if since++; credits && since >= creditWindow/4 {
			since = 0
			g.credit(sess, sink, last, creditWindow)
		}
		return true
	}
}

// credit sends a Credit for sink: seen, the last delivery index read,
// and room. A Credit lost to a full TX ring is sent again a quarter
// window later, as guestlib's would be.
func (g *guest) credit(sess, sink, seen, room uint32) {
	var b [guestproto.CreditLen]byte
	n, err := guestproto.PutCredit(b[:], sess, sink, seen, room)
	if err == nil {
		g.send(b[:n])
	}
}

// isDeliver says whether frame is a datagram from the service to this
// guest holding a well-formed Deliver for sink: the work a guest does to
// receive a message (guestlib also copies its payload out).
func (g *guest) isDeliver(frame []byte, sink uint32, scratch []byte, res *netstack.Result, msg *guestproto.Message) bool {
	g.host.Handle(frame, scratch, res)
	if res.Verdict != netstack.VerdictDeliver || res.DstPort != g.srcPort {
		return false
	}
	return guestproto.Parse(res.Payload, msg) == nil && msg.Type == guestproto.Deliver && msg.ID == sink
}
