package vhostuser

// Device state transfer (vhost-user.rst, "Migrating back-end state",
// VHOST_USER_PROTOCOL_F_DEVICE_STATE = protocol feature 19,
// VHOST_USER_SET_DEVICE_STATE_FD = 42, VHOST_USER_CHECK_DEVICE_STATE = 43).
//
// A device whose owner keeps state outside guest memory (for Veloce: a
// port's sessions, streams, sources and sinks) can have the frontend carry
// it inside the hypervisor's own migration stream. The frontend opens a
// channel (QEMU and Cloud Hypervisor: a pipe) and hands the device one end
// with SET_DEVICE_STATE_FD(direction, phase); the writer writes everything
// and closes its end; the reader reads to end of file; the frontend then
// asks CHECK_DEVICE_STATE whether the device's side went well.
//
//   - Source: GET_VRING_BASE on every ring (the device is suspended),
//     SET_DEVICE_STATE_FD(save, stopped) with the pipe's write end; the
//     frontend reads the pipe to EOF while the device writes, then
//     CHECK_DEVICE_STATE.
//   - Destination: the usual set-up without starting the rings (memory
//     table, ring addresses and bases), SET_DEVICE_STATE_FD(load,
//     stopped) with the read end; the frontend writes the state, closes
//     its end, CHECK_DEVICE_STATE, then starts the rings.
//
// Decisions:
//
//   - The transfer runs in its own goroutine, never on the control loop:
//     the frontend reads (or writes) the pipe only after the reply to
//     SET_DEVICE_STATE_FD, so writing it on the control loop would
//     deadlock as soon as the pipe buffer (64 KiB) filled.
//   - The state is buffered whole, both ways, and bounded by
//     MaxStateSize: on save StateTransferer.SaveState writes to memory
//     and the buffer then goes to the channel, so the owner never waits
//     for a slow frontend; on load the channel is read to EOF first and
//     LoadState sees a complete, bounded stream, or nothing. A frontend
//     that streams forever gets an error once MaxStateSize is passed,
//     not an out-of-memory daemon.
//   - Every transfer has a deadline on the channel (NetOptions.StateTimeout,
//     default DefaultStateTimeout) set at SET_DEVICE_STATE_FD: a frontend
//     that never reads or never closes ends the transfer with an error.
//   - The channel must be a pipe or a stream socket open in the right
//     direction. A regular file, a memfd, a device or an eventfd is
//     refused: reads of those never block and never reach a frontend's
//     close, and a file could be mapped into something else.
//   - The device never makes a channel of its own (the reply always has
//     the invalid-FD flag, bit 8): a pipe is all a buffered transfer needs.
//   - Refusals are error replies (bits 0-7 non-zero, see the
//     StateStatus* values) with the reason logged, and the connection
//     stays up: an unknown direction or phase, a channel of the wrong
//     kind, a ring still running (the spec allows the transfer only
//     while the device is suspended), a second SET_DEVICE_STATE_FD while
//     one runs, DEVICE_STATE not negotiated. Only a malformed message
//     (wrong size, no descriptor) drops the frontend, as for any request.
//   - CHECK_DEVICE_STATE waits for the transfer to end (bounded by the
//     deadline plus the owner's SaveState/LoadState call) and answers 0,
//     or StateStatusFailed with the reason logged; without a transfer on
//     this connection it answers StateStatusNoTransfer.
//   - A disconnect or reset during a transfer aborts it: the channel's
//     deadline is moved to now, the goroutine is waited for, and a load
//     not yet applied is never applied (the destination keeps its state).

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// StateTransferer is what a device's owner implements to move its state
// inside the hypervisor's migration stream (NetOptions.State). Both
// methods are called on a transfer goroutine, never on the control path,
// at most one at a time per device, while every ring is stopped.
type StateTransferer interface {
	// SaveState writes the whole state to w (a buffer in memory, bounded
	// by MaxStateSize: a write past it fails with ErrStateTooLarge). It
	// is called on the migration source while the guest is stopped. The
	// migration may still fail and the guest resume here, so SaveState
	// must leave the state in place.
	SaveState(w io.Writer) error
	// LoadState reads r to EOF (at most MaxStateSize bytes, all of which
	// the frontend sent before closing its end), validates it and applies
	// it whole, or returns an error and changes nothing. It is called on
	// the migration destination before the rings start.
	LoadState(r io.Reader) error
}

// Limits of one device state transfer.
const (
	// MaxStateSize bounds the state carried by one transfer, either way:
	// room for a port snapshot at its own limit (64 MiB) plus framing.
	MaxStateSize = 64<<20 + 64<<10
	// DefaultStateTimeout is the default deadline of one transfer on its
	// channel, counted from SET_DEVICE_STATE_FD.
	DefaultStateTimeout = 30 * time.Second
)

// Status values in bits 0-7 of the SET_DEVICE_STATE_FD and
// CHECK_DEVICE_STATE replies; the spec only says non-zero is an error.
// The reason is logged.
const (
	StateStatusOK            = 0
	StateStatusBadParameters = 1 // unknown transfer direction or migration phase
	StateStatusBadFD         = 2 // not a pipe or stream socket, or not open for the transfer's direction
	StateStatusNotSuspended  = 3 // a ring is still running
	StateStatusBusy          = 4 // another transfer is in progress
	StateStatusUnsupported   = 5 // DEVICE_STATE not negotiated, or the device has no state to move
	StateStatusFailed        = 6 // CHECK_DEVICE_STATE: the transfer or the owner failed
	StateStatusNoTransfer    = 7 // CHECK_DEVICE_STATE without a transfer on this connection
)

// Errors of a device state transfer (logged, and seen by tests through
// NetDevice.LastStateTransfer).
var (
	// ErrStateTooLarge: the state passed MaxStateSize.
	ErrStateTooLarge = errors.New("vhostuser: device state larger than MaxStateSize")
	// ErrStateAborted: the frontend disconnected or reset the device
	// during the transfer.
	ErrStateAborted = errors.New("vhostuser: device state transfer aborted")
)

// Transfer directions and phases (vhost-user.rst, "Device state transfer
// parameters"), TransferSave, TransferLoad and PhaseStopped, are in
// protocol.go with the payload's codec.

// Validate checks the transfer parameters against those the spec defines:
// direction save (0) or load (1), phase stopped (0).
//
// Errors: ErrBadPayload.
func (t DeviceStateTransfer) Validate() error {
	if t.Direction != TransferSave && t.Direction != TransferLoad {
		return fmt.Errorf("%w: transfer direction %d (want 0 save or 1 load)", ErrBadPayload, t.Direction)
	}
	if t.Phase != PhaseStopped {
		return fmt.Errorf("%w: migration phase %d (only 0, stopped, is defined)", ErrBadPayload, t.Phase)
	}
	return nil
}

// stateTransfer is one SET_DEVICE_STATE_FD transfer. Its goroutine owns
// the channel and closes it; done closes when the goroutine ends, after
// err is set.
type stateTransfer struct {
	dir  uint32
	f    *os.File
	done chan struct{}
	err  error // written before done closes

	mu      sync.Mutex
	aborted bool // +checklocks:mu
}

// offeredProtocolFeatures is what GET_PROTOCOL_FEATURES answers:
// DEVICE_STATE only when the owner can move state.
func (d *NetDevice) offeredProtocolFeatures() Features {
	f := netOfferedProtocolFeatures
	if d.opts.State != nil {
		f |= Bit(ProtocolFDeviceState)
	}
	return f
}

// stateReply queues the SET_DEVICE_STATE_FD reply: status in bits 0-7,
// the invalid-FD flag (bit 8) always, since the device never returns a
// channel of its own. A non-zero status is logged with why.
func (r *request) stateReply(log func(msg string, args ...any), status uint8, why error) error {
	if status != StateStatusOK {
		log("device state transfer refused", "request", r.Request.String(), "status", status, "err", why)
	}
	return r.replyU64(uint64(status) | VringNoFD)
}

// setDeviceStateFD starts a transfer on the channel the message brings.
//
// +checklocks:d.mu
func (d *NetDevice) setDeviceStateFD(r *request) error {
	p, err := r.DeviceStateTransfer()
	if err != nil {
		return err
	}
	ch := r.fds.Take(0)
	if ch == nil {
		return r.fail(ErrBadFDs, "expected one file descriptor, got none")
	}
	defer ch.Close() // unless handed to the transfer (Disown)
	warn := d.log.Warn
	if d.opts.State == nil || !d.protocol.Has(ProtocolFDeviceState) {
		return r.stateReply(warn, StateStatusUnsupported, errors.New("VHOST_USER_PROTOCOL_F_DEVICE_STATE was not negotiated"))
	}
	if err := p.Validate(); err != nil {
		return r.stateReply(warn, StateStatusBadParameters, err)
	}
	if err := checkStateChannel(ch.Int(), p.Direction); err != nil {
		return r.stateReply(warn, StateStatusBadFD, err)
	}
	for qp, pl := range d.pollers {
		if pl != nil {
			return r.stateReply(warn, StateStatusNotSuspended, fmt.Errorf("queue pair %d is running; the device must be suspended (GET_VRING_BASE on every ring) before its state moves", qp))
		}
	}
	if t := d.xfer; t != nil {
		select {
		case <-t.done:
		default:
			return r.stateReply(warn, StateStatusBusy, errors.New("a device state transfer is already in progress; wait for CHECK_DEVICE_STATE"))
		}
	}
	raw := ch.Int()
	if err := unix.SetNonblock(raw, true); err != nil {
		return r.stateReply(warn, StateStatusBadFD, fmt.Errorf("device state channel: %w", err))
	}
	f := os.NewFile(uintptr(ch.Disown()), "vhost-user-device-state")
	timeout := d.opts.StateTimeout
	if timeout <= 0 {
		timeout = DefaultStateTimeout
	}
	if err := f.SetDeadline(time.Now().Add(timeout)); err != nil {
		f.Close()
		return r.stateReply(warn, StateStatusBadFD, fmt.Errorf("device state channel cannot take a deadline: %w", err))
	}
	t := &stateTransfer{dir: p.Direction, f: f, done: make(chan struct{})}
	d.xfer = t
	go t.run(d.opts.State)
	d.log.Info("device state transfer started", "direction", directionName(p.Direction), "timeout", timeout)
	return r.stateReply(warn, StateStatusOK, nil)
}

// checkDeviceState waits for the transfer to end and answers its outcome.
// The wait holds the device lock, which only this connection's control
// path takes; it is bounded by the transfer's deadline.
//
// +checklocks:d.mu
func (d *NetDevice) checkDeviceState(r *request) error {
	t := d.xfer
	if t == nil {
		d.log.Warn("CHECK_DEVICE_STATE without a transfer", "status", StateStatusNoTransfer)
		return r.replyU64(StateStatusNoTransfer)
	}
	<-t.done
	if t.err != nil {
		d.log.Warn("device state transfer failed", "direction", directionName(t.dir), "status", StateStatusFailed, "err", t.err)
		return r.replyU64(StateStatusFailed)
	}
	d.log.Info("device state transfer done", "direction", directionName(t.dir))
	return r.replyU64(StateStatusOK)
}

// abortStateTransferLocked ends the connection's transfer, if one runs:
// its channel's deadline moves to now, a load not yet applied is never
// applied, and the goroutine is waited for.
//
// +checklocks:d.mu
func (d *NetDevice) abortStateTransferLocked() {
	t := d.xfer
	d.xfer = nil
	if t == nil {
		return
	}
	t.mu.Lock()
	t.aborted = true
	t.mu.Unlock()
	t.f.SetDeadline(time.Unix(1, 0))
	<-t.done
}

// LastStateTransfer reports the outcome of the device's last state
// transfer on the current connection: ok is false when there was none,
// done says whether it ended, err why it failed. It is for tests and
// diagnostics; it takes the device lock, so it waits for a request being
// handled (CHECK_DEVICE_STATE waits for the transfer).
func (d *NetDevice) LastStateTransfer() (ok, done bool, err error) {
	d.mu.Lock()
	t := d.xfer
	d.mu.Unlock()
	if t == nil {
		return false, false, nil
	}
	select {
	case <-t.done:
		return true, true, t.err
	default:
		return true, false, nil
	}
}

// run is the transfer goroutine.
func (t *stateTransfer) run(st StateTransferer) {
	defer close(t.done)
	defer t.f.Close()
	if t.dir == TransferSave {
		t.err = t.save(st)
	} else {
		t.err = t.load(st)
	}
}

func (t *stateTransfer) save(st StateTransferer) error {
	var buf boundedBuffer
	if err := st.SaveState(&buf); err != nil {
		return fmt.Errorf("save device state: %w", err)
	}
	if t.isAborted() {
		return ErrStateAborted
	}
	if _, err := t.f.Write(buf.b); err != nil {
		return fmt.Errorf("save device state: write %d bytes to the frontend: %w", len(buf.b), t.ioErr(err))
	}
	return nil
}

func (t *stateTransfer) load(st StateTransferer) error {
	b, err := readBounded(t.f)
	if err != nil {
		return fmt.Errorf("load device state: %w", t.ioErr(err))
	}
	// Applied under t.mu: once abort has set aborted, no load starts, and
	// abort waits for one under way.
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.aborted {
		return ErrStateAborted
	}
	if err := st.LoadState(bytes.NewReader(b)); err != nil {
		return fmt.Errorf("load device state (%d bytes): %w", len(b), err)
	}
	return nil
}

func (t *stateTransfer) isAborted() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.aborted
}

// ioErr names a deadline hit by an abort as the abort.
func (t *stateTransfer) ioErr(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		if t.isAborted() {
			return ErrStateAborted
		}
		return fmt.Errorf("frontend too slow: %w", err)
	}
	return err
}

// boundedBuffer is SaveState's writer: memory, at most MaxStateSize.
type boundedBuffer struct{ b []byte }

func (w *boundedBuffer) Write(p []byte) (int, error) {
	if len(p) > MaxStateSize-len(w.b) {
		return 0, ErrStateTooLarge
	}
	w.b = append(w.b, p...)
	return len(p), nil
}

// readBounded reads r to EOF, refusing more than MaxStateSize bytes.
func readBounded(r io.Reader) ([]byte, error) {
	b := make([]byte, 0, 64<<10)
	for {
		if len(b) == cap(b) {
			if len(b) > MaxStateSize {
				return nil, ErrStateTooLarge
			}
			b = append(b, 0)[:len(b)] // grow
		}
		n, err := r.Read(b[len(b):min(cap(b), MaxStateSize+1)])
		b = b[:len(b)+n]
		if len(b) > MaxStateSize {
			return nil, ErrStateTooLarge
		}
		if errors.Is(err, io.EOF) {
			return b, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// checkStateChannel accepts a pipe or a connected stream socket, open for
// writing (save) or reading (load).
func checkStateChannel(raw int, dir uint32) error {
	var st unix.Stat_t
	if err := unix.Fstat(raw, &st); err != nil {
		return fmt.Errorf("device state channel: fstat: %w", err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFIFO:
		fl, err := unix.FcntlInt(uintptr(raw), unix.F_GETFL, 0)
		if err != nil {
			return fmt.Errorf("device state channel: fcntl: %w", err)
		}
		acc := fl & unix.O_ACCMODE
		if dir == TransferSave && acc == unix.O_RDONLY {
			return errors.New("device state channel: the save direction needs the pipe's write end, got its read end")
		}
		if dir == TransferLoad && acc == unix.O_WRONLY {
			return errors.New("device state channel: the load direction needs the pipe's read end, got its write end")
		}
		return nil
	case unix.S_IFSOCK:
		typ, err := unix.GetsockoptInt(raw, unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil {
			return fmt.Errorf("device state channel: SO_TYPE: %w", err)
		}
		if typ != unix.SOCK_STREAM {
			return fmt.Errorf("device state channel: socket of type %d, want a stream socket (SOCK_STREAM)", typ)
		}
		if l, err := unix.GetsockoptInt(raw, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err == nil && l != 0 {
			return errors.New("device state channel: a listening socket, want a connected one")
		}
		return nil
	default:
		return fmt.Errorf("device state channel: %s, want a pipe or a stream socket", fileKind(st.Mode))
	}
}

func fileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "a regular file (or memfd)"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFDIR:
		return "a directory"
	default:
		return fmt.Sprintf("a file of type %#o (an eventfd, epoll or other anonymous inode?)", mode&unix.S_IFMT)
	}
}

func directionName(dir uint32) string {
	if dir == TransferSave {
		return "save"
	}
	return "load"
}
