package lunarstream_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/examples/lunarstream"
	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/images/guestinit"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/vmtest"
)

// TestFramesFromVMToHostApplication: Lunar Streaming from a TCG VM to a
// host application. The guest runs lunarstream produce (guestlib's virtio
// transport) on a reliable stream; a host application on the same daemon
// (host transport) verifies every frame of 1280x720 RGB byte for byte.
//
// The daemon takes messages of up to 4 MiB (--max-message), which the
// guest's session learns when it opens (Session.MaxMessage), so each frame
// leaves the VM as one message (guestlib's large-message fragments over
// the virtio link, reassembled by the port). The frame latency it reports
// is not meaningful: the guest's clock is not the host's.
func TestFramesFromVMToHostApplication(t *testing.T) {
	testutil.RequiresRoot(t)
	const frames, fps = 5, 1
	vmSock, app := vmDaemon(t)
	kernel, initramfs := lunarImage(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	sess, err := guestlib.Open(ctx, guestlib.Options{Socket: app})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	cons, err := lunarstream.OpenConsumer(ctx, sess, channel, true, frames, 0)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		s   lunarstream.Summary
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := cons.Run(ctx, 0) // every frame, or the test's deadline
		done <- result{s, err}
	}()
	vm := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, NICs: []vmtest.NIC{{Socket: vmSock}},
		Guest: &guestinit.Config{Net: []guestinit.NetConfig{{Name: "eth0", DHCP: true}},
			Run: []string{"/bin/lunarstream", "produce", "--channel", strconv.Itoa(channel), "--frames", strconv.Itoa(frames),
				"--fps", strconv.Itoa(fps), "--linger", "3s", "-o", "json"}}})
	r, err := vm.Wait(ctx)
	if err != nil {
		t.Fatalf("guest: %v", err)
	}
	if r.Err() != nil {
		t.Fatalf("guest producer: %v\n%s", r.Err(), r.Output)
	}
	var ps lunarstream.SenderSummary
	for _, line := range strings.Split(r.Output, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), `{"role":"producer"`) {
			json.Unmarshal([]byte(strings.TrimSpace(line)), &ps)
		}
	}
	if ps.Frames != frames {
		t.Fatalf("no producer summary in the guest's output:\n%s", r.Output)
	}
	// The guest has gone: whatever has not arrived by now never will.
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	defer ccancel()
	var res result
	select {
	case res = <-done:
	case <-cctx.Done():
		cancel()
		res = <-done
	}
	t.Logf("guest producer %+v\nhost consumer %+v", ps, res.s)
	checkOne(t, res.s, frames)
	if ps.Messages != frames {
		t.Errorf("%d messages from the VM for %d frames: want one a frame (the guest's session should take %d-byte messages)",
			ps.Messages, frames, lunarstream.HeaderLen+lunarstream.DefaultFrameSize)
	}
}

// TestFramesFromHostApplicationToVM: the other way, a host application
// produces and lunarstream consume in a TCG VM verifies every frame. A
// sink in a VM receives messages of at most guestlib.MaxMessage (large
// messages to VMs are not there yet), so the producer sends each frame as
// parts of that size.
func TestFramesFromHostApplicationToVM(t *testing.T) {
	testutil.RequiresRoot(t)
	const frames, fps = 3, 1
	vmSock, app := vmDaemon(t)
	kernel, initramfs := lunarImage(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	vm := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, NICs: []vmtest.NIC{{Socket: vmSock}},
		Guest: &guestinit.Config{Net: []guestinit.NetConfig{{Name: "eth0", DHCP: true}},
			Run: []string{"/bin/lunarstream", "consume", "--channel", strconv.Itoa(channel), "--frames", strconv.Itoa(frames),
				"--idle", "60s", "-o", "json"}}})
	if _, err := vm.WaitConsole(ctx, "lunarstream: consumer ready"); err != nil {
		t.Fatal(err)
	}
	sess, err := guestlib.Open(ctx, guestlib.Options{Socket: app})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	ps, err := lunarstream.Produce(ctx, sess, channel, true, guestlib.MaxMessage, lunarstream.Options{FrameSize: lunarstream.DefaultFrameSize, FPS: fps, Frames: frames})
	if err != nil {
		t.Fatalf("producer: %v", err)
	}
	r, err := vm.Wait(ctx)
	if err != nil {
		t.Fatalf("guest: %v", err)
	}
	var s lunarstream.Summary
	for _, line := range strings.Split(r.Output, "\n") {
		if l := strings.TrimSpace(line); strings.HasPrefix(l, `{"role":"consumer"`) {
			json.Unmarshal([]byte(l), &s)
		}
	}
	t.Logf("host producer %+v\nguest consumer %+v", ps, s)
	if r.Err() != nil {
		t.Errorf("guest consumer: %v\n%s", r.Err(), r.Output)
	}
	checkOne(t, s, frames)
}

// vmDaemon starts a daemon with one port for a VM and an app socket for
// host applications, which share channel with the VM; messages up to
// 4 MiB.
func vmDaemon(t *testing.T) (vmSock, app string) {
	t.Helper()
	dir := t.TempDir()
	vmSock, app = filepath.Join(dir, "vm.sock"), filepath.Join(dir, "app.sock")
	d, err := backend.NewDaemon(backend.DaemonOptions{ControlSocket: filepath.Join(dir, "control.sock"), AppSocket: app,
		Ports:   []backend.PortOptions{{Name: "vm", Socket: vmSock}},
		Runtime: backend.RuntimeOptions{SharedChannels: []uint32{channel}, Remote: backend.RemoteOptions{MaxMessage: 4 << 20}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return vmSock, app
}

// lunarImage is a guest image with lunarstream in /bin.
func lunarImage(t *testing.T) (kernel, initramfs string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "lunarstream")
	if err := vmtest.BuildStatic(context.Background(), "github.com/veloce-io/veloce/examples/lunarstream/cmd/lunarstream", bin); err != nil {
		t.Fatal(err)
	}
	return vmtest.Image(t, vmtest.Guest{Files: map[string]string{"/bin/lunarstream": bin}})
}
