package vhostuser_test

import (
	"testing"

	"github.com/veloce-io/veloce/vhostuser"
	"github.com/veloce-io/veloce/vhostuser/vhostusertest"
	"golang.org/x/sys/unix"
)

// arpServed posts an RX buffer and an ARP request tagged tag on fg's
// first queue pair and checks the answer comes back.
func arpServed(t *testing.T, fg *fakeGuest, tag byte) {
	t.Helper()
	_, addrs := fg.rx(0).post(vhostusertest.Buf{WriteLen: 1526})
	fg.tx(0).post(txChain(arpRequest(tag), false)...)
	_, n := fg.rx(0).waitUsed()
	if _, frame := rxFrame(fg, addrs[0], n); len(frame) < 42 || frame[21] != 2 {
		t.Fatalf("no ARP reply for tag %d: % x", tag, frame)
	}
}

// TestPinnedPollersShareAThreadAndFaultAlone: the queue pairs of two
// devices pinned to one CPU are served by one poll group; the first
// frontend's memory fault drops it alone, the other is served on, and a
// new frontend joins the group again.
func TestPinnedPollersShareAThreadAndFaultAlone(t *testing.T) {
	const cpu = 0
	reply := func(_ int, frame, reply []byte) int { return arpReply(frame, reply) }
	newDev := func() (*vhostuser.NetDevice, *recorder) {
		rec := newRecorder(reply)
		d, err := vhostuser.NewNetDevice(vhostuser.NetOptions{Handler: rec, PollCPUs: []int{cpu}})
		if err != nil {
			t.Fatal(err)
		}
		return d, rec
	}
	devA, recA := newDev()
	devB, _ := newDev()
	fA, waitA := serveDevice(t, devA)
	fB, _ := serveDevice(t, devB)
	gA, gB := newFakeGuest(t, 1), newFakeGuest(t, 1)
	fA.startQEMU(gA, linuxFeatures)
	fB.startQEMU(gB, linuxFeatures)
	if n := vhostuser.PollGroupMembers(cpu); n != 2 {
		t.Fatalf("CPU %d's poll group serves %d pollers, want 2", cpu, n)
	}
	arpServed(t, gA, 1)
	arpServed(t, gB, 2)

	errFDs := fA.setErrFDs(gA)
	fd := gA.g.DupFD(t)
	if err := unix.Ftruncate(fd, 0); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	writeEventfd(t, gA.tx(0).kick)
	expectDropped(t, devA, waitA, vhostuser.ErrMemoryFault, "guest memory", errFDs)
	arpServed(t, gB, 3) // the group goes on for the others
	eventually(t, "the faulted poller leaving the group", func() bool { return vhostuser.PollGroupMembers(cpu) == 1 })
	recA.next(t)               // the frame of arpServed(gA, 1)
	servedAgain(t, devA, recA) // A's next frontend: its poller joins again
	if n := vhostuser.PollGroupMembers(cpu); n != 2 {
		t.Errorf("after A's new frontend the group serves %d pollers, want 2", n)
	}
}
