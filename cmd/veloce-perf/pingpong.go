package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/veloce-io/veloce/guestlib"
)

// RTTSummary is what pingpong prints last.
type RTTSummary struct {
	Role     string  `json:"role"`
	Mode     string  `json:"mode"` // veloce or raw-udp
	Size     int     `json:"size"`
	Samples  int     `json:"samples"`
	MedianUS float64 `json:"median_us"`
	P99US    float64 `json:"p99_us"`
	MinUS    float64 `json:"min_us"`
	Lost     int     `json:"lost"`
	Datapath string  `json:"datapath,omitempty"`
}

// runPingPong is the paper's ping-pong: "pingpong" sends a message and
// waits for it to come back, count times; "echo" returns every message.
// On the Veloce API the two sides use two channels (--out, --in); with
// --raw the same exchange runs over plain UDP sockets, for reference.
func runPingPong(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	role := args[0]
	fs := flag.NewFlagSet("veloce-perf "+role, flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.Uint("out", 1, "channel to emit on (echo: the reply channel)")
	in := fs.Uint("in", 2, "channel to receive on")
	count := fs.Int("count", 10000, "round trips (pingpong), or messages to return (echo; 0: until the timeout)")
	warmup := fs.Int("warmup", 100, "untimed round trips first (pingpong)")
	size := fs.Int("size", 64, "message size in bytes (pingpong)")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up after this long")
	wait := fs.Duration("wait", time.Second, "pingpong: a reply later than this counts as lost")
	raw := fs.String("raw", "", "raw UDP instead of Veloce: pingpong sends to this address; echo listens on it")
	socket := fs.String("socket", "", "the daemon's unix socket for host applications (default: as guestlib finds it)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *size < 8 || *size > guestlib.MaxMessage {
		return fmt.Errorf("--size %d: want 8 to %d", *size, guestlib.MaxMessage)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	var send func([]byte) error
	var recv func([]byte) (int, error)
	sum := RTTSummary{Role: role, Mode: "veloce", Size: *size}
	if *raw != "" {
		sum.Mode = "raw-udp"
		ap, err := netip.ParseAddrPort(*raw)
		if err != nil {
			return fmt.Errorf("--raw: %w", err)
		}
		var conn *net.UDPConn
		var peer net.Addr
		if role == "echo" {
			conn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
		} else {
			conn, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(ap))
		}
		if err != nil {
			return err
		}
		defer conn.Close()
		context.AfterFunc(ctx, func() { conn.Close() })
		if role == "echo" {
			recv = func(b []byte) (int, error) {
				n, a, err := conn.ReadFrom(b)
				peer = a
				return n, err
			}
			send = func(b []byte) error { _, err := conn.WriteTo(b, peer); return err }
		} else {
			recv = func(b []byte) (int, error) { return conn.Read(b) }
			send = func(b []byte) error { _, err := conn.Write(b); return err }
		}
	} else {
		s, err := guestlib.Open(ctx, guestlib.Options{Socket: *socket})
		if err != nil {
			return err
		}
		defer s.Close()
		st, err := s.CreateStream(ctx, guestlib.StreamOptions{})
		if err != nil {
			return err
		}
		sum.Datapath = st.Datapath
		src, err := st.CreateSource(ctx, uint32(*out))
		if err != nil {
			return err
		}
		sink, err := st.CreateSink(ctx, uint32(*in), guestlib.SinkOptions{})
		if err != nil {
			return err
		}
		send = func(b []byte) error {
			buf, err := src.GetBufferContext(ctx, len(b))
			if err != nil {
				return err
			}
			copy(buf.Data, b)
			_, err = src.Emit(buf)
			return err
		}
		recv = func(b []byte) (int, error) {
			m, err := sink.Consume(ctx)
			if err != nil {
				return 0, err
			}
			n := copy(b, m.Data)
			m.Release()
			return n, nil
		}
	}
	fmt.Fprintln(stdout, "ready")
	buf := make([]byte, 2048)
	if role == "echo" {
		for i := 0; *count == 0 || i < *count; i++ {
			n, err := recv(buf)
			if err != nil {
				if ctx.Err() != nil {
					break
				}
				return err
			}
			if err := send(buf[:n]); err != nil {
				return err
			}
			sum.Samples++
		}
		b, _ := json.Marshal(sum)
		fmt.Fprintln(stdout, string(b))
		return nil
	}

	// pingpong: the message carries its number, so a late reply to an
	// earlier (lost) one is recognised and skipped.
	msg := make([]byte, *size)
	rtts := make([]time.Duration, 0, *count)
	replies := make(chan uint64, 16)
	go func() {
		for {
			n, err := recv(buf)
			if err != nil {
				close(replies)
				return
			}
			if n >= 8 {
				replies <- le64(buf)
			}
		}
	}()
	for i := 0; i < *warmup+*count; i++ {
		put64(msg, uint64(i))
		start := time.Now()
		if err := send(msg); err != nil {
			return err
		}
		got := false
		deadline := time.NewTimer(*wait)
		for !got {
			select {
			case v, ok := <-replies:
				if !ok {
					return errors.New("receive failed")
				}
				got = v == uint64(i)
			case <-deadline.C:
				sum.Lost++
				got = true
				start = time.Time{}
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		deadline.Stop()
		if i >= *warmup && !start.IsZero() {
			rtts = append(rtts, time.Since(start))
		}
	}
	slices.Sort(rtts)
	sum.Samples = len(rtts)
	if len(rtts) > 0 {
		us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
		sum.MinUS, sum.MedianUS, sum.P99US = us(rtts[0]), us(rtts[len(rtts)/2]), us(rtts[min(len(rtts)-1, len(rtts)*99/100)])
	}
	b, _ := json.Marshal(sum)
	fmt.Fprintln(stdout, string(b))
	return nil
}

func put64(b []byte, v uint64) {
	for i := 0; i < 8; i++ {
		b[i] = byte(v >> (8 * i))
	}
}

func le64(b []byte) uint64 {
	var v uint64
	for i := 0; i < 8; i++ {
		v |= uint64(b[i]) << (8 * i)
	}
	return v
}
