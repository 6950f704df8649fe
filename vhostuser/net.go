package vhostuser

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// FrameHandler receives the frames a guest transmits. It is called on a
// queue pair's poller thread, one frame at a time, without the virtio-net
// header; frame is valid only during the call (it may point into guest
// memory). To answer on the same link, the handler writes a whole Ethernet
// frame into reply and returns its length (0: no reply); the device puts it
// on the queue pair's RX ring. HandleFrame must not block and should not
// allocate.
type FrameHandler interface {
	HandleFrame(qp int, frame, reply []byte) int
}

// NetOptions configure a NetDevice.
type NetOptions struct {
	// QueuePairs is the most queue pairs a frontend may use; default 1.
	// MQ is offered when it is above 1. GET_QUEUE_NUM answers the number
	// of virtqueues, 2*QueuePairs (see the GetQueueNum case in handle).
	QueuePairs int
	// Handler receives the guest's frames; required.
	Handler FrameHandler
	// Logger receives control-path events; nil discards.
	Logger *slog.Logger
	// PollCPUs pins queue pair i's polling thread to CPU
	// PollCPUs[i%len(PollCPUs)]; empty leaves placement to the scheduler.
	// Pin on hosts with cores to spare for the datapath, as with DPDK's
	// lcores.
	PollCPUs []int
}

// Features a NetDevice offers. Checksum and segmentation offloads are not
// offered: the link peer then sees only whole, checksummed frames, and the
// frames it writes need no offload metadata.
const netOfferedFeatures = Features(1)<<FVersion1 |
	Features(1)<<FProtocolFeatures |
	Features(1)<<FRingIndirectDesc |
	Features(1)<<FRingEventIdx |
	Features(1)<<FNotifyOnEmpty |
	Features(1)<<FAnyLayout |
	Features(1)<<FLogAll |
	Features(1)<<NetFMrgRxbuf |
	Features(1)<<NetFMTU |
	Features(1)<<NetFStatus |
	Features(1)<<NetFGuestAnnounce

const netOfferedProtocolFeatures = Features(1)<<ProtocolFMQ |
	Features(1)<<ProtocolFLogShmfd |
	Features(1)<<ProtocolFRARP |
	Features(1)<<ProtocolFReplyAck |
	Features(1)<<ProtocolFNetMTU |
	Features(1)<<ProtocolFConfigureMemSlots |
	Features(1)<<ProtocolFInflightShmfd |
	Features(1)<<ProtocolFStatus

// NetStats are a NetDevice's counters since it was created (they survive
// frontend reconnects).
type NetStats struct {
	// GuestTXPackets and GuestTXBytes count frames taken off TX queues.
	GuestTXPackets, GuestTXBytes uint64
	// GuestRXPackets and GuestRXBytes count frames put on RX queues.
	GuestRXPackets, GuestRXBytes uint64
	// Drops counts frames that could not be delivered to the guest (no RX
	// buffer, RX queue not running, frame larger than the buffers).
	Drops uint64
	// Errors counts malformed descriptor chains and ring errors.
	Errors uint64
}

// NetState is a snapshot of a NetDevice's negotiated state.
type NetState struct {
	Connected        bool
	Features         Features // acked by the frontend
	ProtocolFeatures Features // acked by the frontend
	QueuePairs       int      // queue pairs with a running ring
	MTU              uint16   // from NET_SET_MTU, 0 if never set
	Status           uint8    // from SET_STATUS
	MemoryRegions    int
	Logging          bool // VHOST_F_LOG_ALL on with a dirty log mapped
	LogBaseReceived  uint64
	RARPs            uint64 // SEND_RARP requests seen
}

type vring struct {
	num       uint32
	addr      VringAddr
	addrSet   bool
	base      uint16
	kick      int // -1 when none
	call      int // -1 when none
	errFD     int // -1 when none
	kickSet   bool
	pollOnly  bool // SET_VRING_KICK with VringNoFD: poll without a kick fd
	enabled   bool
	stopped   bool // GET_VRING_BASE stopped it
	lastError error
}

// NetDevice is a virtio-net device served over vhost-user: the backend
// side of one port. It serves one frontend connection at a time (Serve)
// and keeps its counters across reconnects.
type NetDevice struct {
	opts NetOptions
	log  *slog.Logger

	stats netCounters

	mu       sync.Mutex // serialises the control path
	features Features   // guarded by mu
	protocol Features   // guarded by mu
	owner    bool       // guarded by mu
	mem      *Memory    // guarded by mu
	// regionRefs counts the ADD_MEM_REGs of each mapped region (see
	// AddMemReg); guarded by mu.
	regionRefs map[MemoryRegion]int
	// inflight is the inflight region (GET/SET_INFLIGHT_FD); guarded by mu.
	inflight *inflightRegion
	dirty    *DirtyLog                 // guarded by mu
	vrings   []vring                   // guarded by mu; 2 per queue pair: RX even, TX odd
	pollers  []*poller                 // guarded by mu; per queue pair, nil when stopped
	running  atomic.Pointer[[]*poller] // a copy of pollers for Wake, which takes no lock
	mtu      uint16                    // guarded by mu
	status   uint8                     // guarded by mu
	logBases uint64                    // guarded by mu
	rarps    uint64                    // guarded by mu
	conn     *net.UnixConn             // guarded by mu; the frontend being served
	// announced[qp] is set once the Announcer's frame went out on the
	// queue pair since the frontend connected.
	announced []atomic.Bool // replaced under mu on reset
}

type netCounters struct {
	txPackets, txBytes, rxPackets, rxBytes, drops, errors atomic.Uint64
}

// NewNetDevice returns a device with no frontend.
func NewNetDevice(opts NetOptions) (*NetDevice, error) {
	if opts.Handler == nil {
		return nil, errors.New("vhostuser: NetOptions.Handler is required")
	}
	if opts.QueuePairs <= 0 {
		opts.QueuePairs = 1
	}
	for _, c := range opts.PollCPUs {
		if c < 0 || c >= 1024 {
			return nil, fmt.Errorf("vhostuser: poll CPU %d out of range", c)
		}
	}
	if opts.QueuePairs > 128 {
		return nil, fmt.Errorf("vhostuser: %d queue pairs, at most 128", opts.QueuePairs)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &NetDevice{opts: opts, log: log}
	d.resetLocked()
	return d, nil
}

// Stats returns the device's counters.
func (d *NetDevice) Stats() NetStats {
	s := NetStats{
		GuestTXPackets: d.stats.txPackets.Load(), GuestTXBytes: d.stats.txBytes.Load(),
		GuestRXPackets: d.stats.rxPackets.Load(), GuestRXBytes: d.stats.rxBytes.Load(),
		Drops: d.stats.drops.Load(), Errors: d.stats.errors.Load(),
	}
	d.mu.Lock()
	for _, p := range d.pollers {
		if p != nil {
			s.Errors += p.ringErrors()
		}
	}
	d.mu.Unlock()
	return s
}

// State returns the negotiated state.
func (d *NetDevice) State() NetState {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := NetState{
		Connected: d.conn != nil, Features: d.features, ProtocolFeatures: d.protocol,
		MTU: d.mtu, Status: d.status, Logging: d.loggingLocked(), LogBaseReceived: d.logBases, RARPs: d.rarps,
	}
	if d.mem != nil {
		s.MemoryRegions = d.mem.NumRegions()
	}
	for _, p := range d.pollers {
		if p != nil {
			s.QueuePairs++
		}
	}
	return s
}

// MaxQueuePairs returns NetOptions.QueuePairs.
func (d *NetDevice) MaxQueuePairs() int { return d.opts.QueuePairs }

// ErrBusy is returned by Serve when another frontend is connected.
var ErrBusy = errors.New("vhostuser: device already has a frontend")

// Serve speaks vhost-user with one frontend until it disconnects or sends
// something the device cannot accept; then every ring stops, memory is
// unmapped and every descriptor received is closed, so the next frontend
// starts clean. A clean disconnect returns nil.
func (d *NetDevice) Serve(conn *net.UnixConn) error {
	d.mu.Lock()
	if d.conn != nil {
		d.mu.Unlock()
		return ErrBusy
	}
	d.conn = conn
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.resetLocked()
		d.conn = nil
		d.mu.Unlock()
	}()
	buf := make([]byte, MaxMessageSize)
	for {
		m, fds, err := ReadMessage(conn, buf)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if err := d.handle(conn, m, fds); err != nil {
			d.log.Warn("vhost-user frontend dropped", "request", m.Request.String(), "err", err)
			return err
		}
	}
}

// handle applies one message. fds are owned by handle. A returned error
// disconnects the frontend (after a failed REPLY_ACK when one was asked).
func (d *NetDevice) handle(conn *net.UnixConn, m Message, fds []int) (err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	acked := false
	defer func() {
		if err != nil {
			closeFDs(fds)
		}
		if m.NeedsAck() && !acked && d.protocol.Has(ProtocolFReplyAck) {
			var status uint64
			if err != nil {
				status = 1
			}
			if werr := ReplyU64(conn, m.Request, status); werr != nil && err == nil {
				err = werr
			}
		}
	}()
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%v: %s", m.Request, fmt.Sprintf(format, args...))
	}
	switch m.Request {
	case GetFeatures:
		return ReplyU64(conn, m.Request, uint64(d.offeredFeatures()))
	case SetFeatures:
		v, err := m.U64()
		if err != nil {
			return err
		}
		f := Features(v)
		if extra := f &^ d.offeredFeatures(); extra != 0 {
			return fail("frontend acked features %#x that were not offered", uint64(extra))
		}
		if (d.features^f)&^Bit(FLogAll) != 0 {
			// Running rings and pollers were built with the old
			// EVENT_IDX, INDIRECT_DESC, header size and MRG_RXBUF:
			// rebuild them (bases are saved). A LOG_ALL toggle alone
			// (migration start/end) is applied in place.
			d.stopAllLocked()
		}
		d.features = f
		d.applyLoggingLocked()
		return d.reconcileLocked()
	case GetProtocolFeatures:
		return ReplyU64(conn, m.Request, uint64(netOfferedProtocolFeatures))
	case SetProtocolFeatures:
		v, err := m.U64()
		if err != nil {
			return err
		}
		if extra := Features(v) &^ netOfferedProtocolFeatures; extra != 0 {
			return fail("frontend acked protocol features %#x that were not offered", uint64(extra))
		}
		d.protocol = Features(v)
		return nil
	case SetOwner:
		d.owner = true
		return nil
	case ResetOwner:
		d.resetLocked()
		return nil
	case GetQueueNum:
		// Virtqueues, not queue pairs: Cloud Hypervisor refuses a backend
		// whose answer is below its num_queues (2 per pair: "requested
		// too many queues"), and rust-vmm backends, libvhost-user and
		// passt answer virtqueues too. QEMU compares the answer with its
		// queue pairs, so it accepts this (its own check is looser; a
		// vring index past 2*QueuePairs is still refused below).
		return ReplyU64(conn, m.Request, 2*uint64(d.opts.QueuePairs))
	case GetMaxMemSlots:
		return ReplyU64(conn, m.Request, MaxMemSlots)
	case SetMemTable:
		t, err := m.MemoryTable()
		if err != nil {
			return err
		}
		mem, err := NewMemoryFromTable(t.Regions, fds)
		fds = nil // owned by the Memory now
		if err != nil {
			return err
		}
		d.stopAllLocked()
		if d.mem != nil {
			d.mem.Close()
		}
		d.mem = mem
		clear(d.regionRefs)
		for _, r := range t.Regions {
			d.regionRefs[r] = 1
		}
		return d.reconcileLocked()
	case AddMemReg:
		r, err := m.MemRegion()
		if err != nil {
			return err
		}
		if d.mem == nil {
			d.mem = NewMemory()
		}
		fd := fds[0]
		fds = nil
		// With multiqueue QEMU runs one vhost device per queue pair over
		// the same connection, and each adds every region: an identical
		// region is counted, not mapped twice.
		if d.regionRefs[r] > 0 {
			unix.Close(fd)
			d.regionRefs[r]++
			return nil
		}
		if err := d.mem.AddRegion(r, fd); err != nil {
			return err
		}
		d.regionRefs[r] = 1
		return d.reconcileLocked()
	case RemMemReg:
		r, err := m.MemRegion()
		closeFDs(fds) // the frontend sends the region's fd; it is not needed
		fds = nil
		if err != nil {
			return err
		}
		if d.mem == nil {
			return fail("no memory table")
		}
		if d.regionRefs[r] > 1 {
			d.regionRefs[r]--
			return nil
		}
		d.stopAllLocked()
		if err := d.mem.RemoveRegion(r); err != nil {
			return err
		}
		delete(d.regionRefs, r)
		return d.reconcileLocked()
	case SetLogBase:
		l, err := m.Log()
		if err != nil {
			return err
		}
		fd := fds[0]
		fds = nil
		dl, err := NewDirtyLog(fd, l)
		if err != nil {
			return err
		}
		d.stopAllLocked()
		if d.dirty != nil {
			d.dirty.Close()
		}
		d.dirty = dl
		d.logBases++
		// Frontends wait for this reply when LOG_SHMFD is negotiated;
		// without it, migration hangs. The reply echoes the 16-byte log
		// description: rust-vmm's frontend (vhost >= 0.16, so Cloud
		// Hypervisor) reads exactly a VhostUserLog with a non-zero size
		// and would block forever on a shorter u64 reply; QEMU reads
		// whatever size the header says. rust-vmm's own backend sends
		// the same echo.
		acked = true
		if err := WriteReply(conn, m.Request, m.Payload, nil); err != nil {
			return err
		}
		return d.reconcileLocked()
	case SetLogFD:
		closeFDs(fds) // the log-sync eventfd: the device logs synchronously
		fds = nil
		return nil
	case SetVringNum:
		s, vr, err := d.vringStateLocked(m)
		if err != nil {
			return err
		}
		if s.Num == 0 || s.Num > MaxQueueSize || s.Num&(s.Num-1) != 0 {
			return fail("queue size %d is not a power of two from 1 to %d", s.Num, MaxQueueSize)
		}
		vr.num = s.Num
		return nil
	case SetVringAddr:
		a, err := m.VringAddr()
		if err != nil {
			return err
		}
		vr, err := d.vringLocked(a.Index)
		if err != nil {
			return err
		}
		d.stopPairLocked(int(a.Index) / 2)
		vr.addr, vr.addrSet = a, true
		return d.reconcileLocked()
	case SetVringBase:
		s, vr, err := d.vringStateLocked(m)
		if err != nil {
			return err
		}
		if s.Num > 0xffff {
			return fail("vring base %d out of range", s.Num)
		}
		vr.base = uint16(s.Num)
		return nil
	case GetVringBase:
		s, vr, err := d.vringStateLocked(m)
		if err != nil {
			return err
		}
		d.stopPairLocked(int(s.Index) / 2)
		vr.stopped, vr.kickSet = true, false
		closeFD(&vr.kick)
		if err := ReplyVringState(conn, m.Request, VringState{Index: s.Index, Num: uint32(vr.base)}); err != nil {
			return err
		}
		return d.reconcileLocked()
	case SetVringKick, SetVringCall, SetVringErr:
		v, err := m.U64()
		if err != nil {
			return err
		}
		vr, err := d.vringLocked(uint32(v & VringIndexMask))
		if err != nil {
			return err
		}
		fd := -1
		if v&VringNoFD == 0 {
			if len(fds) != 1 {
				return fail("expected one file descriptor, got %d", len(fds))
			}
			fd = fds[0]
		}
		fds = nil
		qp := int(v&VringIndexMask) / 2
		switch m.Request {
		case SetVringKick:
			d.stopPairLocked(qp)
			closeFD(&vr.kick)
			vr.kick, vr.kickSet, vr.pollOnly, vr.stopped = fd, true, fd < 0, false
			if !d.features.Has(FProtocolFeatures) {
				// Without VHOST_USER_F_PROTOCOL_FEATURES a ring starts
				// enabled as soon as it has a kick (vhost-user.rst,
				// "Ring states").
				vr.enabled = true
			}
		case SetVringCall:
			d.stopPairLocked(qp)
			closeFD(&vr.call)
			vr.call = fd
		case SetVringErr:
			closeFD(&vr.errFD)
			vr.errFD = fd
			return nil
		}
		return d.reconcileLocked()
	case SetVringEnable:
		s, vr, err := d.vringStateLocked(m)
		if err != nil {
			return err
		}
		if s.Num > 1 {
			return fail("enable value %d", s.Num)
		}
		d.stopPairLocked(int(s.Index) / 2)
		vr.enabled = s.Num == 1
		return d.reconcileLocked()
	case SendRARP:
		d.rarps++
		return nil
	case NetSetMTU:
		v, err := m.U64()
		if err != nil {
			return err
		}
		if v < 68 || v > 65535 {
			return fail("MTU %d out of range 68-65535", v)
		}
		d.mtu = uint16(v)
		return nil
	case SetStatus:
		v, err := m.U64()
		if err != nil {
			return err
		}
		if v > 0xff {
			return fail("status %#x out of range", v)
		}
		d.status = uint8(v)
		return nil
	case GetStatus:
		return ReplyU64(conn, m.Request, uint64(d.status))
	case GetInflightFD:
		in, err := m.Inflight()
		if err != nil {
			return err
		}
		if int(in.NumQueues) > len(d.vrings) {
			return fail("%d queues, the device has %d", in.NumQueues, len(d.vrings))
		}
		region, err := newInflightRegion(int(in.NumQueues), in.QueueSize)
		if err != nil {
			return err
		}
		d.replaceInflightLocked(region)
		in.MmapSize, in.MmapOffset = uint64(len(region.mapping)), 0
		if err := ReplyInflight(conn, in, region.fd); err != nil {
			return err
		}
		return d.reconcileLocked()
	case SetInflightFD:
		in, err := m.Inflight()
		if err != nil {
			return err
		}
		fd := fds[0]
		fds = nil
		region, err := mapInflightRegion(fd, in)
		if err != nil {
			return err
		}
		d.replaceInflightLocked(region)
		return d.reconcileLocked()
	case SetVringEndian:
		return fail("legacy cross-endian rings are not supported")
	default:
		return fmt.Errorf("%v: %w: not supported by the virtio-net device", m.Request, ErrUnknownRequest)
	}
}

func (d *NetDevice) offeredFeatures() Features {
	f := netOfferedFeatures
	if d.opts.QueuePairs > 1 {
		f |= Features(1) << NetFMQ
	}
	return f
}

// vringStateLocked decodes a VringState payload and finds its ring.
func (d *NetDevice) vringStateLocked(m Message) (VringState, *vring, error) {
	s, err := m.VringState()
	if err != nil {
		return s, nil, err
	}
	vr, err := d.vringLocked(s.Index)
	return s, vr, err
}

func (d *NetDevice) vringLocked(index uint32) (*vring, error) {
	if index >= uint32(len(d.vrings)) {
		return nil, fmt.Errorf("vring index %d out of range (device has %d)", index, len(d.vrings))
	}
	return &d.vrings[index], nil
}

func (d *NetDevice) loggingLocked() bool {
	return d.dirty != nil && d.features.Has(FLogAll)
}

// resetLocked stops everything and forgets the frontend's state.
func (d *NetDevice) resetLocked() {
	d.stopAllLocked()
	for i := range d.vrings {
		closeFD(&d.vrings[i].kick)
		closeFD(&d.vrings[i].call)
		closeFD(&d.vrings[i].errFD)
	}
	d.vrings = make([]vring, 2*d.opts.QueuePairs)
	for i := range d.vrings {
		d.vrings[i] = vring{kick: -1, call: -1, errFD: -1}
	}
	d.pollers = make([]*poller, d.opts.QueuePairs)
	d.publishPollersLocked()
	d.announced = make([]atomic.Bool, d.opts.QueuePairs)
	if d.mem != nil {
		d.mem.Close()
		d.mem = nil
	}
	d.regionRefs = map[MemoryRegion]int{}
	if d.inflight != nil {
		d.inflight.close()
		d.inflight = nil
	}
	if d.dirty != nil {
		d.dirty.Close()
		d.dirty = nil
	}
	d.features, d.protocol, d.owner, d.mtu, d.status = 0, 0, false, 0, 0
}

func (d *NetDevice) stopAllLocked() {
	for qp := range d.pollers {
		d.stopPairLocked(qp)
	}
}

// stopPairLocked stops a queue pair's poller and saves its rings' bases.
func (d *NetDevice) stopPairLocked(qp int) {
	p := d.pollers[qp]
	if p == nil {
		return
	}
	p.stop()
	d.stats.errors.Add(p.ringErrors())
	if p.rx != nil {
		d.vrings[2*qp].base = uint16(p.rx.VringBase())
	}
	if p.tx != nil {
		d.vrings[2*qp+1].base = uint16(p.tx.VringBase())
	}
	d.pollers[qp] = nil
	d.publishPollersLocked()
}

// ready says whether a ring can run.
func (d *NetDevice) readyLocked(vr *vring) bool {
	return d.mem != nil && vr.num > 0 && vr.addrSet && vr.kickSet && vr.enabled && !vr.stopped
}

// replaceInflightLocked installs a new inflight region; the rings restart
// on it at the next reconcile.
func (d *NetDevice) replaceInflightLocked(region *inflightRegion) {
	d.stopAllLocked()
	if d.inflight != nil {
		d.inflight.close()
	}
	d.inflight = region
}

// applyLoggingLocked turns dirty logging on or off on the running rings,
// as VHOST_F_LOG_ALL now says: a migration starts or ends (completed,
// failed or cancelled) with SET_FEATURES.
func (d *NetDevice) applyLoggingLocked() {
	var dl *DirtyLog
	if d.loggingLocked() {
		dl = d.dirty
	}
	for qp, p := range d.pollers {
		if p == nil {
			continue
		}
		for i, q := range []*SplitRing{p.rx, p.tx} {
			if q != nil {
				a := d.vrings[2*qp+i].addr
				q.SetLogging(dl, a.Flags&VringFLog != 0, a.Log)
			}
		}
	}
}

// Wake makes every sleeping queue-pair poller look for work now; an
// RXSource calls it after queueing a frame. It takes no lock and makes no
// system call unless a poller sleeps, so it may be called per frame.
func (d *NetDevice) Wake() {
	if ps := d.running.Load(); ps != nil {
		for _, p := range *ps {
			if p != nil && p.sleeping.Load() {
				signal(p.wake)
			}
		}
	}
}

// publishPollersLocked makes the current pollers visible to Wake.
func (d *NetDevice) publishPollersLocked() {
	ps := append([]*poller(nil), d.pollers...)
	d.running.Store(&ps)
}

// reconcileLocked starts a poller for every queue pair with a ready ring
// and none running. Pollers of unchanged pairs keep running.
func (d *NetDevice) reconcileLocked() error {
	for qp := range d.pollers {
		if d.pollers[qp] != nil {
			continue
		}
		rxv, txv := &d.vrings[2*qp], &d.vrings[2*qp+1]
		rxOK, txOK := d.readyLocked(rxv), d.readyLocked(txv)
		if !rxOK && !txOK {
			continue
		}
		p := newPoller(d, qp)
		if rxOK {
			q, err := d.ringLocked(rxv)
			if err != nil {
				rxv.lastError = err
				return fmt.Errorf("start RX ring %d: %w", 2*qp, err)
			}
			p.rx, p.rxCall = q, rxv.call
		}
		if txOK {
			q, err := d.ringLocked(txv)
			if err != nil {
				txv.lastError = err
				return fmt.Errorf("start TX ring %d: %w", 2*qp+1, err)
			}
			p.tx, p.txKick, p.txCall = q, txv.kick, txv.call
		}
		if rxOK {
			p.rxKick = rxv.kick
		}
		if err := p.start(); err != nil {
			return err
		}
		d.pollers[qp] = p
		d.publishPollersLocked()
	}
	return nil
}

func (d *NetDevice) ringLocked(vr *vring) (*SplitRing, error) {
	var dl *DirtyLog
	if d.loggingLocked() {
		dl = d.dirty
	}
	var inflight []byte
	if r := d.inflight; r != nil && int(vr.addr.Index) < r.queues && uint32(r.queueSize) == vr.num {
		inflight = r.queue(int(vr.addr.Index))
	}
	return NewSplitRing(d.mem, SplitRingOptions{
		Inflight:     inflight,
		Size:         vr.num,
		Addr:         vr.addr,
		LastAvailIdx: vr.base,
		EventIdx:     d.features.Has(FRingEventIdx),
		IndirectDesc: d.features.Has(FRingIndirectDesc),
		Log:          dl,
	})
}

// netHeaderLen is the size of struct virtio_net_hdr the driver uses.
func (d *NetDevice) netHeaderLenLocked() int {
	if d.features.Has(FVersion1) || d.features.Has(NetFMrgRxbuf) {
		return 12
	}
	return 10
}

func closeFD(fd *int) {
	if *fd >= 0 {
		unix.Close(*fd)
		*fd = -1
	}
}
