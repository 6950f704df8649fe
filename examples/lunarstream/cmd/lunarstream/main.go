// Command lunarstream runs Lunar Streaming's producer or consumer
// (examples/lunarstream) on a Veloce stream or, as the reference, over
// plain TCP.
//
//	lunarstream consume --channel 7 --frames 300 -o json         # host app or guest
//	lunarstream produce --channel 7 --frames 300 --fps 30
//	lunarstream consume --tcp 10.0.0.2:7100 --frames 300 -o json # TCP reference: listens
//	lunarstream produce --tcp 10.0.0.2:7100 --frames 300 --fps 30 #                dials
//
// A consumer in a VM receives messages of at most guestlib.MaxMessage
// (1,436 bytes) for now: give its producer --message-size 1436.
//
// The consumer prints "lunarstream: consumer ready" on stderr once its sink (or listener) is
// open, and its summary (lunarstream.Summary) on stdout at the end; it
// exits 1 unless every frame was verified.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/veloce-io/veloce/examples/lunarstream"
	"github.com/veloce-io/veloce/guestlib"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "lunarstream:", err)
		}
		os.Exit(1)
	}
}

// readyLine is what the consumer prints on stderr once it listens.
const readyLine = "lunarstream: consumer ready"

const usage = "usage: lunarstream produce|consume [flags] (-h for the flags)\n"

type config struct {
	socket, tcp, output   string
	frameSize, frames     int
	messageSize           int
	fps                   float64
	channel               uint
	reliable              bool
	idle, timeout, linger time.Duration
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "produce" && args[0] != "consume") {
		fmt.Fprint(stderr, usage)
		return errors.New("want produce or consume")
	}
	role := args[0]
	fs := flag.NewFlagSet("lunarstream "+role, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	fs.StringVar(&c.socket, "socket", "", "daemon's app socket (host transport); empty: guestlib's default ($VELOCE_APP_SOCKET, /run/veloce/app.sock, else the virtio transport)")
	fs.StringVar(&c.tcp, "tcp", "", "TCP reference instead of a stream: the consumer listens on ADDR, the producer dials it")
	fs.IntVar(&c.frameSize, "frame-size", lunarstream.DefaultFrameSize, "frame body in bytes (1280x720 RGB)")
	fs.Float64Var(&c.fps, "fps", 30, "frame rate (0: as fast as the transport takes frames)")
	fs.IntVar(&c.frames, "frames", 300, "frames to send (producer) or expect (consumer)")
	fs.UintVar(&c.channel, "channel", 7, "stream channel")
	fs.BoolVar(&c.reliable, "reliable", true, "QoS Reliable (every frame arrives, in order)")
	fs.IntVar(&c.messageSize, "message-size", 0, "largest message, header included (0: the session's largest); a larger frame goes as parts")
	fs.DurationVar(&c.idle, "idle", 10*time.Second, "consumer: stop when nothing arrived for this long after the first frame")
	fs.DurationVar(&c.linger, "linger", time.Second, "producer: keep the session this long after the last frame (a reliable stream's window to another host drains)")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Minute, "give up after this long")
	fs.StringVar(&c.output, "o", "text", "summary format: text or json")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.output != "text" && c.output != "json" {
		return fmt.Errorf("-o %q: want text or json", c.output)
	}
	if c.frames < 1 || c.frameSize < 1 || c.frameSize > lunarstream.MaxFrameSize || c.fps < 0 || c.channel > 1<<32-1 {
		return fmt.Errorf("want --frames >= 1, --frame-size 1..%d, --fps >= 0, --channel < 2^32", lunarstream.MaxFrameSize)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var sum any
	var err error
	if role == "produce" {
		sum, err = produce(ctx, c)
	} else {
		sum, err = consume(ctx, c, stderr)
	}
	if sum != nil {
		if c.output == "json" {
			b, _ := json.Marshal(sum)
			fmt.Fprintf(stdout, "%s\n", b)
		} else {
			fmt.Fprintf(stdout, "%+v\n", sum)
		}
	}
	return err
}

func produce(ctx context.Context, c config) (any, error) {
	o := lunarstream.Options{FrameSize: c.frameSize, FPS: c.fps, Frames: c.frames}
	if c.tcp != "" {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", c.tcp)
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		defer stop()
		s, err := lunarstream.Run(ctx, o, &lunarstream.StreamEmitter{W: conn})
		s.Transport, s.Messages = "tcp", uint64(c.frames)
		return s, err
	}
	sess, err := guestlib.Open(ctx, guestlib.Options{Socket: c.socket})
	if err != nil {
		return nil, err
	}
	defer sess.Close()
	s, err := lunarstream.Produce(ctx, sess, uint32(c.channel), c.reliable, c.messageSize, o)
	if err == nil {
		select {
		case <-time.After(c.linger):
		case <-ctx.Done():
		}
	}
	return s, err
}

func consume(ctx context.Context, c config, stderr io.Writer) (any, error) {
	var sum lunarstream.Summary
	var err error
	if c.tcp != "" {
		sum, err = consumeTCP(ctx, c, stderr)
	} else {
		sum, err = consumeStream(ctx, c, stderr)
	}
	if err == nil && (sum.Verified != uint64(c.frames) || sum.Frames != uint64(c.frames)) {
		err = fmt.Errorf("%d of %d frames verified (%d corrupt, %d lost)", sum.Verified, c.frames, sum.Corrupt, sum.Lost)
	}
	return sum, err
}

func consumeStream(ctx context.Context, c config, stderr io.Writer) (lunarstream.Summary, error) {
	sess, err := guestlib.Open(ctx, guestlib.Options{Socket: c.socket})
	if err != nil {
		return lunarstream.Summary{}, err
	}
	defer sess.Close()
	cons, err := lunarstream.OpenConsumer(ctx, sess, uint32(c.channel), c.reliable, c.frames, c.messageSize)
	if err != nil {
		return lunarstream.Summary{}, err
	}
	fmt.Fprintln(stderr, readyLine)
	return cons.Run(ctx, c.idle)
}

func consumeTCP(ctx context.Context, c config, stderr io.Writer) (lunarstream.Summary, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", c.tcp)
	if err != nil {
		return lunarstream.Summary{}, err
	}
	defer ln.Close()
	fmt.Fprintln(stderr, readyLine)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	conn, err := ln.Accept()
	if err != nil {
		return lunarstream.Summary{}, err
	}
	defer conn.Close()
	stopConn := context.AfterFunc(ctx, func() { conn.Close() })
	defer stopConn()
	r := lunarstream.NewReceiver(c.frames, 1<<20)
	err = lunarstream.ConsumeStream(conn, r)
	s := r.Summary()
	s.Transport = "tcp"
	return s, err
}
