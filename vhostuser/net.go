package vhostuser

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/internal/fd"
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
	// PollCPUs pins queue pair i's poller to CPU
	// PollCPUs[i%len(PollCPUs)]; empty leaves placement to the scheduler,
	// a thread per poller. The pollers pinned to one CPU, of every device
	// in the process, share one thread, a round of each in turn, as a
	// DPDK PMD thread serves several ports (pollgroup.go). Pin on hosts
	// with cores to spare for the datapath, as with DPDK's lcores.
	PollCPUs []int
	// State, when set, moves the owner's state through the frontend's
	// migration stream: the device offers VHOST_USER_PROTOCOL_F_DEVICE_STATE
	// and serves SET_DEVICE_STATE_FD and CHECK_DEVICE_STATE (devstate.go).
	State StateTransferer
	// StateTimeout is the deadline of one state transfer on its channel;
	// default DefaultStateTimeout.
	StateTimeout time.Duration
	// RingState, when set, is the path prefix of the files in which the
	// device keeps the inflight regions of packed rings whose frontend
	// hands over none (QEMU's virtio-net), so that the next backend on
	// this port resumes them where this one stopped, crash or restart
	// (ringstate.go). One file per ring: RingState + ".ring<index>". Give
	// each device its own prefix, on tmpfs; empty: packed rings of such
	// frontends do not survive a backend restart.
	RingState string
}

// Features a NetDevice offers. Checksum (CSUM) and segmentation offloads
// are not offered: the link peer then sees only whole, checksummed frames.
// GUEST_CSUM is: a guest that takes it may be given frames marked
// DATA_VALID (direct RX, directrx.go), whose UDP checksum the writer then
// leaves out; every other frame it gets is whole and checksummed, as a
// guest without it gets them all.
const netOfferedFeatures = Features(1)<<FVersion1 |
	Features(1)<<NetFGuestCsum |
	Features(1)<<FProtocolFeatures |
	Features(1)<<FRingIndirectDesc |
	Features(1)<<FRingEventIdx |
	Features(1)<<FRingPacked |
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
	// Drops counts frames that could not be delivered to the guest: the
	// queue pair's RX backlog was full (frames wait there while the
	// guest's RX ring is short or not running yet, see rxbacklog.go), or
	// the frame was larger than the buffers the guest posts.
	Drops uint64
	// Errors counts malformed descriptor chains and ring errors.
	Errors uint64
	// Failures counts frontends the device dropped on its own: a fault on
	// memory the frontend handed over, or a ring the driver broke (see
	// NetState.Failure).
	Failures uint64
	// Copies counts the frame copies the device made: a TX chain gathered
	// into one buffer (its frame spanned several descriptors), a frame
	// copied into RX buffers (a reply, an RXSource's frame, a backlogged
	// one). A frame an RXWriter built in place (DeliverRX) is the
	// writer's copy, not counted here.
	Copies uint64
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
	// Failure says why the device dropped its last frontend on its own
	// ("queue pair 0: guest memory (queue pair 0) fault at 0x7f...: memory
	// file shrunk", "queue pair 0: ring 1 broken: ..."), or is empty. It
	// is cleared when the next frontend connects. A backend shows the
	// port as failed while it is set.
	Failure string
}

// vring is one ring's frontend-given state. It owns its eventfds.
type vring struct {
	index     uint32
	num       uint32
	addr      VringAddr
	addrSet   bool
	base      uint32      // SET_VRING_BASE: an index (split), or indices and wrap counters (packed)
	kick      *fd.EventFD // nil when none
	call      *fd.EventFD // nil when none
	errFD     *fd.EventFD // nil when none
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

	// active is the frontend connection being served (nil when none);
	// failure, once set, is why the device dropped it (the first failure
	// wins); snap is the NetState the control path last published. All
	// three are read without mu, so Stats and State never wait for a
	// message handler.
	active  atomic.Pointer[net.UnixConn]
	failure atomic.Pointer[failure]
	snap    atomic.Pointer[NetState]

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
	// kept[i] is ring i's kept region (ringstate.go), nil when none; peer
	// is the frontend's process. Guarded by mu.
	kept      []*keptRing
	peer      peerIdent
	peerKnown bool
	dirty     *DirtyLog // guarded by mu
	// logNow mirrors dirty for the pollers' fault attribution (read
	// without mu). retired holds logs replaced while a poller might not
	// have moved past them (NetDevice.quiesceLocked timed out); they are
	// closed once the pollers stop. Guarded by mu.
	logNow  atomic.Pointer[DirtyLog]
	retired []*DirtyLog
	// backlogs[qp] is queue pair qp's RX backlog, touched only by its
	// poller (one at a time: a stopped poller is waited for); emptied on
	// reset.
	backlogs []*rxBacklog
	// rxq[qp] serializes queue pair qp's RX producers (directrx.go);
	// created with the device, never replaced.
	rxq      []*rxProducer
	vrings   []vring                   // guarded by mu; 2 per queue pair: RX even, TX odd
	pollers  []*poller                 // guarded by mu; per queue pair, nil when stopped
	running  atomic.Pointer[[]*poller] // a copy of pollers for Wake, which takes no lock
	mtu      uint16                    // guarded by mu
	status   uint8                     // guarded by mu
	logBases uint64                    // guarded by mu
	rarps    uint64                    // guarded by mu
	// announced[qp] is set once the Announcer's frame went out on the
	// queue pair since the frontend connected.
	announced []atomic.Bool // replaced under mu on reset
	// xfer is the connection's last device state transfer (devstate.go).
	xfer *stateTransfer // +checklocks:mu
}

type netCounters struct {
	txPackets, txBytes, rxPackets, rxBytes, drops, errors, failures, copies atomic.Uint64
}

// failure is why the device dropped its frontend.
type failure struct {
	qp  int   // the queue pair whose poller failed; -1 for the control path
	err error // a *FaultError or *RingError, wrapped
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
	for range opts.QueuePairs {
		d.backlogs = append(d.backlogs, newRXBacklog(rxBacklogBytes, rxBacklogFrames))
		d.rxq = append(d.rxq, newRXProducer())
	}
	d.resetLocked()
	d.publishStateLocked()
	return d, nil
}

// Stats returns the device's counters. It takes no lock: it never waits
// for the control path.
func (d *NetDevice) Stats() NetStats {
	s := NetStats{
		GuestTXPackets: d.stats.txPackets.Load(), GuestTXBytes: d.stats.txBytes.Load(),
		GuestRXPackets: d.stats.rxPackets.Load(), GuestRXBytes: d.stats.rxBytes.Load(),
		Drops: d.stats.drops.Load(), Errors: d.stats.errors.Load(), Failures: d.stats.failures.Load(),
		Copies: d.stats.copies.Load(),
	}
	if ps := d.running.Load(); ps != nil {
		for _, p := range *ps {
			if p != nil {
				s.Errors += p.ringErrors()
			}
		}
	}
	return s
}

// State returns the negotiated state, as of the last message handled. It
// takes no lock: it never waits for the control path.
func (d *NetDevice) State() NetState {
	s := *d.snap.Load()
	s.Connected = d.active.Load() != nil
	if f := d.failure.Load(); f != nil {
		s.Failure = f.err.Error()
	}
	return s
}

// publishStateLocked records the state State reports.
func (d *NetDevice) publishStateLocked() {
	s := &NetState{
		Features: d.features, ProtocolFeatures: d.protocol,
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
	d.snap.Store(s)
}

// MaxQueuePairs returns NetOptions.QueuePairs.
func (d *NetDevice) MaxQueuePairs() int { return d.opts.QueuePairs }

// ErrBusy is returned by Serve when another frontend is connected.
var ErrBusy = errors.New("vhostuser: device already has a frontend")

// replyTimeout bounds every reply write: a frontend that does not read
// its replies for that long is dropped.
const replyTimeout = time.Second

// Serve speaks vhost-user with one frontend until it disconnects or sends
// something the device cannot accept; then every ring stops, memory is
// unmapped and every descriptor received is closed, so the next frontend
// starts clean. A clean disconnect returns nil.
//
// The device also drops the frontend on its own when memory it handed
// over faults (it shrank the file: a *FaultError, matching
// ErrMemoryFault) or when the driver breaks a ring (a *RingError matching
// ErrRingBroken), on a poller or on the control path: the failure is
// logged once, counted (NetStats.Failures), shown by NetState.Failure,
// and the err eventfd (SET_VRING_ERR) of every ring concerned is
// signalled before the rings stop.
//
// Errors: a *ProtocolError for a message the codec or the device refused
// (match its sentinel with errors.Is: ErrBadMessage, ErrBadFDs, ErrBadFD,
// ErrBadPayload, ErrNotOffered, ErrNoMemory, ErrUnsupported,
// ErrUnknownRequest, ErrBadRegion, ErrBadLog, ErrBadRing,
// ErrMemoryFault, ...), an error matching ErrMemoryFault or ErrRingBroken
// for a failure a poller met, one matching os.ErrDeadlineExceeded for a
// frontend that did not read a reply within a second, ErrBusy, or the
// socket's.
func (d *NetDevice) Serve(conn *net.UnixConn) error {
	if !d.active.CompareAndSwap(nil, conn) {
		return ErrBusy
	}
	d.failure.Store(nil)
	d.mu.Lock()
	d.peer, d.peerKnown = peerIdent{}, false // found when a ring needs it (keptLocked)
	d.mu.Unlock()
	// Faults on frontend memory touched by this goroutine (ring set-up,
	// inflight recovery) become panics that handle recovers.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		d.mu.Lock()
		d.stopAllLocked()
		if f := d.failure.Load(); f != nil {
			d.signalErrLocked(f.qp)
		}
		d.resetLocked()
		d.active.Store(nil)
		d.publishStateLocked()
		d.mu.Unlock()
	}()
	buf := make([]byte, MaxMessageSize)
	for {
		m, fds, err := ReadMessage(conn, buf)
		if f := d.failure.Load(); f != nil {
			fds.Close()
			return f.err // a poller failed and woke this read
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		err = d.handle(conn, m, &fds)
		fds.Close() // what the handler did not take
		if err != nil {
			if errors.Is(err, ErrMemoryFault) {
				d.fail(-1, err)
			} else {
				d.log.Warn("vhost-user frontend dropped", "request", m.Request.String(), "err", err)
			}
			return err
		}
	}
}

// fail drops the frontend for err, a fault or a broken ring met on queue
// pair qp's poller (-1: on the control path). Only the first failure of a
// connection counts; it wakes Serve's read, which returns err. It takes no
// lock: a poller calls it.
func (d *NetDevice) fail(qp int, err error) {
	if !d.failure.CompareAndSwap(nil, &failure{qp: qp, err: err}) {
		return
	}
	d.stats.failures.Add(1)
	d.log.Error("vhost-user frontend dropped", "queue_pair", qp, "err", err)
	if c := d.active.Load(); c != nil {
		c.SetReadDeadline(time.Unix(1, 0))
	}
}

// signalErrLocked signals the err eventfd of queue pair qp's rings, or of
// every ring for qp < 0.
func (d *NetDevice) signalErrLocked(qp int) {
	for i := range d.vrings {
		if qp < 0 || i/2 == qp {
			d.vrings[i].errFD.Signal()
		}
	}
}

// handle applies one message, then writes its reply (or REPLY_ACK) after
// releasing the device lock, with a deadline. The handler takes from fds
// the descriptors it keeps; Serve closes the others. A returned error
// disconnects the frontend, after a failed REPLY_ACK when one was asked.
func (d *NetDevice) handle(conn *net.UnixConn, m Message, fds *FDSet) (err error) {
	r := &request{Message: m, fds: fds}
	defer func() { r.replyFD.Close() }() // set by the handler
	err = d.apply(r)
	if r.out != nil {
		var fdl []int
		if n := r.replyFD.Int(); n >= 0 {
			fdl = []int{n}
		}
		if werr := writeReply(conn, m.Request, r.out, fdl); werr != nil && err == nil {
			err = werr
		}
	}
	if m.NeedsAck() && r.out == nil && r.ack {
		var status uint64
		if err != nil {
			status = 1
		}
		if werr := writeReply(conn, m.Request, AppendU64(nil, status), nil); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}

// writeReply sends one reply, giving up after replyTimeout.
func writeReply(conn *net.UnixConn, req Request, payload []byte, fds []int) error {
	conn.SetWriteDeadline(time.Now().Add(replyTimeout))
	if err := WriteReply(conn, req, payload, fds); err != nil {
		return fmt.Errorf("vhostuser: reply to %v: %w", req, err)
	}
	return nil
}

// apply runs the request's handler under the device lock. A fault on
// frontend memory while it runs becomes a *ProtocolError matching
// ErrMemoryFault.
func (d *NetDevice) apply(r *request) (err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.publishStateLocked()
	defer func() {
		if v := recover(); v != nil {
			f := faultFrom(v, "control path", mappings{mem: d.mem, dirty: d.dirty, inflight: d.inflight})
			err = &ProtocolError{Request: r.Request, Err: f}
		}
	}()
	var h func(*NetDevice, *request) error
	if r.Request.Known() { // always, from ReadMessage
		h = netHandlers[r.Request]
	}
	if h == nil {
		err = protoErr(r.Request, ErrUnknownRequest, "not supported by the virtio-net device")
	} else if err = h(d, r); err != nil {
		var pe *ProtocolError
		if !errors.As(err, &pe) {
			err = &ProtocolError{Request: r.Request, Err: err}
		}
	}
	r.ack = d.protocol.Has(ProtocolFReplyAck)
	return err
}

// request is one frontend message being handled.
type request struct {
	Message
	fds *FDSet // the message's descriptors: a handler takes those it keeps
	// out is the reply a handler queued (nil: none); handle writes it
	// once the device lock is released. It stands for the REPLY_ACK.
	out []byte
	// replyFD goes with out (GET_INFLIGHT_FD); owned, closed by handle.
	replyFD *fd.FD
	ack     bool // REPLY_ACK negotiated, as of the end of the handler
}

// reply queues the reply payload.
func (r *request) reply(payload []byte) error {
	r.out = payload
	return nil
}

// replyU64 queues a u64 reply.
func (r *request) replyU64(v uint64) error { return r.reply(AppendU64(nil, v)) }

// fail returns a *ProtocolError for the request matching sentinel.
func (r *request) fail(sentinel error, format string, args ...any) error {
	return protoErr(r.Request, sentinel, format, args...)
}

// netHandlers has one method per request the device serves; the others
// are refused with ErrUnknownRequest. Each is called with d.mu held.
var netHandlers = [maxRequest + 1]func(*NetDevice, *request) error{
	GetFeatures:         (*NetDevice).getFeatures,
	SetFeatures:         (*NetDevice).setFeatures,
	GetProtocolFeatures: (*NetDevice).getProtocolFeatures,
	SetProtocolFeatures: (*NetDevice).setProtocolFeatures,
	SetOwner:            (*NetDevice).setOwner,
	ResetOwner:          (*NetDevice).resetOwner,
	GetQueueNum:         (*NetDevice).getQueueNum,
	GetMaxMemSlots:      (*NetDevice).getMaxMemSlots,
	SetMemTable:         (*NetDevice).setMemTable,
	AddMemReg:           (*NetDevice).addMemReg,
	RemMemReg:           (*NetDevice).remMemReg,
	SetLogBase:          (*NetDevice).setLogBase,
	SetLogFD:            (*NetDevice).setLogFD,
	SetVringNum:         (*NetDevice).setVringNum,
	SetVringAddr:        (*NetDevice).setVringAddr,
	SetVringBase:        (*NetDevice).setVringBase,
	GetVringBase:        (*NetDevice).getVringBase,
	SetVringKick:        (*NetDevice).setVringKick,
	SetVringCall:        (*NetDevice).setVringCall,
	SetVringErr:         (*NetDevice).setVringErr,
	SetVringEnable:      (*NetDevice).setVringEnable,
	SendRARP:            (*NetDevice).sendRARP,
	NetSetMTU:           (*NetDevice).netSetMTU,
	SetStatus:           (*NetDevice).setStatus,
	GetStatus:           (*NetDevice).getStatus,
	GetInflightFD:       (*NetDevice).getInflightFD,
	SetInflightFD:       (*NetDevice).setInflightFD,
	SetVringEndian:      (*NetDevice).setVringEndian,
	SetDeviceStateFD:    (*NetDevice).setDeviceStateFD,
	CheckDeviceState:    (*NetDevice).checkDeviceState,
}

func (d *NetDevice) getFeatures(r *request) error {
	return r.replyU64(uint64(d.offeredFeatures()))
}

func (d *NetDevice) setFeatures(r *request) error {
	v, err := r.U64()
	if err != nil {
		return err
	}
	f := Features(v)
	if extra := f &^ d.offeredFeatures(); extra != 0 {
		return r.fail(ErrNotOffered, "frontend acked features %#x that were not offered", uint64(extra))
	}
	if (d.features^f)&^Bit(FLogAll) != 0 {
		// Running rings and pollers were built with the old EVENT_IDX,
		// INDIRECT_DESC, header size and MRG_RXBUF: rebuild them (bases
		// are saved). A LOG_ALL toggle alone (migration start/end) is
		// applied in place.
		d.stopAllLocked()
	}
	d.features = f
	d.applyLoggingLocked()
	return d.reconcileLocked()
}

func (d *NetDevice) getProtocolFeatures(r *request) error {
	return r.replyU64(uint64(d.offeredProtocolFeatures()))
}

func (d *NetDevice) setProtocolFeatures(r *request) error {
	v, err := r.U64()
	if err != nil {
		return err
	}
	if extra := Features(v) &^ d.offeredProtocolFeatures(); extra != 0 {
		return r.fail(ErrNotOffered, "frontend acked protocol features %#x that were not offered", uint64(extra))
	}
	d.protocol = Features(v)
	return nil
}

func (d *NetDevice) setOwner(*request) error {
	d.owner = true
	return nil
}

func (d *NetDevice) resetOwner(*request) error {
	d.stopAllLocked()
	for _, k := range d.kept {
		if k != nil {
			k.stopped() // the frontend starts over: nothing to resume
		}
	}
	d.resetLocked()
	return nil
}

// getQueueNum answers virtqueues, not queue pairs: Cloud Hypervisor
// refuses a backend whose answer is below its num_queues (2 per pair:
// "requested too many queues"), and rust-vmm backends, libvhost-user and
// passt answer virtqueues too. QEMU compares the answer with its queue
// pairs, so it accepts this (its own check is looser; a vring index past
// 2*QueuePairs is still refused by vringLocked).
func (d *NetDevice) getQueueNum(r *request) error {
	return r.replyU64(2 * uint64(d.opts.QueuePairs))
}

func (d *NetDevice) getMaxMemSlots(r *request) error {
	return r.replyU64(MaxMemSlots)
}

// setMemTable replaces guest memory; the new Memory takes every fd.
func (d *NetDevice) setMemTable(r *request) error {
	t, err := r.MemoryTable()
	if err != nil {
		return err
	}
	mem, err := NewMemoryFromTable(t.Regions, r.fds.TakeAll())
	if err != nil {
		return err
	}
	d.stopAllLocked()
	if d.mem != nil {
		d.mem.Close()
	}
	d.mem = mem
	clear(d.regionRefs)
	for _, rg := range t.Regions {
		d.regionRefs[rg] = 1
	}
	return d.reconcileLocked()
}

// addMemReg maps one region; Memory takes its fd. With multiqueue QEMU
// runs one vhost device per queue pair over the same connection, and each
// adds every region: an identical region is counted, not mapped twice
// (its fd is then left to close with the message).
func (d *NetDevice) addMemReg(r *request) error {
	rg, err := r.MemRegion()
	if err != nil {
		return err
	}
	if d.mem == nil {
		d.mem = NewMemory()
	}
	if d.regionRefs[rg] > 0 {
		d.regionRefs[rg]++
		return nil
	}
	if err := d.mem.AddRegion(rg, r.fds.Take(0)); err != nil {
		return err
	}
	d.regionRefs[rg] = 1
	return d.reconcileLocked()
}

// remMemReg unmaps a region once the last ADD_MEM_REG of it is removed.
// Its optional fd was closed by ReadMessage.
func (d *NetDevice) remMemReg(r *request) error {
	rg, err := r.MemRegion()
	if err != nil {
		return err
	}
	if d.mem == nil {
		return r.fail(ErrNoMemory, "no memory table")
	}
	if d.regionRefs[rg] > 1 {
		d.regionRefs[rg]--
		return nil
	}
	d.stopAllLocked()
	if err := d.mem.RemoveRegion(rg); err != nil {
		return err
	}
	delete(d.regionRefs, rg)
	return d.reconcileLocked()
}

// setLogBase maps the dirty log, which takes the fd, and answers.
// Frontends wait for this reply when LOG_SHMFD is negotiated; without it,
// migration hangs. The reply echoes the 16-byte log description: rust-vmm's
// frontend (vhost >= 0.16, so Cloud Hypervisor) reads exactly a
// VhostUserLog with a non-zero size and would block forever on a shorter
// u64 reply; QEMU reads whatever size the header says. rust-vmm's own
// backend sends the same echo.
func (d *NetDevice) setLogBase(r *request) error {
	l, err := r.Log()
	if err != nil {
		return err
	}
	dl, err := NewDirtyLog(r.fds.Take(0), l)
	if err != nil {
		return err
	}
	// Swapped in place: the rings keep running (QEMU sends this with its
	// big lock held when a migration starts, and again whenever the log
	// grows; stopping the pollers here stalled the guest's traffic). The
	// old log is closed once every poller has moved past it, so no page
	// written before the reply is marked only in a log QEMU has dropped.
	old := d.dirty
	d.dirty = dl
	d.logNow.Store(dl)
	d.logBases++
	d.applyLoggingLocked()
	d.retireLogLocked(old)
	r.reply(r.Payload)
	return d.reconcileLocked()
}

// setLogFD leaves its fd, the log-sync eventfd, to close with the
// message: the device logs synchronously.
func (d *NetDevice) setLogFD(*request) error { return nil }

func (d *NetDevice) setVringNum(r *request) error {
	s, vr, err := d.vringStateLocked(r)
	if err != nil {
		return err
	}
	if s.Num == 0 || s.Num > MaxQueueSize || s.Num&(s.Num-1) != 0 {
		return r.fail(ErrBadPayload, "queue size %d is not a power of two from 1 to %d", s.Num, MaxQueueSize)
	}
	vr.num = s.Num
	return nil
}

func (d *NetDevice) setVringAddr(r *request) error {
	a, err := r.VringAddr()
	if err != nil {
		return err
	}
	vr, err := d.vringLocked(r, a.Index)
	if err != nil {
		return err
	}
	if d.runningLocked(vr) && sameRings(vr.addr, a) {
		// Only the used-ring logging changed (QEMU at the start and end
		// of a migration): applied in place, the ring keeps running.
		vr.addr = a
		d.applyLoggingLocked()
		return nil
	}
	d.stopPairLocked(int(a.Index) / 2)
	vr.addr, vr.addrSet = a, true
	return d.reconcileLocked()
}

func (d *NetDevice) setVringBase(r *request) error {
	s, vr, err := d.vringStateLocked(r)
	if err != nil {
		return err
	}
	// A packed ring's base is bits 0-14 the next descriptor, bit 15 its
	// wrap counter, and QEMU's used index and wrap counter in the upper
	// half; NewPackedRing checks the index against the queue size.
	if !d.features.Has(FRingPacked) && s.Num > 0xffff {
		return r.fail(ErrBadPayload, "vring base %d out of range", s.Num)
	}
	vr.base = s.Num
	return nil
}

// getVringBase stops the ring, closes its kick and answers its base.
func (d *NetDevice) getVringBase(r *request) error {
	s, vr, err := d.vringStateLocked(r)
	if err != nil {
		return err
	}
	d.stopPairLocked(int(s.Index) / 2)
	vr.stopped, vr.kickSet = true, false
	vr.kick.Close()
	vr.kick = nil
	if k := d.kept[s.Index]; k != nil {
		// The frontend learns the position: the next start is from its
		// base, not from what the region says.
		k.stopped()
		k.close()
		d.kept[s.Index] = nil
	}
	r.reply(AppendVringState(nil, VringState{Index: s.Index, Num: vr.base}))
	return d.reconcileLocked()
}

// vringEventFD decodes SET_VRING_KICK/CALL/ERR: the ring, and the eventfd
// it takes from the message (nil with VringNoFD). Anything but an eventfd
// is refused with ErrBadFD.
func (d *NetDevice) vringEventFD(r *request) (*vring, *fd.EventFD, error) {
	v, err := r.U64()
	if err != nil {
		return nil, nil, err
	}
	vr, err := d.vringLocked(r, uint32(v&VringIndexMask))
	if err != nil {
		return nil, nil, err
	}
	if v&VringNoFD != 0 {
		return vr, nil, nil
	}
	f := r.fds.Take(0)
	if f == nil {
		return nil, nil, r.fail(ErrBadFDs, "expected one file descriptor, got none")
	}
	ev, err := fd.NewEventFDFrom(f) // takes f
	if err != nil {
		return nil, nil, &ProtocolError{Request: r.Request, Err: fmt.Errorf("vring %d: %w: %w", v&VringIndexMask, ErrBadFD, err)}
	}
	return vr, ev, nil
}

// setVringKick installs the ring's kick (the vring owns it); VringNoFD
// makes the ring poll-only.
func (d *NetDevice) setVringKick(r *request) error {
	vr, ev, err := d.vringEventFD(r)
	if err != nil {
		return err
	}
	d.stopPairLocked(int(vr.index) / 2)
	vr.kick.Close()
	vr.kick, vr.kickSet, vr.pollOnly, vr.stopped = ev, true, ev == nil, false
	if !d.features.Has(FProtocolFeatures) {
		// Without VHOST_USER_F_PROTOCOL_FEATURES a ring starts enabled as
		// soon as it has a kick (vhost-user.rst, "Ring states").
		vr.enabled = true
	}
	return d.reconcileLocked()
}

// setVringCall installs the ring's call (the vring owns it).
func (d *NetDevice) setVringCall(r *request) error {
	vr, ev, err := d.vringEventFD(r)
	if err != nil {
		return err
	}
	d.stopPairLocked(int(vr.index) / 2)
	vr.call.Close()
	vr.call = ev
	return d.reconcileLocked()
}

// setVringErr keeps the ring's err eventfd (the vring owns it); no poller
// uses it, so nothing stops.
func (d *NetDevice) setVringErr(r *request) error {
	vr, ev, err := d.vringEventFD(r)
	if err != nil {
		return err
	}
	vr.errFD.Close()
	vr.errFD = ev
	return nil
}

func (d *NetDevice) setVringEnable(r *request) error {
	s, vr, err := d.vringStateLocked(r)
	if err != nil {
		return err
	}
	if s.Num > 1 {
		return r.fail(ErrBadPayload, "enable value %d", s.Num)
	}
	d.stopPairLocked(int(s.Index) / 2)
	vr.enabled = s.Num == 1
	return d.reconcileLocked()
}

func (d *NetDevice) sendRARP(*request) error {
	d.rarps++
	return nil
}

func (d *NetDevice) netSetMTU(r *request) error {
	v, err := r.U64()
	if err != nil {
		return err
	}
	if v < 68 || v > 65535 {
		return r.fail(ErrBadPayload, "MTU %d out of range 68-65535", v)
	}
	d.mtu = uint16(v)
	return nil
}

func (d *NetDevice) setStatus(r *request) error {
	v, err := r.U64()
	if err != nil {
		return err
	}
	if v > 0xff {
		return r.fail(ErrBadPayload, "status %#x out of range", v)
	}
	d.status = uint8(v)
	return nil
}

func (d *NetDevice) getStatus(r *request) error {
	return r.replyU64(uint64(d.status))
}

// getInflightFD creates the inflight region (the device owns its fd) and
// sends the frontend a copy of the fd. The region is laid out for the
// ring layout negotiated (SET_FEATURES comes first: VIRTIO_F_RING_PACKED
// says packed).
func (d *NetDevice) getInflightFD(r *request) error {
	in, err := r.Inflight()
	if err != nil {
		return err
	}
	if int(in.NumQueues) > len(d.vrings) {
		return r.fail(ErrBadPayload, "%d queues, the device has %d", in.NumQueues, len(d.vrings))
	}
	region, err := newInflightRegion(int(in.NumQueues), in.QueueSize, d.features.Has(FRingPacked))
	if err != nil {
		return err
	}
	d.replaceInflightLocked(region)
	in.MmapSize, in.MmapOffset = uint64(len(region.mapping)), 0
	// A duplicate goes with the reply, which is written after the lock
	// is released (the region may be replaced by then).
	dup, err := region.fd.Dup()
	if err != nil {
		return fmt.Errorf("reply inflight fd: %w", err)
	}
	r.replyFD = dup
	r.reply(AppendInflight(nil, in))
	return d.reconcileLocked()
}

// setInflightFD maps the region a previous backend left, laid out for
// the ring layout negotiated; it takes the fd. A packed region whose
// headers cannot be a device's state is refused (ErrBadInflight); the
// rings check their parts whole when they start.
func (d *NetDevice) setInflightFD(r *request) error {
	in, err := r.Inflight()
	if err != nil {
		return err
	}
	region, err := mapInflightRegion(r.fds.Take(0), in, d.features.Has(FRingPacked))
	if err != nil {
		return err
	}
	d.replaceInflightLocked(region)
	return d.reconcileLocked()
}

func (d *NetDevice) setVringEndian(r *request) error {
	return r.fail(ErrUnsupported, "legacy cross-endian rings are not supported")
}

func (d *NetDevice) offeredFeatures() Features {
	f := netOfferedFeatures
	if d.opts.QueuePairs > 1 {
		f |= Features(1) << NetFMQ
	}
	return f
}

// vringStateLocked decodes a VringState payload and finds its ring.
func (d *NetDevice) vringStateLocked(r *request) (VringState, *vring, error) {
	s, err := r.VringState()
	if err != nil {
		return s, nil, err
	}
	vr, err := d.vringLocked(r, s.Index)
	return s, vr, err
}

func (d *NetDevice) vringLocked(r *request, index uint32) (*vring, error) {
	if index >= uint32(len(d.vrings)) {
		return nil, r.fail(ErrBadPayload, "vring index %d out of range (device has %d)", index, len(d.vrings))
	}
	return &d.vrings[index], nil
}

func (d *NetDevice) loggingLocked() bool {
	return d.dirty != nil && d.features.Has(FLogAll)
}

// sameRings reports whether a and b describe the same rings and differ at
// most in the used-ring logging (flag VringFLog and the log address).
func sameRings(a, b VringAddr) bool {
	a.Flags, a.Log = a.Flags&^VringFLog, 0
	b.Flags, b.Log = b.Flags&^VringFLog, 0
	return a == b
}

// runningLocked reports whether vr's ring runs in a poller.
func (d *NetDevice) runningLocked(vr *vring) bool {
	p := d.pollers[vr.index/2]
	if p == nil {
		return false
	}
	if vr.index%2 == 0 {
		return p.rx != nil
	}
	return p.tx != nil
}

// quiesceTimeout bounds how long the control path waits for pollers to
// move past a change made in place. A round takes microseconds; a poller
// stuck longer (a FrameHandler that blocks, which it must not) delays the
// release of what was swapped out, and is logged.
const quiesceTimeout = 10 * time.Second

// quiesceLocked waits until every running poller has finished the round
// it was in, so none still uses what the caller swapped out of its rings.
// It never makes a poller wait: pollers take no device lock.
func (d *NetDevice) quiesceLocked() bool {
	deadline := time.Now().Add(quiesceTimeout)
	ok := true
	for _, p := range d.pollers {
		if p != nil && !p.quiesce(deadline) {
			ok = false
		}
	}
	// Direct RX writers (directrx.go) finish the frame they are in; the
	// next ones see what the caller changed.
	for _, q := range d.rxq {
		q.mu.Lock()
		q.mu.Unlock() // an empty critical section: a barrier
	}
	return ok
}

// retireLogLocked releases a dirty log replaced in place, once no poller
// can be marking it.
func (d *NetDevice) retireLogLocked(old *DirtyLog) {
	if old == nil || old == d.dirty {
		return
	}
	if d.quiesceLocked() {
		old.Close()
		return
	}
	d.log.Error("a poller did not finish its round in time; keeping the old dirty log until it stops", "timeout", quiesceTimeout)
	d.retired = append(d.retired, old)
}

// resetLocked stops everything and forgets the frontend's state.
func (d *NetDevice) resetLocked() {
	d.abortStateTransferLocked()
	d.stopAllLocked()
	for _, b := range d.backlogs {
		d.stats.drops.Add(uint64(b.Len())) // never delivered
		b.reset()
	}
	for i := range d.vrings {
		vr := &d.vrings[i]
		vr.kick.Close()
		vr.call.Close()
		vr.errFD.Close()
	}
	d.vrings = make([]vring, 2*d.opts.QueuePairs)
	for i := range d.vrings {
		d.vrings[i].index = uint32(i)
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
	for _, k := range d.kept {
		if k != nil {
			k.close() // the file stays, and says whether the ring ran
		}
	}
	d.kept = make([]*keptRing, 2*d.opts.QueuePairs)
	if d.dirty != nil {
		d.dirty.Close()
		d.dirty = nil
	}
	d.logNow.Store(nil)
	d.features, d.protocol, d.owner, d.mtu, d.status = 0, 0, false, 0, 0
}

func (d *NetDevice) stopAllLocked() {
	for qp := range d.pollers {
		d.stopPairLocked(qp)
	}
	for _, l := range d.retired {
		l.Close()
	}
	d.retired = nil
}

// stopPairLocked stops a queue pair's poller and saves its rings' bases.
func (d *NetDevice) stopPairLocked(qp int) {
	p := d.pollers[qp]
	if p == nil {
		return
	}
	d.rxq[qp].setPoller(nil) // no direct RX writer uses its ring past here
	p.stop()
	if p.rx != nil {
		d.vrings[2*qp].base = p.rx.VringBase()
	}
	if p.tx != nil {
		d.vrings[2*qp+1].base = p.tx.VringBase()
	}
	d.pollers[qp] = nil
	d.publishPollersLocked()
	d.stats.errors.Add(p.ringErrors()) // after Stats stopped seeing p
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
// in place, as VHOST_F_LOG_ALL, the dirty log and each ring's VringFLog
// now say: a migration starts or ends (completed, failed or cancelled)
// with SET_FEATURES, SET_LOG_BASE and SET_VRING_ADDR. The pollers pick
// the new configuration up at their next ring access (an atomic swap);
// when it changed, it returns once every poller has finished the round
// it was in, so the frontend's reply comes after the switch took effect.
func (d *NetDevice) applyLoggingLocked() {
	var dl *DirtyLog
	if d.loggingLocked() {
		dl = d.dirty
	}
	changed := false
	for qp, p := range d.pollers {
		if p == nil {
			continue
		}
		for i, q := range [2]pollRing{p.rx, p.tx} {
			if q != nil {
				a := d.vrings[2*qp+i].addr
				if q.setLogging(dl, a.Flags&VringFLog != 0, a.Log) {
					changed = true
				}
			}
		}
	}
	if changed {
		d.quiesceLocked()
	}
}

// Wake makes every sleeping queue-pair poller look for work now; an
// RXSource calls it after queueing a frame. It takes no lock and makes no
// system call unless a poller sleeps, so it may be called per frame.
func (d *NetDevice) Wake() {
	if ps := d.running.Load(); ps != nil {
		for _, p := range *ps {
			if p != nil && p.sleeping.Load() {
				p.wake.Signal() // a no-op once the poller stopped and closed it
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
		if rxv.stopped && !rxOK {
			// The frontend is stopping the device (GET_VRING_BASE on RX
			// comes first; QEMU stops the rings in order, at the
			// switchover of a live migration too): the TX ring waits
			// with it. A frame taken now would be answered into nowhere;
			// left on the ring it is handled where the device resumes
			// (the destination, after GET_VRING_BASE(TX) hands over its
			// index).
			txOK = false
		}
		if !rxOK && !txOK {
			continue
		}
		p := newPoller(d, qp)
		p.maps = mappings{mem: d.mem, dirty: d.dirty, inflight: d.inflight}
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
		if p.rx != nil {
			d.rxq[qp].setPoller(p)
		}
		d.pollers[qp] = p
		d.publishPollersLocked()
	}
	return nil
}

func (d *NetDevice) ringLocked(vr *vring) (pollRing, error) {
	var dl *DirtyLog
	if d.loggingLocked() {
		dl = d.dirty
	}
	packed := d.features.Has(FRingPacked)
	var inflight []byte
	if r := d.inflight; r != nil && int(vr.addr.Index) < r.queues && uint32(r.queueSize) == vr.num {
		if r.packed == packed {
			inflight = r.queue(int(vr.addr.Index))
		} else {
			// The region was made or handed over before SET_FEATURES
			// said which layout the rings have.
			d.log.Warn("inflight region laid out for the other ring layout; the ring runs without inflight tracking",
				"ring", vr.addr.Index, "packed rings", packed)
		}
	}
	if packed {
		opts := PackedRingOptions{
			Inflight:     inflight,
			Size:         vr.num,
			Addr:         vr.addr,
			Base:         vr.base,
			EventIdx:     d.features.Has(FRingEventIdx),
			IndirectDesc: d.features.Has(FRingIndirectDesc),
			Log:          dl,
		}
		var k *keptRing
		if inflight == nil && d.inflight == nil {
			k = d.keptLocked(vr)
			if k != nil {
				opts.Inflight = k.region
			}
		}
		r, err := NewPackedRing(d.mem, opts)
		if err != nil && k != nil && errors.Is(err, ErrBadInflight) {
			d.log.Warn("kept packed ring state cannot be this ring's; the ring starts from the frontend's base",
				"ring", vr.addr.Index, "file", k.path, "err", err)
			k.reset(keptHeaderFor(d.peer, vr.addr, uint16(vr.num)))
			r, err = NewPackedRing(d.mem, opts)
		}
		if err != nil {
			return nil, err // not a nil *PackedRing in the interface
		}
		if k != nil && r.restored() {
			d.log.Info("packed ring resumed from its kept state", "ring", vr.addr.Index,
				"resubmitting", r.Resubmitting(), "frontend base", vr.base, "base", r.VringBase())
		}
		return r, nil
	}
	return NewSplitRing(d.mem, SplitRingOptions{
		Inflight:     inflight,
		Size:         vr.num,
		Addr:         vr.addr,
		LastAvailIdx: uint16(vr.base),
		EventIdx:     d.features.Has(FRingEventIdx),
		IndirectDesc: d.features.Has(FRingIndirectDesc),
		Log:          dl,
	})
}

// keptLocked returns ring vr's kept region (ringstate.go), opening it
// when the ring first starts on this connection; nil when the device
// keeps none (no RingState, or the file cannot be had: logged).
func (d *NetDevice) keptLocked(vr *vring) *keptRing {
	if d.opts.RingState == "" || int(vr.addr.Index) >= len(d.kept) {
		return nil
	}
	if k := d.kept[vr.addr.Index]; k != nil {
		return k // a restart of the ring on this connection
	}
	if !d.peerKnown {
		d.peer, d.peerKnown = peerOf(d.active.Load()), true
	}
	k, err := openKeptRing(d.opts.RingState, d.peer, vr.addr, uint16(vr.num))
	if errors.Is(err, errNotKept) {
		return nil
	}
	if err != nil {
		d.log.Warn("cannot keep the packed ring's state; it will not survive a backend restart", "ring", vr.addr.Index, "err", err)
		return nil
	}
	d.kept[vr.addr.Index] = k
	return k
}

// netHeaderLen is the size of struct virtio_net_hdr the driver uses.
func (d *NetDevice) netHeaderLenLocked() int {
	if d.features.Has(FVersion1) || d.features.Has(NetFMrgRxbuf) {
		return 12
	}
	return 10
}
