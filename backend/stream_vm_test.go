package backend

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/veloce-io/veloce/images/guestinit"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/vmtest"
)

var (
	perfOnce sync.Once
	perfPath string
	perfErr  error
)

// perfImage returns a guest image with veloce-perf in /bin.
func perfImage(t *testing.T) (kernel, initramfs string) {
	t.Helper()
	perfOnce.Do(func() {
		dir, err := makeTempDir()
		if err != nil {
			perfErr = err
			return
		}
		perfPath = filepath.Join(dir, "veloce-perf")
		perfErr = vmtest.BuildStatic(context.Background(), "github.com/veloce-io/veloce/cmd/veloce-perf", perfPath)
	})
	if perfErr != nil {
		t.Fatal(perfErr)
	}
	return vmtest.Image(t, vmtest.Guest{Files: map[string]string{"/bin/veloce-perf": perfPath}})
}

type perfSummary struct {
	Role       string `json:"role"`
	Messages   uint64 `json:"messages"`
	Bytes      uint64 `json:"bytes"`
	Corrupt    uint64 `json:"corrupt"`
	Sources    int    `json:"sources"`
	Gaps       uint64 `json:"gaps"`
	OutOfOrder uint64 `json:"out_of_order"`
	Dropped    uint64 `json:"dropped"`
	Datapath   string `json:"datapath"`
	Warning    string `json:"warning"`
}

// lastSummaryBefore is lastSummary of the output before the first line
// starting with marker.
func lastSummaryBefore(t *testing.T, out, marker string) perfSummary {
	t.Helper()
	if i := strings.Index(out, "\n"+marker); i >= 0 {
		out = out[:i]
	}
	return lastSummary(t, out)
}

func lastSummary(t *testing.T, out string) perfSummary {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var s perfSummary
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &s); err != nil {
		t.Fatalf("no summary in:\n%s", out)
	}
	return s
}

// TestVMToVMStreaming: an application in one VM emits on a channel, an
// application in another VM on the same daemon sinks it; every message
// arrives once and in order. The sink asked for acceleration on a host
// with none: it gets UDP and a warning it can see, and velocectl streams
// shows.
func TestVMToVMStreaming(t *testing.T) {
	testutil.RequiresRoot(t)
	const count = 3000
	d, socks := startDaemonWith(t, oneTenant("pair"), "sinkvm", "sourcevm") // one tenant: they share channels
	kernel, initramfs := perfImage(t)
	net := []guestinit.NetConfig{{Name: "eth0", DHCP: true}}
	sink := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, NICs: []vmtest.NIC{{Socket: socks[0]}},
		Guest: &guestinit.Config{Net: net, Run: []string{"/bin/veloce-perf", "sink", "--accel", "--channel", "7", "--count", itoaU(count), "--timeout", "3m"}}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := sink.WaitConsole(ctx, "ready"); err != nil {
		t.Fatal(err)
	}
	streams := d.Streams()
	if len(streams) != 1 || streams[0].Datapath != DatapathUDP || !strings.Contains(streams[0].Warning, "acceleration") ||
		len(streams[0].Sinks) != 1 || streams[0].Sinks[0].Channel != 7 || streams[0].Endpoint != "vm:sinkvm" {
		t.Fatalf("streams while the sink waits: %+v", streams)
	}
	source := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, NICs: []vmtest.NIC{{Socket: socks[1]}},
		Guest: &guestinit.Config{Net: net, Run: []string{"/bin/veloce-perf", "source", "--channel", "7", "--count", itoaU(count), "--size", "200", "--rate", "1000"}}})
	rs, err := source.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Err(); err != nil {
		t.Fatalf("source: %v\n%s", err, rs.Output)
	}
	r, err := sink.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Err(); err != nil {
		t.Fatalf("sink: %v\n%s", err, r.Output)
	}
	if !strings.Contains(r.Output, "warning: acceleration requested") {
		t.Errorf("the sink application did not see the fallback warning:\n%s", r.Output)
	}
	s := lastSummary(t, r.Output)
	t.Logf("sink: %+v", s)
	if s.Messages != count || s.Sources != 1 || s.Gaps != 0 || s.OutOfOrder != 0 || s.Datapath != DatapathUDP {
		t.Errorf("sink summary %+v, want %d messages from 1 source in order", s, count)
	}
	for _, p := range d.Ports() {
		if p.Malformed != 0 || p.Errors != 0 {
			t.Errorf("port %s: %+v", p.Name, p)
		}
	}
}

func itoaU(n int) string { b, _ := json.Marshal(n); return string(b) }

func makeTempDir() (string, error) { return os.MkdirTemp("", "veloce-perf-") }

// TestEightSinksOnOneChannel: eight applications in one VM sink the same
// channel; each gets every message of a source in another VM, in order.
func TestEightSinksOnOneChannel(t *testing.T) {
	testutil.RequiresRoot(t)
	const count = 300
	_, socks := startDaemonWith(t, oneTenant("pair"), "sinks", "source")
	kernel, initramfs := perfImage(t)
	net := []guestinit.NetConfig{{Name: "eth0", DHCP: true}}
	script := `for i in 1 2 3 4 5 6 7 8; do veloce-perf sink --channel 3 --count ` + itoaU(count) + ` --timeout 3m > /tmp/s$i 2>&1 & done
while [ "$(cat /tmp/s* | grep -c ready)" -lt 8 ]; do sleep 0.2; done
echo all-ready
fail=0; for j in $(jobs -p); do wait $j || fail=1; done
cat /tmp/s*; exit $fail`
	sinks := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, NICs: []vmtest.NIC{{Socket: socks[0]}},
		Guest: &guestinit.Config{Net: net, Run: []string{"/bin/sh", "-c", script}}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := sinks.WaitConsole(ctx, "all-ready"); err != nil {
		t.Fatal(err)
	}
	source := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, NICs: []vmtest.NIC{{Socket: socks[1]}},
		Guest: &guestinit.Config{Net: net, Run: []string{"/bin/veloce-perf", "source", "--channel", "3", "--count", itoaU(count), "--rate", "200"}}})
	if r, err := source.Wait(ctx); err != nil || r.Err() != nil {
		t.Fatalf("source: %v\n%s", err, r.Output)
	}
	r, err := sinks.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Err(); err != nil {
		t.Fatalf("sinks: %v\n%s", err, r.Output)
	}
	n := 0
	for _, line := range strings.Split(r.Output, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "{") {
			continue
		}
		var s perfSummary
		if err := json.Unmarshal([]byte(strings.TrimSpace(line)), &s); err != nil || s.Role != "sink" {
			continue
		}
		n++
		if s.Messages != count || s.Gaps != 0 || s.OutOfOrder != 0 {
			t.Errorf("sink %d: %+v", n, s)
		}
	}
	if n != 8 {
		t.Fatalf("%d sink summaries, want 8:\n%s", n, r.Output)
	}
}

// TestDeadAndBadGuestApplications: in one VM, an application is killed
// with SIGKILL while it sinks a stream, and another sends malformed
// datagrams; the daemon counts and drops those, releases what the dead
// one held once it stops answering, and a third application's stream
// works throughout.
func TestDeadAndBadGuestApplications(t *testing.T) {
	testutil.RequiresRoot(t)
	d, socks := startDaemonWith(t, func(o *DaemonOptions) { o.SessionTimeout = 3 * time.Second }, "vm")
	kernel, initramfs := perfImage(t)
	script := `veloce-perf source --channel 4 --count 100000 --rate 100 > /dev/null 2>&1 & src=$!
veloce-perf sink --channel 4 --count 1000000 --timeout 5m > /dev/null 2>&1 & victim=$!
sleep 3
veloce-perf junk --count 40
kill -9 $victim; echo killed
veloce-perf sink --channel 5 --count 200 --timeout 2m > /tmp/s5 2>&1 &
while ! grep -q ready /tmp/s5; do sleep 0.2; done
veloce-perf source --channel 5 --count 200 --rate 200
wait $!; cat /tmp/s5
echo released?; sleep 10; kill $src; echo done`
	vm := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, NICs: []vmtest.NIC{{Socket: socks[0]}},
		Guest: &guestinit.Config{Net: []guestinit.NetConfig{{Name: "eth0", DHCP: true}}, Run: []string{"/bin/sh", "-c", script}}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := vm.WaitConsole(ctx, "released?"); err != nil {
		t.Fatal(err)
	}
	// The killed sink's session goes once it has been silent for the
	// session timeout; the source on channel 4 then feeds no sink.
	var streams []StreamInfo
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		streams = d.Streams()
		sinksOn4 := 0
		for _, st := range streams {
			for _, sk := range st.Sinks {
				if sk.Channel == 4 {
					sinksOn4++
				}
			}
		}
		if sinksOn4 == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the killed application's sink is still there: %+v", streams)
		}
	}
	p := d.Ports()[0]
	t.Logf("port: sessions %d, malformed %d, outbox queued %d; streams %+v", p.Sessions, p.Malformed, p.OutboxQueued, streams)
	if p.Malformed < 40 {
		t.Errorf("%d malformed datagrams counted, want >= 40", p.Malformed)
	}
	if p.Sessions != 1 || p.OutboxQueued != 0 {
		t.Errorf("sessions %d (want only the channel-4 source's), outbox queued %d", p.Sessions, p.OutboxQueued)
	}
	r, err := vm.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := lastSummary(t, strings.Split(r.Output, "released?")[0])
	if s.Messages != 200 || s.Gaps != 0 || s.OutOfOrder != 0 {
		t.Errorf("the well-behaved stream: %+v\n%s", s, r.Output)
	}
}

// daemonWithAppSocket starts a daemon with one port, "vm", and an app
// socket for host applications, which meet the VM's on channel (shared:
// the VM's tenant and the host's, uid 0).
func daemonWithAppSocket(t *testing.T, channel uint32) (d *Daemon, socks []string, app string) {
	t.Helper()
	d, socks = startDaemonWith(t, func(o *DaemonOptions) {
		app = filepath.Join(filepath.Dir(o.ControlSocket), "app.sock")
		o.AppSocket = app
		o.Runtime.SharedChannels = []uint32{channel}
	}, "vm")
	return d, socks, app
}

// TestVMToHostProcess: an application in a VM streams to a process on the
// host (guestlib's host transport over the daemon's unix socket), which
// gets every message in order.
func TestVMToHostProcess(t *testing.T) {
	testutil.RequiresRoot(t)
	const count = 3000
	_, socks, app := daemonWithAppSocket(t, 21)
	kernel, initramfs := perfImage(t) // also builds perfPath
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	host := exec.CommandContext(ctx, perfPath, "sink", "--socket", app, "--channel", "21", "--count", itoaU(count), "--timeout", "4m")
	var out syncBuf
	host.Stdout, host.Stderr = &out, &out
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(out.String(), "ready") {
		if ctx.Err() != nil {
			t.Fatalf("host sink never ready:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	vm := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, NICs: []vmtest.NIC{{Socket: socks[0]}},
		Guest: &guestinit.Config{Net: []guestinit.NetConfig{{Name: "eth0", DHCP: true}},
			Run: []string{"/bin/veloce-perf", "source", "--channel", "21", "--count", itoaU(count), "--size", "1000", "--rate", "2000"}}})
	if r, err := vm.Wait(ctx); err != nil || r.Err() != nil {
		t.Fatalf("guest source: %v\n%s", err, r.Output)
	}
	if err := host.Wait(); err != nil {
		t.Fatalf("host sink: %v\n%s", err, out.String())
	}
	s := lastSummary(t, out.String())
	t.Logf("host process: %+v", s)
	if s.Messages != count || s.Gaps != 0 || s.OutOfOrder != 0 || s.Sources != 1 {
		t.Errorf("host sink summary %+v", s)
	}
}

// TestSlowGuestSinkLosesNothing: a host application's reliable source
// emits 1,000-byte messages as fast as it may to a sink in a VM whose
// application takes only 2,000 a second. Without flow control on the
// guest's link the daemon would fill the guest's socket buffer in a
// fraction of a second and the guest's kernel would drop the rest unseen
// (Udp RcvbufErrors). With guestlib's credit the daemon keeps no more on
// the way than the sink has room for: the source is held back (it blocks
// for room), every message arrives once and in order, the guest's kernel
// drops nothing, and velocectl streams counts the waits.
func TestSlowGuestSinkLosesNothing(t *testing.T) {
	testutil.RequiresRoot(t)
	const count = 12000
	d, socks, app := daemonWithAppSocket(t, 22)
	kernel, initramfs := perfImage(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	vm := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, NICs: []vmtest.NIC{{Socket: socks[0]}},
		Guest: &guestinit.Config{Net: []guestinit.NetConfig{{Name: "eth0", DHCP: true}},
			Run: []string{"/bin/sh", "-c", "/bin/veloce-perf sink --channel 22 --count " + itoaU(count) +
				" --pace 2000 --timeout 6m; s=$?; grep Udp: /proc/net/snmp; exit $s"}}})
	if _, err := vm.WaitConsole(ctx, "ready"); err != nil {
		t.Fatal(err)
	}
	host := exec.CommandContext(ctx, perfPath, "source", "--socket", app, "--reliable", "--channel", "22",
		"--count", itoaU(count), "--size", "1000", "--timeout", "6m")
	var out syncBuf
	host.Stdout, host.Stderr = &out, &out
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	var waits uint64
	done := make(chan error, 1)
	go func() { done <- host.Wait() }()
	for running := true; running; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("host source: %v\n%s", err, out.String())
			}
			running = false
		case <-time.After(200 * time.Millisecond):
		}
		for _, st := range d.Streams() {
			for _, sk := range st.Sinks {
				if sk.Channel == 22 {
					waits = max(waits, sk.CreditWaits)
				}
			}
		}
	}
	r, err := vm.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := lastSummaryBefore(t, r.Output, "Udp:")
	udp := vmtest.UDPCounters(r.Output)
	t.Logf("guest sink %+v; guest Udp %v; credit waits %d; host source %s", s, udp, waits, strings.TrimSpace(out.String()))
	if r.Err() != nil || s.Messages != count || s.Gaps != 0 || s.OutOfOrder != 0 || s.Dropped != 0 {
		t.Errorf("guest sink %+v (%v), want %d messages in order, none dropped", s, r.Err(), count)
	}
	if udp == nil || udp["RcvbufErrors"] != 0 {
		t.Errorf("guest kernel UDP counters %v: want no RcvbufErrors", udp)
	}
	if waits == 0 {
		t.Error("the sink's credit never held a delivery back: the test did not outrun the guest")
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder // +checklocks:mu
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestGuestPingPongWithHostEcho: veloce-perf's ping-pong from inside a VM
// against an echo on the host: every round trip completes.
func TestGuestPingPongWithHostEcho(t *testing.T) {
	testutil.RequiresRoot(t)
	var app string
	_, socks := startDaemonWith(t, func(o *DaemonOptions) {
		app = filepath.Join(filepath.Dir(o.ControlSocket), "app.sock")
		o.AppSocket = app
		o.Ports[0].Tenant = HostTenant // the VM is the operator's, as the host echo is
	}, "vm")
	kernel, initramfs := perfImage(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	echo := exec.CommandContext(ctx, perfPath, "echo", "--socket", app, "--in", "31", "--out", "32", "--timeout", "4m")
	var out syncBuf
	echo.Stdout, echo.Stderr = &out, &out
	if err := echo.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { echo.Process.Kill(); echo.Wait() }()
	for !strings.Contains(out.String(), "ready") {
		if ctx.Err() != nil {
			t.Fatalf("host echo never ready:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	vm := vmtest.Boot(t, vmtest.Options{Kernel: kernel, Initramfs: initramfs, NICs: []vmtest.NIC{{Socket: socks[0]}},
		Guest: &guestinit.Config{Net: []guestinit.NetConfig{{Name: "eth0", DHCP: true}},
			Run: []string{"/bin/veloce-perf", "pingpong", "--out", "31", "--in", "32", "--count", "200", "--wait", "5s"}}})
	r, err := vm.Wait(ctx)
	if err != nil || r.Err() != nil {
		t.Fatalf("guest pingpong: %v %v\n%s", err, r.Err(), r.Output)
	}
	lines := strings.Split(strings.TrimSpace(r.Output), "\n")
	var s struct {
		Samples  int     `json:"samples"`
		Lost     int     `json:"lost"`
		MedianUS float64 `json:"median_us"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &s); err != nil {
		t.Fatalf("no summary:\n%s", r.Output)
	}
	t.Logf("guest <-> host round trips: %+v (TCG guest: absolute times mean little)", s)
	if s.Samples != 200 || s.Lost != 0 || s.MedianUS <= 0 {
		t.Errorf("summary %+v", s)
	}
}
