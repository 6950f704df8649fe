// Command veloce-perf drives the Veloce API from a guest or the host: a
// sink that counts and checks what it receives (throughput), a source that
// emits at a given rate, and the paper's ping-pong (RTT), on the Veloce API
// or, for reference, on plain UDP sockets.
//
//	veloce-perf sink     --channel 1 --count 10000
//	veloce-perf source   --channel 1 --count 10000 --size 64 --rate 2000
//	veloce-perf echo     --in 1 --out 2
//	veloce-perf pingpong --out 1 --in 2 --count 10000 --size 64
//	veloce-perf echo --raw 10.0.0.2:7090 & veloce-perf pingpong --raw 10.0.0.2:7090
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

	"github.com/veloce-io/veloce/guestlib"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "veloce-perf:", err)
		}
		os.Exit(1)
	}
}

const usage = `usage: veloce-perf sink|source|pingpong|echo|junk [flags]

  sink     receive --count messages on --channel, check each source's order
  source   emit --count messages of --size bytes on --channel at --rate per second
  pingpong send a message on --out and wait for it on --in, --count times: RTT
  echo     return every message from --in on --out (the other side of pingpong)
           (pingpong and echo with --raw ADDR: the same over plain UDP sockets)
  junk     send --count malformed datagrams to the daemon's service port
           (robustness testing: the daemon counts and drops them)

Both print a JSON summary on the last line.
`

// Summary is the JSON veloce-perf prints last.
type Summary struct {
	Role       string  `json:"role"`
	Channel    uint32  `json:"channel"`
	Messages   uint64  `json:"messages"`
	Bytes      uint64  `json:"bytes"`
	Seconds    float64 `json:"seconds"`
	Rate       float64 `json:"messages_per_second"`
	Sources    int     `json:"sources,omitempty"`
	Gaps       uint64  `json:"gaps,omitempty"`
	OutOfOrder uint64  `json:"out_of_order,omitempty"`
	// Dropped counts what arrived while the sink's queue was full.
	Dropped uint64 `json:"dropped,omitempty"`
	// Corrupt counts messages whose bytes are not the source's pattern
	// (sink --check).
	Corrupt  uint64 `json:"corrupt,omitempty"`
	Datapath string `json:"datapath"`
	Warning  string `json:"warning,omitempty"`
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && (args[0] == "pingpong" || args[0] == "echo") {
		return runPingPong(ctx, args, stdout, stderr)
	}
	if len(args) == 0 || (args[0] != "sink" && args[0] != "source" && args[0] != "junk") {
		fmt.Fprint(stderr, usage)
		return errors.New("want sink, source, pingpong, echo or junk")
	}
	fs := flag.NewFlagSet("veloce-perf "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	channel := fs.Uint("channel", 1, "channel id")
	count := fs.Uint64("count", 10000, "messages to send or receive")
	size := fs.Int("size", 64, "message size in bytes (source)")
	rate := fs.Float64("rate", 0, "messages per second (source); 0 is as fast as possible")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up after this long")
	accel := fs.Bool("accel", false, "ask for an accelerated datapath")
	reliable := fs.Bool("reliable", false, "ask for reliable, in-order delivery (source: exactly once to every peer's sinks)")
	text := fs.String("text", "", "source: send this text, with the message number appended, instead of a byte pattern")
	show := fs.Int("show", 0, "sink: print the first N messages as text")
	check := fs.Bool("check", false, "sink: check every byte of each message against the source's pattern (byte i is the first byte plus i); mismatches count as corrupt and fail the run")
	progress := fs.Duration("progress", 0, "sink: print the count and rate at this interval (e.g. 1s)")
	pace := fs.Float64("pace", 0, "sink: take at most this many messages per second, like a slow application; 0 is as fast as possible")
	socket := fs.String("socket", "", "the daemon's unix socket for host applications (default $VELOCE_APP_SOCKET, else /run/veloce/app.sock if present, else the VM link)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if args[0] == "junk" {
		return junk(stdout, *count)
	}
	s, err := guestlib.Open(ctx, guestlib.Options{Socket: *socket})
	if err != nil {
		return err
	}
	defer s.Close()
	st, err := s.CreateStream(ctx, guestlib.StreamOptions{Acceleration: *accel, Reliable: *reliable})
	if err != nil {
		return err
	}
	if st.Warning != "" {
		fmt.Fprintln(stderr, "veloce-perf: warning:", st.Warning)
	}
	sum := Summary{Role: args[0], Channel: uint32(*channel), Datapath: st.Datapath, Warning: st.Warning}
	var start time.Time
	switch args[0] {
	case "sink":
		sk, err := st.CreateSink(ctx, uint32(*channel), guestlib.SinkOptions{})
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, "ready")
		last := map[uint64]uint64{}
		var tick <-chan time.Time
		if *progress > 0 {
			t := time.NewTicker(*progress)
			defer t.Stop()
			tick = t.C
		}
		prevN, prevT := uint64(0), time.Now()
		var paceStart time.Time
		for sum.Messages < *count {
			if *pace > 0 && sum.Messages > 0 {
				if d := time.Until(paceStart.Add(time.Duration(float64(sum.Messages) * float64(time.Second) / *pace))); d > 0 {
					time.Sleep(d)
				}
			}
			select {
			case now := <-tick:
				fmt.Fprintf(stdout, "received %d messages, %.0f msg/s\n", sum.Messages, float64(sum.Messages-prevN)/now.Sub(prevT).Seconds())
				prevN, prevT = sum.Messages, now
			default:
			}
			m, err := sk.Consume(ctx)
			if err != nil {
				sum.Sources, sum.Dropped = len(last), sk.Dropped()
				report(stdout, &sum, start)
				return fmt.Errorf("after %d messages: %w", sum.Messages, err)
			}
			if sum.Messages == 0 {
				start = time.Now()
				paceStart = start
			}
			sum.Messages++
			sum.Bytes += uint64(len(m.Data))
			if int(sum.Messages) <= *show {
				fmt.Fprintf(stdout, "message %d from source %#x seq %d: %q\n", sum.Messages, m.Source, m.Seq, m.Data)
			}
			if prev, ok := last[m.Source]; ok {
				switch {
				case m.Seq <= prev:
					sum.OutOfOrder++
				case m.Seq > prev+1:
					sum.Gaps += m.Seq - prev - 1
				}
			}
			last[m.Source] = m.Seq
			if *check && !patternOK(m.Data) {
				sum.Corrupt++
			}
			m.Release()
		}
		sum.Sources, sum.Dropped = len(last), sk.Dropped()
	case "source":
		so, err := st.CreateSource(ctx, uint32(*channel))
		if err != nil {
			return err
		}
		start = time.Now()
		var interval time.Duration
		if *rate > 0 {
			interval = time.Duration(float64(time.Second) / *rate)
		}
		for sum.Messages < *count {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			sz := *size
			if *text != "" {
				sz = len(*text) + 24
			}
			b, err := so.GetBufferContext(ctx, sz) // waits while every slot is in flight
			if err != nil {
				return err
			}
			if *text != "" {
				b.Data = b.Data[:len(fmt.Appendf(b.Data[:0], "%s #%d", *text, sum.Messages+1))]
			} else {
				for i := range b.Data {
					b.Data[i] = byte(sum.Messages + uint64(i))
				}
			}
			n := len(b.Data)
			if _, err := so.Emit(b); errors.Is(err, guestlib.ErrNoBuffers) {
				// Back-pressure (the VM's link was full): the same
				// message again, after a pause.
				time.Sleep(time.Millisecond)
				continue
			} else if err != nil {
				return err
			}
			sum.Messages++
			sum.Bytes += uint64(n)
			if interval > 0 {
				if d := time.Until(start.Add(time.Duration(sum.Messages) * interval)); d > 0 {
					time.Sleep(d)
				}
			}
		}
	}
	report(stdout, &sum, start)
	if sum.Gaps > 0 || sum.OutOfOrder > 0 || sum.Corrupt > 0 {
		return fmt.Errorf("%d messages missing, %d out of order, %d corrupt", sum.Gaps, sum.OutOfOrder, sum.Corrupt)
	}
	return nil
}

// patternOK reports whether b is a source's byte pattern: byte i is
// b[0]+i (source without --text).
func patternOK(b []byte) bool {
	for i := range b {
		if b[i] != b[0]+byte(i) {
			return false
		}
	}
	return true
}

func report(w io.Writer, sum *Summary, start time.Time) {
	if !start.IsZero() {
		sum.Seconds = time.Since(start).Seconds()
		if sum.Seconds > 0 {
			sum.Rate = float64(sum.Messages) / sum.Seconds
		}
	}
	b, _ := json.Marshal(sum)
	fmt.Fprintln(w, string(b))
}

// junk sends malformed datagrams to the service port: wrong magic, a
// truncated header, a reply (which only the daemon sends), an emit for a
// session that does not exist.
func junk(w io.Writer, count uint64) error {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(guestlib.DefaultService))
	if err != nil {
		return err
	}
	defer c.Close()
	kinds := [][]byte{
		[]byte("not a veloce datagram"),
		{'V', 'G', 1},
		{'V', 'G', 1, 0x40, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		{'V', 'G', 9, 0x01, 1, 0, 0, 0, 0, 0, 0, 0},
		// Credits: for sessions that are not this socket's (one with no
		// room at all), and one cut short.
		{'V', 'G', 1, 0x83, 0, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff},
		{'V', 'G', 1, 0x83, 0, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 0, 0, 0},
		{'V', 'G', 1, 0x83, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0},
	}
	for i := uint64(0); i < count; i++ {
		if _, err := c.Write(kinds[i%uint64(len(kinds))]); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "{\"role\":\"junk\",\"messages\":%d}\n", count)
	return nil
}
