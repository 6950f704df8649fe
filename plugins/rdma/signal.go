package rdma

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/veloce-io/veloce/internal/rdma"
)

// Endpoint is one side of a connection as the other side needs it: where
// the plugin is, its queue pair, first PSN and GID, and the largest
// message its receive buffers take.
type Endpoint struct {
	// Addr is the plugin's LocalAddr: its address on the RDMA netdev and
	// its port (the runtime's peer address).
	Addr netip.AddrPort
	// QPN is the queue pair's number.
	QPN uint32
	// PSN is the queue pair's first send packet sequence number.
	PSN uint32
	// GID is the port's RoCE v2 GID for Addr.
	GID rdma.GID
	// SlotSize is the size of each receive buffer: the longest message
	// the plugin accepts.
	SlotSize uint32
	// MTU is the port's active MTU.
	MTU rdma.MTU
}

// Signaller carries connection set-up between plugins: a request with the
// dialling side's Endpoint, answered with the accepting side's. The
// default, NewTCPSignaller, is a small TCP exchange on the RDMA netdev's
// address; the runtime's control channel can take its place later (it
// need only carry these two messages).
type Signaller interface {
	// Serve answers peers' requests until Close: accept gets the peer's
	// endpoint and returns the local one (or an error, sent back as a
	// refusal).
	Serve(accept func(remote Endpoint) (Endpoint, error)) error
	// Request sends local to the plugin at peer and returns its endpoint.
	// Errors wrap ErrRefused when the peer answered no, or the network's
	// error (no plugin there).
	Request(ctx context.Context, peer netip.AddrPort, local Endpoint) (Endpoint, error)
	// Close stops Serve.
	Close() error
}

// ErrRefused means the peer answered a connection request with a refusal
// (it is connecting to us at the same moment, or could not make a QP).
var ErrRefused = errors.New("rdma: peer refused the connection")

const (
	sigLen       = 44
	sigRequest   = 1
	sigAccept    = 2
	sigRefuse    = 3
	sigIOTimeout = 5 * time.Second
)

var sigMagic = [4]byte{'V', 'L', 'R', '1'}

func marshalEndpoint(b []byte, kind byte, e Endpoint) {
	copy(b, sigMagic[:])
	b[4], b[5] = kind, 0
	binary.LittleEndian.PutUint16(b[6:], e.Addr.Port())
	a := e.Addr.Addr().Unmap().As4()
	copy(b[8:12], a[:])
	binary.LittleEndian.PutUint32(b[12:], e.QPN)
	binary.LittleEndian.PutUint32(b[16:], e.PSN)
	copy(b[20:36], e.GID[:])
	binary.LittleEndian.PutUint32(b[36:], e.SlotSize)
	binary.LittleEndian.PutUint32(b[40:], uint32(e.MTU))
}

func parseEndpoint(b []byte) (byte, Endpoint, error) {
	if len(b) < sigLen || [4]byte(b[:4]) != sigMagic {
		return 0, Endpoint{}, errors.New("rdma: not a connection message")
	}
	var e Endpoint
	e.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[8:12])), binary.LittleEndian.Uint16(b[6:]))
	e.QPN = binary.LittleEndian.Uint32(b[12:])
	e.PSN = binary.LittleEndian.Uint32(b[16:])
	e.GID = rdma.GID(b[20:36])
	e.SlotSize = binary.LittleEndian.Uint32(b[36:])
	e.MTU = rdma.MTU(binary.LittleEndian.Uint32(b[40:]))
	return b[4], e, nil
}

// TCPSignaller is the default Signaller: one short TCP connection per
// request, to the peer's Addr (the same port number as its datapath
// address, over TCP).
type TCPSignaller struct {
	ln   net.Listener
	wg   sync.WaitGroup
	once sync.Once
}

// NewTCPSignaller listens on addr (the plugin's address and port).
func NewTCPSignaller(addr netip.AddrPort) (*TCPSignaller, error) {
	ln, err := net.Listen("tcp4", addr.String())
	if err != nil {
		return nil, fmt.Errorf("rdma: connection listener: %w", err)
	}
	return &TCPSignaller{ln: ln}, nil
}

// Serve implements Signaller.
func (s *TCPSignaller) Serve(accept func(remote Endpoint) (Endpoint, error)) error {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			c.SetDeadline(time.Now().Add(sigIOTimeout))
			var b [sigLen]byte
			if _, err := io.ReadFull(c, b[:]); err != nil {
				return
			}
			kind, remote, err := parseEndpoint(b[:])
			if err != nil || kind != sigRequest {
				return
			}
			local, err := accept(remote)
			if err != nil {
				marshalEndpoint(b[:], sigRefuse, Endpoint{Addr: remote.Addr})
			} else {
				marshalEndpoint(b[:], sigAccept, local)
			}
			c.Write(b[:])
		}()
	}
}

// Request implements Signaller.
func (s *TCPSignaller) Request(ctx context.Context, peer netip.AddrPort, local Endpoint) (Endpoint, error) {
	d := net.Dialer{Timeout: sigIOTimeout}
	c, err := d.DialContext(ctx, "tcp4", peer.String())
	if err != nil {
		return Endpoint{}, fmt.Errorf("rdma: connect to %v: %w", peer, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(sigIOTimeout))
	var b [sigLen]byte
	marshalEndpoint(b[:], sigRequest, local)
	if _, err := c.Write(b[:]); err != nil {
		return Endpoint{}, fmt.Errorf("rdma: connect to %v: %w", peer, err)
	}
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return Endpoint{}, fmt.Errorf("rdma: connect to %v: %w", peer, err)
	}
	kind, remote, err := parseEndpoint(b[:])
	if err != nil {
		return Endpoint{}, fmt.Errorf("rdma: connect to %v: %w", peer, err)
	}
	if kind != sigAccept {
		return Endpoint{}, fmt.Errorf("rdma: connect to %v: %w", peer, ErrRefused)
	}
	return remote, nil
}

// Close implements Signaller: it stops listening and waits for the
// requests being answered.
func (s *TCPSignaller) Close() error {
	var err error
	s.once.Do(func() { err = s.ln.Close(); s.wg.Wait() })
	return err
}
