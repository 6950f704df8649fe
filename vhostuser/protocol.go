package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/veloce-io/veloce/internal/fd"
	"golang.org/x/sys/unix"
)

// Request is a frontend request code (vhost-user.rst, "Front-end message types").
type Request uint32

// Frontend request codes.
const (
	GetFeatures         Request = 1
	SetFeatures         Request = 2
	SetOwner            Request = 3
	ResetOwner          Request = 4
	SetMemTable         Request = 5
	SetLogBase          Request = 6
	SetLogFD            Request = 7
	SetVringNum         Request = 8
	SetVringAddr        Request = 9
	SetVringBase        Request = 10
	GetVringBase        Request = 11
	SetVringKick        Request = 12
	SetVringCall        Request = 13
	SetVringErr         Request = 14
	GetProtocolFeatures Request = 15
	SetProtocolFeatures Request = 16
	GetQueueNum         Request = 17
	SetVringEnable      Request = 18
	SendRARP            Request = 19
	NetSetMTU           Request = 20
	SetBackendReqFD     Request = 21
	IOTLBMsg            Request = 22
	SetVringEndian      Request = 23
	GetConfig           Request = 24
	SetConfig           Request = 25
	CreateCryptoSession Request = 26
	CloseCryptoSession  Request = 27
	PostcopyAdvise      Request = 28
	PostcopyListen      Request = 29
	PostcopyEnd         Request = 30
	GetInflightFD       Request = 31
	SetInflightFD       Request = 32
	GPUSetSocket        Request = 33
	ResetDevice         Request = 34
	VringKick           Request = 35
	GetMaxMemSlots      Request = 36
	AddMemReg           Request = 37
	RemMemReg           Request = 38
	SetStatus           Request = 39
	GetStatus           Request = 40
	GetSharedObject     Request = 41
	SetDeviceStateFD    Request = 42
	CheckDeviceState    Request = 43
	maxRequest                  = CheckDeviceState
)

// BackendRequest is a request code on the backend channel
// (SET_BACKEND_REQ_FD), sent by the backend to the frontend.
type BackendRequest uint32

// Backend request codes (vhost-user.rst, "Back-end message types").
const (
	BackendIOTLBMsg             BackendRequest = 1
	BackendConfigChangeMsg      BackendRequest = 2
	BackendVringHostNotifierMsg BackendRequest = 3
	BackendVringCall            BackendRequest = 4
	BackendVringErr             BackendRequest = 5
	BackendSharedObjectAdd      BackendRequest = 6
	BackendSharedObjectRemove   BackendRequest = 7
	BackendSharedObjectLookup   BackendRequest = 8
	maxBackendRequest                          = BackendSharedObjectLookup
)

// Header flags.
const (
	// FlagVersionMask selects the version bits of Header.Flags.
	FlagVersionMask = 0x3
	// Version is the only protocol version.
	Version = 0x1
	// FlagReply marks a reply from the backend.
	FlagReply = 0x4
	// FlagNeedReply asks for a REPLY_ACK reply (vhost-user.rst, "REPLY_ACK").
	FlagNeedReply = 0x8
)

// Wire limits.
const (
	// HeaderSize is the size of the message header.
	HeaderSize = 12
	// MaxPayloadSize caps the payload of any accepted message; no request
	// legitimately comes near it (the largest is SET_CONFIG at 12+256).
	MaxPayloadSize = 4096
	// MaxMessageSize is the buffer size ReadMessage needs.
	MaxMessageSize = HeaderSize + MaxPayloadSize
	// MaxFDs is the most file descriptors one message carries: one per
	// region of the largest SET_MEM_TABLE accepted.
	MaxFDs = MaxSetMemTableRegions
	// MaxConfigSize is VHOST_USER_MAX_CONFIG_SIZE: the largest config space access.
	MaxConfigSize = 256
)

// Payload sizes of the fixed-size payloads.
const (
	u64Size            = 8
	vringStateSize     = 8
	vringAddrSize      = 40
	memoryRegionSize   = 32
	memTableHeaderSize = 8
	memRegionMsgSize   = 8 + memoryRegionSize
	logSize            = 16
	iotlbSize          = 32
	configHeaderSize   = 12
	inflightSize       = 24
	sharedObjectSize   = 16
	deviceStateSize    = 8
)

var requestNames = [...]string{
	GetFeatures:         "GET_FEATURES",
	SetFeatures:         "SET_FEATURES",
	SetOwner:            "SET_OWNER",
	ResetOwner:          "RESET_OWNER",
	SetMemTable:         "SET_MEM_TABLE",
	SetLogBase:          "SET_LOG_BASE",
	SetLogFD:            "SET_LOG_FD",
	SetVringNum:         "SET_VRING_NUM",
	SetVringAddr:        "SET_VRING_ADDR",
	SetVringBase:        "SET_VRING_BASE",
	GetVringBase:        "GET_VRING_BASE",
	SetVringKick:        "SET_VRING_KICK",
	SetVringCall:        "SET_VRING_CALL",
	SetVringErr:         "SET_VRING_ERR",
	GetProtocolFeatures: "GET_PROTOCOL_FEATURES",
	SetProtocolFeatures: "SET_PROTOCOL_FEATURES",
	GetQueueNum:         "GET_QUEUE_NUM",
	SetVringEnable:      "SET_VRING_ENABLE",
	SendRARP:            "SEND_RARP",
	NetSetMTU:           "NET_SET_MTU",
	SetBackendReqFD:     "SET_BACKEND_REQ_FD",
	IOTLBMsg:            "IOTLB_MSG",
	SetVringEndian:      "SET_VRING_ENDIAN",
	GetConfig:           "GET_CONFIG",
	SetConfig:           "SET_CONFIG",
	CreateCryptoSession: "CREATE_CRYPTO_SESSION",
	CloseCryptoSession:  "CLOSE_CRYPTO_SESSION",
	PostcopyAdvise:      "POSTCOPY_ADVISE",
	PostcopyListen:      "POSTCOPY_LISTEN",
	PostcopyEnd:         "POSTCOPY_END",
	GetInflightFD:       "GET_INFLIGHT_FD",
	SetInflightFD:       "SET_INFLIGHT_FD",
	GPUSetSocket:        "GPU_SET_SOCKET",
	ResetDevice:         "RESET_DEVICE",
	VringKick:           "VRING_KICK",
	GetMaxMemSlots:      "GET_MAX_MEM_SLOTS",
	AddMemReg:           "ADD_MEM_REG",
	RemMemReg:           "REM_MEM_REG",
	SetStatus:           "SET_STATUS",
	GetStatus:           "GET_STATUS",
	GetSharedObject:     "GET_SHARED_OBJECT",
	SetDeviceStateFD:    "SET_DEVICE_STATE_FD",
	CheckDeviceState:    "CHECK_DEVICE_STATE",
}

// String returns the spec name, e.g. "VHOST_USER_GET_FEATURES".
func (r Request) String() string {
	if r.Known() {
		return "VHOST_USER_" + requestNames[r]
	}
	return fmt.Sprintf("VHOST_USER_REQUEST(%d)", uint32(r))
}

// Known reports whether r is a request code this package decodes.
func (r Request) Known() bool { return r >= GetFeatures && r <= maxRequest }

var backendRequestNames = [...]string{
	BackendIOTLBMsg:             "IOTLB_MSG",
	BackendConfigChangeMsg:      "CONFIG_CHANGE_MSG",
	BackendVringHostNotifierMsg: "VRING_HOST_NOTIFIER_MSG",
	BackendVringCall:            "VRING_CALL",
	BackendVringErr:             "VRING_ERR",
	BackendSharedObjectAdd:      "SHARED_OBJECT_ADD",
	BackendSharedObjectRemove:   "SHARED_OBJECT_REMOVE",
	BackendSharedObjectLookup:   "SHARED_OBJECT_LOOKUP",
}

// String returns the spec name, e.g. "VHOST_USER_BACKEND_VRING_CALL".
func (r BackendRequest) String() string {
	if r >= BackendIOTLBMsg && r <= maxBackendRequest {
		return "VHOST_USER_BACKEND_" + backendRequestNames[r]
	}
	return fmt.Sprintf("VHOST_USER_BACKEND_REQUEST(%d)", uint32(r))
}

// payloadKind names the payload layout of a request.
type payloadKind uint8

const (
	pNone payloadKind = iota
	pU64
	pVringState
	pVringAddr
	pMemTable
	pMemRegion
	pLog
	pIOTLB
	pConfig
	pInflight
	pShared
	pDeviceState
	pOpaque // crypto sessions: accepted and passed through undecoded
)

// fdRule says how many file descriptors a request carries.
type fdRule uint8

const (
	fdNone       fdRule = iota // exactly 0
	fdOne                      // exactly 1
	fdPerRegion                // one per region of a memory table
	fdUnlessNoFD               // 1 unless bit 8 of the u64 is set, then 0
	fdOptional                 // 0 or 1; the one is closed, never handed out
)

type requestSpec struct {
	kind    payloadKind
	fds     fdRule
	reply   bool // the request has a reply body of its own
	minSize uint32
	maxSize uint32
}

func fixed(kind payloadKind, size uint32, fds fdRule, reply bool) requestSpec {
	return requestSpec{kind: kind, fds: fds, reply: reply, minSize: size, maxSize: size}
}

var requestSpecs = [...]requestSpec{
	GetFeatures:         fixed(pNone, 0, fdNone, true),
	SetFeatures:         fixed(pU64, u64Size, fdNone, false),
	SetOwner:            fixed(pNone, 0, fdNone, false),
	ResetOwner:          fixed(pNone, 0, fdNone, false),
	SetMemTable:         {kind: pMemTable, fds: fdPerRegion, minSize: memTableHeaderSize + memoryRegionSize, maxSize: memTableHeaderSize + MaxSetMemTableRegions*memoryRegionSize},
	SetLogBase:          fixed(pLog, logSize, fdOne, true),
	SetLogFD:            fixed(pNone, 0, fdOne, false),
	SetVringNum:         fixed(pVringState, vringStateSize, fdNone, false),
	SetVringAddr:        fixed(pVringAddr, vringAddrSize, fdNone, false),
	SetVringBase:        fixed(pVringState, vringStateSize, fdNone, false),
	GetVringBase:        fixed(pVringState, vringStateSize, fdNone, true),
	SetVringKick:        fixed(pU64, u64Size, fdUnlessNoFD, false),
	SetVringCall:        fixed(pU64, u64Size, fdUnlessNoFD, false),
	SetVringErr:         fixed(pU64, u64Size, fdUnlessNoFD, false),
	GetProtocolFeatures: fixed(pNone, 0, fdNone, true),
	SetProtocolFeatures: fixed(pU64, u64Size, fdNone, false),
	GetQueueNum:         fixed(pNone, 0, fdNone, true),
	SetVringEnable:      fixed(pVringState, vringStateSize, fdNone, false),
	SendRARP:            fixed(pU64, u64Size, fdNone, false),
	NetSetMTU:           fixed(pU64, u64Size, fdNone, false),
	SetBackendReqFD:     fixed(pNone, 0, fdOne, false),
	IOTLBMsg:            fixed(pIOTLB, iotlbSize, fdNone, true),
	SetVringEndian:      fixed(pVringState, vringStateSize, fdNone, false),
	GetConfig:           {kind: pConfig, fds: fdNone, reply: true, minSize: configHeaderSize, maxSize: configHeaderSize + MaxConfigSize},
	SetConfig:           {kind: pConfig, fds: fdNone, minSize: configHeaderSize, maxSize: configHeaderSize + MaxConfigSize},
	CreateCryptoSession: {kind: pOpaque, fds: fdNone, reply: true, minSize: 0, maxSize: MaxPayloadSize},
	CloseCryptoSession:  fixed(pU64, u64Size, fdNone, false),
	PostcopyAdvise:      fixed(pNone, 0, fdNone, true),
	PostcopyListen:      fixed(pNone, 0, fdNone, false),
	PostcopyEnd:         fixed(pNone, 0, fdNone, true),
	GetInflightFD:       fixed(pInflight, inflightSize, fdNone, true),
	SetInflightFD:       fixed(pInflight, inflightSize, fdOne, false),
	GPUSetSocket:        fixed(pNone, 0, fdOne, false),
	ResetDevice:         fixed(pNone, 0, fdNone, false),
	VringKick:           fixed(pVringState, vringStateSize, fdNone, false),
	GetMaxMemSlots:      fixed(pNone, 0, fdNone, true),
	AddMemReg:           fixed(pMemRegion, memRegionMsgSize, fdOne, false),
	RemMemReg:           fixed(pMemRegion, memRegionMsgSize, fdOptional, false),
	SetStatus:           fixed(pU64, u64Size, fdNone, false),
	GetStatus:           fixed(pNone, 0, fdNone, true),
	GetSharedObject:     fixed(pShared, sharedObjectSize, fdNone, true),
	SetDeviceStateFD:    fixed(pDeviceState, deviceStateSize, fdOne, true),
	CheckDeviceState:    fixed(pNone, 0, fdNone, true),
}

// HasReply reports whether the request is answered with a reply body of its
// own (GET_FEATURES, GET_VRING_BASE, SET_LOG_BASE, ...). For the others a
// reply is sent only when the message has FlagNeedReply (REPLY_ACK).
func (r Request) HasReply() bool { return r.Known() && requestSpecs[r].reply }

// Header is the 12-byte message header. All fields are in host byte order.
type Header struct {
	Request Request // request code
	Flags   uint32  // Version, FlagReply, FlagNeedReply
	Size    uint32  // payload size in bytes
}

// NeedReply reports whether the sender set FlagNeedReply.
func (h Header) NeedReply() bool { return h.Flags&FlagNeedReply != 0 }

// Message is a decoded, validated frontend message. Payload aliases the
// buffer given to ReadMessage or ParseMessage.
type Message struct {
	Header
	// Payload holds exactly Header.Size bytes.
	Payload []byte
}

// NeedsAck reports whether the backend must answer with a REPLY_ACK u64
// (0 for success): FlagNeedReply is set and the request has no reply body
// of its own. Whether REPLY_ACK was negotiated is the caller's business;
// QEMU only sets the flag when it was.
func (m Message) NeedsAck() bool { return m.NeedReply() && !m.Request.HasReply() }

// ParseMessage decodes and validates one message from b, which must hold
// exactly a header and its payload, received together with nfds file
// descriptors. It never panics; errors are *ProtocolError matching
// ErrBadMessage, ErrUnknownRequest, ErrPayloadTooLarge or ErrBadFDs.
func ParseMessage(b []byte, nfds int) (Message, error) {
	if len(b) < HeaderSize {
		return Message{}, protoErr(0, ErrBadMessage, "short header: %d bytes", len(b))
	}
	h := parseHeader(b)
	if err := validateHeader(h); err != nil {
		return Message{}, err
	}
	if uint64(len(b)) != HeaderSize+uint64(h.Size) {
		return Message{}, protoErr(h.Request, ErrBadMessage, "header says %d payload bytes, have %d", h.Size, len(b)-HeaderSize)
	}
	m := Message{Header: h, Payload: b[HeaderSize:]}
	if err := validatePayload(m, nfds); err != nil {
		return Message{}, err
	}
	return m, nil
}

func parseHeader(b []byte) Header {
	return Header{
		Request: Request(binary.LittleEndian.Uint32(b[0:4])),
		Flags:   binary.LittleEndian.Uint32(b[4:8]),
		Size:    binary.LittleEndian.Uint32(b[8:12]),
	}
}

// validateHeader checks what can be checked before the payload is read.
func validateHeader(h Header) error {
	if !h.Request.Known() {
		return protoErr(h.Request, ErrUnknownRequest, "unknown request code %d", uint32(h.Request))
	}
	if v := h.Flags & FlagVersionMask; v != Version {
		return protoErr(h.Request, ErrBadMessage, "version %d, want %d", v, Version)
	}
	if h.Flags&FlagReply != 0 {
		return protoErr(h.Request, ErrBadMessage, "reply flag set on a request")
	}
	if h.Size > MaxPayloadSize {
		return protoErr(h.Request, ErrPayloadTooLarge, "payload of %d bytes exceeds %d", h.Size, MaxPayloadSize)
	}
	s := requestSpecs[h.Request]
	if h.Size < s.minSize || h.Size > s.maxSize {
		if s.minSize == s.maxSize {
			return protoErr(h.Request, ErrBadMessage, "payload of %d bytes, want %d", h.Size, s.minSize)
		}
		return protoErr(h.Request, ErrBadMessage, "payload of %d bytes, want %d to %d", h.Size, s.minSize, s.maxSize)
	}
	return nil
}

// validatePayload checks the payload contents and the descriptor count.
func validatePayload(m Message, nfds int) error {
	if nfds < 0 || nfds > MaxFDs {
		return protoErr(m.Request, ErrBadFDs, "%d file descriptors", nfds)
	}
	s := requestSpecs[m.Request]
	want := 0
	switch s.fds {
	case fdOne:
		want = 1
	case fdOptional:
		if nfds <= 1 {
			want = nfds
		}
	case fdUnlessNoFD:
		if binary.LittleEndian.Uint64(m.Payload)&VringNoFD == 0 {
			want = 1
		}
	case fdPerRegion:
		n := binary.LittleEndian.Uint32(m.Payload)
		if n == 0 || n > MaxSetMemTableRegions {
			return protoErr(m.Request, ErrBadMessage, "%d memory regions, want 1 to %d", n, MaxSetMemTableRegions)
		}
		if need := memTableHeaderSize + n*memoryRegionSize; m.Size < need {
			return protoErr(m.Request, ErrBadMessage, "%d regions need %d payload bytes, have %d", n, need, m.Size)
		}
		want = int(n)
	}
	if nfds != want {
		return protoErr(m.Request, ErrBadFDs, "%d file descriptors, want %d", nfds, want)
	}
	if s.kind == pConfig {
		size := binary.LittleEndian.Uint32(m.Payload[4:8])
		if size > MaxConfigSize || configHeaderSize+size != m.Size {
			return protoErr(m.Request, ErrBadMessage, "config access of %d bytes in a %d-byte payload", size, m.Size)
		}
	}
	return nil
}

// ReadMessage reads one message from conn into buf, which must be at least
// MaxMessageSize bytes, and returns it with the file descriptors that came
// with it. The caller owns the returned set: it takes the descriptors it
// keeps and closes the set (FDSet.Close) when done with the message. On
// error every received descriptor has been closed, and so has the
// descriptor of a REM_MEM_REG (which the spec says must be closed unused).
//
// Errors: io.EOF when the peer closed between messages; a *ProtocolError
// (ErrBadMessage, ErrUnknownRequest, ErrPayloadTooLarge, ErrBadFDs) for a
// message that breaks the protocol, after which the stream cannot be
// trusted; other errors from the socket.
func ReadMessage(conn *net.UnixConn, buf []byte) (Message, FDSet, error) {
	if len(buf) < MaxMessageSize {
		return Message{}, FDSet{}, fmt.Errorf("read vhost-user message: buffer of %d bytes, need %d", len(buf), MaxMessageSize)
	}
	var fds []*FD
	fail := func(err error) (Message, FDSet, error) {
		closeAll(fds)
		return Message{}, FDSet{}, err
	}
	oob := make([]byte, unix.CmsgSpace(MaxFDs*4))
	if err := readFull(conn, buf[:HeaderSize], oob, &fds); err != nil {
		if err == io.EOF {
			return fail(io.EOF)
		}
		return fail(fmt.Errorf("read vhost-user header: %w", err))
	}
	h := parseHeader(buf)
	if err := validateHeader(h); err != nil {
		return fail(err)
	}
	if h.Size > 0 {
		if err := readFull(conn, buf[HeaderSize:HeaderSize+int(h.Size)], oob, &fds); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			var pe *ProtocolError
			if errors.As(err, &pe) && pe.Request == 0 {
				pe.Request = h.Request
				return fail(pe)
			}
			return fail(fmt.Errorf("read %v payload: %w", h.Request, err))
		}
	}
	m, err := ParseMessage(buf[:HeaderSize+int(h.Size)], len(fds))
	if err != nil {
		return fail(err)
	}
	if requestSpecs[m.Request].fds == fdOptional {
		closeAll(fds)
		fds = nil
	}
	return m, FDSet{fds: fds}, nil
}

// readFull fills b from conn, collecting any SCM_RIGHTS descriptors into
// fds (see fd.RecvMsg: close-on-exec, closed again on a truncated or
// malformed control message). It returns io.EOF if the stream ended
// before the first byte and io.ErrUnexpectedEOF if it ended after.
func readFull(conn *net.UnixConn, b, oob []byte, fds *[]*FD) error {
	got := 0
	for got < len(b) {
		n, all, err := fd.RecvMsg(conn, b[got:], oob, *fds)
		*fds = all
		if errors.Is(err, fd.ErrTruncated) || errors.Is(err, fd.ErrBadControl) {
			return protoErr(0, ErrBadFDs, "more than %d file descriptors or a bad control message: %v", MaxFDs, err)
		}
		if err == nil && len(*fds) > MaxFDs {
			return protoErr(0, ErrBadFDs, "more than %d file descriptors", MaxFDs)
		}
		got += n
		if err == nil && n == 0 {
			err = io.EOF // descriptors without data: nothing more will come
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if got > 0 {
					return io.ErrUnexpectedEOF
				}
				return io.EOF
			}
			return err
		}
	}
	return nil
}

// payload checks that m's request has the given payload kind and returns
// the payload. The length was validated by ParseMessage; it is checked
// again so that a hand-built Message cannot cause a panic.
func (m Message) payload(kind payloadKind, size int) ([]byte, error) {
	if !m.Request.Known() || requestSpecs[m.Request].kind != kind {
		return nil, protoErr(m.Request, ErrWrongPayload, "no such payload")
	}
	if len(m.Payload) < size {
		return nil, protoErr(m.Request, ErrBadMessage, "payload of %d bytes, want %d", len(m.Payload), size)
	}
	return m.Payload, nil
}

// U64 decodes a u64 payload (SET_FEATURES, SET_PROTOCOL_FEATURES,
// SET_VRING_KICK/CALL/ERR, SEND_RARP, NET_SET_MTU, SET_STATUS, ...).
func (m Message) U64() (uint64, error) {
	p, err := m.payload(pU64, u64Size)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(p), nil
}

// VringState is the vring state description (struct vhost_vring_state).
type VringState struct {
	Index uint32 // ring index
	Num   uint32 // size, base index or enable flag, depending on the request
}

// VringState decodes a vring state payload (SET_VRING_NUM, SET/GET_VRING_BASE,
// SET_VRING_ENABLE, SET_VRING_ENDIAN, VRING_KICK).
func (m Message) VringState() (VringState, error) {
	p, err := m.payload(pVringState, vringStateSize)
	if err != nil {
		return VringState{}, err
	}
	return VringState{Index: binary.LittleEndian.Uint32(p), Num: binary.LittleEndian.Uint32(p[4:])}, nil
}

// VringAddr is the vring address description (struct vhost_vring_addr).
// Desc, Used and Avail are frontend virtual addresses (see
// Memory.TranslateUser); Log is a guest physical address.
type VringAddr struct {
	Index uint32 // ring index
	Flags uint32 // VringFLog
	Desc  uint64 // descriptor table (frontend virtual address)
	Used  uint64 // used ring (frontend virtual address)
	Avail uint64 // available ring (frontend virtual address)
	Log   uint64 // guest physical address at which used-ring writes are logged
}

// VringAddr decodes a SET_VRING_ADDR payload.
func (m Message) VringAddr() (VringAddr, error) {
	p, err := m.payload(pVringAddr, vringAddrSize)
	if err != nil {
		return VringAddr{}, err
	}
	le := binary.LittleEndian
	return VringAddr{
		Index: le.Uint32(p), Flags: le.Uint32(p[4:]),
		Desc: le.Uint64(p[8:]), Used: le.Uint64(p[16:]), Avail: le.Uint64(p[24:]), Log: le.Uint64(p[32:]),
	}, nil
}

// MemoryRegion is a memory region description.
type MemoryRegion struct {
	GuestAddr  uint64 // guest physical address of the region
	Size       uint64 // size in bytes
	UserAddr   uint64 // frontend virtual address of the region
	MmapOffset uint64 // offset of the region in the file descriptor
}

func decodeRegion(p []byte) MemoryRegion {
	le := binary.LittleEndian
	return MemoryRegion{GuestAddr: le.Uint64(p), Size: le.Uint64(p[8:]), UserAddr: le.Uint64(p[16:]), MmapOffset: le.Uint64(p[24:])}
}

func appendRegion(b []byte, r MemoryRegion) []byte {
	le := binary.LittleEndian
	b = le.AppendUint64(b, r.GuestAddr)
	b = le.AppendUint64(b, r.Size)
	b = le.AppendUint64(b, r.UserAddr)
	return le.AppendUint64(b, r.MmapOffset)
}

// MemoryTable is the SET_MEM_TABLE payload. Regions[i] is mapped from the
// i-th file descriptor received with the message.
type MemoryTable struct {
	Regions []MemoryRegion // 1 to MaxSetMemTableRegions entries
}

// MemoryTable decodes a SET_MEM_TABLE payload.
func (m Message) MemoryTable() (MemoryTable, error) {
	p, err := m.payload(pMemTable, memTableHeaderSize)
	if err != nil {
		return MemoryTable{}, err
	}
	n := binary.LittleEndian.Uint32(p)
	if n == 0 || n > MaxSetMemTableRegions || len(p) < memTableHeaderSize+int(n)*memoryRegionSize {
		return MemoryTable{}, protoErr(m.Request, ErrBadMessage, "%d regions in a %d-byte payload", n, len(p))
	}
	t := MemoryTable{Regions: make([]MemoryRegion, n)}
	for i := range t.Regions {
		t.Regions[i] = decodeRegion(p[memTableHeaderSize+i*memoryRegionSize:])
	}
	return t, nil
}

// MemRegion decodes the single region of ADD_MEM_REG or REM_MEM_REG.
func (m Message) MemRegion() (MemoryRegion, error) {
	p, err := m.payload(pMemRegion, memRegionMsgSize)
	if err != nil {
		return MemoryRegion{}, err
	}
	return decodeRegion(p[8:]), nil
}

// Log is the log description of SET_LOG_BASE.
type Log struct {
	Size   uint64 // bytes of bitmap
	Offset uint64 // offset of the bitmap in the file descriptor
}

// Log decodes a SET_LOG_BASE payload.
func (m Message) Log() (Log, error) {
	p, err := m.payload(pLog, logSize)
	if err != nil {
		return Log{}, err
	}
	return Log{Size: binary.LittleEndian.Uint64(p), Offset: binary.LittleEndian.Uint64(p[8:])}, nil
}

// IOTLB is struct vhost_iotlb_msg, the IOTLB_MSG payload.
type IOTLB struct {
	IOVA     uint64 // I/O virtual address
	Size     uint64 // size of the range
	UserAddr uint64 // frontend virtual address the range maps to
	Perm     uint8  // 0 none, 1 read, 2 write, 3 read/write
	Type     uint8  // 1 miss, 2 update, 3 invalidate, 4 access fail
}

// IOTLB decodes an IOTLB_MSG payload.
func (m Message) IOTLB() (IOTLB, error) {
	p, err := m.payload(pIOTLB, iotlbSize)
	if err != nil {
		return IOTLB{}, err
	}
	le := binary.LittleEndian
	return IOTLB{IOVA: le.Uint64(p), Size: le.Uint64(p[8:]), UserAddr: le.Uint64(p[16:]), Perm: p[24], Type: p[25]}, nil
}

// Config flags.
const (
	// ConfigFlagWritable marks a SET_CONFIG of writable fields.
	ConfigFlagWritable = 0
	// ConfigFlagLiveMigration marks a SET_CONFIG done for live migration;
	// only then may read-only fields be written.
	ConfigFlagLiveMigration = 1
)

// Config is the virtio device config space payload of GET_CONFIG and SET_CONFIG.
type Config struct {
	Offset uint32 // offset in the device config space
	Flags  uint32 // ConfigFlagWritable or ConfigFlagLiveMigration
	// Data holds the accessed bytes; its length is the access size. In a
	// decoded message it aliases the message buffer.
	Data []byte
}

// Config decodes a GET_CONFIG or SET_CONFIG payload. For GET_CONFIG, Data
// holds whatever the frontend sent (usually zeros) and its length is the
// size the reply must have.
func (m Message) Config() (Config, error) {
	p, err := m.payload(pConfig, configHeaderSize)
	if err != nil {
		return Config{}, err
	}
	size := binary.LittleEndian.Uint32(p[4:])
	if size > MaxConfigSize || len(p) != configHeaderSize+int(size) {
		return Config{}, protoErr(m.Request, ErrBadMessage, "config access of %d bytes in a %d-byte payload", size, len(p))
	}
	return Config{Offset: binary.LittleEndian.Uint32(p), Flags: binary.LittleEndian.Uint32(p[8:]), Data: p[configHeaderSize:]}, nil
}

// Inflight is the inflight description of GET_INFLIGHT_FD and SET_INFLIGHT_FD.
type Inflight struct {
	MmapSize   uint64 // size of the inflight area
	MmapOffset uint64 // offset of the area in the fd
	NumQueues  uint16 // number of virtqueues
	QueueSize  uint16 // size of each virtqueue
}

// Inflight decodes a GET_INFLIGHT_FD or SET_INFLIGHT_FD payload.
func (m Message) Inflight() (Inflight, error) {
	p, err := m.payload(pInflight, inflightSize)
	if err != nil {
		return Inflight{}, err
	}
	le := binary.LittleEndian
	return Inflight{MmapSize: le.Uint64(p), MmapOffset: le.Uint64(p[8:]), NumQueues: le.Uint16(p[16:]), QueueSize: le.Uint16(p[18:])}, nil
}

// SharedObject decodes the UUID of GET_SHARED_OBJECT (VhostUserShared).
func (m Message) SharedObject() ([16]byte, error) {
	p, err := m.payload(pShared, sharedObjectSize)
	if err != nil {
		return [16]byte{}, err
	}
	return [16]byte(p[:16]), nil
}

// Device state transfer parameters (SET_DEVICE_STATE_FD).
const (
	TransferSave = 0 // backend to frontend, on the migration source
	TransferLoad = 1 // frontend to backend, on the migration destination

	PhaseStopped = 0 // the VM is stopped and the device suspended
)

// DeviceStateTransfer is the SET_DEVICE_STATE_FD payload.
type DeviceStateTransfer struct {
	Direction uint32 // TransferSave or TransferLoad
	Phase     uint32 // PhaseStopped
}

// DeviceStateTransfer decodes a SET_DEVICE_STATE_FD payload.
func (m Message) DeviceStateTransfer() (DeviceStateTransfer, error) {
	p, err := m.payload(pDeviceState, deviceStateSize)
	if err != nil {
		return DeviceStateTransfer{}, err
	}
	return DeviceStateTransfer{Direction: binary.LittleEndian.Uint32(p), Phase: binary.LittleEndian.Uint32(p[4:])}, nil
}

// Encoding. The Append* functions append a payload in wire format.

// AppendU64 appends a u64 payload.
func AppendU64(b []byte, v uint64) []byte { return binary.LittleEndian.AppendUint64(b, v) }

// AppendVringState appends a vring state payload.
func AppendVringState(b []byte, s VringState) []byte {
	b = binary.LittleEndian.AppendUint32(b, s.Index)
	return binary.LittleEndian.AppendUint32(b, s.Num)
}

// AppendVringAddr appends a vring address payload.
func AppendVringAddr(b []byte, a VringAddr) []byte {
	le := binary.LittleEndian
	b = le.AppendUint32(b, a.Index)
	b = le.AppendUint32(b, a.Flags)
	b = le.AppendUint64(b, a.Desc)
	b = le.AppendUint64(b, a.Used)
	b = le.AppendUint64(b, a.Avail)
	return le.AppendUint64(b, a.Log)
}

// AppendMemoryTable appends a SET_MEM_TABLE payload with len(t.Regions)
// regions (no padding entries).
func AppendMemoryTable(b []byte, t MemoryTable) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(t.Regions)))
	b = binary.LittleEndian.AppendUint32(b, 0)
	for _, r := range t.Regions {
		b = appendRegion(b, r)
	}
	return b
}

// AppendMemRegion appends an ADD_MEM_REG / REM_MEM_REG payload.
func AppendMemRegion(b []byte, r MemoryRegion) []byte {
	return appendRegion(binary.LittleEndian.AppendUint64(b, 0), r)
}

// AppendLog appends a SET_LOG_BASE payload.
func AppendLog(b []byte, l Log) []byte {
	b = binary.LittleEndian.AppendUint64(b, l.Size)
	return binary.LittleEndian.AppendUint64(b, l.Offset)
}

// AppendConfig appends a GET_CONFIG / SET_CONFIG payload.
func AppendConfig(b []byte, c Config) []byte {
	b = binary.LittleEndian.AppendUint32(b, c.Offset)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(c.Data)))
	b = binary.LittleEndian.AppendUint32(b, c.Flags)
	return append(b, c.Data...)
}

// AppendInflight appends an inflight description (24 bytes, QEMU layout).
func AppendInflight(b []byte, in Inflight) []byte {
	le := binary.LittleEndian
	b = le.AppendUint64(b, in.MmapSize)
	b = le.AppendUint64(b, in.MmapOffset)
	b = le.AppendUint16(b, in.NumQueues)
	b = le.AppendUint16(b, in.QueueSize)
	return le.AppendUint32(b, 0)
}

// AppendDeviceStateTransfer appends a SET_DEVICE_STATE_FD payload.
func AppendDeviceStateTransfer(b []byte, d DeviceStateTransfer) []byte {
	b = binary.LittleEndian.AppendUint32(b, d.Direction)
	return binary.LittleEndian.AppendUint32(b, d.Phase)
}

// AppendHeader appends a message header.
func AppendHeader(b []byte, h Header) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(h.Request))
	b = binary.LittleEndian.AppendUint32(b, h.Flags)
	return binary.LittleEndian.AppendUint32(b, h.Size)
}

// WriteMessage sends header and payload in one sendmsg, with fds as
// SCM_RIGHTS ancillary data. req is a Request, or a BackendRequest on the
// backend channel. The descriptors stay owned by the caller.
func WriteMessage(conn *net.UnixConn, req uint32, flags uint32, payload []byte, fds []int) error {
	if len(payload) > MaxPayloadSize {
		return fmt.Errorf("write vhost-user message: payload of %d bytes exceeds %d", len(payload), MaxPayloadSize)
	}
	if len(fds) > MaxFDs {
		return fmt.Errorf("write vhost-user message: %d file descriptors exceeds %d", len(fds), MaxFDs)
	}
	b := make([]byte, 0, HeaderSize+len(payload))
	b = AppendHeader(b, Header{Request: Request(req), Flags: flags, Size: uint32(len(payload))})
	b = append(b, payload...)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, oobn, err := conn.WriteMsgUnix(b, oob, nil)
	if err != nil {
		return fmt.Errorf("write vhost-user message: %w", err)
	}
	if n != len(b) || oobn != len(oob) {
		return fmt.Errorf("write vhost-user message: short write (%d of %d bytes)", n, len(b))
	}
	return nil
}

// WriteReply sends a reply to req: flags are Version|FlagReply.
func WriteReply(conn *net.UnixConn, req Request, payload []byte, fds []int) error {
	return WriteMessage(conn, uint32(req), Version|FlagReply, payload, fds)
}

// ReplyU64 answers req with a u64: GET_FEATURES, GET_PROTOCOL_FEATURES,
// GET_QUEUE_NUM, GET_MAX_MEM_SLOTS, GET_STATUS, CHECK_DEVICE_STATE, the
// and the REPLY_ACK status (0 success). SET_LOG_BASE is answered by
// echoing its 16-byte payload instead (see the package doc).
func ReplyU64(conn *net.UnixConn, req Request, v uint64) error {
	var b [u64Size]byte
	return WriteReply(conn, req, AppendU64(b[:0], v), nil)
}

// ReplyVringState answers GET_VRING_BASE.
func ReplyVringState(conn *net.UnixConn, req Request, s VringState) error {
	var b [vringStateSize]byte
	return WriteReply(conn, req, AppendVringState(b[:0], s), nil)
}

// ReplyConfig answers GET_CONFIG. The spec wants len(c.Data) equal to the
// requested size; an empty Data reports an error to the frontend.
func ReplyConfig(conn *net.UnixConn, c Config) error {
	if len(c.Data) > MaxConfigSize {
		return fmt.Errorf("reply %v: config of %d bytes exceeds %d", GetConfig, len(c.Data), MaxConfigSize)
	}
	return WriteReply(conn, GetConfig, AppendConfig(make([]byte, 0, configHeaderSize+len(c.Data)), c), nil)
}

// ReplyInflight answers GET_INFLIGHT_FD with the description and the
// shared memory fd (still owned by the caller).
func ReplyInflight(conn *net.UnixConn, in Inflight, fd int) error {
	return WriteReply(conn, GetInflightFD, AppendInflight(make([]byte, 0, inflightSize), in), []int{fd})
}

// ReplyDeviceStateFD answers SET_DEVICE_STATE_FD: status 0 for success;
// fd >= 0 hands the frontend a backend-made channel instead of its own
// (the fd stays owned by the caller), fd < 0 sets the invalid-FD bit.
func ReplyDeviceStateFD(conn *net.UnixConn, status uint8, fd int) error {
	v := uint64(status)
	var fds []int
	if fd >= 0 {
		fds = []int{fd}
	} else {
		v |= VringNoFD
	}
	var b [u64Size]byte
	return WriteReply(conn, SetDeviceStateFD, AppendU64(b[:0], v), fds)
}
