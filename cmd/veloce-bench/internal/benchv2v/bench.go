// Package benchv2v is veloce-bench v2v: the OVS-DPDK VM-to-VM (V2V)
// setup, two guests exchanging messages through the host, Veloce against
// DPDK.
//
//   - Veloce: a backend.Daemon in this process with two vhost-user ports
//     in one tenant. Each guest is a DPDK net_virtio_user port of this
//     process (internal/dpdk) attached to one of them, speaking
//     guestproto over UDP with internal/netstack as its IP stack. Guest 1
//     opens a session, a stream and a source on a channel and emits
//     Size-byte messages (one Emit frame each, the same frame every time)
//     in bursts of 32; guest 2 opens a session, a stream and a sink on the
//     channel and counts the Deliver frames for its sink that arrive on
//     its RX ring (parsed: Ethernet, IPv4, UDP, guestproto). Guest 2
//     grants credits as guestlib's sink does (a window of 1,024
//     deliveries, a Credit every quarter window): what the window has no
//     room for is refused (an Outcome frame back to guest 1). veloced
//     writes each Deliver straight into guest 2's RX buffer, from guest
//     1's TX buffer (vhostuser.NetDevice.DeliverRX: one copy).
//   - Reference: testpmd io-forwarding between two net_vhost ports (the
//     switch), with the same two guests on them: guest 1 sends RefSize-byte
//     UDP frames, guest 2 counts every frame (as testpmd rxonly would).
//
// Rates are what guest 2 counted, per second, after Warmup seconds, over
// Samples seconds; a round's rate is the median. Rounds alternate which
// side goes first, and each side's figure is its best round (interference
// on the shared machine only slows a round down; see benchvhost).
//
// Cores, and why the guests are not testpmd. The reference has
// three testpmds: txonly, the switch, rxonly. Three busy-polling threads
// in a pipeline on a two-core machine starve each other: two of them
// share a core in scheduler time slices, and a ring of 1,024 entries
// fills in well under a slice, so the stage downstream gets a ring's
// worth per slice. Measured so, the reference gave 0.037 Mpps (txonly at
// 3.6). So both guests run on one thread here (GuestCPU), a burst sent on
// guest 1, then guest 2's ring drained, which clocks itself, and the host
// side gets the other core (HostCPU): testpmd's one forwarding lcore, or
// veloced's port pollers (PollCPUs), which, pinned to one CPU, share one
// thread as testpmd's ports do (vhostuser's poll groups; as two threads
// they got the core in time slices, a Credit from guest 2 waited for its
// poller's slice, and the rate fell to 0.02-0.05 of testpmd's).
// --host-cpu -1 leaves veloced's pollers unpinned, a thread each (they
// may then take the guests' core too). The guests are the same code on both
// sides; only the switch differs. The process's EAL's main lcore (parked,
// never running) is CPU 0.
package benchv2v

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchvhost"
)

// Config configures a run.
type Config struct {
	// Rounds is how many rounds measure each side; default 3.
	Rounds int
	// Samples is how many one-second rates make a round's window;
	// default 3. Warmup is how many seconds are skipped before it;
	// default 2.
	Samples, Warmup int
	// Size is the message payload in bytes; default 64. RefSize is the
	// reference's frame size (testpmd --txpkts); default 64.
	Size, RefSize int
	// Testpmd is the testpmd binary; default dpdk-testpmd.
	Testpmd string
	// GuestCPU is the core of the guests' thread (default 0); HostCPU
	// the core of the host side (default 1): testpmd's forwarding lcore,
	// veloced's port pollers (PollCPUs). HostCPU -1 leaves veloced's
	// pollers unpinned (testpmd's lcore then goes to the other core).
	GuestCPU, HostCPU int
	// NoReference measures Veloce only.
	NoReference bool
	// Dir holds the sockets; default a new temporary directory.
	Dir string
	// CPUProfile, when set, is where a CPU profile of the Veloce rounds'
	// measurement windows goes (the whole process: veloced's pollers and
	// the guests' thread; go tool pprof -top FILE).
	CPUProfile string
	// Log receives progress lines; nil discards.
	Log io.Writer

	frameLen int  // guest 1's Emit frame, once known
	profiled bool // CPUProfile was taken
}

// Result is a run's outcome.
type Result struct {
	// VeloceMpps and ReferenceMpps are the best round's rate at the
	// receiving guest, in millions of messages (frames) per second.
	VeloceMpps    float64 `json:"veloce_mpps"`
	ReferenceMpps float64 `json:"reference_mpps,omitempty"`
	// Ratio is VeloceMpps / ReferenceMpps.
	Ratio float64 `json:"ratio,omitempty"`
	// VeloceSenderMpps and ReferenceSenderMpps are the sending guest's
	// rate in the best round (a cross check: the difference was dropped
	// or refused on the way).
	VeloceSenderMpps    float64 `json:"veloce_sender_mpps"`
	ReferenceSenderMpps float64 `json:"reference_sender_mpps,omitempty"`
	// VeloceRounds and ReferenceRounds are every round's rate (Mpps).
	VeloceRounds    []float64 `json:"veloce_rounds_mpps"`
	ReferenceRounds []float64 `json:"reference_rounds_mpps,omitempty"`
	// MessageSize is Veloce's message payload; EmitFrameSize the Emit
	// frame guest 1 sends for it; ReferenceFrameSize testpmd's frames.
	MessageSize        int `json:"message_size"`
	EmitFrameSize      int `json:"emit_frame_size"`
	ReferenceFrameSize int `json:"reference_frame_size"`
}

const usage = `usage: veloce-bench v2v [--rounds 3] [--samples 3] [--warmup 2] [--size 64] [--ref-size 64]
                        [--guest-cpu 0] [--host-cpu 1] [--testpmd dpdk-testpmd]
                        [--no-reference] [--cpuprofile FILE] [-o table|json] [-q]

VM-to-VM through the host (the OVS-DPDK V2V setup): guest 1 emits 64-byte
stream messages that veloced delivers to a sink of guest 2, both guests DPDK
net_virtio_user ports on veloced's vhost-user ports; against testpmd
io-forwarding between two net_vhost ports with the same two guests sending
64-byte frames. Both guests run on one thread (--guest-cpu), the host side on
the other core (--host-cpu); three testpmds would starve each other on two
cores (see the package doc). Prints the Mpps received by guest 2 on each side
and the ratio Veloce/DPDK (best of --rounds alternating rounds).
Needs root, dpdk-testpmd and a build with -tags dpdk and cgo (make build).

Flags:
`

// options is what the command line says.
type options struct {
	cfg    Config
	output string
	quiet  bool
}

// parse reads the command line.
func parse(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("veloce-bench v2v", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	fs.IntVar(&o.cfg.Rounds, "rounds", 3, "rounds per side, alternating which goes first; a side's rate is its best round")
	fs.IntVar(&o.cfg.Samples, "samples", 3, "one-second rates in a round's window (median)")
	fs.IntVar(&o.cfg.Warmup, "warmup", 2, "seconds of traffic skipped before the window")
	fs.IntVar(&o.cfg.Size, "size", 64, "Veloce message payload in bytes")
	fs.IntVar(&o.cfg.RefSize, "ref-size", 64, "reference frame size in bytes (testpmd --txpkts)")
	fs.IntVar(&o.cfg.GuestCPU, "guest-cpu", 0, "core of the thread that runs both guests")
	fs.IntVar(&o.cfg.HostCPU, "host-cpu", 1, "core of the host side: veloced's port pollers, testpmd's forwarding lcore (-1: veloced's unpinned)")
	fs.StringVar(&o.cfg.Testpmd, "testpmd", "dpdk-testpmd", "testpmd binary")
	fs.BoolVar(&o.cfg.NoReference, "no-reference", false, "measure Veloce only (no ratio)")
	fs.StringVar(&o.cfg.CPUProfile, "cpuprofile", "", "write a CPU profile of the Veloce rounds' windows to this file")
	fs.StringVar(&o.output, "o", "table", "output format: table or json")
	fs.BoolVar(&o.quiet, "q", false, "no progress lines on stderr")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch {
	case fs.NArg() != 0:
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	case o.output != "table" && o.output != "json":
		return nil, fmt.Errorf("-o %q: want table or json", o.output)
	case o.cfg.Rounds < 1 || o.cfg.Samples < 1 || o.cfg.Warmup < 0:
		return nil, errors.New("--rounds and --samples must be at least 1, --warmup at least 0")
	case o.cfg.Size < 1 || o.cfg.Size > maxMessage:
		return nil, fmt.Errorf("--size %d: want 1 to %d", o.cfg.Size, maxMessage)
	case o.cfg.RefSize < 60 || o.cfg.RefSize > 1514:
		return nil, fmt.Errorf("--ref-size %d: want 60 to 1514", o.cfg.RefSize)
	case o.cfg.GuestCPU < 0 || o.cfg.HostCPU < -1 || o.cfg.GuestCPU == o.cfg.HostCPU:
		return nil, errors.New("--guest-cpu must be a core, --host-cpu another one or -1")
	}
	o.cfg.Log = stderr
	if o.quiet {
		o.cfg.Log = io.Discard
	}
	return o, nil
}

// maxMessage is the largest message one Emit frame carries.
const maxMessage = 1400

// Main is the v2v command.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parse(args, stderr)
	if err != nil {
		return err
	}
	res, err := Run(ctx, o.cfg)
	if err != nil {
		return err
	}
	return Report(stdout, res, o.output)
}

func (c *Config) defaults() {
	if c.Rounds <= 0 {
		c.Rounds = 3
	}
	if c.Samples <= 0 {
		c.Samples = 3
	}
	if c.Warmup < 0 {
		c.Warmup = 0
	}
	if c.Size <= 0 {
		c.Size = 64
	}
	if c.RefSize <= 0 {
		c.RefSize = 64
	}
	if c.Testpmd == "" {
		c.Testpmd = "dpdk-testpmd"
	}
	if c.GuestCPU == c.HostCPU {
		c.GuestCPU, c.HostCPU = 0, 1
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
}

// hostCPUs is veloced's ports' PollCPUs.
func (c *Config) hostCPUs() []int {
	if c.HostCPU < 0 {
		return nil
	}
	return []int{c.HostCPU}
}

func (c *Config) logf(format string, args ...any) { fmt.Fprintf(c.Log, "v2v: "+format+"\n", args...) }

// Run measures both sides, Rounds rounds each.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg.defaults()
	if err := initEAL(); err != nil {
		return nil, err
	}
	if cfg.Dir == "" {
		dir, err := os.MkdirTemp("", "veloce-bench-v2v-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		cfg.Dir = dir
	}
	res := &Result{MessageSize: cfg.Size, ReferenceFrameSize: cfg.RefSize}
	var bestV, bestR, sendV, sendR float64
	for round := 0; round < cfg.Rounds; round++ {
		sides := []string{"veloce", "reference"}
		if round%2 == 1 {
			sides[0], sides[1] = sides[1], sides[0]
		}
		for _, side := range sides {
			if side == "reference" && cfg.NoReference {
				continue
			}
			run := veloce
			if side == "reference" {
				run = reference
			}
			recv, send, err := run(ctx, &cfg, round)
			if err != nil {
				return nil, fmt.Errorf("%s round %d: %w", side, round+1, err)
			}
			mpps := benchvhost.Median(recv) / 1e6
			cfg.logf("%s round %d: %.3f Mpps received (seconds: %s), sender %.3f Mpps", side, round+1, mpps, mppsList(recv), send/1e6)
			if side == "veloce" {
				res.VeloceRounds = append(res.VeloceRounds, round3(mpps))
				if mpps > bestV {
					bestV, sendV = mpps, send/1e6
				}
			} else {
				res.ReferenceRounds = append(res.ReferenceRounds, round3(mpps))
				if mpps > bestR {
					bestR, sendR = mpps, send/1e6
				}
			}
		}
	}
	res.EmitFrameSize = cfg.frameLen
	res.VeloceMpps, res.VeloceSenderMpps = round3(bestV), round3(sendV)
	if !cfg.NoReference {
		res.ReferenceMpps, res.ReferenceSenderMpps = round3(bestR), round3(sendR)
		if bestR > 0 {
			res.Ratio = round3(bestV / bestR)
		}
	}
	return res, nil
}

// Report writes res as a table or as JSON.
func Report(w io.Writer, res *Result, format string) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	case "table", "":
	default:
		return fmt.Errorf("format %q: want table or json", format)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "V2V\tframe B\trecv Mpps\tsender Mpps\trounds Mpps")
	fmt.Fprintf(tw, "veloce (%d B messages)\t%d\t%.3f\t%.3f\t%s\n", res.MessageSize, res.EmitFrameSize, res.VeloceMpps, res.VeloceSenderMpps, floats(res.VeloceRounds))
	if len(res.ReferenceRounds) > 0 {
		fmt.Fprintf(tw, "dpdk testpmd io\t%d\t%.3f\t%.3f\t%s\n", res.ReferenceFrameSize, res.ReferenceMpps, res.ReferenceSenderMpps, floats(res.ReferenceRounds))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if res.Ratio > 0 {
		_, err := fmt.Fprintf(w, "ratio veloce/dpdk: %.3f\n", res.Ratio)
		return err
	}
	return nil
}
