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
	dir := t.TempDir()
	vmSock, app := filepath.Join(dir, "vm.sock"), filepath.Join(dir, "app.sock")
	d, err := backend.NewDaemon(backend.DaemonOptions{ControlSocket: filepath.Join(dir, "control.sock"), AppSocket: app,
		Ports:   []backend.PortOptions{{Name: "vm", Socket: vmSock}},
		Runtime: backend.RuntimeOptions{SharedChannels: []uint32{channel}, Remote: backend.RemoteOptions{MaxMessage: 4 << 20}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	bin := filepath.Join(t.TempDir(), "lunarstream")
	if err := vmtest.BuildStatic(ctx, "github.com/veloce-io/veloce/examples/lunarstream/cmd/lunarstream", bin); err != nil {
		t.Fatal(err)
	}
	kernel, initramfs := vmtest.Image(t, vmtest.Guest{Files: map[string]string{"/bin/lunarstream": bin}})

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
