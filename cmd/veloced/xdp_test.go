package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/plugins/xdp"
)

func TestXDPFlagErrors(t *testing.T) {
	base := []string{"--vhost-user", "/tmp/x.sock"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--xdp", ""}, ""}, // empty: XDP off, no error from the XDP flags (the test wants none below)
		{[]string{"--xdp-addr", "10.0.0.1/24"}, "--xdp-addr needs --xdp"},
		{[]string{"--xdp-mode", "copy"}, "--xdp-mode needs --xdp"},
		{[]string{"--xdp-attach", "generic"}, "--xdp-attach needs --xdp"},
		{[]string{"--xdp-busy-poll", "50us"}, "--xdp-busy-poll needs --xdp"},
		{[]string{"--xdp", ":1"}, "--xdp"},
		{[]string{"--xdp", "eth0:x"}, "queue \"x\""},
		{[]string{"--xdp", "eth0:-1"}, "queue"},
		{[]string{"--xdp", "eth0:70000"}, "queue"},
		{[]string{"--xdp", "a-very-long-interface-name"}, "at most 15"},
		{[]string{"--xdp", "eth0", "--xdp-addr", "10.0.0.1"}, "--xdp-addr"},
		{[]string{"--xdp", "eth0", "--xdp-addr", "fd00::1/64"}, "IPv4"},
		{[]string{"--xdp", "eth0", "--xdp-mode", "fast"}, "--xdp-mode \"fast\": want auto, copy or zerocopy"},
		{[]string{"--xdp", "eth0", "--xdp-attach", "hw"}, "--xdp-attach \"hw\""},
		{[]string{"--xdp", "eth0", "--xdp-busy-poll", "-1us"}, "--xdp-busy-poll"},
		{[]string{"--xdp", "eth0", "--xdp-busy-poll", "10ns"}, "--xdp-busy-poll"},
		{[]string{"--xdp", "eth0", "--xdp-busy-poll", "2s"}, "--xdp-busy-poll"},
		{[]string{"--peer", "10.0.0.2:7000"}, "--peer needs --listen or --dpdk (or --rdma, --xdp)"},
	} {
		if tc.want == "" {
			continue
		}
		var stderr bytes.Buffer
		err := run(context.Background(), append(slices.Clone(base), tc.args...), &stderr)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error mentioning %q", tc.args, err, tc.want)
		}
	}
	// The flags reach the plugin's options.
	o := &xdpOpts{iface: "eth1:3", addr: "10.1.2.3/24", mode: "zerocopy", attach: "generic", busyPoll: 50 * time.Microsecond}
	xo, err := o.options(7078, nil)
	if err != nil {
		t.Fatal(err)
	}
	if xo.Interface != "eth1" || xo.Queue != 3 || xo.Addr.String() != "10.1.2.3/24" || xo.Bind != xdp.BindZeroCopy ||
		xo.Attach != xdp.AttachGeneric || xo.BusyPoll != 50*time.Microsecond || xo.Port != 7078 {
		t.Errorf("options %+v", xo)
	}
}

// TestXDPCannotAttachFallsBackToUDP: where the AF_XDP datapath cannot come
// up — another XDP program holds the interface, the driver has no
// zero-copy, the interface does not exist — veloced logs why and keeps
// running, and a stream asking for acceleration gets kernel UDP with the
// policy's warning. veloced leaves the interface as it found it.
func TestXDPCannotAttachFallsBackToUDP(t *testing.T) {
	testutil.Integration(t)
	a, b := testutil.NewNetns(t), testutil.NewNetns(t)
	testutil.Veth(t, a, "10.94.0.1/24", b, "10.94.0.2/24")
	va := ""
	{
		h := a.Netlink(t)
		links, _ := h.LinkList()
		h.Close()
		for _, l := range links {
			if l.Attrs().Name != "lo" {
				va = l.Attrs().Name
			}
		}
	}
	for _, tc := range []struct {
		name  string
		args  []string
		hold  bool   // another XDP program holds the interface
		step  string // what the log names
		after bool   // a program is on the interface after veloced stopped
	}{
		{"another program holds the interface", []string{"--xdp", va}, true, "attach XDP program", true},
		{"no zero-copy on veth", []string{"--xdp", va, "--xdp-mode", "zerocopy"}, false, "open AF_XDP socket", false},
		{"no such interface", []string{"--xdp", "nosuch0:1"}, false, "find interface", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.hold {
				var p *xdp.Plugin
				if err := a.Do(func() (err error) { p, err = xdp.New(xdp.Options{Interface: va}); return err }); err != nil {
					t.Fatal(err)
				}
				defer p.Close()
			}
			dir := t.TempDir()
			app := filepath.Join(dir, "app.sock")
			ctx, stderr, stop := inProcess(t, a.Do, append([]string{"--app-socket", app, "--control", filepath.Join(dir, "control.sock")}, tc.args...)...)
			defer stop()
			octx, ocancel := context.WithTimeout(ctx, 30*time.Second)
			defer ocancel()
			var s *guestlib.Session
			if err := a.Do(func() (err error) { s, err = guestlib.Open(octx, guestlib.Options{Socket: app}); return err }); err != nil {
				t.Fatalf("open a session: %v\n%s", err, stderr.String())
			}
			defer s.Close()
			st, err := s.CreateStream(octx, guestlib.StreamOptions{Acceleration: true, Frugal: true})
			if err != nil {
				t.Fatal(err)
			}
			if st.Datapath != "udp" || !strings.Contains(st.Warning, "no accelerated datapath") {
				t.Errorf("stream asking for acceleration: datapath %q, warning %q; want udp and a warning", st.Datapath, st.Warning)
			}
			log := stderr.String()
			if !strings.Contains(log, "AF_XDP datapath unavailable") || !strings.Contains(log, tc.step) || !strings.Contains(log, "hint=") {
				t.Errorf("veloced did not log why AF_XDP is unavailable (%q) with a hint:\n%s", tc.step, log)
			}
			s.Close()
			stop()
			if on := a.XDPAttached(t, va); on != tc.after {
				t.Errorf("after veloced stopped, XDP program on %s: %v, want %v", va, on, tc.after)
			}
		})
	}
	if a.XDPAttached(t, va) {
		t.Errorf("an XDP program is left on %s", va)
	}
}

// TestTwoXDPDaemons is the operator's view of the AF_XDP datapath: two
// veloced processes, each in its own network namespace with --xdp on its
// end of a veth the kernels address (and resolve by ARP), and host
// applications (veloce-perf over the daemons' app sockets) streaming
// 100,000 messages between them on an accelerated stream (the hosts have
// no RDMA or DPDK, so the policy picks XDP): every one arrives, in order. velocectl remote's data shows the datapath in
// copy mode with its counters. After SIGTERM each daemon exits cleanly and
// no XDP program is left on either interface.
func TestTwoXDPDaemons(t *testing.T) {
	testutil.Integration(t)
	testutil.RequiresRoot(t)
	dir := t.TempDir()
	bin := func(name string) string {
		out := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", out, "github.com/veloce-io/veloce/cmd/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", name, err, b)
		}
		return out
	}
	veloced, perf := bin("veloced"), bin("veloce-perf")

	a, b := testutil.NewNetns(t), testutil.NewNetns(t)
	va, vb := testutil.BareVeth(t, a, b)
	a.AddAddr(t, va, "10.94.1.1/24")
	b.AddAddr(t, vb, "10.94.1.2/24")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	type daemon struct {
		app, ctl string
		cmd      *exec.Cmd
		exited   chan struct{}
		log      string
	}
	start := func(ns *testutil.Netns, name, iface, peer, node string) *daemon {
		d := &daemon{app: filepath.Join(dir, name+".app"), ctl: filepath.Join(dir, name+".ctl"), log: filepath.Join(dir, name+".log"), exited: make(chan struct{})}
		logf, err := os.Create(d.log)
		if err != nil {
			t.Fatal(err)
		}
		d.cmd = exec.Command("ip", "netns", "exec", ns.Name, veloced, "--app-socket", d.app, "--control", d.ctl,
			"--xdp", iface, "--peer", peer, "--node-id", node)
		ready := testutil.WatchLine(control.ReadyLine, logf)
		d.cmd.Stdout, d.cmd.Stderr = logf, ready
		if err := d.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { d.cmd.Wait(); close(d.exited) }()
		t.Cleanup(func() {
			d.cmd.Process.Signal(syscall.SIGTERM)
			<-d.exited
			if t.Failed() {
				b, _ := os.ReadFile(d.log)
				t.Logf("%s's log:\n%s", name, b)
			}
		})
		ready.Wait(t, d.exited, time.Minute)
		return d
	}
	dA := start(a, "a", va, "10.94.1.2:7000", "1")
	dB := start(b, "b", vb, "10.94.1.1:7000", "2")
	for _, c := range []struct {
		ns    *testutil.Netns
		iface string
	}{{a, va}, {b, vb}} {
		if !c.ns.XDPAttached(t, c.iface) {
			t.Fatalf("no XDP program on %s while veloced runs", c.iface)
		}
	}

	const count = 100000
	sink := exec.CommandContext(ctx, "ip", "netns", "exec", b.Name, perf, "sink", "--socket", dB.app, "--accel", "--channel", "4",
		"--count", "100000", "--timeout", "90s")
	sinkOut, _ := sink.StdoutPipe()
	sink.Stderr = os.Stderr
	if err := sink.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(sinkOut)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("sink: %q", lines.Text())
	}
	clientA := control.NewClient(dA.ctl)
	for {
		info, err := clientA.Remote(ctx)
		if err == nil && len(info.Peers) == 1 && slices.Contains(info.Peers[0].Channels, 4) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("daemon a never learned of the sink: %+v %v", info, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	source := exec.CommandContext(ctx, "ip", "netns", "exec", a.Name, perf, "source", "--socket", dA.app, "--accel", "--channel", "4",
		"--count", "100000", "--size", "64", "--rate", "10000")
	if out, err := source.CombinedOutput(); err != nil {
		t.Fatalf("source: %v\n%s", err, out)
	}
	var last string
	for lines.Scan() {
		last = lines.Text()
	}
	if err := sink.Wait(); err != nil {
		for _, ns := range []*testutil.Netns{a, b} {
			out, _ := exec.Command("ip", "-n", ns.Name, "-s", "-s", "link").CombinedOutput()
			c := control.NewClient(map[*testutil.Netns]string{a: dA.ctl, b: dB.ctl}[ns])
			info, _ := c.Remote(context.Background())
			streams, _ := c.Streams(context.Background())
			t.Logf("%s:\n%s\nremote: %+v\nstreams: %+v", ns.Name, out, info, streams)
		}
		t.Fatalf("sink: %v; last line %s", err, last)
	}
	var sum struct {
		Messages   uint64 `json:"messages"`
		Gaps       uint64 `json:"gaps"`
		OutOfOrder uint64 `json:"out_of_order"`
		Datapath   string `json:"datapath"`
		Warning    string `json:"warning"`
	}
	if err := json.Unmarshal([]byte(last), &sum); err != nil {
		t.Fatalf("sink summary %q: %v", last, err)
	}
	t.Logf("sink: %+v", sum)
	if sum.Messages != count || sum.Gaps != 0 || sum.OutOfOrder != 0 || sum.Datapath != "xdp" || sum.Warning != "" {
		t.Errorf("sink summary %+v", sum)
	}
	for _, c := range []struct {
		d    *daemon
		role string
	}{{dA, "sent"}, {dB, "received"}} {
		info, err := control.NewClient(c.d.ctl).Remote(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(info.Datapaths) != 1 || info.Datapaths[0].Name != control.DatapathXDP {
			t.Fatalf("datapaths: %+v", info.Datapaths)
		}
		st, err := control.DecodeXDPStats(info.Datapaths[0])
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %+v", c.role, st)
		n, moved := info.Sent, st.TxPackets
		if c.role == "received" {
			n, moved = info.Received, st.RxPackets
		}
		if n != count || moved < count {
			t.Errorf("daemon %s %d messages (%d datagrams on XDP), want %d: %+v", c.role, n, moved, count, info)
		}
		if st.Mode != "copy" || st.Attach != "native" || st.BusyPoll {
			t.Errorf("XDP mode %q attach %q busy poll %v, want copy, native, off on veth", st.Mode, st.Attach, st.BusyPoll)
		}
	}
	// SIGTERM: each daemon exits 0 and takes its program with it.
	for _, c := range []struct {
		d     *daemon
		ns    *testutil.Netns
		iface string
	}{{dA, a, va}, {dB, b, vb}} {
		if err := c.d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-c.d.exited:
		case <-time.After(time.Minute):
			t.Fatalf("veloced did not exit within a minute of SIGTERM")
		}
		if ps := c.d.cmd.ProcessState; ps == nil || !ps.Success() {
			t.Errorf("veloced exited with %v after SIGTERM", ps)
		}
		if c.ns.XDPAttached(t, c.iface) {
			t.Errorf("XDP program left on %s after SIGTERM", c.iface)
		}
		log, _ := os.ReadFile(c.d.log)
		if !strings.Contains(string(log), "AF_XDP datapath") || !strings.Contains(string(log), "mode=copy") {
			t.Errorf("the log does not say which XDP mode is in use:\n%s", log)
		}
	}
}
