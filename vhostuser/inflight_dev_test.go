package vhostuser_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/veloce-io/veloce/vhostuser"
	"golang.org/x/sys/unix"
)

// GET_INFLIGHT_FD hands the frontend a region sized for its queues; after
// the backend goes away, a new connection gets the region back with
// SET_INFLIGHT_FD and the rings run with it (Cloud Hypervisor's sequence
// when INFLIGHT_SHMFD is offered).
func TestInflightRegionSurvivesReconnect(t *testing.T) {
	rec := newRecorder(nil)
	dev := newNetDevice(t, 1, rec)
	fg := newFakeGuest(t, 1)
	protocol := qemuProtocol | vhostuser.Bit(vhostuser.ProtocolFInflightShmfd)

	f, wait := serveDevice(t, dev)
	acked := f.negotiate(linuxFeatures, protocol)
	f.send(vhostuser.GetInflightFD, 0, vhostuser.AppendInflight(nil, vhostuser.Inflight{NumQueues: 2, QueueSize: qSize}))
	f.fe.Conn.SetReadDeadline(time.Now().Add(waitFor))
	r, err := f.fe.ReadReply()
	if err != nil || r.Header.Request != vhostuser.GetInflightFD || len(r.FDs) != 1 {
		t.Fatalf("GET_INFLIGHT_FD reply %+v, %v", r, err)
	}
	in, err := (vhostuser.Message{Header: r.Header, Payload: r.Payload}).Inflight()
	if err != nil || in.MmapSize != 2*vhostuser.InflightQueueSize(qSize) || in.NumQueues != 2 || in.QueueSize != qSize {
		t.Fatalf("inflight description %+v, %v", in, err)
	}
	fd := r.FDs[0]
	defer unix.Close(fd)
	f.setMemTable(fg.g)
	for _, q := range fg.vqs {
		q.eventIdx = acked.Has(vhostuser.FRingEventIdx)
		f.setupVring(q, 0, false, qemuOrder...)
		f.setupVring(q, 0, false, stepEnable)
	}
	req := arpRequest(1)
	fg.tx(0).post(txChain(req, false)...)
	if got := rec.next(t); !bytes.Equal(got.frame, req) {
		t.Fatalf("frame %x", got.frame)
	}
	fg.tx(0).waitUsed()
	f.fe.Conn.Close() // the frontend sees the backend go
	wait()

	// The frontend reconnects and hands the region back.
	f2, _ := serveDevice(t, dev)
	acked = f2.negotiate(linuxFeatures, protocol)
	f2.set(vhostuser.SetInflightFD, vhostuser.AppendInflight(nil, in), fd)
	f2.setMemTable(fg.g)
	for _, q := range fg.vqs {
		// After a backend crash the frontend resumes each ring at its used
		// index; nothing was left in flight, so nothing is resubmitted.
		f2.setupVring(q, q.drv.UsedIdx(), false, qemuOrder...)
		f2.setupVring(q, q.drv.UsedIdx(), false, stepEnable)
	}
	req = arpRequest(2)
	fg.tx(0).post(txChain(req, false)...)
	if got := rec.next(t); !bytes.Equal(got.frame, req) {
		t.Fatalf("after SET_INFLIGHT_FD: frame %x, want the new one %x", got.frame, req)
	}
	rec.expectNone(t)
	if st := dev.State(); st.QueuePairs != 1 {
		t.Fatalf("state %+v", st)
	}
}
