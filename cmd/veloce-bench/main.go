// Command veloce-bench runs Veloce's benchmarks that need more than
// `go test -bench`: real peers, measured against a reference in the same
// run.
//
//	veloce-bench vhost [--sizes 64,512,1500] [--directions tx,rx] [-o table|json]
//	                   [--samples 2] [--warmup 0] [--repeat 2] [--cpuprofile DIR] [--profile-sizes 64]
//	                   [--frontend-cpu 0] [--backend-cpu 1] [--no-pin] [--testpmd dpdk-testpmd]
//	                   [--no-reference] [-v] [-q]
//
// vhost: veloced's vhost-user virtio-net device against DPDK's net_vhost,
// both driven by testpmd net_virtio_user (see cmd/veloce-bench/internal/benchvhost). Needs
// root and dpdk-testpmd (make deps).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchlunar"
	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchmig"
	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchrdma"
	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchstreams"
	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchtsn"
	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchv2v"
	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchvhost"
)

const usage = `usage: veloce-bench COMMAND [flags]

Commands:
  vhost    veloced's vhost-user device vs DPDK net_vhost, driven by testpmd
           net_virtio_user: tx (guest transmits) and rx (guest receives),
           Mpps and the ratio veloced/DPDK per frame size
  v2v      VM to VM through the host (OVS-DPDK V2V): two virtio-user guests exchange
           64-byte stream messages through veloced vs testpmd io-forwarding between
           two net_vhost ports: Mpps and the ratio
  dpdk     raw DPDK vs Veloce on DPDK vs Veloce on kernel UDP over one veth: RTT and throughput
  rdma     perftest (ib_send_lat, ib_send_bw) vs Veloce on RDMA, on soft-RoCE in a TCG guest
  xdp      raw AF_XDP vs Veloce on XDP vs Veloce on kernel UDP over one veth: RTT, throughput, idle CPU
  tsn      a time-sensitive stream's latency (p50/p99/max) on an idle link and while a bulk
           stream saturates it, FIFO vs the 802.1Qbv gate schedule
  migrate  live-migration downtime of a QEMU VM moved by velocectl migrate, 10 streams vs none
  lunar    Lunar Streaming (examples/lunarstream): 1280x720 RGB frames between two hosts,
           Veloce (two daemons, kernel UDP) vs plain TCP: fps, frame latency p50/p99, ratios

Run 'veloce-bench vhost -h' (or v2v -h) for its flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "veloce-bench:", err)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command")
	}
	switch args[0] {
	case "vhost":
		return runVhost(ctx, args[1:], stdout, stderr)
	case "v2v": // VM to VM through veloced vs testpmd io between two net_vhost ports (cmd/veloce-bench/internal/benchv2v)
		return benchv2v.Main(ctx, args[1:], stdout, stderr)
	case "streams": // raw UDP vs Veloce between two netns (cmd/veloce-bench/internal/benchstreams)
		return benchstreams.Main(ctx, args[1:], stdout, stderr)
	case "tsn": // a time-sensitive stream's latency under bulk load, FIFO vs gate schedule (cmd/veloce-bench/internal/benchtsn)
		return benchtsn.Main(ctx, args[1:], stdout, stderr)
	case "dpdk": // raw DPDK vs Veloce on DPDK and on kernel UDP (cmd/veloce-bench/internal/benchdpdk)
		return runDPDK(ctx, args[1:], stdout, stderr)
	case "rdma": // perftest vs Veloce on RDMA in a soft-RoCE guest (cmd/veloce-bench/internal/benchrdma)
		return benchrdma.Main(ctx, args[1:], stdout, stderr)
	case "xdp": // raw AF_XDP vs Veloce on XDP and on kernel UDP (cmd/veloce-bench/internal/benchxdp)
		return runXDP(ctx, args[1:], stdout, stderr)
	case "migrate": // VM migration downtime with streams vs without (cmd/veloce-bench/internal/benchmig)
		return benchmig.Main(ctx, args[1:], stdout, stderr)
	case "lunar": // Lunar Streaming frames, Veloce vs TCP between two netns (cmd/veloce-bench/internal/benchlunar)
		return benchlunar.Main(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}

func runVhost(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("veloce-bench vhost", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sizes := fs.String("sizes", "64,512,1500", "frame sizes in bytes, comma-separated (headers included, no FCS)")
	dirs := fs.String("directions", "tx,rx", "tx (guest transmits), rx (guest receives), or both")
	output := fs.String("o", "table", "output format: table or json")
	samples := fs.Int("samples", 2, "periodic (1-2 s) rate samples per measurement (median)")
	warmup := fs.Int("warmup", 0, "full samples skipped once traffic flows (the first, partial one always is)")
	repeat := fs.Int("repeat", 2, "rounds per point, both backends in each; a backend's rate is its best round")
	profileDir := fs.String("cpuprofile", "", "write CPU profiles of the veloced side to this directory")
	profileSizes := fs.String("profile-sizes", "64", "frame sizes to profile (with --cpuprofile)")
	frontCPU := fs.Int("frontend-cpu", 0, "core of the frontend testpmd's forwarding lcore")
	backCPU := fs.Int("backend-cpu", 1, "core of the backend's busy thread (net_vhost lcore, veloced poller)")
	noPin := fs.Bool("no-pin", false, "leave veloced's poller thread unpinned")
	bin := fs.String("testpmd", "dpdk-testpmd", "testpmd binary")
	quiet := fs.Bool("q", false, "no progress lines on stderr")
	verbose := fs.Bool("v", false, "timed steps of every point on stderr")
	noRef := fs.Bool("no-reference", false, "skip DPDK's backend: veloced's rates only, no ratios (quick check)")
	packed := fs.Bool("packed", false, "packed virtqueues (virtio-user packed_vq=1) for both backends")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *output != "table" && *output != "json" {
		return fmt.Errorf("-o %q: want table or json", *output)
	}
	cfg := benchvhost.Config{
		Samples: *samples, Warmup: *warmup, Repeat: *repeat, Testpmd: *bin,
		FrontendCPU: *frontCPU, BackendCPU: *backCPU, NoPin: *noPin,
		ProfileDir: *profileDir, Log: stderr, Verbose: *verbose, NoReference: *noRef, Packed: *packed,
	}
	if *quiet {
		cfg.Log = io.Discard
	}
	var err error
	if cfg.Sizes, err = benchvhost.ParseSizes(*sizes); err != nil {
		return err
	}
	if cfg.ProfileSizes, err = benchvhost.ParseSizes(*profileSizes); err != nil {
		return err
	}
	for _, d := range strings.Split(*dirs, ",") {
		switch d = strings.TrimSpace(d); benchvhost.Direction(d) {
		case benchvhost.TX, benchvhost.RX:
			cfg.Directions = append(cfg.Directions, benchvhost.Direction(d))
		default:
			return fmt.Errorf("direction %q: want tx or rx", d)
		}
	}
	if *samples < 1 || *warmup < 0 || *repeat < 1 {
		return errors.New("--samples and --repeat must be at least 1, --warmup at least 0")
	}
	if *frontCPU == *backCPU {
		return errors.New("--frontend-cpu and --backend-cpu must differ")
	}
	loadBefore := benchvhost.LoadAverage()
	results, err := benchvhost.Run(ctx, cfg)
	if err != nil {
		if len(results) > 0 && *output == "table" {
			benchvhost.WriteTable(stdout, results)
		}
		return err
	}
	if *output == "json" {
		return benchvhost.WriteJSON(stdout, cfg, results)
	}
	rings := "split"
	if *packed {
		rings = "packed"
	}
	fmt.Fprintf(stdout, "vhost-user virtio-net: veloced vs DPDK net_vhost, frontend testpmd net_virtio_user, %s rings\n(receiving side's rate; best of %d rounds per backend, both backends in each round)\n", rings, *repeat)
	if err := benchvhost.WriteTable(stdout, results); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Load average before %s, after %s on %d CPUs. Absolute rates depend on the machine and its load;\n", loadBefore, benchvhost.LoadAverage(), runtime.NumCPU())
	fmt.Fprintln(stdout, "the two backends run back to back for each point, so the ratio is the figure to compare.")
	for _, r := range results {
		if r.VelocedProfile != "" {
			fmt.Fprintf(stdout, "CPU profile %s %d B: %s (go tool pprof -top %s)\n", r.Direction, r.Size, r.VelocedProfile, r.VelocedProfile)
		}
	}
	return nil
}
