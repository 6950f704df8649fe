package vhostuser_test

import (
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
	"golang.org/x/sys/unix"
)

// msgBytes builds a raw message.
func msgBytes(req vhostuser.Request, flags uint32, payload []byte) []byte {
	b := vhostuser.AppendHeader(nil, vhostuser.Header{Request: req, Flags: flags, Size: uint32(len(payload))})
	return append(b, payload...)
}

func u64(v uint64) []byte { return vhostuser.AppendU64(nil, v) }

func memTable(n int) []byte {
	t := vhostuser.MemoryTable{}
	for i := range n {
		t.Regions = append(t.Regions, vhostuser.MemoryRegion{GuestAddr: uint64(i) << 30, Size: 1 << 20, UserAddr: 1<<40 + uint64(i)<<30})
	}
	return vhostuser.AppendMemoryTable(nil, t)
}

// TestMessageSpecification follows vhost-user.rst "Message Specification"
// and "Front-end message types": payload sizes and descriptor counts per
// request.
func TestMessageSpecification(t *testing.T) {
	v := uint32(vhostuser.Version)
	tests := []struct {
		name    string
		req     vhostuser.Request
		flags   uint32
		payload []byte
		nfds    int
		want    error // nil: accepted
	}{
		{"Header/GET_FEATURES has no payload", vhostuser.GetFeatures, v, nil, 0, nil},
		{"Header/version 0 is refused", vhostuser.GetFeatures, 0, nil, 0, vhostuser.ErrBadMessage},
		{"Header/version 2 is refused", vhostuser.GetFeatures, 2, nil, 0, vhostuser.ErrBadMessage},
		{"Header/reply flag on a request is refused", vhostuser.GetFeatures, v | vhostuser.FlagReply, nil, 0, vhostuser.ErrBadMessage},
		{"Header/need_reply is accepted", vhostuser.SetOwner, v | vhostuser.FlagNeedReply, nil, 0, nil},
		{"Header/request 0 is unknown", 0, v, nil, 0, vhostuser.ErrUnknownRequest},
		{"Header/request 44 is unknown", 44, v, nil, 0, vhostuser.ErrUnknownRequest},
		{"Header/request 0xffffffff is unknown", 0xffffffff, v, nil, 0, vhostuser.ErrUnknownRequest},
		{"u64/SET_FEATURES", vhostuser.SetFeatures, v, u64(1 << 32), 0, nil},
		{"u64/SET_FEATURES short", vhostuser.SetFeatures, v, make([]byte, 4), 0, vhostuser.ErrBadMessage},
		{"u64/SET_FEATURES long", vhostuser.SetFeatures, v, make([]byte, 16), 0, vhostuser.ErrBadMessage},
		{"u64/GET_FEATURES with payload", vhostuser.GetFeatures, v, u64(0), 0, vhostuser.ErrBadMessage},
		{"vring state/SET_VRING_NUM", vhostuser.SetVringNum, v, vhostuser.AppendVringState(nil, vhostuser.VringState{Index: 1, Num: 256}), 0, nil},
		{"vring state/GET_VRING_BASE short", vhostuser.GetVringBase, v, make([]byte, 4), 0, vhostuser.ErrBadMessage},
		{"vring address/SET_VRING_ADDR", vhostuser.SetVringAddr, v, vhostuser.AppendVringAddr(nil, vhostuser.VringAddr{}), 0, nil},
		{"vring address/SET_VRING_ADDR short", vhostuser.SetVringAddr, v, make([]byte, 32), 0, vhostuser.ErrBadMessage},
		{"memory regions/1 region 1 fd", vhostuser.SetMemTable, v, memTable(1), 1, nil},
		{"memory regions/8 regions 8 fds", vhostuser.SetMemTable, v, memTable(8), 8, nil},
		{"memory regions/QEMU-style padding to 8 slots", vhostuser.SetMemTable, v, append(memTable(2), make([]byte, 6*32)...), 2, nil},
		{"memory regions/fd count mismatch", vhostuser.SetMemTable, v, memTable(2), 1, vhostuser.ErrBadFDs},
		{"memory regions/0 regions", vhostuser.SetMemTable, v, append(u64(0), make([]byte, 32)...), 0, vhostuser.ErrBadMessage},
		{"memory regions/9 regions claimed", vhostuser.SetMemTable, v, append(u64(9), make([]byte, 8*32)...), 8, vhostuser.ErrBadMessage},
		{"memory regions/count larger than payload", vhostuser.SetMemTable, v, append(u64(3), make([]byte, 2*32)...), 3, vhostuser.ErrBadMessage},
		{"single memory region/ADD_MEM_REG", vhostuser.AddMemReg, v, vhostuser.AppendMemRegion(nil, vhostuser.MemoryRegion{Size: 4096}), 1, nil},
		{"single memory region/ADD_MEM_REG without fd", vhostuser.AddMemReg, v, vhostuser.AppendMemRegion(nil, vhostuser.MemoryRegion{}), 0, vhostuser.ErrBadFDs},
		{"single memory region/REM_MEM_REG without fd", vhostuser.RemMemReg, v, vhostuser.AppendMemRegion(nil, vhostuser.MemoryRegion{}), 0, nil},
		{"single memory region/REM_MEM_REG with one fd (tolerated)", vhostuser.RemMemReg, v, vhostuser.AppendMemRegion(nil, vhostuser.MemoryRegion{}), 1, nil},
		{"single memory region/REM_MEM_REG with two fds", vhostuser.RemMemReg, v, vhostuser.AppendMemRegion(nil, vhostuser.MemoryRegion{}), 2, vhostuser.ErrBadFDs},
		{"log/SET_LOG_BASE", vhostuser.SetLogBase, v, vhostuser.AppendLog(nil, vhostuser.Log{Size: 4096}), 1, nil},
		{"log/SET_LOG_BASE without fd", vhostuser.SetLogBase, v, vhostuser.AppendLog(nil, vhostuser.Log{Size: 4096}), 0, vhostuser.ErrBadFDs},
		{"log/SET_LOG_BASE legacy u64", vhostuser.SetLogBase, v, u64(0), 1, vhostuser.ErrBadMessage},
		{"SET_VRING_KICK/with fd", vhostuser.SetVringKick, v, u64(1), 1, nil},
		{"SET_VRING_KICK/invalid-FD flag and no fd", vhostuser.SetVringKick, v, u64(1 | vhostuser.VringNoFD), 0, nil},
		{"SET_VRING_KICK/invalid-FD flag with fd", vhostuser.SetVringKick, v, u64(1 | vhostuser.VringNoFD), 1, vhostuser.ErrBadFDs},
		{"SET_VRING_CALL/missing fd", vhostuser.SetVringCall, v, u64(0), 0, vhostuser.ErrBadFDs},
		{"SET_VRING_ERR/with fd", vhostuser.SetVringErr, v, u64(0), 1, nil},
		{"fds/GET_FEATURES with an fd", vhostuser.GetFeatures, v, nil, 1, vhostuser.ErrBadFDs},
		{"fds/more than 8", vhostuser.SetMemTable, v, memTable(8), 9, vhostuser.ErrBadFDs},
		{"config/GET_CONFIG 10 bytes", vhostuser.GetConfig, v, vhostuser.AppendConfig(nil, vhostuser.Config{Data: make([]byte, 10)}), 0, nil},
		{"config/size field disagrees", vhostuser.GetConfig, v, append(vhostuser.AppendConfig(nil, vhostuser.Config{Data: make([]byte, 10)}), 0), 0, vhostuser.ErrBadMessage},
		{"config/257 bytes", vhostuser.SetConfig, v, vhostuser.AppendConfig(nil, vhostuser.Config{Data: make([]byte, 257)}), 0, vhostuser.ErrBadMessage},
		{"inflight/GET_INFLIGHT_FD", vhostuser.GetInflightFD, v, vhostuser.AppendInflight(nil, vhostuser.Inflight{NumQueues: 2, QueueSize: 256}), 0, nil},
		{"inflight/SET_INFLIGHT_FD needs fd", vhostuser.SetInflightFD, v, vhostuser.AppendInflight(nil, vhostuser.Inflight{}), 0, vhostuser.ErrBadFDs},
		{"inflight/packed 20-byte layout", vhostuser.GetInflightFD, v, make([]byte, 20), 0, vhostuser.ErrBadMessage},
		{"SET_BACKEND_REQ_FD/with fd", vhostuser.SetBackendReqFD, v, nil, 1, nil},
		{"GET_SHARED_OBJECT/uuid", vhostuser.GetSharedObject, v, make([]byte, 16), 0, nil},
		{"SET_DEVICE_STATE_FD/with fd", vhostuser.SetDeviceStateFD, v, vhostuser.AppendDeviceStateTransfer(nil, vhostuser.DeviceStateTransfer{Direction: vhostuser.TransferLoad}), 1, nil},
		{"CHECK_DEVICE_STATE", vhostuser.CheckDeviceState, v, nil, 0, nil},
		{"IOTLB_MSG", vhostuser.IOTLBMsg, v, make([]byte, 32), 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := vhostuser.ParseMessage(msgBytes(tt.req, tt.flags, tt.payload), tt.nfds)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("ParseMessage: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("ParseMessage error = %v, want %v", err, tt.want)
			}
			var pe *vhostuser.ProtocolError
			if !errors.As(err, &pe) {
				t.Fatalf("error %T is not a *ProtocolError", err)
			}
			if pe.Request != tt.req && tt.want != vhostuser.ErrBadFDs {
				t.Errorf("ProtocolError.Request = %v, want %v", pe.Request, tt.req)
			}
		})
	}
}

func TestParseMessageLengthMismatch(t *testing.T) {
	b := msgBytes(vhostuser.SetFeatures, vhostuser.Version, u64(1))
	for _, n := range []int{0, 11, 12, 19} {
		if _, err := vhostuser.ParseMessage(b[:n], 0); !errors.Is(err, vhostuser.ErrBadMessage) {
			t.Errorf("%d bytes: err = %v, want ErrBadMessage", n, err)
		}
	}
	big := vhostuser.AppendHeader(nil, vhostuser.Header{Request: vhostuser.CreateCryptoSession, Flags: vhostuser.Version, Size: vhostuser.MaxPayloadSize + 1})
	if _, err := vhostuser.ParseMessage(big, 0); !errors.Is(err, vhostuser.ErrPayloadTooLarge) {
		t.Errorf("oversize: err = %v, want ErrPayloadTooLarge", err)
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	addr := vhostuser.VringAddr{Index: 3, Flags: vhostuser.VringFLog, Desc: 0x1000, Used: 0x3000, Avail: 0x2000, Log: 0x7000}
	m, err := vhostuser.ParseMessage(msgBytes(vhostuser.SetVringAddr, vhostuser.Version, vhostuser.AppendVringAddr(nil, addr)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := m.VringAddr(); err != nil || got != addr {
		t.Errorf("VringAddr = %+v, %v; want %+v", got, err, addr)
	}
	if _, err := m.U64(); !errors.Is(err, vhostuser.ErrWrongPayload) {
		t.Errorf("U64 on SET_VRING_ADDR: err = %v, want ErrWrongPayload", err)
	}

	regions := []vhostuser.MemoryRegion{{GuestAddr: 0, Size: 0xa0000, UserAddr: 0x7f0000000000, MmapOffset: 0}, {GuestAddr: 0x100000, Size: 1 << 30, UserAddr: 0x7f0000100000, MmapOffset: 0x100000}}
	m, err = vhostuser.ParseMessage(msgBytes(vhostuser.SetMemTable, vhostuser.Version, vhostuser.AppendMemoryTable(nil, vhostuser.MemoryTable{Regions: regions})), 2)
	if err != nil {
		t.Fatal(err)
	}
	mt, err := m.MemoryTable()
	if err != nil || len(mt.Regions) != 2 || mt.Regions[0] != regions[0] || mt.Regions[1] != regions[1] {
		t.Errorf("MemoryTable = %+v, %v", mt, err)
	}

	in := vhostuser.Inflight{MmapSize: 8192, MmapOffset: 4096, NumQueues: 2, QueueSize: 1024}
	m, err = vhostuser.ParseMessage(msgBytes(vhostuser.SetInflightFD, vhostuser.Version, vhostuser.AppendInflight(nil, in)), 1)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := m.Inflight(); err != nil || got != in {
		t.Errorf("Inflight = %+v, %v", got, err)
	}

	cfg := vhostuser.Config{Offset: 6, Flags: vhostuser.ConfigFlagLiveMigration, Data: []byte{1, 2, 3, 4}}
	m, err = vhostuser.ParseMessage(msgBytes(vhostuser.SetConfig, vhostuser.Version, vhostuser.AppendConfig(nil, cfg)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := m.Config(); err != nil || got.Offset != 6 || got.Flags != 1 || string(got.Data) != "\x01\x02\x03\x04" {
		t.Errorf("Config = %+v, %v", got, err)
	}
}

func TestRequestString(t *testing.T) {
	for r := vhostuser.GetFeatures; r <= vhostuser.CheckDeviceState; r++ {
		s := r.String()
		if !strings.HasPrefix(s, "VHOST_USER_") || strings.Contains(s, "(") {
			t.Errorf("Request(%d).String() = %q", r, s)
		}
	}
	if got := vhostuser.GetSharedObject.String(); got != "VHOST_USER_GET_SHARED_OBJECT" {
		t.Errorf("GetSharedObject = %q", got)
	}
	if got := vhostuser.Request(99).String(); got != "VHOST_USER_REQUEST(99)" {
		t.Errorf("Request(99) = %q", got)
	}
	if got := vhostuser.BackendVringCall.String(); got != "VHOST_USER_BACKEND_VRING_CALL" {
		t.Errorf("BackendVringCall = %q", got)
	}
}

func TestNeedsAck(t *testing.T) {
	tests := []struct {
		req   vhostuser.Request
		flags uint32
		want  bool
	}{
		{vhostuser.SetOwner, vhostuser.Version | vhostuser.FlagNeedReply, true},
		{vhostuser.SetOwner, vhostuser.Version, false},
		{vhostuser.GetFeatures, vhostuser.Version | vhostuser.FlagNeedReply, false}, // has its own reply
	}
	for _, tt := range tests {
		m := vhostuser.Message{Header: vhostuser.Header{Request: tt.req, Flags: tt.flags}}
		if got := m.NeedsAck(); got != tt.want {
			t.Errorf("%v flags %#x: NeedsAck = %v, want %v", tt.req, tt.flags, got, tt.want)
		}
	}
}

// openFDs counts the process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func eventfd(t *testing.T) int {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func TestReadMessageOverSocket(t *testing.T) {
	be, fe := vhostusertest.NewPair(t)
	buf := make([]byte, vhostuser.MaxMessageSize)
	efd := eventfd(t)

	if err := fe.Send(vhostuser.SetVringKick, 0, u64(1), efd); err != nil {
		t.Fatal(err)
	}
	m, fds, err := vhostuser.ReadMessage(be, buf)
	if err != nil {
		t.Fatal(err)
	}
	if m.Request != vhostuser.SetVringKick || fds.Len() != 1 {
		t.Fatalf("got %v with %d fds", m.Request, fds.Len())
	}
	if v, _ := m.U64(); v != 1 {
		t.Errorf("payload %d, want 1", v)
	}
	if f := fds.Take(0); f == nil || fds.Take(0) != nil {
		t.Error("Take(0) did not hand over the descriptor exactly once")
	} else {
		f.Close()
	}

	// Oversize payload, unknown request and fd mismatches close what came in.
	before := openFDs(t)
	cases := []struct {
		send func() error
		want error
	}{
		{func() error { return fe.Send(vhostuser.GetFeatures, 0, nil, efd, efd) }, vhostuser.ErrBadFDs},
		{func() error { return fe.Send(vhostuser.SetVringCall, 0, u64(vhostuser.VringNoFD), efd) }, vhostuser.ErrBadFDs},
		{func() error {
			return fe.SendRaw(vhostuser.AppendHeader(nil, vhostuser.Header{Request: 77, Flags: 1}), efd)
		}, vhostuser.ErrUnknownRequest},
		{func() error {
			return fe.SendRaw(vhostuser.AppendHeader(nil, vhostuser.Header{Request: vhostuser.SetConfig, Flags: 1, Size: 1 << 20}), efd)
		}, vhostuser.ErrPayloadTooLarge},
	}
	for i, c := range cases {
		// A fresh pair per case: after a protocol error the stream is unusable.
		be, fe = vhostusertest.NewPair(t)
		if err := c.send(); err != nil {
			t.Fatal(err)
		}
		_, fds, err := vhostuser.ReadMessage(be, buf)
		if !errors.Is(err, c.want) || fds.Len() != 0 {
			t.Errorf("case %d: err = %v, %d fds; want %v", i, err, fds.Len(), c.want)
		}
		be.Close()
		fe.Conn.Close()
	}
	if after := openFDs(t); after != before {
		t.Errorf("open descriptors: %d before, %d after: leaked", before, after)
	}

	// REM_MEM_REG's tolerated fd is closed by ReadMessage, not handed out.
	be, fe = vhostusertest.NewPair(t)
	before = openFDs(t)
	if err := fe.Send(vhostuser.RemMemReg, 0, vhostuser.AppendMemRegion(nil, vhostuser.MemoryRegion{Size: 4096}), efd); err != nil {
		t.Fatal(err)
	}
	if m, fds, err = vhostuser.ReadMessage(be, buf); err != nil || m.Request != vhostuser.RemMemReg || fds.Len() != 0 {
		t.Fatalf("REM_MEM_REG: %v, %d fds", err, fds.Len())
	}
	if after := openFDs(t); after != before {
		t.Errorf("REM_MEM_REG fd leaked: %d before, %d after", before, after)
	}

	// EOF between messages is io.EOF; inside a message it is not.
	fe.Conn.Close()
	if _, _, err := vhostuser.ReadMessage(be, buf); err != io.EOF {
		t.Errorf("at EOF: err = %v, want io.EOF", err)
	}
	be, fe = vhostusertest.NewPair(t)
	fe.SendRaw(msgBytes(vhostuser.SetFeatures, 1, u64(1))[:15])
	fe.Conn.Close()
	if _, _, err := vhostuser.ReadMessage(be, buf); err == nil || err == io.EOF || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated: err = %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestReplies(t *testing.T) {
	be, fe := vhostusertest.NewPair(t)
	if err := vhostuser.ReplyU64(be, vhostuser.GetFeatures, 1<<32|1<<30); err != nil {
		t.Fatal(err)
	}
	r, err := fe.ReadReply()
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := r.U64(); r.Header.Request != vhostuser.GetFeatures || v != 1<<32|1<<30 {
		t.Errorf("reply %v %#x", r.Header.Request, v)
	}

	if err := vhostuser.ReplyVringState(be, vhostuser.GetVringBase, vhostuser.VringState{Index: 1, Num: 77}); err != nil {
		t.Fatal(err)
	}
	if r, err = fe.ReadReply(); err != nil || string(r.Payload) != string(vhostuser.AppendVringState(nil, vhostuser.VringState{Index: 1, Num: 77})) {
		t.Errorf("GET_VRING_BASE reply %x, %v", r.Payload, err)
	}

	if err := vhostuser.ReplyConfig(be, vhostuser.Config{Offset: 0, Data: []byte{0x52, 0x54, 0, 0x12, 0x34, 0x56}}); err != nil {
		t.Fatal(err)
	}
	if r, err = fe.ReadReply(); err != nil || r.Header.Size != 12+6 {
		t.Errorf("GET_CONFIG reply size %d, %v", r.Header.Size, err)
	}

	efd := eventfd(t)
	if err := vhostuser.ReplyInflight(be, vhostuser.Inflight{MmapSize: 4096, NumQueues: 2, QueueSize: 256}, efd); err != nil {
		t.Fatal(err)
	}
	if r, err = fe.ReadReply(); err != nil || r.Header.Size != 24 || len(r.FDs) != 1 {
		t.Errorf("GET_INFLIGHT_FD reply size %d fds %v, %v", r.Header.Size, r.FDs, err)
	}
	for _, fd := range r.FDs {
		unix.Close(fd)
	}

	if err := vhostuser.ReplyDeviceStateFD(be, 0, -1); err != nil {
		t.Fatal(err)
	}
	if r, err = fe.ReadReply(); err != nil {
		t.Fatal(err)
	} else if v, _ := r.U64(); v != vhostuser.VringNoFD {
		t.Errorf("SET_DEVICE_STATE_FD reply %#x, want invalid-FD flag", v)
	}
}
