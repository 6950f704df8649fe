package backend

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
)

// stateFrontend is the part of a QEMU 10 frontend a device state transfer
// needs: the handshake (with DEVICE_STATE when offered) and the transfer.
type stateFrontend struct {
	t  *testing.T
	fe *vhostusertest.Frontend
}

func dialPort(t *testing.T, p *Port) *stateFrontend {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: p.opts.Socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &stateFrontend{t: t, fe: &vhostusertest.Frontend{Conn: c}}
}

func (f *stateFrontend) ask(req vhostuser.Request, payload []byte, fds ...int) uint64 {
	f.t.Helper()
	if err := f.fe.Send(req, 0, payload, fds...); err != nil {
		f.t.Fatal(err)
	}
	f.fe.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	r, err := f.fe.ReadReply()
	if err != nil {
		f.t.Fatalf("%v: %v", req, err)
	}
	v, err := r.U64()
	if err != nil {
		f.t.Fatal(err)
	}
	return v
}

// handshake negotiates and reports whether DEVICE_STATE was offered
// (and then acked).
func (f *stateFrontend) handshake() bool {
	f.t.Helper()
	f.ask(vhostuser.GetFeatures, nil)
	offered := vhostuser.Features(f.ask(vhostuser.GetProtocolFeatures, nil))
	ack := offered & (vhostuser.Bit(vhostuser.ProtocolFMQ) | vhostuser.Bit(vhostuser.ProtocolFDeviceState))
	if err := f.fe.Send(vhostuser.SetProtocolFeatures, 0, binary.LittleEndian.AppendUint64(nil, uint64(ack))); err != nil {
		f.t.Fatal(err)
	}
	if err := f.fe.Send(vhostuser.SetOwner, 0, nil); err != nil {
		f.t.Fatal(err)
	}
	return offered.Has(vhostuser.ProtocolFDeviceState)
}

func (f *stateFrontend) transfer(dir uint32, fd int) {
	f.t.Helper()
	v := f.ask(vhostuser.SetDeviceStateFD, vhostuser.AppendDeviceStateTransfer(nil, vhostuser.DeviceStateTransfer{Direction: dir, Phase: vhostuser.PhaseStopped}), fd)
	if v != vhostuser.VringNoFD {
		f.t.Fatalf("SET_DEVICE_STATE_FD(%d) = %#x", dir, v)
	}
}

func startPort(t *testing.T, opts PortOptions) *Port {
	t.Helper()
	opts.Socket = filepath.Join(t.TempDir(), opts.Name+".sock")
	p, err := NewPort(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// TestPortStateRidesInTheMigrationStream: a port with SaveState and
// LoadState offers DEVICE_STATE; what the source port's hook writes
// reaches the destination port's hook through the frontends' pipes, each
// hook given its own port; a port without the hooks does not offer it.
func TestPortStateRidesInTheMigrationStream(t *testing.T) {
	var mu sync.Mutex
	var loaded []string
	state := bytes.Repeat([]byte("session;stream;source;sink;"), 10000) // 270 kB, more than a pipe holds
	opts := PortOptions{
		SaveState: func(p *Port, w io.Writer) error {
			if _, err := w.Write([]byte(p.Name() + ":")); err != nil {
				return err
			}
			_, err := w.Write(state)
			return err
		},
		LoadState: func(p *Port, r io.Reader) error {
			b, err := io.ReadAll(r)
			mu.Lock()
			loaded = append(loaded, p.Name()+"<-"+string(b[:min(len(b), 8)]))
			mu.Unlock()
			if len(b) < len("vm-src:") || !bytes.Equal(b[len("vm-src:"):], state) {
				t.Errorf("destination got %d bytes", len(b))
			}
			return err
		},
	}
	opts.Name = "vm-src"
	src := startPort(t, opts)
	opts.Name = "vm-dst"
	dst := startPort(t, opts)
	plain := startPort(t, PortOptions{Name: "vm-plain"})

	if dialPort(t, plain).handshake() {
		t.Fatal("a port without hooks offers DEVICE_STATE")
	}
	sf, df := dialPort(t, src), dialPort(t, dst)
	if !sf.handshake() || !df.handshake() {
		t.Fatal("a port with hooks does not offer DEVICE_STATE")
	}
	// Source: save into a pipe, read it to EOF, check.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	sf.transfer(vhostuser.TransferSave, int(w.Fd()))
	w.Close()
	r.SetReadDeadline(time.Now().Add(5 * time.Second))
	blob, err := io.ReadAll(r)
	r.Close()
	if err != nil {
		t.Fatal(err)
	}
	if v := sf.ask(vhostuser.CheckDeviceState, nil); v != 0 {
		t.Fatalf("source CHECK_DEVICE_STATE = %d", v)
	}
	// Destination: load from a pipe the frontend writes and closes.
	r, w, err = os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	df.transfer(vhostuser.TransferLoad, int(r.Fd()))
	r.Close()
	w.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := w.Write(blob); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if v := df.ask(vhostuser.CheckDeviceState, nil); v != 0 {
		t.Fatalf("destination CHECK_DEVICE_STATE = %d", v)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(loaded) != 1 || loaded[0] != "vm-dst<-vm-src:s" {
		t.Errorf("loads %q", loaded)
	}
}
