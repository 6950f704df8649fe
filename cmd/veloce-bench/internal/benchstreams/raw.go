package benchstreams

import (
	"context"
	"net"
	"net/netip"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
)

// The raw UDP reference: plain Go UDP sockets, one in each namespace,
// over the same veth Veloce's datapath uses.

func (b *bench) listenUDP(ns *benchutil.Netns, addr string) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := ns.Do(func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(addr), 0)))
		if err == nil {
			c.SetReadBuffer(4 << 20)
			c.SetWriteBuffer(4 << 20)
		}
		return err
	})
	return c, err
}

// rawPair opens a socket in A and one in B, A's connected to B's.
func (b *bench) rawPair() (a, bconn *net.UDPConn, err error) {
	if bconn, err = b.listenUDP(b.h.b, b.h.addrB); err != nil {
		return nil, nil, err
	}
	err = b.h.a.Do(func() (err error) {
		a, err = net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(b.h.addrA), 0)), bconn.LocalAddr().(*net.UDPAddr))
		if err == nil {
			a.SetReadBuffer(4 << 20)
			a.SetWriteBuffer(4 << 20)
		}
		return err
	})
	if err != nil {
		bconn.Close()
		return nil, nil, err
	}
	return a, bconn, nil
}

// rawRTT: A sends size bytes, B echoes them back, A waits for them.
func (b *bench) rawRTT(ctx context.Context, size int) (Latency, error) {
	a, bc, err := b.rawPair()
	if err != nil {
		return Latency{}, err
	}
	defer a.Close()
	defer bc.Close()
	stop := context.AfterFunc(ctx, func() { a.Close(); bc.Close() })
	defer stop()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := bc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			bc.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	out, in := make([]byte, size), make([]byte, 2048)
	ping := func() error { _, err := a.Write(out); return err }
	pong := func() error { _, err := a.Read(in); return err }
	return pingPong(ctx, b.cfg.Warmup, b.cfg.RoundTrips, b.cfg.MaxRTTTime, ping, pong, nil)
}

// rawThroughput: A sends size-byte datagrams to B as fast as the window
// allows; B counts them.
func (b *bench) rawThroughput(ctx context.Context, size int) (Throughput, error) {
	a, bc, err := b.rawPair()
	if err != nil {
		return Throughput{}, err
	}
	defer a.Close()
	defer bc.Close()
	sc := newSinkCounts(1)
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, err := bc.Read(buf); err != nil {
				return
			}
			sc.add(0, 1)
		}
	}()
	out := make([]byte, size)
	send := func() error { _, err := a.Write(out); return err }
	return throughput(ctx, b.cfg.Warm, b.cfg.Duration, b.cfg.Window, send, sc)
}
