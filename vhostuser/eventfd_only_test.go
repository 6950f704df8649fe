package vhostuser_test

import (
	"errors"
	"testing"

	"github.com/veloce-io/veloce/internal/fd"
	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
	"golang.org/x/sys/unix"
)

// TestKickCallErrMustBeEventFDs follows vhost-user.rst "SET_VRING_KICK",
// "SET_VRING_CALL" and "SET_VRING_ERR" (the descriptor is an eventfd): a
// socket, a pipe or a regular file in their place is refused with
// ErrBadFD, the failed REPLY_ACK is answered, the frontend is dropped with
// every descriptor it sent closed, and the device serves the next
// frontend.
func TestKickCallErrMustBeEventFDs(t *testing.T) {
	kinds := map[string]func(t *testing.T) int{
		"socket": func(t *testing.T) int {
			sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Close(sp[0]); unix.Close(sp[1]) })
			return sp[0]
		},
		"pipe": func(t *testing.T) int {
			var pp [2]int
			if err := unix.Pipe2(pp[:], unix.O_CLOEXEC); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Close(pp[0]); unix.Close(pp[1]) })
			return pp[0]
		},
		"regular file": func(t *testing.T) int {
			raw := memfd(t, 4096)
			t.Cleanup(func() { unix.Close(raw) })
			return raw
		},
	}
	rec := newRecorder(func(_ int, frame, reply []byte) int { return arpReply(frame, reply) })
	dev := newNetDevice(t, 1, rec)
	for _, req := range []vhostuser.Request{vhostuser.SetVringKick, vhostuser.SetVringCall, vhostuser.SetVringErr} {
		for name, open := range kinds {
			t.Run(req.String()+"/"+name, func(t *testing.T) {
				bad := open(t)
				f, wait := serveDevice(t, dev)
				fg := newFakeGuest(t, 1)
				before := openFDs(t)
				f.startQEMU(fg, linuxFeatures)
				if !f.ack {
					t.Fatal("REPLY_ACK not negotiated")
				}
				if st := f.setAck(req, u64(1), bad); st == 0 {
					t.Errorf("%v with a %s: REPLY_ACK status 0, want failure", req, name)
				}
				err := wait()
				var pe *vhostuser.ProtocolError
				if !errors.Is(err, vhostuser.ErrBadFD) || !errors.Is(err, fd.ErrNotEventFD) || !errors.As(err, &pe) || pe.Request != req {
					t.Fatalf("Serve = %v, want a *ProtocolError for %v matching ErrBadFD", err, req)
				}
				t.Logf("refused: %v", err)
				if after := openFDs(t); after != before {
					t.Errorf("%d descriptors open before the handshake, %d after the device dropped the frontend", before, after)
				}
				if st := dev.State(); st.Connected || st.QueuePairs != 0 {
					t.Errorf("State after drop = %+v", st)
				}
				// A new frontend connection is served: traffic gets through.
				f2, _ := serveDevice(t, dev)
				fg2 := newFakeGuest(t, 1)
				f2.startQEMU(fg2, linuxFeatures)
				fg2.rx(0).post(vhostusertest.Buf{WriteLen: 1526})
				fg2.tx(0).post(txChain(arpRequest(1), false)...)
				rec.next(t)
				fg2.rx(0).waitUsed()
			})
		}
	}
}
