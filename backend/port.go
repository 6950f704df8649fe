package backend

import (
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/vhostuser"
)

// PortOptions configure one VM port.
type PortOptions struct {
	// Name identifies the port in the CLI and logs; default the socket's
	// base name.
	Name string
	// Socket is the vhost-user socket path.
	Socket string
	// Client makes the daemon connect to a frontend listening on Socket
	// (and reconnect when it restarts) instead of listening itself.
	Client bool
	// SocketMode and SocketGroup are the listening socket's permission
	// bits (0: 0660) and group (empty: the daemon's); see
	// vhostuser.Server.
	SocketMode  os.FileMode
	SocketGroup string
	// QueuePairs is the most queue pairs the guest may use; default 1.
	QueuePairs int
	// Link configures the port's link peer (service and guest addresses);
	// its TrustGuestChecksums is always set (see NewPort).
	Link LinkPeerOptions
	// Logger receives the port's events; nil discards.
	Logger *slog.Logger
	// PollCPUs pins the port's pollers (see vhostuser.NetOptions): the
	// ports pinned to one CPU are served by one thread.
	PollCPUs []int
	// Runtime serves the guest's sessions (guestlib's virtio transport);
	// nil leaves the port a plain link: datagrams for the service port
	// are counted and dropped.
	Runtime *Runtime
	// Tenant is the tenant the guest's sessions belong to (their channels
	// are the tenant's, see tenants.go); default the port's Name. Ports
	// given the same tenant share its channels.
	Tenant string
	// Limits bound the guest's sessions, streams, sources, sinks and
	// control request rate; zero fields take DefaultLimits.
	Limits Limits
	// SaveState and LoadState, when both set, carry the port's state in
	// the hypervisor's migration stream (vhost-user DEVICE_STATE, see
	// devstate.go); nil leaves the feature unoffered.
	SaveState func(p *Port, w io.Writer) error
	LoadState func(p *Port, r io.Reader) error
	// RingStateDir is the directory where the port keeps the positions of
	// packed virtqueues whose frontend hands over no inflight region
	// (QEMU's packed=on), for the next daemon on this socket: without it
	// such rings do not survive a daemon restart (vhostuser
	// NetOptions.RingState). Put it on tmpfs (/run); empty: none.
	RingStateDir string
}

// ringStatePrefix names a port's kept ring files in dir: the port's name,
// made a safe file name, and a hash of its socket's absolute path (two
// daemons' ports may share a name, never a socket). Empty without dir.
func ringStatePrefix(dir, name, socket string) string {
	if dir == "" {
		return ""
	}
	if abs, err := filepath.Abs(socket); err == nil {
		socket = abs
	}
	h := fnv.New64a()
	h.Write([]byte(socket))
	safe := strings.Map(func(r rune) rune {
		if r == '-' || r == '_' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' {
			return r
		}
		return '_'
	}, name)
	if len(safe) > 64 {
		safe = safe[:64]
	}
	return filepath.Join(dir, fmt.Sprintf("%s-%016x", safe, h.Sum64()))
}

// Port is one VM's attachment: a virtio-net device over vhost-user whose
// other end of the link is the daemon's link peer.
type Port struct {
	opts   PortOptions
	dev    *vhostuser.NetDevice
	peer   *LinkPeer
	server *vhostuser.Server
	// results holds one Result per queue pair: each poller uses its own,
	// so Handle allocates nothing and shares nothing.
	results []Result

	// log carries the port's name; nil discards (portlog.go).
	log *slog.Logger

	mu      sync.Mutex
	lastErr string // +checklocks:mu

	// The virtio transport (guestport.go); rt is nil without a runtime.
	rt        *Runtime
	out       *outbox
	sessMu    sync.Mutex               // serialises updates of sessions
	sessions  cowMap[uint32, *Session] // the port's sessions by id; read without a lock
	malformed atomic.Uint64            // guestproto datagrams that did not parse
	replies   replayCache              // recent control replies, for resent requests
	acct      *account                 // what the guest holds, against opts.Limits
	large     guestLarge               // large messages from the guest (guestlarge.go)
	copies    atomic.Uint64            // message copies for the guest (copyCount)

	// Live migration (snapshot.go, migrate.go).
	frozen   atomic.Bool             // the outbox is held: the guest gets nothing from it
	inflight atomic.Int32            // deliver calls under way (freeze waits for none)
	moving   atomic.Pointer[outMove] // source side: messages for the port's sinks go to the move
	handoff  atomic.Pointer[inMove]  // destination side: imported sinks' messages pass its filter
}

// NewPort creates a port; Start serves it.
func NewPort(opts PortOptions) (*Port, error) {
	if opts.Socket == "" {
		return nil, fmt.Errorf("port: no socket path")
	}
	if opts.QueuePairs <= 0 {
		opts.QueuePairs = 1
	}
	name := opts.Name
	if name == "" {
		name = filepath.Base(opts.Socket)
	}
	var log *slog.Logger // the port's lines carry its name
	if opts.Logger != nil {
		log = opts.Logger.With("port", name)
	}
	if opts.Link.Logger == nil {
		opts.Link.Logger = log
	}
	// The guest's UDP and ICMP checksums are not verified. Its frames
	// come out of its own memory, nothing between can corrupt them, and a
	// wrong checksum could hurt only the guest that wrote it: a hostile
	// guest can as well checksum whatever it sends, and the payload is
	// parsed and bounded all the same (guestproto.Parse). Verifying was a
	// tenth of a V2V message's daemon work (BenchmarkVMToVMDirect).
	opts.Link.TrustGuestChecksums = true
	peer, err := NewLinkPeer(opts.Link)
	if err != nil {
		return nil, err
	}
	if opts.Tenant == "" {
		opts.Tenant = opts.Name
	}
	if opts.Tenant == "" {
		opts.Tenant = filepath.Base(opts.Socket)
	}
	p := &Port{opts: opts, peer: peer, results: make([]Result, opts.QueuePairs), rt: opts.Runtime, log: log}
	if p.rt != nil {
		p.out = newOutbox()
		p.acct = newAccount("port "+opts.Name, opts.Limits, opts.Logger)
	}
	p.dev, err = vhostuser.NewNetDevice(vhostuser.NetOptions{QueuePairs: opts.QueuePairs, Handler: p, Logger: log, PollCPUs: opts.PollCPUs, State: p.deviceState(),
		RingState: ringStatePrefix(opts.RingStateDir, name, opts.Socket)})
	if err != nil {
		return nil, err
	}
	p.server = &vhostuser.Server{Path: opts.Socket, Client: opts.Client, Device: p.dev,
		SocketMode: opts.SocketMode, SocketGroup: opts.SocketGroup, OnDisconnect: p.dropSessions, Logger: log, OnError: func(err error) {
			p.mu.Lock()
			p.lastErr = err.Error()
			p.mu.Unlock()
		}}
	return p, nil
}

var (
	_ vhostuser.FrameHandler = (*Port)(nil)
	_ vhostuser.Announcer    = (*Port)(nil)
	_ vhostuser.RXSource     = (*Port)(nil) // the outbox (guestport.go)
)

// Announce implements vhostuser.Announcer: whenever a queue pair starts
// (a guest connects, QEMU reconnects, a migrated guest resumes here) the
// guest gets a gratuitous ARP for the service address, so its neighbour
// entry is right at once.
func (p *Port) Announce(qp int, buf []byte) int {
	p.logLinkUp(qp)
	n, err := p.peer.GratuitousARP(buf)
	if err != nil {
		return 0
	}
	return n
}

// HandleFrame implements vhostuser.FrameHandler: the link peer answers
// ARP, ICMP echo and DHCP; datagrams for the service port are guestlib's
// (handleGuest), or counted and dropped on a port without a runtime.
func (p *Port) HandleFrame(qp int, frame, reply []byte) int {
	res := &p.results[qp]
	switch v, n := p.peer.Handle(frame, reply, res); v {
	case VerdictReplied:
		return n
	case VerdictDeliver:
		if p.rt != nil {
			return p.handleGuest(res.Src, res.Payload, reply)
		}
	}
	return 0
}

// Start serves the port: it returns once the vhost-user socket listens
// (or, in client mode, once the first connection attempt is under way),
// or with the error that kept it from listening, nothing left running.
// The port serves until ctx ends or Close is called; it starts once
// (ErrStarted).
func (p *Port) Start(ctx context.Context) error {
	if err := p.server.Start(ctx); err != nil {
		return fmt.Errorf("start port %s: %w", p.opts.Name, err)
	}
	return nil
}

// Wait blocks until the port stopped and its frontend connection ended;
// in server mode its socket file is gone by then.
func (p *Port) Wait() error { return p.server.Wait() }

// Close stops the port and waits for it; it may be called more than once.
func (p *Port) Close() error { return p.server.Close() }

// Run is Start then Wait: it serves the port until ctx ends.
func (p *Port) Run(ctx context.Context) error {
	if err := p.Start(ctx); err != nil {
		return err
	}
	return p.Wait()
}

// Name returns the port's name.
func (p *Port) Name() string { return p.opts.Name }

// PortInfo is what velocectl ports shows for a port: the control API's
// type (its JSON field names are a contract).
type PortInfo = control.PortInfo

// Info returns the port's state and counters.
func (p *Port) Info() PortInfo {
	st := p.dev.State()
	ds := p.dev.Stats()
	ls := p.peer.Stats()
	lo := p.peer.Options()
	info := PortInfo{
		Name: p.opts.Name, Socket: p.opts.Socket, Mode: "server",
		Features: fmt.Sprintf("%#x", uint64(st.Features)), ProtocolFeatures: fmt.Sprintf("%#x", uint64(st.ProtocolFeatures)),
		Queues: st.QueuePairs, MaxQueues: p.dev.MaxQueuePairs(), MTU: int(st.MTU),
		GuestIP: lo.GuestIP.Addr().String(), ServiceIP: lo.ServiceIP.String(),
		GuestTXPackets: ds.GuestTXPackets, GuestTXBytes: ds.GuestTXBytes,
		GuestRXPackets: ds.GuestRXPackets, GuestRXBytes: ds.GuestRXBytes,
		Drops: ds.Drops, Errors: ds.Errors,
		ARPReplies: ls.ARPReplies, EchoReplies: ls.EchoReplies, DHCPReplies: ls.DHCPReplies,
		LinkDrops: ls.Dropped, ServiceDatagrams: ls.Delivered, Logging: st.Logging,
		Malformed: p.malformed.Load(), Sessions: len(p.sessions.Load()),
	}
	if p.opts.Client {
		info.Mode = "client"
	}
	if p.out != nil {
		info.OutboxQueued = p.out.ready.Len()
	}
	info.Tenant = p.opts.Tenant
	fs := p.large.stats()
	info.LargeReceived, info.LargeDropped = fs.Complete, fs.Lost+fs.Overflow+fs.Inconsistent+fs.TooLarge
	info.LargeSent = p.large.sent.Load()
	if p.acct != nil {
		info.LimitRefusals = p.acct.refusals()
	}
	switch {
	case st.Failure != "":
		// The frontend broke a ring or faulted its memory: dropped, and
		// served again when it reconnects (vhostuser doc, "Faults").
		info.State = "failed"
		info.LastError = st.Failure
	case st.QueuePairs > 0:
		info.State = "running"
	case st.Connected:
		info.State = "connected"
	default:
		info.State = "waiting"
	}
	if mac := p.peer.Learned(); mac != nil {
		info.GuestMAC = mac.String()
	}
	p.mu.Lock()
	info.LastError = p.lastErr
	p.mu.Unlock()
	return info
}
