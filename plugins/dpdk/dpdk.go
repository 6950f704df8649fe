// Package dpdk is the DPDK datapath: streams that ask for acceleration,
// where resource use is no concern, leave and enter the host through a DPDK
// port, polled from userspace, bypassing the kernel.
//
// The plugin speaks the same wire as the kernel-UDP plugin: Ethernet, IPv4
// and UDP built and parsed by internal/netstack (the code the vhost-user
// link peer uses too), carrying the wire header of internal/wire. So a DPDK
// host and a kernel-UDP host exchange the same stream, and a peer neither
// knows nor cares which datapath the other end uses.
//
// # Threads
//
// One polling thread per port (Poll, started by the runtime): locked to an
// OS thread, registered with DPDK's EAL, pinned to Options.CPU when given.
// It runs to completion: it receives bursts, answers ARP and ICMP echo,
// hands each burst's datagrams to the runtime without copying them (their
// payloads are views of the mbufs, freed after the runtime returns), and on
// every turn sends what the runtime queued for the port (the runtime's
// flush, which calls SendBatch). Nothing crosses to another thread: on a
// busy host a woken goroutine waits for a core, which cost ~200 µs per
// hand-off before (veloce-bench dpdk). When nothing came or went for
// Options.SpinIdle it pauses, doubling the pause up to Options.MaxSleep;
// Wake (the runtime calls it on every emit) ends a pause at once.
//
// SendBatch resolves each destination's MAC (ARP, paced by a
// netstack.Resolver) and hands the burst to the port in one call. The
// port's one TX queue is shared by the polling thread and the runtime's
// directory messages under a mutex that is, in practice, never contended.
//
// # Sending without copying
//
// The runtime lays its remote slots in memory the plugin gives it
// (SlotMemory): a dpdk.ExtMem, registered with the EAL as external memory
// and DMA-mapped for the port's device, with a reference count per slot.
// A datagram in such a slot, with room in front of it for the frame
// headers (netstack.UDPFrameHeaderLen bytes of the slot's headroom), is
// not copied: SendBatch writes the Ethernet, IPv4 and UDP headers into
// that headroom and attaches an mbuf to the slot (one segment, which every
// PMD takes). The slot is busy (SlotBusy) until DPDK frees the mbuf: in
// the TxBurst call for the PMDs that copy (net_af_packet, net_tap,
// net_vhost), when the receiver frees it for net_ring, after the NIC read
// it (a later TxBurst) for a real NIC. The runtime does not reuse a busy
// slot: a slot rewritten while the NIC still reads it would send another
// message's bytes under this one's checksum and MAC. Any other datagram
// (directories, acknowledgements, memory of another caller, a busy slot)
// is copied once into an mbuf behind the headers; Stats counts both
// (TxZeroCopy, TxCopied).
//
// # Availability
//
// The binding to DPDK (internal/dpdk) needs cgo and the build tag `dpdk`
// (make build and make test use both). Without them New returns an error
// wrapping dpdk.ErrUnavailable, and veloced falls back to kernel UDP with
// the policy's visible warning. Device arguments select any DPDK port: a
// PCI device on the EAL allowlist in production, `net_af_packet` or
// `net_tap` on a veth for tests.
//
// This package has no cgo and no unsafe of its own: the C binding is
// internal/dpdk (private mechanics behind a public plugin, as cilium/ebpf
// splits its packages), so the plugin's API does not change when the
// binding follows a DPDK release.
package dpdk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/internal/dpdk"
	"github.com/veloce-io/veloce/internal/netstack"
	"github.com/veloce-io/veloce/internal/pkt"
	"github.com/veloce-io/veloce/internal/wire"
)

// Name is the datapath's name in the QoS policy (backend.DatapathDPDK).
const Name = "dpdk"

// DefaultEAL are the EAL arguments used when Options.EAL is nil: no
// hugepages (256 MiB of ordinary memory; --in-memory is refused with
// --no-huge, --no-shconf keeps processes apart), no PCI scan, one
// main lcore. With hugepages mounted, drop --no-huge and -m.
var DefaultEAL = []string{"--no-huge", "-m", "256", "--no-shconf", "--no-pci", "--no-telemetry", "-l", "0", "--log-level", "*:error"}

// Defaults.
const (
	DefaultPort     = 7000
	DefaultMbufs    = 8191
	DefaultBurst    = 32
	DefaultSpinIdle = 200 * time.Microsecond
	DefaultMaxSleep = time.Millisecond
	// mbufDataRoom holds any wire datagram in one segment with the frame
	// headers in front.
	mbufDataRoom = 2048
)

// Errors.
var (
	// ErrUnresolved means a destination did not answer ARP.
	ErrUnresolved = errors.New("dpdk: destination did not answer ARP")
	// ErrClosed means the plugin was closed.
	ErrClosed = errors.New("dpdk: plugin closed")
	// ErrTooLong means a datagram does not fit the port's MTU.
	ErrTooLong = errors.New("dpdk: datagram too long")
)

// Options configure New.
type Options struct {
	// EAL are the DPDK EAL arguments (the first plugin in a process
	// initialises the EAL; later ones share it). Default DefaultEAL.
	EAL []string
	// Device are the port's device arguments, e.g.
	// "net_af_packet0,iface=eth1" or a PCI address on the EAL allowlist.
	// A net_af_packet port gets framecnt=8192 unless the arguments say
	// otherwise: the PMD's default ring of 512 frames overflows (and
	// loses datagrams) whenever the polling thread pauses for a
	// millisecond at a few hundred thousand packets per second.
	Device string
	// Addr is the plugin's IPv4 address on the port's link and the link's
	// prefix. Peers on the prefix are reached directly (ARP); there is no
	// router.
	Addr netip.Prefix
	// Port is the UDP port peers send to; default DefaultPort.
	Port uint16
	// MTU is the link's IP MTU; default 1500. Longer datagrams are
	// refused (ErrTooLong), not sent to be dropped on the way.
	MTU int
	// CPU pins the polling thread to that CPU; -1 leaves it unpinned.
	CPU int
	// Mbufs is the size of the port's mbuf pool; default DefaultMbufs.
	Mbufs int
	// Burst is the most packets one receive moves; default DefaultBurst.
	Burst int
	// SpinIdle is how long the polling thread spins without packets before
	// it starts to sleep; default DefaultSpinIdle. MaxSleep bounds a sleep
	// (and so the latency of the first packet after a pause); default
	// DefaultMaxSleep.
	SpinIdle, MaxSleep time.Duration
	// Logger receives setup messages; nil discards.
	Logger *slog.Logger
}

// Stats are the plugin's counters.
type Stats struct {
	RxPackets   uint64 `json:"rx_packets"`
	RxDatagrams uint64 `json:"rx_datagrams"`
	TxDatagrams uint64 `json:"tx_datagrams"`
	// TxZeroCopy counts datagrams sent straight from the runtime's slots
	// (SlotMemory), TxCopied and TxCopiedBytes those copied into an mbuf
	// (including ones the port then refused); TxSlotsBusy is how many
	// slots DPDK holds now.
	TxZeroCopy    uint64            `json:"tx_zero_copy"`
	TxCopied      uint64            `json:"tx_copied"`
	TxCopiedBytes uint64            `json:"tx_copied_bytes"`
	TxSlotsBusy   int               `json:"tx_slots_busy"`
	TxFull        uint64            `json:"tx_full"`
	TooLong       uint64            `json:"too_long"`
	NoMbufs       uint64            `json:"no_mbufs"`
	ARPRequests   uint64            `json:"arp_requests"`
	Unresolved    uint64            `json:"unresolved"`
	ARPReplies    uint64            `json:"arp_replies"`
	EchoReplies   uint64            `json:"echo_replies"`
	Dropped       map[string]uint64 `json:"dropped,omitempty"`
	Sleeps        uint64            `json:"sleeps"`
	Neighbours    int               `json:"neighbours"`
	PortIPackets  uint64            `json:"port_ipackets"`
	PortOPackets  uint64            `json:"port_opackets"`
	PortIMissed   uint64            `json:"port_imissed"`
}

// Plugin is a DPDK port carrying wire datagrams. It implements the
// runtime's Datapath, Poller and Reacher interfaces.
type Plugin struct {
	opts  Options
	log   *slog.Logger
	port  *dpdk.Port
	pool  *dpdk.Mempool // +checklocksignore: set once by New; the mempool is thread-safe
	host  *netstack.Host
	res   netstack.Resolver // +checklocksignore: it has its own lock
	local netip.AddrPort

	txMu   sync.Mutex
	txBufs []*dpdk.Mbuf // +checklocks:txMu
	macs   []pkt.MAC    // +checklocks:txMu
	// ext is the runtime's slot memory (SlotMemory), nil before and
	// after; set and cleared under txMu, loaded without it by SlotBusy.
	// dmaMapped: ext is DMA-mapped for the port (undone by Close).
	ext       atomic.Pointer[dpdk.ExtMem]
	dmaMapped bool // +checklocks:txMu

	polling atomic.Bool
	closed  atomic.Bool
	pausing atomic.Bool   // the polling thread is pausing (Wake signals it)
	wake    chan struct{} // buffered 1
	lifeMu  sync.Mutex    // orders Close after a Poll that started
	rx      *pullState    // RecvBatch's buffers, made on its first call
	stopped sync.WaitGroup

	// maxDatagram is the largest UDP payload the MTU allows; set by New,
	// read-only after.
	maxDatagram int // +checklocksignore

	rxPackets, rxDatagrams, txDatagrams, txFull, noMbufs atomic.Uint64
	txZeroCopy, txCopied, txCopiedBytes                  atomic.Uint64
	tooLong                                              atomic.Uint64
	arpRequests, unresolved, sleeps                      atomic.Uint64
	dropped                                              [netstack.NumDropReasons]atomic.Uint64
	wrongPort                                            atomic.Uint64
}

var poolSeq atomic.Uint32

// pullState is what RecvBatch receives with.
type pullState struct {
	mbufs []*dpdk.Mbuf
	views []wire.Packet
	reply []byte
	res   netstack.Result
}

// Available reports whether this build can run DPDK at all.
func Available() bool { return dpdk.Available() }

// New initialises the EAL if need be, opens and starts the port, and
// returns the plugin. Errors say which step failed; without DPDK in the
// build they wrap dpdk.ErrUnavailable.
func New(opts Options) (*Plugin, error) {
	if opts.Device == "" {
		return nil, errors.New("dpdk: no device arguments")
	}
	a := opts.Addr.Addr().Unmap()
	if !a.Is4() || opts.Addr.Bits() < 1 || opts.Addr.Bits() > 32 {
		return nil, fmt.Errorf("dpdk: address %v is not an IPv4 address with its prefix", opts.Addr)
	}
	if opts.EAL == nil {
		opts.EAL = DefaultEAL
	}
	if strings.HasPrefix(opts.Device, "net_af_packet") && !strings.Contains(opts.Device, "framecnt=") {
		opts.Device += ",framecnt=8192"
	}
	if opts.Port == 0 {
		opts.Port = DefaultPort
	}
	if opts.Mbufs <= 0 {
		opts.Mbufs = DefaultMbufs
	}
	if opts.MTU <= 0 {
		opts.MTU = 1500
	}
	if opts.MTU+14 > mbufDataRoom {
		return nil, fmt.Errorf("dpdk: MTU %d does not fit an mbuf's %d bytes", opts.MTU, mbufDataRoom)
	}
	if opts.Burst <= 0 {
		opts.Burst = DefaultBurst
	}
	if opts.SpinIdle <= 0 {
		opts.SpinIdle = DefaultSpinIdle
	}
	if opts.MaxSleep <= 0 {
		opts.MaxSleep = DefaultMaxSleep
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := dpdk.Init(opts.EAL); err != nil {
		return nil, fmt.Errorf("dpdk: EAL (%s): %w", strings.Join(opts.EAL, " "), err)
	}
	// Mempool names are short (RTE_MEMPOOL_NAMESIZE) and unique.
	pool, err := dpdk.NewMempool(fmt.Sprintf("veloce%d", poolSeq.Add(1)), opts.Mbufs, 256, mbufDataRoom)
	if err != nil {
		return nil, fmt.Errorf("dpdk: mbuf pool for %s: %w", opts.Device, err)
	}
	port, err := dpdk.OpenPort(opts.Device, dpdk.PortConfig{Pool: pool, Promiscuous: false})
	if err != nil {
		pool.Free()
		return nil, fmt.Errorf("dpdk: port %s: %w", opts.Device, err)
	}
	mac := pkt.MAC(port.MAC())
	if mac == (pkt.MAC{}) {
		// A port without an address of its own (net_ring): a locally
		// administered one, unique in the process.
		mac = pkt.MAC{0x02, 'v', 'l', 'c', byte(port.ID() >> 8), byte(port.ID())}
	}
	host, err := netstack.New(netstack.Config{MAC: mac, Addr: netip.PrefixFrom(a, opts.Addr.Bits()), Neighbours: 256})
	if err != nil {
		port.Close()
		pool.Free()
		return nil, fmt.Errorf("dpdk: %w", err)
	}
	p := &Plugin{opts: opts, log: log, port: port, pool: pool, host: host,
		res:   netstack.Resolver{Interval: 100 * time.Millisecond, Timeout: 500 * time.Millisecond},
		local: netip.AddrPortFrom(a, opts.Port), wake: make(chan struct{}, 1), maxDatagram: opts.MTU - 28,
		txBufs: make([]*dpdk.Mbuf, opts.Burst), macs: make([]pkt.MAC, opts.Burst)}
	log.Info("dpdk port up", "device", opts.Device, "port", port.ID(), "mac", mac.HardwareAddr().String(), "addr", opts.Addr, "udp", opts.Port)
	// Announce ourselves so that the link's hosts (and switches) learn
	// where we are before the first datagram.
	p.sendControl(func(b []byte) (int, error) { return host.GratuitousARP(b) })
	return p, nil
}

// Name implements the runtime's Datapath.
func (p *Plugin) Name() string { return Name }

// LocalAddr is where peers reach this plugin.
func (p *Plugin) LocalAddr() netip.AddrPort { return p.local }

// MaxDatagram is the largest datagram (UDP payload) the port sends: its
// MTU's; the runtime sends larger messages as fragments.
func (p *Plugin) MaxDatagram() int { return p.maxDatagram }

// Reaches reports whether addr is on the port's link.
func (p *Plugin) Reaches(addr netip.Addr) bool { return p.host.OnLink(addr) }

// Host returns the plugin's userspace IPv4 host (its neighbour table).
func (p *Plugin) Host() *netstack.Host { return p.host }

// SendBatch sends pkts, each a wire datagram for its Addr. It returns how
// many went: fewer, with a nil error, when the port or the mbuf pool is
// full or the next destination's MAC is still being resolved (try again);
// fewer with ErrUnresolved when that destination has not answered ARP for
// half a second (skip it: later packets for it fail at once, while ARP
// requests keep going out, so a silent neighbour holds the queue up once). One burst is one call into DPDK.
func (p *Plugin) SendBatch(pkts []wire.Packet) (int, error) {
	if p.closed.Load() {
		return 0, ErrClosed
	}
	p.txMu.Lock()
	defer p.txMu.Unlock()
	if p.closed.Load() { // closed while this call waited for the lock
		return 0, ErrClosed
	}
	done := 0
	for done < len(pkts) {
		// Resolve as many destinations in a row as we can.
		n := 0
		for n < len(pkts)-done && n < len(p.txBufs) {
			mac, ok := p.host.Neighbour(pkts[done+n].Addr.Addr())
			if !ok {
				break
			}
			p.macs[n] = mac
			n++
		}
		if n == 0 {
			return done, p.resolveLocked(pkts[done].Addr.Addr())
		}
		bufs := p.txBufs[:n]
		if err := p.pool.AllocBulk(bufs); err != nil {
			p.noMbufs.Add(1)
			return done, nil
		}
		var tooLong error
		x := p.ext.Load()
		for i, m := range bufs {
			d := &pkts[done+i]
			l, err := 0, ErrTooLong
			if d.N <= p.maxDatagram {
				var attached bool
				if attached, err = p.attach(x, m, d, p.macs[i]); attached {
					continue
				}
				if err == nil {
					a := d.Addr.Addr().Unmap()
					l, err = p.host.PutUDPFrame(m.Room(), p.macs[i], a.As4(), p.opts.Port, d.Addr.Port(), d.Bytes())
				}
			}
			if err != nil {
				// Send what came before; the caller skips this one.
				dpdk.FreeBulk(bufs[i:])
				bufs, n, tooLong = bufs[:i], i, fmt.Errorf("dpdk: %d-byte datagram over the port's MTU %d: %w", d.N, p.opts.MTU, ErrTooLong)
				break
			}
			m.SetLen(l)
			p.txCopied.Add(1)
			p.txCopiedBytes.Add(uint64(d.N))
		}
		sent := p.port.TxBurst(0, bufs)
		p.txDatagrams.Add(uint64(sent))
		if sent < n {
			dpdk.FreeBulk(bufs[sent:])
			p.txFull.Add(1)
			return done + sent, nil
		}
		done += n
		if tooLong != nil {
			p.tooLong.Add(1)
			return done, tooLong
		}
	}
	return done, nil
}

// attach sends d from its slot of x without copying when it can: the
// frame headers go into the slot's headroom in front of the datagram and
// m is attached to the slot. It reports false (and m untouched) when d is
// not in x, has no room in front of it, or its slot is busy (the runtime
// would not do that; copying is the safe answer).
func (p *Plugin) attach(x *dpdk.ExtMem, m *dpdk.Mbuf, d *wire.Packet, mac pkt.MAC) (bool, error) {
	if x == nil || d.N == 0 {
		return false, nil
	}
	slot, off, ok := x.Slot(d.Bytes())
	const hl = netstack.UDPFrameHeaderLen
	if !ok || off < hl || x.Busy(slot) {
		return false, nil
	}
	start := slot*x.Stride() + off - hl
	frame := x.Bytes()[start : start+hl+d.N]
	a := d.Addr.Addr().Unmap()
	l, err := p.host.PutUDPFrame(frame, mac, a.As4(), p.opts.Port, d.Addr.Port(), frame[hl:])
	if err != nil {
		return false, err
	}
	m.AttachExtMem(x, slot, off-hl, l)
	p.txZeroCopy.Add(1)
	return true, nil
}

// SlotMemory gives the runtime n slots of stride bytes to lay its remote
// slots in, memory SendBatch sends from without copying (see the package
// doc): a dpdk.ExtMem, DMA-mapped for the port's device. A port on a
// real bus needs the EAL in IOVA-as-VA mode (--iova-mode=va): otherwise
// SlotMemory refuses, and the runtime copies. free unmaps it;
// call it once nothing writes the slots any more (before or after Close).
// While DPDK still holds an mbuf attached to a slot, free leaves the
// memory mapped for good: unmapping it could crash whoever reads the
// mbuf. A plugin gives out one region.
func (p *Plugin) SlotMemory(n, stride int) (mem []byte, free func(), err error) {
	p.txMu.Lock()
	defer p.txMu.Unlock()
	if p.closed.Load() {
		return nil, nil, ErrClosed
	}
	if p.ext.Load() != nil {
		return nil, nil, errors.New("dpdk: the plugin's slot memory is given out already")
	}
	if bus := p.port.Bus(); bus != "vdev" && !dpdk.IOVAIsVA() {
		// A NIC would DMA from the slots' virtual addresses as if they
		// were physical ones.
		return nil, nil, fmt.Errorf("dpdk: slot memory for port %s (bus %q): the EAL's IOVAs are physical addresses; run it with --iova-mode=va", p.opts.Device, bus)
	}
	x, err := dpdk.NewExtMem(n, stride)
	if err != nil {
		return nil, nil, fmt.Errorf("dpdk: slot memory: %w", err)
	}
	if err := p.port.DMAMap(x); err != nil {
		x.Free()
		return nil, nil, fmt.Errorf("dpdk: slot memory for port %s: %w", p.opts.Device, err)
	}
	p.ext.Store(x)
	p.dmaMapped = true
	free = func() {
		p.txMu.Lock()
		defer p.txMu.Unlock()
		if p.ext.Load() == x {
			p.ext.Store(nil)
			if p.dmaMapped {
				p.port.DMAUnmap(x)
				p.dmaMapped = false
			}
		}
		if err := x.Free(); err != nil {
			p.log.Warn("dpdk: slot memory left mapped: DPDK still holds mbufs attached to it", "err", err)
		}
	}
	return x.Bytes(), free, nil
}

// SlotBusy reports whether DPDK may still read slot i of the SlotMemory
// region (an mbuf attached to it is not freed yet): an atomic load.
func (p *Plugin) SlotBusy(i int) bool {
	x := p.ext.Load()
	return x != nil && x.Busy(i)
}

// resolveLocked asks for addr's MAC when it is time to, and says whether
// to wait (nil) or give up (ErrUnresolved).
// +checklocks:p.txMu
func (p *Plugin) resolveLocked(addr netip.Addr) error {
	if !p.host.OnLink(addr) {
		p.unresolved.Add(1)
		return fmt.Errorf("dpdk: %v is not on the port's link %v: %w", addr, p.host.Prefix(), ErrUnresolved)
	}
	send, fail := p.res.Want(addr, time.Now())
	if fail {
		p.unresolved.Add(1)
		return ErrUnresolved
	}
	if send {
		p.arpRequests.Add(1)
		p.sendControlLocked(func(b []byte) (int, error) { return p.host.PutARPRequest(b, addr) })
	}
	return nil
}

// sendControl sends one frame built by put (ARP, echo replies).
func (p *Plugin) sendControl(put func(b []byte) (int, error)) {
	p.txMu.Lock()
	defer p.txMu.Unlock()
	p.sendControlLocked(put)
}

// +checklocks:p.txMu
func (p *Plugin) sendControlLocked(put func(b []byte) (int, error)) {
	one := p.txBufs[:1]
	if err := p.pool.AllocBulk(one); err != nil {
		p.noMbufs.Add(1)
		return
	}
	n, err := put(one[0].Room())
	if err != nil {
		dpdk.FreeBulk(one)
		return
	}
	one[0].SetLen(n)
	if p.port.TxBurst(0, one) != 1 {
		dpdk.FreeBulk(one)
		p.txFull.Add(1)
	}
}

// Poll runs the polling thread until ctx ends or the plugin closes: it
// hands every burst of datagrams for the plugin's UDP port to handle, and
// calls flush (when not nil) on every turn, so that what the runtime
// queued is sent from this thread. After Options.SpinIdle without packets
// either way it pauses, doubling the pause up to Options.MaxSleep, until
// the pause ends or Wake cuts it short.
func (p *Plugin) Poll(ctx context.Context, handle func(pkts []wire.Packet), flush func() bool) error {
	if !p.polling.CompareAndSwap(false, true) {
		return errors.New("dpdk: the port is polled already")
	}
	defer p.polling.Store(false)
	p.lifeMu.Lock()
	if p.closed.Load() {
		p.lifeMu.Unlock()
		return ErrClosed
	}
	p.stopped.Add(1)
	p.lifeMu.Unlock()
	defer p.stopped.Done()

	runtime.LockOSThread()
	var saved unix.CPUSet
	pinned := false
	if p.opts.CPU >= 0 {
		var set unix.CPUSet
		set.Set(p.opts.CPU)
		if err := unix.SchedGetaffinity(0, &saved); err != nil {
			p.log.Warn("dpdk: cannot read the polling thread's CPUs", "err", err)
		} else if err := unix.SchedSetaffinity(0, &set); err != nil {
			p.log.Warn("dpdk: cannot pin the polling thread", "cpu", p.opts.CPU, "err", err)
		} else {
			pinned = true
		}
	}
	defer func() {
		// The thread goes back to Go's pool: give it back its CPUs.
		if pinned {
			if err := unix.SchedSetaffinity(0, &saved); err != nil {
				return // stays locked, and exits with this goroutine
			}
		}
		runtime.UnlockOSThread()
	}()
	if err := dpdk.RegisterThread(); err != nil {
		p.log.Warn("dpdk: polling thread not registered with the EAL (no mempool cache)", "err", err)
	} else {
		defer dpdk.UnregisterThread()
	}
	var done atomic.Bool
	stopCtx := context.AfterFunc(ctx, func() { done.Store(true); p.Wake() })
	defer stopCtx()
	if flush == nil {
		flush = func() bool { return false }
	}

	mbufs := make([]*dpdk.Mbuf, p.opts.Burst)
	pkts := make([]wire.Packet, p.opts.Burst)
	reply := make([]byte, mbufDataRoom)
	var res netstack.Result
	pause := time.NewTimer(time.Hour)
	pause.Stop()
	last, busy := time.Now(), false
	sleep := time.Microsecond
	for polls := 0; ; polls++ {
		if done.Load() || p.closed.Load() {
			return nil
		}
		sent := flush()
		n := p.port.RxBurst(0, mbufs)
		if n > 0 {
			p.rxPackets.Add(uint64(n))
			k := p.classify(mbufs[:n], pkts, reply, &res)
			if k > 0 {
				p.rxDatagrams.Add(uint64(k))
				handle(pkts[:k])
			}
			dpdk.FreeBulk(mbufs[:n])
		}
		if n > 0 || sent {
			busy = true
		}
		if polls&63 != 0 {
			continue
		}
		now := time.Now()
		if busy {
			last, sleep, busy = now, time.Microsecond, false
			continue
		}
		if now.Sub(last) < p.opts.SpinIdle {
			continue
		}
		// Pause. Announce it first, then look once more for work queued
		// before the announcement (whose Wake saw no pause to end).
		p.pausing.Store(true)
		if flush() {
			p.pausing.Store(false)
			last = time.Now()
			continue
		}
		p.sleeps.Add(1)
		pause.Reset(sleep)
		select {
		case <-p.wake:
			pause.Stop()
		case <-pause.C:
		}
		p.pausing.Store(false)
		sleep = min(2*sleep, p.opts.MaxSleep)
	}
}

// Wake ends a pause of the polling thread (the runtime queued messages).
// It costs one atomic load when the thread is not pausing.
func (p *Plugin) Wake() {
	if p.pausing.Load() {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// classify runs each received frame through the host and collects the
// datagrams for the plugin's port in pkts (views of the mbufs).
func (p *Plugin) classify(mbufs []*dpdk.Mbuf, pkts []wire.Packet, reply []byte, res *netstack.Result) int {
	k := 0
	for _, m := range mbufs {
		p.host.Handle(m.Data(), reply, res)
		switch res.Verdict {
		case netstack.VerdictDeliver:
			if res.Broadcast || res.DstPort != p.opts.Port {
				p.wrongPort.Add(1)
				continue
			}
			pkts[k] = wire.Packet{Addr: res.Src, Buf: res.Payload, N: len(res.Payload)}
			k++
		case netstack.VerdictReplied:
			n := res.ReplyLen
			p.sendControl(func(b []byte) (int, error) { return copy(b, reply[:n]), nil })
		default:
			p.dropped[res.Reason].Add(1)
		}
	}
	return k
}

// RecvBatch receives like Poll but on the caller's thread, for callers
// that pull: it waits up to timeout for the first datagram and copies
// each into pkts[i].Buf. Do not use it while Poll runs.
func (p *Plugin) RecvBatch(pkts []wire.Packet, timeout time.Duration) (int, error) {
	if p.closed.Load() {
		return 0, ErrClosed
	}
	if !p.polling.CompareAndSwap(false, true) {
		return 0, errors.New("dpdk: RecvBatch while the port is polled")
	}
	defer p.polling.Store(false)
	p.lifeMu.Lock()
	if p.closed.Load() {
		p.lifeMu.Unlock()
		return 0, ErrClosed
	}
	p.stopped.Add(1) // Close waits for this call
	p.lifeMu.Unlock()
	defer p.stopped.Done()
	if p.rx == nil {
		p.rx = &pullState{mbufs: make([]*dpdk.Mbuf, p.opts.Burst), views: make([]wire.Packet, p.opts.Burst), reply: make([]byte, mbufDataRoom)}
	}
	mbufs, views, reply, res := p.rx.mbufs[:min(len(pkts), p.opts.Burst)], p.rx.views, p.rx.reply, &p.rx.res
	deadline := time.Now().Add(timeout)
	for {
		n := p.port.RxBurst(0, mbufs)
		if n > 0 {
			p.rxPackets.Add(uint64(n))
			k := p.classify(mbufs[:n], views, reply, res)
			for i := range views[:k] {
				pkts[i].Addr = views[i].Addr
				pkts[i].N = copy(pkts[i].Buf, views[i].Bytes())
			}
			dpdk.FreeBulk(mbufs[:n])
			if k > 0 {
				p.rxDatagrams.Add(uint64(k))
				return k, nil
			}
			continue
		}
		if time.Now().After(deadline) {
			return 0, nil
		}
		if p.closed.Load() {
			return 0, ErrClosed
		}
		time.Sleep(10 * time.Microsecond)
	}
}

// Stats returns the counters.
func (p *Plugin) Stats() Stats {
	s := Stats{RxPackets: p.rxPackets.Load(), RxDatagrams: p.rxDatagrams.Load(), TxDatagrams: p.txDatagrams.Load(),
		TxZeroCopy: p.txZeroCopy.Load(), TxCopied: p.txCopied.Load(), TxCopiedBytes: p.txCopiedBytes.Load(),
		TxFull: p.txFull.Load(), TooLong: p.tooLong.Load(), NoMbufs: p.noMbufs.Load(), ARPRequests: p.arpRequests.Load(),
		Unresolved: p.unresolved.Load(), Sleeps: p.sleeps.Load(), Neighbours: len(p.host.Neighbours())}
	s.ARPReplies, s.EchoReplies = p.host.Replies()
	for r := range p.dropped {
		if v := p.dropped[r].Load(); v > 0 {
			if s.Dropped == nil {
				s.Dropped = map[string]uint64{}
			}
			s.Dropped[netstack.DropReason(r).String()] = v
		}
	}
	if v := p.wrongPort.Load(); v > 0 {
		if s.Dropped == nil {
			s.Dropped = map[string]uint64{}
		}
		s.Dropped["other-port"] = v
	}
	if x := p.ext.Load(); x != nil {
		s.TxSlotsBusy = x.InFlight()
	}
	if ps, err := p.port.Stats(); err == nil {
		s.PortIPackets, s.PortOPackets, s.PortIMissed = ps.IPackets, ps.OPackets, ps.IMissed
	}
	return s
}

// Close stops the polling thread, then the port, and frees the pool.
func (p *Plugin) Close() error {
	p.lifeMu.Lock()
	if p.closed.Swap(true) {
		p.lifeMu.Unlock()
		return nil
	}
	p.lifeMu.Unlock()
	p.Wake()
	p.stopped.Wait()
	p.txMu.Lock()
	defer p.txMu.Unlock()
	if x := p.ext.Load(); x != nil && p.dmaMapped {
		p.port.DMAUnmap(x) // the memory stays the runtime's until its free
		p.dmaMapped = false
	}
	err := p.port.Close()
	p.pool.Free()
	return err
}

// DatapathStats returns Stats for velocectl remote.
func (p *Plugin) DatapathStats() any { return p.Stats() }
