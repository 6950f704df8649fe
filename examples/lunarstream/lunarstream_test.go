package lunarstream_test

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/examples/lunarstream"
	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/plugins/udp"
)

const channel = 7

// stream runs consumers consumers on sockB (each its own session) and a
// producer on sockA (all host applications) for o's frames and returns
// the consumers' summaries; with producer's daemon dA set, the producer
// starts once dA knows of the sinks.
//
// The producer's messages are of up to msgSize bytes (0: the session's
// largest); when a frame fits one, it must go as one.
func stream(t *testing.T, ctx context.Context, sockA, sockB string, dA *backend.Daemon, msgSize, consumers int, o lunarstream.Options) []lunarstream.Summary {
	t.Helper()
	open := func(sock string) *guestlib.Session {
		s, err := guestlib.Open(ctx, guestlib.Options{Socket: sock})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	sa := open(sockA)
	type result struct {
		s   lunarstream.Summary
		err error
	}
	done := make(chan result, consumers)
	for range consumers {
		cons, err := lunarstream.OpenConsumer(ctx, open(sockB), channel, true, o.Frames, msgSize)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			s, err := cons.Run(ctx, 10*time.Second) // every frame, or 10 s of nothing
			done <- result{s, err}
		}()
	}
	if dA != nil {
		waitForSink(t, ctx, dA)
	}
	ps, err := lunarstream.Produce(ctx, sa, channel, true, msgSize, o)
	if err != nil {
		t.Fatalf("producer: %v (%+v)", err, ps)
	}
	t.Logf("producer %+v", ps)
	if msgSize == 0 {
		msgSize = lunarstream.MessageSize(sa)
	}
	perFrame := uint64((o.FrameSize + msgSize - lunarstream.HeaderLen - 1) / (msgSize - lunarstream.HeaderLen))
	if ps.Messages != perFrame*uint64(o.Frames) {
		t.Errorf("%d messages for %d frames of %d bytes in messages of up to %d", ps.Messages, o.Frames, o.FrameSize, msgSize)
	}
	var out []lunarstream.Summary
	for range consumers {
		r := <-done
		t.Logf("consumer %+v", r.s)
		if r.err != nil {
			t.Fatalf("consumer: %v", r.err)
		}
		out = append(out, r.s)
	}
	return out
}

func checkAll(t *testing.T, ss []lunarstream.Summary, frames int) {
	t.Helper()
	for _, s := range ss {
		checkOne(t, s, frames)
	}
}

func checkOne(t *testing.T, s lunarstream.Summary, frames int) {
	t.Helper()
	if s.Frames != uint64(frames) || s.Verified != uint64(frames) || s.Corrupt != 0 || s.Lost != 0 || s.Malformed != 0 {
		t.Fatalf("want all %d frames verified: %+v", frames, s)
	}
}

// TestFramesBetweenHostApplications: two applications on one host, one
// daemon (the host transport, shared memory, --max-message 4 MiB): every
// frame of 1280x720 RGB arrives as one message and is verified byte for
// byte; and so it does in parts of one slot each.
func TestFramesBetweenHostApplications(t *testing.T) {
	testutil.Integration(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "app.sock")
	d, err := backend.NewDaemon(backend.DaemonOptions{ControlSocket: filepath.Join(dir, "control.sock"), AppSocket: sock,
		Runtime: backend.RuntimeOptions{Remote: backend.RemoteOptions{MaxMessage: 4 << 20}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	const frames = 10
	o := lunarstream.Options{FrameSize: lunarstream.DefaultFrameSize, FPS: 10, Frames: frames}
	t.Run("one message a frame", func(t *testing.T) { checkAll(t, stream(t, ctx, sock, sock, nil, 0, 1, o), frames) })
	t.Run("frames in parts", func(t *testing.T) { checkAll(t, stream(t, ctx, sock, sock, nil, guestlib.MaxMessage, 1, o), frames) })
	// A consumer told of more frames than come stops once nothing arrives
	// for its idle time and counts the missing ones as lost.
	t.Run("producer stops early", func(t *testing.T) {
		sa, err := guestlib.Open(ctx, guestlib.Options{Socket: sock})
		if err != nil {
			t.Fatal(err)
		}
		defer sa.Close()
		cons, err := lunarstream.OpenConsumer(ctx, sa, channel, true, 5, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := lunarstream.Produce(ctx, sa, channel, true, 0, lunarstream.Options{FrameSize: 1000, Frames: 3}); err != nil {
			t.Fatal(err)
		}
		s, err := cons.Run(ctx, 200*time.Millisecond)
		if err != nil || s.Frames != 5 || s.Verified != 3 || s.Lost != 2 {
			t.Fatalf("%v %+v", err, s)
		}
	})
}

// TestFramesOverTCP: the reference, the same frames over a TCP connection
// on loopback, verified the same way.
func TestFramesOverTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const frames = 10
	done := make(chan error, 1)
	r := lunarstream.NewReceiver(frames, 1<<16)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		done <- lunarstream.ConsumeStream(c, r)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lunarstream.Run(context.Background(), lunarstream.Options{FPS: 0, Frames: frames}, &lunarstream.StreamEmitter{W: c}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkOne(t, r.Summary(), frames)
}

// TestFramesBetweenTwoHosts: Lunar Streaming between two hosts (network
// namespaces joined by a veth), each with its daemon on kernel UDP: a
// producer on A sends 30 frames at 10 frames/s on a reliable stream, one
// message a frame (--max-message 4 MiB: fragments between the daemons);
// two consumers on B (two sessions) verify every one.
func TestFramesBetweenTwoHosts(t *testing.T) {
	a, b := testutil.NewNetns(t), testutil.NewNetns(t)
	testutil.Veth(t, a, "10.77.61.1/24", b, "10.77.61.2/24")
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	plugin := func(ns *testutil.Netns, addr string) *udp.Plugin {
		var p *udp.Plugin
		if err := ns.Do(func() (err error) {
			p, err = udp.New(udp.Options{Listen: netip.MustParseAddrPort(addr), RecvBuffer: 8 << 20, SendBuffer: 8 << 20})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pa, pb := plugin(a, "10.77.61.1:7078"), plugin(b, "10.77.61.2:7078")
	daemon := func(name string, node uint32, dp, peer *udp.Plugin) (*backend.Daemon, string) {
		sock := filepath.Join(dir, "app-"+name+".sock")
		d, err := backend.NewDaemon(backend.DaemonOptions{ControlSocket: filepath.Join(dir, "control-"+name+".sock"), AppSocket: sock,
			Runtime: backend.RuntimeOptions{NodeID: node, Remote: backend.RemoteOptions{Datapath: dp, Peers: []netip.AddrPort{peer.LocalAddr()},
				DirectoryInterval: 50 * time.Millisecond, MaxMessage: 4 << 20}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d, sock
	}
	dA, sockA := daemon("a", 1, pa, pb)
	_, sockB := daemon("b", 2, pb, pa)
	const frames = 30
	ss := stream(t, ctx, sockA, sockB, dA, 0, 2, lunarstream.Options{FrameSize: lunarstream.DefaultFrameSize, FPS: 10, Frames: frames})
	checkAll(t, ss, frames)
	for _, s := range ss {
		if s.Datapath != "udp" {
			t.Errorf("datapath %q, want udp", s.Datapath)
		}
	}
}

// waitForSink waits until d's peer has told it (by the directory) of a
// sink on channel: a source sends only where someone listens, so frames
// sent before would go nowhere.
func waitForSink(t *testing.T, ctx context.Context, d *backend.Daemon) {
	t.Helper()
	for {
		for _, p := range d.Remote().Peers {
			if slices.Contains(p.Channels, channel) {
				return
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("the peer never announced a sink on channel %d: %+v", channel, d.Remote().Peers)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
