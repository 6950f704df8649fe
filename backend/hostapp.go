package backend

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/veloce-io/veloce/internal/guestproto"
	"github.com/veloce-io/veloce/internal/ring"
)

// The host transport: applications on the host speak guestproto in
// datagrams over a unix socket (SOCK_DGRAM) to the daemon, one session per
// client socket. Messages for a host application's sinks wait in its
// session's outbox and a writer goroutine sends them; the emitting thread
// (a port's poller, the remote receiver) never makes a system call for
// them. This transport copies each message once into the socket; the
// zero-copy variant with slots in shared memory (memfd) is to come.

// DefaultAppSocket is where host applications reach veloced.
const DefaultAppSocket = "/run/veloce/app.sock"

const (
	hostOutboxSlots = 1024
	// hostSlotSize holds one Deliver: guestlib messages are at most
	// MaxGuestPayload bytes on every transport.
	hostSlotSize = 2048
)

// hostApps serves the unix socket.
type hostApps struct {
	rt   *Runtime
	conn *net.UnixConn
	path string

	mu      sync.Mutex
	clients map[string]*hostClient // by client socket address; guarded by mu
}

// hostClient is one application's socket: its sessions' endpoint.
type hostClient struct {
	apps *hostApps
	addr *net.UnixAddr
	name string

	mem   []byte
	lens  []uint32
	free  *ring.Queue
	ready *ring.Queue
	kick  chan struct{}

	sessMu   sync.Mutex
	sessions cowMap[uint32, *Session]
	done     chan struct{}
	closing  sync.Once
}

func listenHostApps(rt *Runtime, path string) (*hostApps, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("app socket: %w", err)
	}
	os.Remove(path)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("app socket: %w", err)
	}
	// Host applications run as any user; access is for the operator to
	// restrict (directory permissions, a group).
	os.Chmod(path, 0o666)
	conn.SetReadBuffer(8 << 20)
	conn.SetWriteBuffer(8 << 20)
	return &hostApps{rt: rt, conn: conn, path: path, clients: map[string]*hostClient{}}, nil
}

func (h *hostApps) run(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() { h.conn.Close() })
	defer stop()
	buf := make([]byte, 64<<10)
	reply := make([]byte, 4096)
	for {
		n, addr, err := h.conn.ReadFromUnix(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				break
			}
			continue
		}
		if addr == nil || addr.Name == "" {
			continue // an unbound client cannot be answered
		}
		// A client's state exists from its first OpenSession on, so
		// stray datagrams from anywhere cost nothing.
		c := h.client(addr, n >= guestproto.HeaderLen && guestproto.Type(buf[3]) == guestproto.OpenSession)
		if c == nil {
			continue
		}
		if rn := c.handle(buf[:n], reply); rn > 0 {
			h.conn.WriteToUnix(reply[:rn], addr)
		}
	}
	h.mu.Lock()
	for _, c := range h.clients {
		c.close()
	}
	h.mu.Unlock()
	os.Remove(h.path)
}

func (h *hostApps) client(addr *net.UnixAddr, create bool) *hostClient {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c, ok := h.clients[addr.Name]; ok || !create {
		return c
	}
	c := &hostClient{apps: h, addr: addr, name: "host:" + addr.Name,
		mem: make([]byte, hostOutboxSlots*hostSlotSize), lens: make([]uint32, hostOutboxSlots),
		kick: make(chan struct{}, 1), done: make(chan struct{})}
	c.free, _ = ring.New(hostOutboxSlots)
	c.ready, _ = ring.New(hostOutboxSlots)
	for i := uint32(0); i < hostOutboxSlots; i++ {
		c.free.Push(i)
	}
	h.clients[addr.Name] = c
	go c.writer()
	return c
}

func (c *hostClient) slot(id uint32) []byte {
	return c.mem[int(id)*hostSlotSize : (int(id)+1)*hostSlotSize]
}

var _ endpoint = (*hostClient)(nil)

func (c *hostClient) String() string { return c.name }

// deliver implements endpoint.
func (c *hostClient) deliver(sk *Sink, source, seq uint64, payload []byte) bool {
	id, ok := c.free.Pop()
	if !ok {
		return false
	}
	n, err := guestproto.PutDeliver(c.slot(id), sk.session.ID, sk.ID, sk.Channel, source, seq, payload)
	if err != nil {
		c.free.Push(id)
		return false
	}
	c.lens[id] = uint32(n)
	c.ready.Push(id)
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return true
}

// writer sends queued messages to the application.
func (c *hostClient) writer() {
	for {
		for {
			id, ok := c.ready.Pop()
			if !ok {
				break
			}
			_, err := c.apps.conn.WriteToUnix(c.slot(id)[:c.lens[id]], c.addr)
			c.free.Push(id)
			if err != nil && !errors.Is(err, net.ErrClosed) {
				// The application is gone (ECONNREFUSED, ENOENT): release
				// its sessions now rather than after the timeout.
				c.apps.rt.closeSessions(c)
			}
		}
		select {
		case <-c.kick:
		case <-c.done:
			return
		case <-time.After(time.Second):
		}
	}
}

func (c *hostClient) close() { c.closing.Do(func() { close(c.done) }) }

func (c *hostClient) sessionClosed(s *Session) {
	c.sessMu.Lock()
	defer c.sessMu.Unlock()
	c.sessions.Update(func(m map[uint32]*Session) { delete(m, s.ID) })
	if len(c.sessions.Load()) == 0 {
		c.apps.mu.Lock()
		if c.apps.clients[c.addr.Name] == c {
			delete(c.apps.clients, c.addr.Name)
		}
		c.apps.mu.Unlock()
		c.close()
	}
}

// handle serves one datagram; a reply, if due, is written to reply.
func (c *hostClient) handle(b, reply []byte) int {
	var m guestproto.Message
	if err := guestproto.Parse(b, &m); err != nil {
		return 0
	}
	now := time.Now().UnixNano()
	if m.Type == guestproto.Emit {
		if len(m.Payload) > MaxGuestPayload {
			n, _ := guestproto.PutOutcome(reply, m.Session, m.ID, m.Token, guestproto.StatusTooLarge)
			return n
		}
		s := c.sessions.Get(m.Session)
		if s == nil {
			n, _ := guestproto.PutOutcome(reply, m.Session, m.ID, m.Token, guestproto.StatusNoSession)
			return n
		}
		s.lastSeen.Store(now)
		so := s.Source(m.ID)
		if so == nil {
			n, _ := guestproto.PutOutcome(reply, m.Session, m.ID, m.Token, guestproto.StatusNotFound)
			return n
		}
		c.apps.rt.Emit(so, m.Payload)
		return 0
	}
	if m.Type >= guestproto.Reply {
		return 0
	}
	var res guestproto.Result
	if m.Type == guestproto.OpenSession {
		s := c.apps.rt.OpenSession(c, netip.AddrPort{})
		s.lastSeen.Store(now)
		c.sessMu.Lock()
		c.sessions.Update(func(m map[uint32]*Session) { m[s.ID] = s })
		c.sessMu.Unlock()
		res = guestproto.Result{ID: s.ID}
	} else if s := c.sessions.Get(m.Session); s == nil {
		res = guestproto.Result{Status: guestproto.StatusNoSession, Message: []byte(fmt.Sprintf("session %d unknown", m.Session))}
	} else {
		s.lastSeen.Store(now)
		res = runControl(s, &m)
	}
	n, err := guestproto.PutReply(reply, m.Header, &res)
	if err != nil {
		return 0
	}
	return n
}
