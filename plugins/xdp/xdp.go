package xdp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/internal/netstack"
	"github.com/veloce-io/veloce/internal/pkt"
	"github.com/veloce-io/veloce/internal/wire"
	ixdp "github.com/veloce-io/veloce/internal/xdp"
)

// Name is the datapath's name in the QoS policy.
const Name = "xdp"

// Defaults.
const (
	// DefaultPort is the wire's UDP port (the DPDK plugin's default too).
	DefaultPort = 7000
	// DefaultFrames is the UMEM size in frames: half receive, half send.
	DefaultFrames = 4096
	// DefaultFrameSize holds a 1500-byte MTU frame behind the kernel's
	// 256 bytes of XDP headroom.
	DefaultFrameSize = 2048
	// DefaultBurst is the most frames one turn of the loop receives.
	DefaultBurst = 64
	// DefaultBusySpin is how long Poll spins without traffic before it
	// sleeps in poll(2) when Options.BusyPoll is on and Options.SpinIdle
	// is not set. Without busy polling the default is not to spin: Poll
	// sleeps as soon as a turn finds nothing to do.
	DefaultBusySpin = 50 * time.Microsecond
	// DefaultBusyPollBudget is SO_BUSY_POLL_BUDGET when Options.BusyPoll
	// is set and Options.BusyPollBudget is not.
	DefaultBusyPollBudget = 64
	// DefaultResolveTimeout bounds how long packets for an unresolved
	// neighbour wait before SendBatch gives them up.
	DefaultResolveTimeout = time.Second
	// DefaultNeighbourRefresh is how often the kernel's neighbour table
	// is re-read.
	DefaultNeighbourRefresh = time.Second
)

// AttachMode says where the XDP program runs: AttachAuto (native, else
// generic), AttachNative (in the driver) or AttachGeneric (on the socket
// buffer, any interface).
type AttachMode = ixdp.AttachMode

// Attach modes.
const (
	AttachAuto    = ixdp.AttachAuto
	AttachNative  = ixdp.AttachNative
	AttachGeneric = ixdp.AttachGeneric
)

// BindMode chooses copy or zero-copy: BindAuto (zero-copy where the
// driver can, else copy), BindCopy, BindZeroCopy (fail where it cannot).
type BindMode = ixdp.BindMode

// Bind modes.
const (
	BindAuto     = ixdp.BindAuto
	BindCopy     = ixdp.BindCopy
	BindZeroCopy = ixdp.BindZeroCopy
)

// Options configure New.
type Options struct {
	// Interface is the network interface to attach to (required).
	Interface string
	// Queue is the interface's RX/TX queue the socket binds to; the
	// program steers datagrams arriving on other queues to the kernel.
	// Default 0.
	Queue int
	// Addr is the plugin's IPv4 address and the link's prefix. The zero
	// value takes the interface's first IPv4 address. It should be an
	// address the kernel has on the interface, since the kernel answers
	// ARP for it.
	Addr netip.Prefix
	// Port is the UDP port peers send to; default DefaultPort.
	Port uint16
	// Attach is where the program runs; default AttachAuto (native, and
	// generic when the driver refuses).
	Attach AttachMode
	// Bind is copy or zero-copy; default BindAuto.
	Bind BindMode
	// Frames is the UMEM size in frames, a power of two; default
	// DefaultFrames. Half are receive buffers on the fill ring, half
	// transmit buffers; every ring has Frames/2 entries.
	Frames int
	// FrameSize is a UMEM frame's size (2048 or 4096); default
	// DefaultFrameSize.
	FrameSize int
	// Burst is the most frames one receive takes and one send builds;
	// default DefaultBurst.
	Burst int
	// SpinIdle is how long Poll keeps spinning without traffic before it
	// sleeps in poll(2) on the socket and its wake eventfd. Zero (the
	// default) sleeps at once, which is frugal: on a shared host a spinning
	// thread takes the core the peer or the application needs, and the
	// wakeup (need_wakeup, an eventfd) costs a few microseconds. With
	// BusyPoll on, zero means max(BusyPoll, DefaultBusySpin). Negative
	// sleeps at once too.
	SpinIdle time.Duration
	// BusyPoll, when positive, sets SO_PREFER_BUSY_POLL and SO_BUSY_POLL
	// to this many microseconds' worth on the socket, for time-sensitive
	// streams: the system calls of the loop run the driver's NAPI
	// themselves instead of waiting for its interrupt (see the package
	// doc). Zero leaves busy polling off.
	BusyPoll time.Duration
	// BusyPollBudget is SO_BUSY_POLL_BUDGET, the most packets one busy
	// poll processes; default DefaultBusyPollBudget.
	BusyPollBudget int
	// ResolveTimeout is how long SendBatch holds packets for a
	// destination the kernel has not resolved before it gives them up
	// (ErrUnresolved); default DefaultResolveTimeout.
	ResolveTimeout time.Duration
	// NeighbourRefresh is how often the kernel's neighbour table is
	// re-read; default DefaultNeighbourRefresh.
	NeighbourRefresh time.Duration
	// Logger receives setup messages; nil discards. Nothing is logged per
	// packet.
	Logger *slog.Logger
}

// Stats are the plugin's counters: control.XDPStats, which velocectl
// remote decodes.
type Stats = control.XDPStats

// Plugin is an AF_XDP socket on one interface queue carrying wire
// datagrams. It implements the runtime's Datapath, Poller, Reacher and
// StatsReporter interfaces.
type Plugin struct {
	opts    Options
	log     *slog.Logger // +checklocksignore: set by New, read-only after
	ifindex int
	sock    *ixdp.Socket
	prog    *ixdp.Program
	host    *netstack.Host
	nl      *netlink.Handle
	neigh   *neighbours
	res     netstack.Resolver
	local   netip.AddrPort
	evfd    int // wakes a sleeping Poll or RecvBatch

	maxDatagram int

	txMu sync.Mutex
	// txFree are the transmit frames not in flight.
	txFree  []uint64       // +checklocks:txMu
	txDescs []unix.XDPDesc // +checklocks:txMu
	txComp  []uint64       // +checklocks:txMu

	rx *rxState // the receive side's, used by one Poll or RecvBatch at a time

	receiving atomic.Bool // Poll or RecvBatch runs
	closed    atomic.Bool
	pausing   atomic.Bool // Poll sleeps or is about to (Wake writes evfd)
	lifeMu    sync.Mutex  // orders Close after a receive call that started
	stopped   sync.WaitGroup

	rxPackets, rxBytes, txPackets, txBytes, rxTruncated  atomic.Uint64
	txFull, tooLong, unresolved, solicits, sleeps, kicks atomic.Uint64
	dropped                                              [netstack.NumDropReasons]atomic.Uint64
	otherPort                                            atomic.Uint64
}

// rxState is the receive side's preallocated state.
type rxState struct {
	descs []unix.XDPDesc
	addrs []uint64 // frames of the batch in hand, for the fill ring
	views []wire.Packet
	res   netstack.Result
	fds   [2]unix.PollFd
	drain [8]byte
}

// one is what Wake writes to the eventfd.
var one = [8]byte{1}

// New attaches the XDP program to opts.Interface, opens and binds the
// socket to opts.Queue and returns the plugin. It must run in the
// interface's network namespace (netns.Do in tests); the plugin keeps
// working from any thread afterwards. Every failure of the system to
// provide XDP returns an *UnavailableError (errors.Is ErrUnavailable);
// invalid Options return a plain error.
func New(opts Options) (_ *Plugin, err error) {
	if opts.Interface == "" {
		return nil, errors.New("xdp: no interface")
	}
	if opts.Queue < 0 {
		return nil, fmt.Errorf("xdp: queue %d is negative", opts.Queue)
	}
	setDefaults(&opts)
	where := fmt.Sprintf("%s queue %d", opts.Interface, opts.Queue)
	unavailable := func(reason string, err error) error {
		return &UnavailableError{Interface: where, Reason: reason, Err: err}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, unavailable("open netlink", err)
	}
	p := &Plugin{opts: opts, log: log, nl: nl, evfd: -1}
	defer func() {
		if err != nil {
			p.release()
		}
	}()
	lnk, err := nl.LinkByName(opts.Interface)
	if err != nil {
		return nil, unavailable("find interface", err)
	}
	attrs := lnk.Attrs()
	p.ifindex = attrs.Index
	mac, ok := pkt.MACFrom(attrs.HardwareAddr)
	if !ok {
		return nil, unavailable("read interface MAC", fmt.Errorf("%q is not an Ethernet address", attrs.HardwareAddr))
	}
	addr := opts.Addr
	kernelAddrs, err := nl.AddrList(lnk, netlink.FAMILY_V4)
	if err != nil {
		return nil, unavailable("list interface addresses", err)
	}
	hasAddr := false
	for _, a := range kernelAddrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		bits, _ := a.Mask.Size()
		if !addr.IsValid() {
			addr = netip.PrefixFrom(ip.Unmap(), bits)
		}
		hasAddr = hasAddr || ip.Unmap() == addr.Addr().Unmap()
	}
	if !addr.IsValid() {
		return nil, fmt.Errorf("xdp: %s has no IPv4 address and Options.Addr is not set", opts.Interface)
	}
	if !addr.Addr().Unmap().Is4() {
		return nil, fmt.Errorf("xdp: address %v is not IPv4", addr)
	}
	if !hasAddr {
		log.Warn("xdp: the kernel does not have the plugin's address on the interface, so nobody answers ARP for it", "interface", opts.Interface, "addr", addr)
	}
	p.host, err = netstack.New(netstack.Config{MAC: mac, Addr: addr})
	if err != nil {
		return nil, fmt.Errorf("xdp: %w", err)
	}
	mtu := attrs.MTU
	if mtu <= 0 {
		mtu = 1500
	}
	p.maxDatagram = min(mtu-pkt.IPv4MinHeaderLen-pkt.UDPHeaderLen, opts.FrameSize-netstack.UDPFrameHeaderLen)
	p.local = netip.AddrPortFrom(addr.Addr().Unmap(), opts.Port)

	p.prog, err = ixdp.LoadProgram(ixdp.ProgramConfig{Ifindex: p.ifindex, Queues: opts.Queue + 1,
		IP: addr.Addr().Unmap().As4(), Port: opts.Port, Mode: opts.Attach})
	if err != nil {
		var se *ixdp.StageError
		if errors.As(err, &se) {
			return nil, unavailable(string(se.Stage), se.Err)
		}
		return nil, unavailable("load XDP program", err)
	}
	p.sock, err = ixdp.OpenSocket(ixdp.SocketConfig{Ifindex: p.ifindex, Queue: opts.Queue, Frames: opts.Frames, FrameSize: opts.FrameSize, Mode: opts.Bind})
	if err != nil {
		return nil, unavailable("open AF_XDP socket", err)
	}
	if opts.BusyPoll > 0 {
		if err := p.sock.SetBusyPoll(int(opts.BusyPoll/time.Microsecond), opts.BusyPollBudget); err != nil {
			return nil, unavailable("enable busy polling", err)
		}
	}
	// Receive frames are the UMEM's first half, all on the fill ring;
	// transmit frames the second half.
	half := opts.Frames / 2
	fs := uint64(opts.FrameSize)
	fill := make([]uint64, half)
	for i := range fill {
		fill[i] = uint64(i) * fs
	}
	if n := p.sock.Fill(fill); n != half {
		return nil, fmt.Errorf("xdp: fill ring took %d of %d frames", n, half)
	}
	p.txMu.Lock() // not shared yet: only so the guard holds everywhere
	p.txFree = make([]uint64, 0, half)
	for i := half; i < opts.Frames; i++ {
		p.txFree = append(p.txFree, uint64(i)*fs)
	}
	p.txDescs = make([]unix.XDPDesc, opts.Burst)
	p.txComp = make([]uint64, half)
	p.txMu.Unlock()
	p.rx = &rxState{descs: make([]unix.XDPDesc, opts.Burst), addrs: make([]uint64, opts.Burst), views: make([]wire.Packet, opts.Burst)}
	p.evfd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("xdp: create eventfd: %w", err)
	}
	p.rx.fds = [2]unix.PollFd{{Fd: int32(p.sock.FD()), Events: unix.POLLIN}, {Fd: int32(p.evfd), Events: unix.POLLIN}}
	if err := p.prog.Register(opts.Queue, p.sock.FD()); err != nil {
		return nil, unavailable("register socket in XSKMAP", err)
	}
	p.res = netstack.Resolver{Interval: 50 * time.Millisecond, Timeout: opts.ResolveTimeout}
	p.neigh = newNeighbours(nl, p.ifindex, p.res.Resolved)
	p.neigh.follow(opts.NeighbourRefresh)
	log.Info("xdp socket up", "interface", opts.Interface, "queue", opts.Queue, "addr", addr, "udp", opts.Port,
		"attach", p.prog.Mode().String(), "mode", p.mode())
	return p, nil
}

func setDefaults(o *Options) {
	if o.Port == 0 {
		o.Port = DefaultPort
	}
	if o.Frames <= 0 {
		o.Frames = DefaultFrames
	}
	if o.FrameSize <= 0 {
		o.FrameSize = DefaultFrameSize
	}
	if o.Burst <= 0 {
		o.Burst = DefaultBurst
	}
	o.Burst = min(o.Burst, o.Frames/2)
	if o.SpinIdle == 0 && o.BusyPoll > 0 {
		o.SpinIdle = max(o.BusyPoll, DefaultBusySpin)
	}
	if o.BusyPollBudget <= 0 {
		o.BusyPollBudget = DefaultBusyPollBudget
	}
	if o.ResolveTimeout <= 0 {
		o.ResolveTimeout = DefaultResolveTimeout
	}
	if o.NeighbourRefresh <= 0 {
		o.NeighbourRefresh = DefaultNeighbourRefresh
	}
}

func (p *Plugin) mode() string {
	if p.sock.ZeroCopy() {
		return "zero-copy"
	}
	return "copy"
}

// release frees whatever New made, in reverse: the program first, so no
// frame is steered to a socket that is going away.
func (p *Plugin) release() error {
	var errs []error
	if p.neigh != nil {
		p.neigh.close()
	}
	if p.prog != nil {
		errs = append(errs, p.prog.Close())
	}
	if p.sock != nil {
		errs = append(errs, p.sock.Close())
	}
	if p.evfd >= 0 {
		errs = append(errs, unix.Close(p.evfd))
		p.evfd = -1
	}
	if p.nl != nil {
		p.nl.Close()
	}
	return errors.Join(errs...)
}

// Name implements the runtime's Datapath: "xdp".
func (p *Plugin) Name() string { return Name }

// LocalAddr is where peers reach this plugin: the interface address and
// Options.Port.
func (p *Plugin) LocalAddr() netip.AddrPort { return p.local }

// MaxDatagram is the largest datagram (UDP payload) the port sends: its
// MTU's; the runtime sends larger messages as fragments.
func (p *Plugin) MaxDatagram() int { return p.maxDatagram }

// Reaches reports whether addr is on the interface's prefix (the plugin
// sends only to neighbours; there is no router).
func (p *Plugin) Reaches(addr netip.Addr) bool { return p.host.OnLink(addr) }

// SendBatch sends pkts, each a wire datagram for its Addr, as
// Ethernet/IPv4/UDP frames built in UMEM transmit frames (one copy of the
// datagram), and kicks the kernel once per burst when it asks for it
// (need_wakeup). It returns how many went: fewer with a nil error when no
// transmit frame is free or a destination is still being resolved (try
// again); fewer with ErrUnresolved, ErrTooLong or ErrAddress for a packet
// that cannot go (the caller skips it). It is safe to call from several
// goroutines (a mutex, uncontended in practice, guards the TX ring) and
// does not allocate.
func (p *Plugin) SendBatch(pkts []wire.Packet) (int, error) {
	if p.closed.Load() {
		return 0, ErrClosed
	}
	p.txMu.Lock()
	defer p.txMu.Unlock()
	if p.closed.Load() {
		return 0, ErrClosed
	}
	p.reapLocked()
	done := 0
	for done < len(pkts) {
		n, bytes := 0, 0
		var stop error
		stopped, full := false, false
		for n < len(p.txDescs) && done+n < len(pkts) {
			d := &pkts[done+n]
			dst := d.Addr.Addr().Unmap()
			if !dst.Is4() {
				stop, stopped = ErrAddress, true
				break
			}
			mac, ok := p.neigh.lookup(dst.As4())
			if !ok {
				known, err := p.resolveLocked(dst)
				if known {
					continue
				}
				stop, stopped = err, true
				break
			}
			if d.N > p.maxDatagram || d.N < 0 || d.N > len(d.Buf) {
				p.tooLong.Add(1)
				stop, stopped = ErrTooLong, true
				break
			}
			if len(p.txFree) == 0 {
				if p.reapLocked() == 0 {
					p.kickLocked()
					if p.reapLocked() == 0 {
						full, stopped = true, true
						break
					}
				}
			}
			addr := p.txFree[len(p.txFree)-1]
			l, err := p.host.PutUDPFrame(p.sock.Frame(addr), mac, dst.As4(), p.opts.Port, d.Addr.Port(), d.Bytes())
			if err != nil {
				p.tooLong.Add(1)
				stop, stopped = ErrTooLong, true
				break
			}
			p.txFree = p.txFree[:len(p.txFree)-1]
			p.txDescs[n] = unix.XDPDesc{Addr: addr, Len: uint32(l)}
			bytes += d.N
			n++
		}
		k := p.sock.Transmit(p.txDescs[:n])
		for _, d := range p.txDescs[k:n] { // the ring was full: frames back
			p.txFree = append(p.txFree, d.Addr)
		}
		if k > 0 {
			p.kickLocked()
		}
		p.txPackets.Add(uint64(k))
		if k == n {
			p.txBytes.Add(uint64(bytes))
		} else {
			for i := range k {
				p.txBytes.Add(uint64(pkts[done+i].N))
			}
			full = true
		}
		done += k
		if full {
			p.txFull.Add(1)
			return done, nil
		}
		if stopped {
			return done, stop
		}
	}
	return done, nil
}

// reapLocked takes sent frames off the completion ring and returns how
// many.
//
// +checklocks:p.txMu
func (p *Plugin) reapLocked() int {
	n := p.sock.Complete(p.txComp[:cap(p.txFree)-len(p.txFree)])
	p.txFree = append(p.txFree, p.txComp[:n]...)
	return n
}

// kickLocked makes the kernel send what is on the TX ring, when it waits
// for that (always in copy mode).
//
// +checklocks:p.txMu
func (p *Plugin) kickLocked() {
	if p.sock.TxNeedsWakeup() {
		p.kicks.Add(1)
		p.sock.Kick()
	}
}

// resolveLocked handles a destination with no neighbour entry: it reports
// whether the kernel has one after all (known), or else whether to wait
// (nil) or give up (ErrUnresolved).
//
// +checklocks:p.txMu
func (p *Plugin) resolveLocked(dst netip.Addr) (known bool, err error) {
	if !p.host.OnLink(dst) {
		p.unresolved.Add(1)
		return false, ErrUnresolved
	}
	send, fail := p.res.Want(dst, time.Now())
	if send {
		if p.neigh.query(dst) {
			p.res.Resolved(dst)
			return true, nil
		}
		p.solicits.Add(1)
		if err := p.neigh.solicit(dst); err != nil {
			p.log.Warn("xdp: ask the kernel to resolve a neighbour", "addr", dst, "err", err)
		}
	}
	if fail {
		p.unresolved.Add(1)
		return false, ErrUnresolved
	}
	return false, nil
}

// enter starts a receive call (Poll or RecvBatch): one at a time, never
// after Close.
func (p *Plugin) enter() error {
	if !p.receiving.CompareAndSwap(false, true) {
		return ErrPolled
	}
	p.lifeMu.Lock()
	defer p.lifeMu.Unlock()
	if p.closed.Load() {
		p.receiving.Store(false)
		return ErrClosed
	}
	p.stopped.Add(1)
	return nil
}

func (p *Plugin) leave() {
	p.receiving.Store(false)
	p.stopped.Done()
}

// receive takes up to max frames off the RX ring and collects the wire
// datagrams among them in rx.views (views of the UMEM frames). It returns
// how many frames it took (n: give them back with refill) and how many
// datagrams it found (k).
func (p *Plugin) receive(max int) (n, k int) {
	rx := p.rx
	n = p.sock.Receive(rx.descs[:max])
	for i := range n {
		d := &rx.descs[i]
		rx.addrs[i] = p.sock.Base(d.Addr)
		p.host.Handle(p.sock.Data(d.Addr, d.Len), nil, &rx.res)
		switch {
		case rx.res.Verdict != netstack.VerdictDeliver:
			p.dropped[rx.res.Reason].Add(1)
		case rx.res.Broadcast || rx.res.DstPort != p.opts.Port:
			p.otherPort.Add(1)
		default:
			rx.views[k] = wire.Packet{Addr: rx.res.Src, Buf: rx.res.Payload, N: len(rx.res.Payload)}
			k++
		}
	}
	return n, k
}

// refill gives the batch's n frames back to the fill ring (which has room
// for every receive frame) and wakes the driver when it waits for that.
func (p *Plugin) refill(n int) {
	p.sock.Fill(p.rx.addrs[:n])
	if p.sock.FillNeedsWakeup() {
		p.sock.WakeRx()
	}
}

// sleep waits in poll(2) on the socket and the eventfd for up to ms
// milliseconds (-1: until one is readable) and drains the eventfd.
func (p *Plugin) sleep(ms int) {
	rx := p.rx
	rx.fds[0].Revents, rx.fds[1].Revents = 0, 0
	if _, err := unix.Poll(rx.fds[:], ms); err != nil {
		return // EINTR: the caller looks again
	}
	if rx.fds[1].Revents&unix.POLLIN != 0 {
		unix.Read(p.evfd, rx.drain[:])
	}
}

// Poll runs the polling thread until ctx ends or the plugin closes. On a
// goroutine locked to its OS thread it calls flush (when not nil) on every
// turn, so what the runtime queued is sent from this thread, and hands
// each batch of received datagrams to handle: views of the UMEM frames,
// valid only during the call, which go back to the fill ring when handle
// returns. After Options.SpinIdle with nothing received or flushed it
// sleeps in poll(2) on the socket and an eventfd, and costs no CPU until a
// frame arrives or Wake (or Close, or the end of ctx) writes the eventfd.
// It returns ErrPolled when another Poll or RecvBatch runs and ErrClosed
// after Close.
func (p *Plugin) Poll(ctx context.Context, handle func(pkts []wire.Packet), flush func() bool) error {
	if err := p.enter(); err != nil {
		return err
	}
	defer p.leave()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var done atomic.Bool
	stop := context.AfterFunc(ctx, func() { done.Store(true); p.wakeOpen() })
	defer stop()
	if flush == nil {
		flush = func() bool { return false }
	}
	rx := p.rx
	last, busy := time.Now(), false
	for turn := 0; ; turn++ {
		if done.Load() || p.closed.Load() {
			return nil
		}
		if flush() {
			busy = true
		}
		n, k := p.receive(len(rx.descs))
		if n > 0 {
			if k > 0 {
				p.rxPackets.Add(uint64(k))
				for i := range rx.views[:k] {
					p.rxBytes.Add(uint64(rx.views[i].N))
				}
				handle(rx.views[:k])
			}
			p.refill(n)
			busy = true
		} else if p.opts.BusyPoll > 0 {
			p.sock.WakeRx() // runs the driver's NAPI on this thread
		}
		if turn&15 != 0 {
			continue
		}
		p.kickPending()
		now := time.Now()
		if busy {
			last, busy = now, false
			continue
		}
		if p.opts.SpinIdle > 0 && now.Sub(last) < p.opts.SpinIdle {
			continue
		}
		// Sleep. Announce it first, then look once more for work queued
		// before the announcement (whose Wake saw no sleep to end).
		p.pausing.Store(true)
		if flush() || !p.sock.RxEmpty() || done.Load() || p.closed.Load() {
			p.pausing.Store(false)
			last = time.Now()
			continue
		}
		p.sleeps.Add(1)
		p.sleep(-1)
		p.pausing.Store(false)
		last = time.Now()
	}
}

// kickPending kicks the kernel again when it left descriptors on the TX
// ring (a kick that found it busy), unless a sender holds the ring.
//
// +checklocksignore: TryLock, which checklocks does not follow
func (p *Plugin) kickPending() {
	if !p.txMu.TryLock() {
		return
	}
	if p.sock.TxPending() {
		p.kickLocked()
	}
	p.txMu.Unlock()
}

// wakeOpen writes the eventfd unless Close has begun (Close writes it
// itself, and closes it once every receive call has returned).
func (p *Plugin) wakeOpen() {
	p.lifeMu.Lock()
	defer p.lifeMu.Unlock()
	if !p.closed.Load() {
		unix.Write(p.evfd, one[:])
	}
}

// Wake ends a sleep of the polling thread (the runtime queued messages).
// It costs one atomic load when the thread is not sleeping. Do not call
// it after Close has returned.
func (p *Plugin) Wake() {
	if p.pausing.Load() {
		unix.Write(p.evfd, one[:])
	}
}

// RecvBatch receives like Poll but on the caller's thread, for callers
// that pull: it waits up to timeout for the first datagram (0: not at all;
// negative: until one comes or Close), sleeping in poll(2) on the socket
// while the RX ring is empty, and copies each datagram into pkts[i].Buf
// (truncating, and counting, one longer than the buffer). Do not use it
// while Poll runs (ErrPolled). It does not allocate.
func (p *Plugin) RecvBatch(pkts []wire.Packet, timeout time.Duration) (int, error) {
	if p.closed.Load() {
		return 0, ErrClosed
	}
	if err := p.enter(); err != nil {
		return 0, err
	}
	defer p.leave()
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	rx := p.rx
	for {
		n, k := p.receive(min(len(pkts), len(rx.descs)))
		for i := range rx.views[:k] {
			v := &rx.views[i]
			pkts[i].Addr = v.Addr
			pkts[i].N = copy(pkts[i].Buf, v.Bytes())
			if pkts[i].N < v.N {
				p.rxTruncated.Add(1)
			}
			p.rxBytes.Add(uint64(pkts[i].N))
		}
		if n > 0 {
			p.refill(n)
		}
		if k > 0 {
			p.rxPackets.Add(uint64(k))
			return k, nil
		}
		if n > 0 {
			continue
		}
		if p.closed.Load() {
			return 0, ErrClosed
		}
		ms := -1
		if timeout == 0 {
			return 0, nil
		} else if timeout > 0 {
			left := time.Until(deadline)
			if left <= 0 {
				return 0, nil
			}
			ms = int((left + time.Millisecond - 1) / time.Millisecond)
		}
		p.pausing.Store(true) // Close's wake reaches this sleep too
		if p.sock.RxEmpty() && !p.closed.Load() {
			p.sleep(ms)
		}
		p.pausing.Store(false)
	}
}

// Stats returns the counters.
func (p *Plugin) Stats() Stats {
	s := Stats{Interface: p.opts.Interface, Queue: p.opts.Queue, Mode: p.mode(), Attach: p.prog.Mode().String(),
		BusyPoll:  p.opts.BusyPoll > 0,
		RxPackets: p.rxPackets.Load(), RxBytes: p.rxBytes.Load(), TxPackets: p.txPackets.Load(), TxBytes: p.txBytes.Load(),
		RxTruncated: p.rxTruncated.Load(), TxFull: p.txFull.Load(), TooLong: p.tooLong.Load(), Unresolved: p.unresolved.Load(),
		Solicits: p.solicits.Load(), Sleeps: p.sleeps.Load(), Kicks: p.kicks.Load(), Neighbours: p.neigh.len()}
	for r := range p.dropped {
		if v := p.dropped[r].Load(); v > 0 {
			if s.Dropped == nil {
				s.Dropped = map[string]uint64{}
			}
			s.Dropped[netstack.DropReason(r).String()] = v
		}
	}
	if v := p.otherPort.Load(); v > 0 {
		if s.Dropped == nil {
			s.Dropped = map[string]uint64{}
		}
		s.Dropped["other-port"] = v
	}
	if !p.closed.Load() {
		if ks, err := p.sock.Statistics(); err == nil {
			s.KernelDropped, s.RxRingFull, s.FillRingEmpty = ks.Rx_dropped, ks.Rx_ring_full, ks.Rx_fill_ring_empty_descs
			s.RxInvalid, s.TxInvalid = ks.Rx_invalid_descs, ks.Tx_invalid_descs
		}
	}
	return s
}

// DatapathStats returns Stats for velocectl.
func (p *Plugin) DatapathStats() any { return p.Stats() }

// Close wakes and waits for Poll or RecvBatch, then detaches the XDP
// program (none is left on the interface), closes the socket and unmaps
// the UMEM. Later calls return ErrClosed; Close again returns nil.
func (p *Plugin) Close() error {
	p.lifeMu.Lock()
	if p.closed.Swap(true) {
		p.lifeMu.Unlock()
		return nil
	}
	p.lifeMu.Unlock()
	unix.Write(p.evfd, one[:])
	p.stopped.Wait()
	p.txMu.Lock()
	defer p.txMu.Unlock()
	if err := p.release(); err != nil {
		return fmt.Errorf("close xdp plugin: %w", err)
	}
	return nil
}
