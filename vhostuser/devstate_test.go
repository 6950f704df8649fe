package vhostuser_test

// Device state transfer (vhost-user.rst, "Migrating back-end state"),
// replayed as the frontends send it at a live migration:
//
//   - QEMU (vhost_save_backend_state / vhost_load_backend_state in
//     hw/virtio/vhost.c, vhost_user_set_device_state_fd and
//     vhost_user_check_device_state in vhost-user.c): on the source the
//     device is stopped (vhost_dev_stop: GET_VRING_BASE on every ring),
//     then SET_DEVICE_STATE_FD(save, stopped) with the write end of a
//     fresh pipe, which QEMU closes at once; QEMU reads the read end to
//     EOF in chunks, then CHECK_DEVICE_STATE. On the destination the
//     state is loaded while the device is not started (before
//     vhost_dev_start sends SET_MEM_TABLE and the rings):
//     SET_DEVICE_STATE_FD(load, stopped) with the read end, QEMU writes
//     the chunks and closes the write end, CHECK_DEVICE_STATE; the rings
//     start when the VM runs. QEMU refuses a reply whose bits 0-7 are
//     non-zero and takes a back-end fd unless bit 8 is set.
//   - Cloud Hypervisor (rust-vmm vhost's Frontend::set_device_state_fd /
//     check_device_state): NEED_REPLY on every request once REPLY_ACK is
//     negotiated; the VM is paused first (SET_VRING_ENABLE 0 on every
//     ring); on the destination the device is created (handshake, memory
//     table) and the state loaded before the rings are set up and enabled.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
	"golang.org/x/sys/unix"
)

// memState is a StateTransferer holding a blob in a small checked format
// (magic, length, data, CRC-32), so a truncated or garbage load is refused.
type memState struct {
	mu sync.Mutex
	// blob is what SaveState writes (framed by frame); raw, when set, is
	// written as is instead. loaded holds the data of every accepted
	// LoadState, refused why the others failed.
	blob    []byte   // +checklocks:mu
	raw     []byte   // +checklocks:mu
	loaded  [][]byte // +checklocks:mu
	refused []error  // +checklocks:mu
	saves   int      // +checklocks:mu
}

func frame(data []byte) []byte {
	b := append([]byte("VLST"), binary.LittleEndian.AppendUint32(nil, uint32(len(data)))...)
	b = append(b, data...)
	return binary.LittleEndian.AppendUint32(b, crc32.ChecksumIEEE(data))
}

func (s *memState) SaveState(w io.Writer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.saves++
	if s.raw != nil {
		_, err := w.Write(s.raw)
		return err
	}
	_, err := w.Write(frame(s.blob))
	return err
}

func (s *memState) LoadState(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	data, err := unframe(b)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.refused = append(s.refused, err)
		return err
	}
	s.loaded = append(s.loaded, data)
	return nil
}

// unframe checks and strips frame's framing.
func unframe(b []byte) ([]byte, error) {
	if len(b) < 12 || string(b[:4]) != "VLST" {
		return nil, fmt.Errorf("not a state blob (%d bytes)", len(b))
	}
	n := binary.LittleEndian.Uint32(b[4:])
	if uint64(len(b)) != 12+uint64(n) {
		return nil, fmt.Errorf("truncated: header says %d bytes, have %d", n, len(b)-12)
	}
	data := b[8 : 8+n]
	if crc32.ChecksumIEEE(data) != binary.LittleEndian.Uint32(b[8+n:]) {
		return nil, errors.New("checksum mismatch")
	}
	return bytes.Clone(data), nil
}

// loads returns the data of the accepted loads.
func (s *memState) loads() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loaded
}

// set replaces what SaveState writes (under the lock: the transfer
// goroutine reads it).
func (s *memState) set(blob, raw []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.blob, s.raw = blob, raw
}

func (s *memState) counts() (saves, loads, refused int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.saves, len(s.loaded), len(s.refused)
}

var _ vhostuser.StateTransferer = (*memState)(nil)

// stateProtocol is what QEMU 10 asks of a vhost-user-net back-end that
// can move its state.
var stateProtocol = qemuProtocol | vhostuser.Bit(vhostuser.ProtocolFDeviceState)

func newStateDevice(t testing.TB, st vhostuser.StateTransferer, timeout time.Duration, h vhostuser.FrameHandler) *vhostuser.NetDevice {
	t.Helper()
	d, err := vhostuser.NewNetDevice(vhostuser.NetOptions{QueuePairs: 1, Handler: h, State: st, StateTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// pipe returns a pipe's read and write ends as files, closed when the
// test ends (a second Close is harmless).
func pipe(t testing.TB) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

// setStateFD sends SET_DEVICE_STATE_FD with fd (closed afterwards, as
// QEMU does) and returns the reply's u64; a reply carrying a descriptor
// fails the test (the device never provides its own channel).
func (f *testFrontend) setStateFD(flags uint32, dir, phase uint32, fd int) uint64 {
	f.t.Helper()
	f.send(vhostuser.SetDeviceStateFD, flags, vhostuser.AppendDeviceStateTransfer(nil, vhostuser.DeviceStateTransfer{Direction: dir, Phase: phase}), fd)
	f.fe.Conn.SetReadDeadline(time.Now().Add(waitFor))
	r, err := f.fe.ReadReply()
	if err != nil {
		f.t.Fatalf("reply to SET_DEVICE_STATE_FD: %v", err)
	}
	for _, fd := range r.FDs {
		unix.Close(fd)
	}
	if r.Header.Request != vhostuser.SetDeviceStateFD || len(r.FDs) != 0 {
		f.t.Fatalf("reply to SET_DEVICE_STATE_FD came as %v with %d fds", r.Header.Request, len(r.FDs))
	}
	v, err := r.U64()
	if err != nil {
		f.t.Fatal(err)
	}
	if v&vhostuser.VringNoFD == 0 {
		f.t.Fatalf("SET_DEVICE_STATE_FD reply %#x without the invalid-FD flag, but no fd came", v)
	}
	return v
}

func (f *testFrontend) check(flags uint32) uint64 {
	f.t.Helper()
	f.send(vhostuser.CheckDeviceState, flags, nil)
	v, err := f.reply(vhostuser.CheckDeviceState).U64()
	if err != nil {
		f.t.Fatal(err)
	}
	return v
}

// saveState is vhost_save_backend_state: pipe, SET_DEVICE_STATE_FD(save)
// with the write end, read to EOF, CHECK_DEVICE_STATE. It returns the
// state read and CHECK's answer.
func (f *testFrontend) saveState(flags uint32) ([]byte, uint64) {
	f.t.Helper()
	r, w := pipe(f.t)
	v := f.setStateFD(flags, vhostuser.TransferSave, vhostuser.PhaseStopped, int(w.Fd()))
	w.Close()
	if v != vhostuser.VringNoFD {
		f.t.Fatalf("SET_DEVICE_STATE_FD(save) = %#x, want %#x (accepted, no back-end fd)", v, vhostuser.VringNoFD)
	}
	var got []byte
	chunk := make([]byte, 1<<20) // QEMU reads 1 MiB at a time
	r.SetReadDeadline(time.Now().Add(waitFor))
	for {
		n, err := r.Read(chunk)
		got = append(got, chunk[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			f.t.Fatalf("read device state: %v", err)
		}
	}
	r.Close()
	return got, f.check(flags)
}

// loadState is vhost_load_backend_state: pipe, SET_DEVICE_STATE_FD(load)
// with the read end, write the state, close, CHECK_DEVICE_STATE.
func (f *testFrontend) loadState(flags uint32, state []byte) uint64 {
	f.t.Helper()
	r, w := pipe(f.t)
	v := f.setStateFD(flags, vhostuser.TransferLoad, vhostuser.PhaseStopped, int(r.Fd()))
	r.Close()
	if v != vhostuser.VringNoFD {
		f.t.Fatalf("SET_DEVICE_STATE_FD(load) = %#x, want %#x", v, vhostuser.VringNoFD)
	}
	w.SetWriteDeadline(time.Now().Add(waitFor))
	for len(state) > 0 {
		n := min(len(state), 1<<20)
		if _, err := w.Write(state[:n]); err != nil {
			f.t.Fatalf("write device state: %v", err)
		}
		state = state[n:]
	}
	w.Close()
	return f.check(flags)
}

// TestDeviceStateNumbersFromTheSpec pins the wire numbers to
// vhost-user.rst, and the offer to devices whose owner has state.
func TestDeviceStateNumbersFromTheSpec(t *testing.T) {
	if vhostuser.ProtocolFDeviceState != 19 || vhostuser.Bit(vhostuser.ProtocolFDeviceState) != 0x8_0000 {
		t.Errorf("VHOST_USER_PROTOCOL_F_DEVICE_STATE = %d", vhostuser.ProtocolFDeviceState)
	}
	if vhostuser.SetDeviceStateFD != 42 || vhostuser.CheckDeviceState != 43 {
		t.Errorf("SET_DEVICE_STATE_FD = %d, CHECK_DEVICE_STATE = %d", vhostuser.SetDeviceStateFD, vhostuser.CheckDeviceState)
	}
	if vhostuser.TransferSave != 0 || vhostuser.TransferLoad != 1 || vhostuser.PhaseStopped != 0 || vhostuser.VringNoFD != 0x100 {
		t.Errorf("save %d load %d stopped %d invalid-FD flag %#x", vhostuser.TransferSave, vhostuser.TransferLoad, vhostuser.PhaseStopped, vhostuser.VringNoFD)
	}
	for _, st := range []vhostuser.StateTransferer{nil, &memState{}} {
		f, _ := serveDevice(t, newStateDevice(t, st, 0, newRecorder(nil)))
		offered := vhostuser.Features(f.get(vhostuser.GetProtocolFeatures)).Has(vhostuser.ProtocolFDeviceState)
		if offered != (st != nil) {
			t.Errorf("with State %T: DEVICE_STATE offered %v", st, offered)
		}
	}
}

// TestQEMUMigratesDeviceStateInItsStream replays a QEMU 10 live migration
// of a vhost-user-net device between two daemons (two Servers on two
// sockets): the guest talks through the source, the source is stopped
// and its state (1.5 MiB, far more than a pipe holds) read out, the
// destination loads it before its rings start, and the guest talks
// through the destination from where it left off.
func TestQEMUMigratesDeviceStateInItsStream(t *testing.T) {
	dir := t.TempDir()
	handler := func(_ int, frame, reply []byte) int { return arpReply(frame, reply) }
	srcRec, dstRec := newRecorder(handler), newRecorder(handler)
	data := make([]byte, 1536<<10)
	for i := range data {
		data[i] = byte(rand.Uint32())
	}
	srcState, dstState := &memState{blob: data}, &memState{}
	srcPath, dstPath := filepath.Join(dir, "src.sock"), filepath.Join(dir, "dst.sock")
	runServer(t, &vhostuser.Server{Path: srcPath, Device: newStateDevice(t, srcState, 0, srcRec)})
	dst := newStateDevice(t, dstState, 0, dstRec)
	runServer(t, &vhostuser.Server{Path: dstPath, Device: dst})

	fg := newFakeGuest(t, 1)
	src := dial(t, srcPath)
	acked := src.negotiate(linuxFeatures, stateProtocol)
	src.setMemTable(fg.g)
	for _, q := range fg.vqs {
		q.eventIdx = acked.Has(vhostuser.FRingEventIdx)
		src.setupVring(q, 0, false, qemuOrder...)
	}
	for _, q := range fg.vqs {
		src.setupVring(q, 0, false, stepEnable)
	}
	exchangeARP(t, fg, srcRec, 1)
	exchangeARP(t, fg, srcRec, 2)

	// Destination QEMU, started with -incoming: vhost_dev_init only.
	dstFE := dial(t, dstPath)
	dstFE.negotiate(linuxFeatures, stateProtocol)

	// Switchover on the source: vhost_dev_stop, then the state.
	var bases []uint32
	for _, q := range fg.vqs {
		bases = append(bases, src.getVringBase(q.index))
	}
	got, st := src.saveState(0)
	if st != 0 {
		t.Fatalf("source CHECK_DEVICE_STATE = %d", st)
	}
	if !bytes.Equal(got, frame(data)) {
		t.Fatalf("source sent %d bytes of state, want the %d-byte blob", len(got), len(frame(data)))
	}
	// The stream carries it to the destination, which loads it first.
	if st := dstFE.loadState(0, got); st != 0 {
		t.Fatalf("destination CHECK_DEVICE_STATE = %d", st)
	}
	if _, loads, _ := dstState.counts(); loads != 1 || !bytes.Equal(dstState.loads()[0], data) {
		t.Fatalf("destination loaded %d states", loads)
	}
	// vhost_dev_start on the destination: memory, rings from the source's
	// bases, enable.
	dstFE.setMemTable(fg.g)
	for i, q := range fg.vqs {
		dstFE.setupVring(q, uint16(bases[i]), false, qemuOrder...)
	}
	for _, q := range fg.vqs {
		dstFE.setupVring(q, 0, false, stepEnable)
	}
	exchangeARP(t, fg, dstRec, 3)
	srcRec.expectNone(t)
	if s := dst.Stats(); s.Errors != 0 || s.Drops != 0 {
		t.Errorf("destination Stats = %+v", s)
	}
	if ok, done, err := dst.LastStateTransfer(); !ok || !done || err != nil {
		t.Errorf("destination LastStateTransfer = %v %v %v", ok, done, err)
	}
}

// TestCloudHypervisorMigratesDeviceState replays Cloud Hypervisor's
// sequence: NEED_REPLY on everything, the VM paused with SET_VRING_ENABLE
// 0 (the rings stop), the state saved; on the destination the device is
// created, the state loaded, then activated.
func TestCloudHypervisorMigratesDeviceState(t *testing.T) {
	handler := func(_ int, frame, reply []byte) int { return arpReply(frame, reply) }
	srcRec, dstRec := newRecorder(handler), newRecorder(handler)
	srcState, dstState := &memState{blob: []byte("sessions, streams, sources, sinks")}, &memState{}
	srcDev, dstDev := newStateDevice(t, srcState, 0, srcRec), newStateDevice(t, dstState, 0, dstRec)
	srcTF, _ := serveDevice(t, srcDev)
	dstTF, _ := serveDevice(t, dstDev)
	fg := newFakeGuest(t, 1)
	src := &chFrontend{testFrontend: srcTF, fg: fg, regions: []*vhostusertest.Guest{fg.g}, numQueues: 2}
	src.connect(false)
	if !src.protocol.Has(vhostuser.ProtocolFDeviceState) || src.flags&vhostuser.FlagNeedReply == 0 {
		t.Fatalf("CH acked protocol %#x, flags %#x", uint64(src.protocol), src.flags)
	}
	src.acked &^= vhostuser.Bit(vhostuser.FLogAll)
	src.setup()
	exchangeARP(t, fg, srcRec, 1)

	// pause_vhost_user: every ring disabled (each acked).
	for _, q := range fg.vqs {
		src.request(vhostuser.SetVringEnable, vhostuser.AppendVringState(nil, vhostuser.VringState{Index: q.index, Num: 0}))
	}
	if n := srcDev.State().QueuePairs; n != 0 {
		t.Fatalf("%d queue pairs still running after the pause", n)
	}
	got, st := src.saveState(src.flags)
	if st != 0 || !bytes.Equal(got, frame([]byte("sessions, streams, sources, sinks"))) {
		t.Fatalf("save: CHECK %d, %q", st, got)
	}

	dst := &chFrontend{testFrontend: dstTF, fg: fg, regions: []*vhostusertest.Guest{fg.g}, numQueues: 2}
	dst.connect(false)
	if st := dst.loadState(dst.flags, got); st != 0 {
		t.Fatalf("load: CHECK %d", st)
	}
	dst.acked &^= vhostuser.Bit(vhostuser.FLogAll)
	dst.setup()
	exchangeARP(t, fg, dstRec, 2)
	if _, loads, _ := dstState.counts(); loads != 1 || string(dstState.loads()[0]) != "sessions, streams, sources, sinks" {
		t.Fatalf("destination loaded %q", dstState.loads())
	}
}

// startedDevice is a state device with a frontend that negotiated
// DEVICE_STATE and set up memory and rings but did not start them (a
// destination before its rings start, or a source after GET_VRING_BASE).
func startedDevice(t *testing.T, st vhostuser.StateTransferer, timeout time.Duration) (*vhostuser.NetDevice, *testFrontend, func() error) {
	t.Helper()
	dev := newStateDevice(t, st, timeout, newRecorder(nil))
	f, wait := serveDevice(t, dev)
	f.negotiate(linuxFeatures, stateProtocol)
	return dev, f, wait
}

// TestDeviceStateRefusals: every refusal is an error reply (bits 0-7,
// with the invalid-FD flag), the connection stays up, and nothing is
// saved or loaded.
func TestDeviceStateRefusals(t *testing.T) {
	st := &memState{blob: []byte("x")}
	_, f, _ := startedDevice(t, st, 0)
	rd, wr := pipe(t)
	dgram, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dgram)
	sockA, _ := vhostusertest.SocketPair(t)
	for _, c := range []struct {
		name       string
		dir, phase uint32
		fd         int
		want       uint64
	}{
		{"unknown direction", 2, vhostuser.PhaseStopped, int(rd.Fd()), vhostuser.StateStatusBadParameters},
		{"direction 0xffffffff", 0xffff_ffff, vhostuser.PhaseStopped, int(rd.Fd()), vhostuser.StateStatusBadParameters},
		{"unknown phase", vhostuser.TransferLoad, 1, int(rd.Fd()), vhostuser.StateStatusBadParameters},
		{"memfd", vhostuser.TransferLoad, vhostuser.PhaseStopped, vhostusertest.Memfd(t, 4096), vhostuser.StateStatusBadFD},
		{"regular file", vhostuser.TransferSave, vhostuser.PhaseStopped, vhostusertest.RegularFile(t, 4096), vhostuser.StateStatusBadFD},
		{"/dev/zero", vhostuser.TransferLoad, vhostuser.PhaseStopped, vhostusertest.DevZero(t), vhostuser.StateStatusBadFD},
		{"eventfd", vhostuser.TransferLoad, vhostuser.PhaseStopped, vhostusertest.Eventfd(t), vhostuser.StateStatusBadFD},
		{"save on the read end", vhostuser.TransferSave, vhostuser.PhaseStopped, int(rd.Fd()), vhostuser.StateStatusBadFD},
		{"load on the write end", vhostuser.TransferLoad, vhostuser.PhaseStopped, int(wr.Fd()), vhostuser.StateStatusBadFD},
		{"datagram socket", vhostuser.TransferLoad, vhostuser.PhaseStopped, dgram, vhostuser.StateStatusBadFD},
	} {
		if v := f.setStateFD(0, c.dir, c.phase, c.fd); v != c.want|vhostuser.VringNoFD {
			t.Errorf("%s: reply %#x, want %#x", c.name, v, c.want|vhostuser.VringNoFD)
		}
	}
	if v := f.check(0); v != vhostuser.StateStatusNoTransfer {
		t.Errorf("CHECK_DEVICE_STATE without a transfer = %d", v)
	}
	// A stream socket is a valid channel.
	if v := f.setStateFD(0, vhostuser.TransferSave, vhostuser.PhaseStopped, sockA); v != vhostuser.VringNoFD {
		t.Errorf("socket: reply %#x", v)
	}
	if v := f.check(0); v != 0 {
		t.Errorf("save over a socket: CHECK %d", v)
	}
	if saves, loads, _ := st.counts(); saves != 1 || loads != 0 {
		t.Errorf("%d saves, %d loads", saves, loads)
	}

	// A second SET_DEVICE_STATE_FD while a transfer runs is refused; the
	// first goes on.
	lr, lw := pipe(t)
	f.setStateFD(0, vhostuser.TransferLoad, vhostuser.PhaseStopped, int(lr.Fd()))
	lr.Close()
	lw.Write(frame([]byte("first")))
	busyR, _ := pipe(t)
	if v := f.setStateFD(0, vhostuser.TransferLoad, vhostuser.PhaseStopped, int(busyR.Fd())); v != vhostuser.StateStatusBusy|vhostuser.VringNoFD {
		t.Errorf("second transfer: reply %#x", v)
	}
	lw.Close()
	if v := f.check(0); v != 0 {
		t.Errorf("first transfer after the refused second: CHECK %d", v)
	}
	if _, loads, _ := st.counts(); loads != 1 || string(st.loads()[0]) != "first" {
		t.Errorf("loaded %q", st.loads())
	}

	// Rings running: refused until they stop.
	fg := newFakeGuest(t, 1)
	f.setMemTable(fg.g)
	for _, q := range fg.vqs {
		f.setupVring(q, 0, false, qemuOrder...)
		f.setupVring(q, 0, false, stepEnable)
	}
	r2, _ := pipe(t)
	if v := f.setStateFD(0, vhostuser.TransferLoad, vhostuser.PhaseStopped, int(r2.Fd())); v != vhostuser.StateStatusNotSuspended|vhostuser.VringNoFD {
		t.Errorf("rings running: reply %#x", v)
	}
	f.getVringBase(1) // TX first: the RX ring still runs
	r4, _ := pipe(t)
	if v := f.setStateFD(0, vhostuser.TransferLoad, vhostuser.PhaseStopped, int(r4.Fd())); v != vhostuser.StateStatusNotSuspended|vhostuser.VringNoFD {
		t.Errorf("RX ring running: reply %#x", v)
	}
	f.getVringBase(0)
	if got, v := f.saveState(0); v != 0 || !bytes.Equal(got, frame([]byte("x"))) {
		t.Errorf("after GET_VRING_BASE: CHECK %d, %q", v, got)
	}

	// Not negotiated: the device has state but the frontend did not ack
	// DEVICE_STATE.
	dev2 := newStateDevice(t, &memState{}, 0, newRecorder(nil))
	f2, _ := serveDevice(t, dev2)
	f2.negotiate(linuxFeatures, qemuProtocol)
	r3, _ := pipe(t)
	if v := f2.setStateFD(0, vhostuser.TransferLoad, vhostuser.PhaseStopped, int(r3.Fd())); v != vhostuser.StateStatusUnsupported|vhostuser.VringNoFD {
		t.Errorf("not negotiated: reply %#x", v)
	}
	f2.sync()
}

// TestDeviceStateHostileTransfers: a frontend that breaks the transfer
// gets a failed CHECK_DEVICE_STATE, the owner's state is untouched, and
// the connection goes on.
func TestDeviceStateHostileTransfers(t *testing.T) {
	st := &memState{}
	dev, f, _ := startedDevice(t, st, 0)
	failedOn := func(dev *vhostuser.NetDevice, f *testFrontend, what string, want error) {
		t.Helper()
		if v := f.check(0); v != vhostuser.StateStatusFailed {
			t.Errorf("%s: CHECK_DEVICE_STATE = %d, want %d", what, v, vhostuser.StateStatusFailed)
		}
		if _, _, err := dev.LastStateTransfer(); want != nil && !errors.Is(err, want) {
			t.Errorf("%s: transfer error %v, want %v", what, err, want)
		}
	}
	failed := func(what string, want error) { t.Helper(); failedOn(dev, f, what, want) }

	// Load: the frontend closes its end without writing (or writes
	// garbage, or a truncated blob): the owner refuses it.
	for _, c := range []struct {
		name string
		data []byte
	}{{"empty", nil}, {"garbage", []byte("not a state")}, {"truncated", frame([]byte("0123456789"))[:15]}} {
		r, w := pipe(t)
		f.setStateFD(0, vhostuser.TransferLoad, vhostuser.PhaseStopped, int(r.Fd()))
		r.Close()
		w.Write(c.data)
		w.Close()
		failed(c.name, nil)
	}
	if _, loads, refused := st.counts(); loads != 0 || refused != 3 {
		t.Errorf("loads %d, refused %d", loads, refused)
	}

	// Load: a frontend that streams more than MaxStateSize is cut off;
	// LoadState never sees it.
	r, w := pipe(t)
	f.setStateFD(0, vhostuser.TransferLoad, vhostuser.PhaseStopped, int(r.Fd()))
	r.Close()
	wrote := make(chan int64, 1)
	go func() {
		var n int64
		chunk := make([]byte, 1<<20)
		w.SetWriteDeadline(time.Now().Add(waitFor))
		for n <= vhostuser.MaxStateSize+1<<20 {
			m, err := w.Write(chunk)
			n += int64(m)
			if err != nil {
				break
			}
		}
		w.Close()
		wrote <- n
	}()
	failed("endless stream", vhostuser.ErrStateTooLarge)
	if n := <-wrote; n > vhostuser.MaxStateSize+1<<20 {
		t.Errorf("the device kept reading: %d bytes written", n)
	}
	if _, loads, refused := st.counts(); loads != 0 || refused != 3 {
		t.Errorf("after the endless stream: loads %d, refused %d", loads, refused)
	}

	// Save: the owner's state is larger than MaxStateSize.
	st.set(nil, make([]byte, vhostuser.MaxStateSize+1))
	if _, v := f.saveState(0); v != vhostuser.StateStatusFailed {
		t.Errorf("oversize save: CHECK %d", v)
	}

	// Save: the frontend closes the read end at once (EPIPE).
	st.set(make([]byte, 1<<20), nil)
	r, w = pipe(t)
	f.setStateFD(0, vhostuser.TransferSave, vhostuser.PhaseStopped, int(w.Fd()))
	w.Close()
	r.Close()
	failed("read end closed", nil)
	// The connection still works: a good transfer each way.
	st.set([]byte("still here"), nil)
	got, v := f.saveState(0)
	if v != 0 || f.loadState(0, got) != 0 {
		t.Errorf("good transfers after the hostile ones: save CHECK %d", v)
	}
	if _, loads, _ := st.counts(); loads != 1 {
		t.Errorf("loads %d", loads)
	}

	// A frontend that never closes its end (load) or never reads (save):
	// the deadline (here 300 ms) ends the transfer.
	slowState := &memState{blob: make([]byte, 1<<20)}
	slow, sf, _ := startedDevice(t, slowState, 300*time.Millisecond)
	r, w = pipe(t)
	sf.setStateFD(0, vhostuser.TransferLoad, vhostuser.PhaseStopped, int(r.Fd()))
	r.Close()
	w.Write(frame([]byte("never finished")))
	failedOn(slow, sf, "no EOF", os.ErrDeadlineExceeded)
	w.Close()
	r, w = pipe(t)
	sf.setStateFD(0, vhostuser.TransferSave, vhostuser.PhaseStopped, int(w.Fd()))
	w.Close()
	failedOn(slow, sf, "never read", os.ErrDeadlineExceeded)
	r.Close()
	if _, loads, refused := slowState.counts(); loads != 0 || refused != 0 {
		t.Errorf("slow frontend: loads %d refused %d", loads, refused)
	}
}

// TestDeviceStateDisconnectMidTransfer: a frontend that hangs up during
// a transfer leaves the owner's state as it was (a load half written is
// never applied), Serve returns, and the next frontend of the same
// Server migrates normally.
func TestDeviceStateDisconnectMidTransfer(t *testing.T) {
	st := &memState{blob: make([]byte, 2<<20)}
	path := filepath.Join(t.TempDir(), "vhost.sock")
	dev := newStateDevice(t, st, waitFor, newRecorder(nil))
	var errs []error
	var mu sync.Mutex
	disconnects := make(chan struct{}, 4)
	runServer(t, &vhostuser.Server{Path: path, Device: dev,
		OnError:      func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() },
		OnDisconnect: func() { disconnects <- struct{}{} }})

	for _, dir := range []uint32{vhostuser.TransferLoad, vhostuser.TransferSave} {
		f := dial(t, path)
		f.negotiate(linuxFeatures, stateProtocol)
		r, w := pipe(t)
		if dir == vhostuser.TransferLoad {
			f.setStateFD(0, dir, vhostuser.PhaseStopped, int(r.Fd()))
			r.Close()
			w.Write(frame(make([]byte, 1<<20))[:512<<10]) // half
		} else {
			f.setStateFD(0, dir, vhostuser.PhaseStopped, int(w.Fd()))
			w.Close() // and never read: the device blocks on a full pipe
		}
		f.fe.Conn.Close()
		select {
		case <-disconnects:
		case <-time.After(waitFor):
			t.Fatalf("direction %d: Serve did not end after the frontend hung up mid-transfer", dir)
		}
		if ok, _, _ := dev.LastStateTransfer(); ok {
			t.Errorf("direction %d: a transfer survived the disconnect", dir)
		}
		// The pipe: our end sees the device's end closed.
		if dir == vhostuser.TransferLoad {
			w.SetWriteDeadline(time.Now().Add(waitFor))
			if _, err := w.Write(make([]byte, 1<<20)); err == nil {
				t.Errorf("load pipe still read after the disconnect")
			}
		} else {
			r.SetReadDeadline(time.Now().Add(waitFor))
			if _, err := io.Copy(io.Discard, r); err != nil {
				t.Errorf("save pipe: %v, want EOF once the device closed its end", err)
			}
		}
	}
	if _, loads, refused := st.counts(); loads != 0 || refused != 0 {
		t.Errorf("half a load reached the owner: loads %d refused %d", loads, refused)
	}
	mu.Lock()
	if len(errs) != 0 {
		t.Errorf("Serve errors on a hang-up: %v", errs)
	}
	mu.Unlock()

	f := dial(t, path)
	f.negotiate(linuxFeatures, stateProtocol)
	st.set([]byte("next frontend"), nil)
	if got, v := f.saveState(0); v != 0 || !bytes.Equal(got, frame([]byte("next frontend"))) {
		t.Errorf("next frontend: CHECK %d, %q", v, got)
	}
}

// FuzzSetDeviceStateFD feeds arbitrary SET_DEVICE_STATE_FD payloads to
// the codec and, for well-sized ones, to a live device with a pipe end of
// the fuzzer's choice: the reply always has the invalid-FD flag, status 0
// exactly for a valid direction and phase with the matching pipe end, and
// the device keeps answering.
func FuzzSetDeviceStateFD(f *testing.F) {
	f.Add(vhostuser.AppendDeviceStateTransfer(nil, vhostuser.DeviceStateTransfer{Direction: vhostuser.TransferSave}), uint8(1))
	f.Add(vhostuser.AppendDeviceStateTransfer(nil, vhostuser.DeviceStateTransfer{Direction: vhostuser.TransferLoad}), uint8(0))
	f.Add(vhostuser.AppendDeviceStateTransfer(nil, vhostuser.DeviceStateTransfer{Direction: 2, Phase: 7}), uint8(0))
	f.Add([]byte{1, 2, 3}, uint8(2))
	st := &memState{blob: []byte("fuzz")}
	dev := newStateDevice(f, st, time.Second, newRecorder(nil))
	fe, _ := serveDevice(f, dev)
	fe.negotiate(linuxFeatures, stateProtocol)
	v := uint32(vhostuser.Version)
	f.Fuzz(func(t *testing.T, payload []byte, end uint8) {
		m, err := vhostuser.ParseMessage(msgBytes(vhostuser.SetDeviceStateFD, v, payload), 1)
		if len(payload) != 8 {
			if !errors.Is(err, vhostuser.ErrBadMessage) {
				t.Fatalf("%d-byte payload: %v", len(payload), err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p, err := m.DeviceStateTransfer()
		if err != nil {
			t.Fatal(err)
		}
		valid := p.Validate() == nil
		if valid != ((p.Direction == 0 || p.Direction == 1) && p.Phase == 0) {
			t.Fatalf("Validate(%+v) = %v", p, valid)
		}
		fe.t = t
		r, w := pipe(t)
		chans := []*os.File{r, w}
		ch := chans[end%2]
		matching := (p.Direction == vhostuser.TransferSave && ch == w) || (p.Direction == vhostuser.TransferLoad && ch == r)
		fe.send(vhostuser.SetDeviceStateFD, 0, payload, int(ch.Fd()))
		ch.Close()
		rep, err := func() (vhostusertest.Reply, error) {
			fe.fe.Conn.SetReadDeadline(time.Now().Add(waitFor))
			return fe.fe.ReadReply()
		}()
		if err != nil {
			t.Fatalf("no reply: %v", err)
		}
		got, _ := rep.U64()
		if len(rep.FDs) != 0 || got&vhostuser.VringNoFD == 0 {
			t.Fatalf("reply %#x with %d fds", got, len(rep.FDs))
		}
		if (got&0xff == 0) != (valid && matching) {
			t.Fatalf("%+v on %v: reply %#x", p, map[bool]string{true: "write end", false: "read end"}[ch == w], got)
		}
		if got&0xff == 0 {
			// Let it end: close our end too, then CHECK waits for it.
			r.Close()
			w.Close()
			fe.check(0)
		}
		fe.sync()
	})
}

// TestDeviceStateWithoutChannel: a SET_DEVICE_STATE_FD without its
// descriptor (a frontend that closed it before sending: sendmsg cannot
// carry a closed one) breaks the protocol: the device drops that frontend
// with ErrBadFDs, as for any request missing its descriptor.
func TestDeviceStateWithoutChannel(t *testing.T) {
	_, f, wait := startedDevice(t, &memState{}, 0)
	f.send(vhostuser.SetDeviceStateFD, 0, vhostuser.AppendDeviceStateTransfer(nil, vhostuser.DeviceStateTransfer{Direction: vhostuser.TransferLoad}))
	if err := wait(); !errors.Is(err, vhostuser.ErrBadFDs) {
		t.Errorf("Serve = %v, want ErrBadFDs", err)
	}
}
