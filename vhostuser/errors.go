package vhostuser

import (
	"errors"
	"fmt"
)

// Sentinel errors. Callers branch on them with errors.Is; the concrete error
// returned may be a *ProtocolError or a wrapped error that matches them.
//
// The ring errors (ErrDescriptorLoop and below) are returned as-is, never
// wrapped, so that a hostile guest cannot make the datapath allocate.
var (
	// ErrBadMessage reports a vhost-user message that is malformed: a short
	// header, a wrong version, a payload whose size does not match what the
	// request requires, or a payload field out of range.
	ErrBadMessage = errors.New("vhostuser: bad message")
	// ErrUnknownRequest reports a request code this package does not know.
	ErrUnknownRequest = errors.New("vhostuser: unknown request")
	// ErrPayloadTooLarge reports a header whose size field exceeds MaxPayloadSize.
	ErrPayloadTooLarge = errors.New("vhostuser: payload too large")
	// ErrBadFDs reports a message that carries a number of file descriptors
	// the request does not allow, or more than MaxFDs.
	ErrBadFDs = errors.New("vhostuser: wrong number of file descriptors")
	// ErrBadFD reports a descriptor of the wrong kind: a kick, call or
	// err descriptor that is not an eventfd (a socket, a pipe, a file).
	// The error also matches internal/fd's ErrNotEventFD.
	ErrBadFD = errors.New("vhostuser: wrong kind of file descriptor")
	// ErrBadPayload reports a well-formed request whose values the device
	// refuses: a queue size that is not a power of two, a vring index past
	// the device's rings, an MTU, status or enable value out of range.
	ErrBadPayload = errors.New("vhostuser: payload value refused")
	// ErrNotOffered reports a SET_FEATURES or SET_PROTOCOL_FEATURES that
	// acks bits the device did not offer.
	ErrNotOffered = errors.New("vhostuser: feature acked that was not offered")
	// ErrNoMemory reports a request that needs a memory table before the
	// frontend sent one (REM_MEM_REG on an empty table).
	ErrNoMemory = errors.New("vhostuser: no memory table")
	// ErrUnsupported reports a known request whose form the device does
	// not implement (legacy cross-endian rings).
	ErrUnsupported = errors.New("vhostuser: not supported by the device")
	// ErrWrongPayload reports a call to a Message accessor that does not
	// match the message's request (for example VringAddr on SET_FEATURES).
	ErrWrongPayload = errors.New("vhostuser: payload type does not match request")

	// ErrBadRegion reports a memory region that is empty, overflows the
	// address space, or cannot be mapped.
	ErrBadRegion = errors.New("vhostuser: bad memory region")
	// ErrRegionOverlap reports a memory region that overlaps one already
	// present, in guest physical or in frontend virtual address space.
	ErrRegionOverlap = errors.New("vhostuser: memory regions overlap")
	// ErrTooManyRegions reports a memory table that would exceed MaxMemSlots
	// regions (or MaxSetMemTableRegions in SET_MEM_TABLE).
	ErrTooManyRegions = errors.New("vhostuser: too many memory regions")
	// ErrRegionNotFound reports a REM_MEM_REG for a region that is not mapped.
	ErrRegionNotFound = errors.New("vhostuser: memory region not found")
	// ErrAddressNotMapped reports a translation of an address range that is
	// not entirely inside one mapped region.
	ErrAddressNotMapped = errors.New("vhostuser: address not mapped")
	// ErrCrossesRegion reports a translation of a range that starts in one
	// region and continues in an adjacent one; use Memory.TranslateSegments.
	ErrCrossesRegion = errors.New("vhostuser: range crosses a memory region boundary")
	// ErrClosed reports use of a Memory or DirtyLog after Close.
	ErrClosed = errors.New("vhostuser: closed")

	// ErrBadLog reports a SET_LOG_BASE whose size or offset cannot be used.
	ErrBadLog = errors.New("vhostuser: bad dirty log")
	// ErrLogOutOfRange reports a Mark for guest addresses the log does not cover.
	ErrLogOutOfRange = errors.New("vhostuser: address outside dirty log")

	// ErrBadRing reports ring parameters that cannot be used: a queue size
	// that is zero, not a power of two or above MaxQueueSize, misaligned
	// ring addresses, or rings that are not mapped.
	ErrBadRing = errors.New("vhostuser: bad ring configuration")
	// ErrBadInflight reports an inflight region (SET_INFLIGHT_FD) whose
	// contents cannot be a state this device left: the ring is not
	// started on it.
	ErrBadInflight = errors.New("vhostuser: corrupt inflight region")
	// ErrRingBroken reports that the driver moved the available index by more
	// than the queue size; the ring cannot be trusted until it is reset.
	ErrRingBroken = errors.New("vhostuser: ring broken: available index moved by more than queue size")
	// ErrHeadOutOfRange reports an available ring entry naming a descriptor
	// index at or beyond the queue size. The entry is consumed and not
	// returned to the used ring (there is no valid id to return).
	ErrHeadOutOfRange = errors.New("vhostuser: available ring names a descriptor out of range")
	// ErrDescriptorLoop reports a chain that visits more descriptors than
	// its table holds, which can only happen when it loops.
	ErrDescriptorLoop = errors.New("vhostuser: descriptor chain loops")
	// ErrNextOutOfRange reports a descriptor whose next index is at or
	// beyond the size of its table.
	ErrNextOutOfRange = errors.New("vhostuser: descriptor next index out of range")
	// ErrZeroLength reports a descriptor with len 0.
	ErrZeroLength = errors.New("vhostuser: zero-length descriptor")
	// ErrDescriptorTooLong reports a descriptor longer than the ring's
	// MaxDescriptorLen, or a chain whose total length does not fit in 32 bits.
	ErrDescriptorTooLong = errors.New("vhostuser: descriptor too long")
	// ErrDescriptorAddress reports a descriptor whose buffer is not inside
	// guest memory.
	ErrDescriptorAddress = errors.New("vhostuser: descriptor address not in guest memory")
	// ErrDescriptorOrder reports a device-readable descriptor after a
	// device-writable one (virtio 1.1, 2.6.4.2).
	ErrDescriptorOrder = errors.New("vhostuser: readable descriptor after writable one")
	// ErrIndirectNotNegotiated reports an INDIRECT descriptor on a ring
	// without VIRTIO_F_RING_INDIRECT_DESC.
	ErrIndirectNotNegotiated = errors.New("vhostuser: indirect descriptor without VIRTIO_F_RING_INDIRECT_DESC")
	// ErrNestedIndirect reports an INDIRECT descriptor inside an indirect table.
	ErrNestedIndirect = errors.New("vhostuser: indirect descriptor inside an indirect table")
	// ErrBadIndirect reports an indirect descriptor with NEXT set, or whose
	// table length is zero, not a multiple of 16, too long or not mapped.
	ErrBadIndirect = errors.New("vhostuser: bad indirect descriptor table")
	// ErrChainTooLong reports a chain with more buffer segments than the
	// Chain passed to Pop can hold.
	ErrChainTooLong = errors.New("vhostuser: chain has more segments than the Chain can hold")
	// ErrBadPush reports a Push of a chain that this ring did not pop, or
	// with a written length larger than the chain's writable length.
	ErrBadPush = errors.New("vhostuser: bad push")
)

// ProtocolError describes a vhost-user message that was rejected, by the
// codec (ReadMessage, ParseMessage) or by the device (NetDevice.Serve
// returns one for every request it refuses). It matches its Err with
// errors.Is: a sentinel (ErrBadMessage, ErrUnknownRequest,
// ErrPayloadTooLarge, ErrBadFDs, ErrBadFD, ErrBadPayload, ErrNotOffered,
// ErrNoMemory, ErrUnsupported, ...) or a wrapped error that leads to one
// (ErrBadRegion, ErrBadLog, ErrBadRing, ...).
type ProtocolError struct {
	// Request is the request code from the message header (0 if the
	// header could not be read).
	Request Request
	// Reason says, for people, what was wrong; empty when Err says it.
	Reason string
	// Err is the sentinel this error matches, or the error that made the
	// device refuse the request.
	Err error
}

// Error formats the request and the reason.
func (e *ProtocolError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("vhostuser: %v: %v", e.Request, e.Err)
	}
	return fmt.Sprintf("vhostuser: %v: %s", e.Request, e.Reason)
}

// Unwrap returns the sentinel.
func (e *ProtocolError) Unwrap() error { return e.Err }

// Is reports whether target is e's sentinel, or matches the error Err
// wraps.
func (e *ProtocolError) Is(target error) bool { return e.Err != nil && errors.Is(e.Err, target) }

func protoErr(req Request, sentinel error, format string, args ...any) error {
	return &ProtocolError{Request: req, Reason: fmt.Sprintf(format, args...), Err: sentinel}
}

// ErrMemoryFault reports an access to memory a frontend handed over
// (guest memory, the dirty log, the inflight region) that faulted: the
// frontend shrank the file behind it after the device mapped it. The
// error is a *FaultError.
var ErrMemoryFault = errors.New("vhostuser: shared memory fault")

// FaultError reports a fault (SIGBUS or SIGSEGV) on memory a frontend
// handed over, absorbed by the device: the frontend is dropped instead of
// the daemon. It matches ErrMemoryFault.
type FaultError struct {
	// Addr is the faulting host address.
	Addr uintptr
	// Where names the mapping ("guest memory", "dirty log", "inflight
	// region") and, when known, the code path ("queue pair 0").
	Where string
}

func (e *FaultError) Error() string {
	return fmt.Sprintf("%s fault at %#x: memory file shrunk", e.Where, e.Addr)
}

// Is reports whether target is ErrMemoryFault.
func (e *FaultError) Is(target error) bool { return target == ErrMemoryFault }

// RingError reports a ring the device stopped serving because the driver
// broke it (ErrRingBroken: the available index moved by more than the
// queue size). It matches its Err.
type RingError struct {
	Ring int   // the vring index (RX even, TX odd)
	Err  error // ErrRingBroken
}

func (e *RingError) Error() string { return fmt.Sprintf("ring %d broken: %v", e.Ring, e.Err) }

// Unwrap returns Err.
func (e *RingError) Unwrap() error { return e.Err }
