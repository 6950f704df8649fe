package backend

import (
	"context"
	"io"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/guestproto"
	"github.com/veloce-io/veloce/vhostuser"
)

// devStatePort is a guest port on rt with the default DEVICE_STATE hooks
// under key, serving its vhost-user socket, and a frontend that has
// negotiated DEVICE_STATE with it.
func devStatePort(t *testing.T, rt *Runtime, key []byte, guest netip.AddrPort) (*Port, func(*guestproto.Message) guestproto.Result, *stateFrontend) {
	t.Helper()
	opts := PortOptions{Name: "vm"}
	withDeviceState(&opts, key)
	p, call := guestPortOn(t, rt, opts, guest)
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	f := dialPort(t, p)
	if !f.handshake() {
		t.Fatal("a port of a daemon with a migration key does not offer DEVICE_STATE")
	}
	return p, call, f
}

// save has f's port save its state through DEVICE_STATE.
func save(t *testing.T, f *stateFrontend) []byte {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	f.transfer(vhostuser.TransferSave, int(w.Fd()))
	w.Close()
	r.SetReadDeadline(time.Now().Add(5 * time.Second))
	blob, err := io.ReadAll(r)
	r.Close()
	if err != nil {
		t.Fatal(err)
	}
	if v := f.ask(vhostuser.CheckDeviceState, nil); v != 0 {
		t.Fatalf("source CHECK_DEVICE_STATE = %d", v)
	}
	return blob
}

// load has f's port load blob through DEVICE_STATE and returns
// CHECK_DEVICE_STATE's answer.
func load(t *testing.T, f *stateFrontend, blob []byte) uint64 {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	f.transfer(vhostuser.TransferLoad, int(r.Fd()))
	r.Close()
	w.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := w.Write(blob); err != nil {
		t.Fatal(err)
	}
	w.Close()
	return f.ask(vhostuser.CheckDeviceState, nil)
}

// TestDeviceStateCarriesTheStreams: with the daemon's default hooks, a
// port's sessions, streams, sources (with their sequence numbers) and
// queued messages travel through the frontend's DEVICE_STATE pipes,
// signed with the migration key; a tampered blob, or one signed with
// another key, is refused by CHECK_DEVICE_STATE and changes nothing; the
// source port keeps its streams (the migration may still fail).
func TestDeviceStateCarriesTheStreams(t *testing.T) {
	guest := netip.MustParseAddrPort("169.254.77.2:40000")
	rtA := NewRuntime(RuntimeOptions{NodeID: 7, SharedChannels: []uint32{5}})
	pa, callA, fa := devStatePort(t, rtA, testMigrationKey, guest)
	guestSrc, _ := guestState(t, rtA, pa, callA, 3, 10)
	blob := save(t, fa)
	t.Logf("device state: %d bytes", len(blob))
	if got := len(rtA.Streams()); got != 2 { // the guest's and the host source's
		t.Fatalf("the source has %d streams after the save, want its 2", got)
	}

	// Refused whole: a flipped byte, another fleet's key.
	bad := append([]byte(nil), blob...)
	bad[len(bad)/2] ^= 0x40
	rtC := NewRuntime(RuntimeOptions{NodeID: 11, SharedChannels: []uint32{5}})
	pc, _, fc := devStatePort(t, rtC, testMigrationKey, guest)
	if v := load(t, fc, bad); v == 0 {
		t.Error("a tampered device state was loaded")
	}
	rtD := NewRuntime(RuntimeOptions{NodeID: 12, SharedChannels: []uint32{5}})
	pd, _, fd := devStatePort(t, rtD, []byte("another fleet's key, long enough to be a key"), guest)
	if v := load(t, fd, blob); v == 0 {
		t.Error("a device state signed with another key was loaded")
	}
	for _, x := range []struct {
		rt *Runtime
		p  *Port
	}{{rtC, pc}, {rtD, pd}} {
		if n := len(x.rt.Streams()); n != 0 || x.p.sessions.Len() != 0 {
			t.Errorf("a refused load left %d streams, %d sessions", n, x.p.sessions.Len())
		}
	}

	rtB := NewRuntime(RuntimeOptions{NodeID: 9, SharedChannels: []uint32{5}})
	pb, _, fb := devStatePort(t, rtB, testMigrationKey, guest)
	if v := load(t, fb, blob); v != 0 {
		t.Fatalf("destination CHECK_DEVICE_STATE = %d", v)
	}
	sb := rtB.Streams()
	if len(sb) != 1 || len(sb[0].Sources) != 1 || len(sb[0].Sinks) != 1 {
		t.Fatalf("loaded streams: %+v", sb)
	}
	so := pb.sessions.Get(sb[0].Session).Source(guestSrc.ID)
	if so == nil || so.Global != guestSrc.Global || so.seq.Load() != 3 {
		t.Fatalf("loaded source %+v, want global %#x at seq 3", so, guestSrc.Global)
	}
	got := drainOutbox(t, pb)
	if len(got) != 10 {
		t.Fatalf("%d queued messages loaded, want 10", len(got))
	}
	for i, m := range got {
		if m.Seq != uint64(i+1) || m.Payload[0] != byte(i) {
			t.Errorf("message %d: seq %d payload %v", i, m.Seq, m.Payload)
		}
	}
}
