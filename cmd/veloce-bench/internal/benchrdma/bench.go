// Package benchrdma is veloce-bench rdma: Veloce's RDMA datapath against
// perftest (Debian's perftest package: ib_send_lat, ib_send_bw; a peer
// nobody here wrote) as the raw reference, on soft-RoCE inside one VM, in
// one run.
//
// The host has no RDMA, so the benchmark boots a TCG guest on Debian's
// generic kernel (rdma_rxe) with this very binary, perftest and
// rdma-core's userspace in its initramfs, and runs `veloce-bench rdma
// --in-guest` there: the topology of package plugins/rdma/rdmatest (rxe0
// on veth0 10.77.0.1, rxe1 on veth1 10.77.0.2, talking over the veth).
// For each message size it measures, in the guest:
//
//   - raw: ib_send_lat (RC sends, median of RTT/2: doubled here) and
//     ib_send_bw (RC sends, message rate) between rxe0 and rxe1;
//   - datapath: two plugins/rdma datapaths in one process, runtime to
//     runtime, without the daemons: a's SendBatch to b, whose polling
//     thread echoes each message back (the wire header on every message);
//     throughput: a sends as fast as its queue takes, b counts;
//   - app: two daemons (backend.Daemon, what veloced runs) in one process
//     with the RDMA datapath, and host applications (guestlib over the app
//     sockets, as veloce-perf): application to application, the figure
//     users get.
//
// Under TCG absolute numbers mean little; the overhead over raw (µs) and
// the ratios are the figures. The guest prints its report as one JSON line
// after ReportMarker; the host prints the table.
package benchrdma

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
	"github.com/veloce-io/veloce/images"
	"github.com/veloce-io/veloce/images/guestinit"
	"github.com/veloce-io/veloce/vmtest"
)

// ReportMarker starts the guest's report line.
const ReportMarker = "veloce-bench-rdma-report: "

// Perftest's binaries, on the host and at the same path in the guest.
var perftestBins = []string{"/usr/bin/ib_send_lat", "/usr/bin/ib_send_bw"}

// Config is one run's settings.
type Config struct {
	// Sizes are the message sizes in bytes (payload; Veloce adds its
	// wire header).
	Sizes []int
	// Count is the round trips per RTT measurement.
	Count int
	// Duration is how long each throughput measurement runs.
	Duration time.Duration
}

// Row is one message size's figures. RTTs are medians in µs; rates in
// messages per second.
type Row struct {
	Size   int     `json:"size"`
	RawRTT float64 `json:"raw_rtt_us"`
	// RawTimed says perftest's clock failed for the raw figures and
	// they were timed from outside (see perftestFigure).
	RawTimed      bool     `json:"raw_timed,omitempty"`
	DatapathRTT   float64  `json:"datapath_rtt_us"`
	AppRTT        float64  `json:"app_rtt_us"`
	RawRate       float64  `json:"raw_msgs_per_s"`
	DatapathRate  float64  `json:"datapath_msgs_per_s"`
	AppRate       float64  `json:"app_msgs_per_s"`
	DatapathOver  float64  `json:"datapath_overhead_us"`
	AppOver       float64  `json:"app_overhead_us"`
	DatapathRTTx  float64  `json:"datapath_rtt_ratio"`  // datapath RTT / raw RTT
	AppRTTx       float64  `json:"app_rtt_ratio"`       // app RTT / raw RTT
	DatapathRatex float64  `json:"datapath_rate_ratio"` // datapath rate / raw rate
	AppRatex      float64  `json:"app_rate_ratio"`      // app rate / raw rate
	Errors        []string `json:"errors,omitempty"`
}

// Report is a run's result.
type Report struct {
	Rows  []Row    `json:"rows"`
	Notes []string `json:"notes"`
}

func (r *Row) derive() {
	for _, v := range []*float64{&r.RawRTT, &r.DatapathRTT, &r.AppRTT, &r.RawRate, &r.DatapathRate, &r.AppRate} {
		if math.IsInf(*v, 0) || math.IsNaN(*v) {
			r.Errors = append(r.Errors, fmt.Sprintf("a measurement came out as %v: dropped", *v))
			*v = 0
		}
	}
	over := func(x float64) float64 {
		if x <= 0 || r.RawRTT <= 0 {
			return 0 // not measured
		}
		return benchutil.Round2(x - r.RawRTT)
	}
	r.DatapathOver, r.AppOver = over(r.DatapathRTT), over(r.AppRTT)
	r.DatapathRTTx, r.AppRTTx = ratio(r.DatapathRTT, r.RawRTT), ratio(r.AppRTT, r.RawRTT)
	r.DatapathRatex, r.AppRatex = ratio(r.DatapathRate, r.RawRate), ratio(r.AppRate, r.RawRate)
}

func timedMark(t bool) string {
	if t {
		return "timed"
	}
	return ""
}

func ratio(a, b float64) float64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	return benchutil.Round2(a / b)
}

// Main is veloce-bench rdma.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("veloce-bench rdma", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sizes := fs.String("sizes", "64,256,1024,4096", "message sizes in bytes, comma-separated (64 to 4096)")
	count := fs.Int("count", 2000, "round trips per RTT measurement")
	dur := fs.Duration("duration", 2*time.Second, "length of each throughput measurement")
	output := fs.String("o", "table", "output format: table or json")
	inGuest := fs.Bool("in-guest", false, "run the measurements here (inside the soft-RoCE guest veloce-bench boots); not for use on a host")
	memory := fs.String("memory", "1G", "guest memory")
	cpus := fs.Int("cpus", 2, "guest vCPUs (TCG threads): with one, each side's polling spins in the other's time slice")
	timeout := fs.Duration("timeout", 30*time.Minute, "give up on the guest after this long")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: veloce-bench rdma [flags]\n\nperftest (ib_send_lat, ib_send_bw) vs Veloce on RDMA, datapath to datapath and\napplication to application, on soft-RoCE in a TCG guest (see the package doc).\nNeeds QEMU, the generic Debian kernel (veloce-image kernel --flavor amd64),\nrdma-core (ibverbs-providers) and perftest: make deps.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := benchutil.ParseArgs(fs, args, output); err != nil {
		return err
	}
	var cfg Config
	var err error
	if cfg.Sizes, err = benchutil.ParseInts(*sizes, "--sizes", 64, 4096); err != nil {
		return err
	}
	if *count < 10 {
		return fmt.Errorf("--count %d: want at least 10", *count)
	}
	if *dur < 100*time.Millisecond {
		return fmt.Errorf("--duration %v: want at least 100ms", *dur)
	}
	cfg.Count, cfg.Duration = *count, *dur
	if *inGuest {
		rep := RunGuest(ctx, cfg, stderr)
		b, err := json.Marshal(rep)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s%s\n", ReportMarker, b)
		return nil
	}
	if *cpus < 1 || *cpus > 8 {
		return fmt.Errorf("--cpus %d: want 1 to 8", *cpus)
	}
	rep, err := runVM(ctx, cfg, *memory, *cpus, *timeout, args, stderr)
	if rep == nil {
		return err
	}
	if *output == "json" {
		if werr := benchutil.WriteJSON(stdout, rep); werr != nil {
			return werr
		}
	} else if werr := WriteTable(stdout, rep); werr != nil {
		return werr
	}
	return err
}

// initBinary is the guest's /init: $VELOCE_INIT (the Makefile sets it),
// else veloce-init beside this executable.
func initBinary(exe string) (string, error) {
	for _, p := range []string{os.Getenv("VELOCE_INIT"), filepath.Join(filepath.Dir(exe), "veloce-init")} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("no veloce-init: make build (bin/veloce-init), or set VELOCE_INIT")
}

// runVM builds the guest image, boots it and returns the guest's report.
func runVM(ctx context.Context, cfg Config, memory string, cpus int, timeout time.Duration, args []string, log io.Writer) (*Report, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	initPath, err := initBinary(exe)
	if err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return nil, errors.New("no qemu-system-x86_64: make deps")
	}
	for _, b := range perftestBins {
		if _, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("no %s: apt-get install perftest (make deps)", b)
		}
	}
	kctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	k, err := images.EnsureKernel(kctx, images.KernelOptions{Flavor: vmtest.RDMAFlavor})
	cancel()
	if err != nil {
		return nil, fmt.Errorf("the generic guest kernel (veloce-image kernel --flavor amd64): %w", err)
	}
	b := images.NewInitramfs(k)
	b.AddModules(images.RDMAModules...)
	b.AddModules("veth")
	if err := b.AddRDMAUserspace(); err != nil {
		return nil, fmt.Errorf("%w (apt-get install ibverbs-providers)", err)
	}
	if err := b.AddBinaryWithLibs("/bin/veloce-bench", exe); err != nil {
		return nil, err
	}
	for _, p := range perftestBins {
		if err := b.AddBinaryWithLibs(p, p); err != nil {
			return nil, err
		}
	}
	dir, err := os.MkdirTemp("", "veloce-bench-rdma-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	initrd := filepath.Join(dir, "initramfs.cpio.gz")
	if err := b.WriteFile(initrd, initPath); err != nil {
		return nil, fmt.Errorf("build the guest's initramfs: %w", err)
	}
	run := append([]string{"/bin/veloce-bench", "rdma", "--in-guest"}, guestArgs(args)...)
	// -cpu max: this binary links DPDK (make build), whose libraries
	// need SSE4.2, which TCG's default CPU model lacks.
	vm, err := vmtest.New(vmtest.Options{Kernel: k.Vmlinuz, Initramfs: initrd, Memory: memory, CPUs: cpus, Dir: filepath.Join(dir, "vm"), ExtraArgs: []string{"-cpu", "max"},
		Guest: &guestinit.Config{Run: run, Env: []string{"PATH=/bin:/usr/bin", "LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"},
			Timeout: guestinit.Duration(timeout)}})
	if err != nil {
		return nil, err
	}
	defer vm.Close()
	fmt.Fprintf(log, "veloce-bench rdma: booting the soft-RoCE guest (TCG; this takes minutes)\n")
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err = vm.Start(sctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("boot the guest: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, timeout+time.Minute)
	defer cancel()
	res, err := vm.Wait(wctx)
	if err != nil {
		return nil, fmt.Errorf("guest: %w", err)
	}
	for _, l := range strings.Split(res.Output, "\n") {
		l = strings.TrimRight(l, "\r")
		if i := strings.Index(l, ReportMarker); i >= 0 {
			var rep Report
			if err := json.Unmarshal([]byte(l[i+len(ReportMarker):]), &rep); err != nil {
				return nil, fmt.Errorf("guest report: %w", err)
			}
			return &rep, res.Err()
		}
	}
	return nil, fmt.Errorf("the guest printed no report (%v):\n%s", res.Err(), res.Output)
}

// guestArgs passes the measurement flags on to the guest.
func guestArgs(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		name := strings.TrimLeft(strings.SplitN(a, "=", 2)[0], "-")
		switch name {
		case "sizes", "count", "duration":
			out = append(out, a)
			if !strings.Contains(a, "=") && i+1 < len(args) {
				out = append(out, args[i+1])
				i++
			}
		}
	}
	return out
}

// WriteTable prints the report as two tables and the notes.
func WriteTable(w io.Writer, rep *Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "RDMA on soft-RoCE (TCG guest): perftest (raw RC sends) vs Veloce's RDMA datapath and application to application")
	fmt.Fprintln(tw, "size B\traw RTT µs\t\tdatapath RTT µs\tapp RTT µs\tdatapath over µs\tapp over µs\tdatapath/raw\tapp/raw\t")
	for _, r := range rep.Rows {
		fmt.Fprintf(tw, "%d\t%.2f\t%s\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t\n", r.Size, r.RawRTT, timedMark(r.RawTimed), r.DatapathRTT, r.AppRTT, r.DatapathOver, r.AppOver, r.DatapathRTTx, r.AppRTTx)
	}
	fmt.Fprintln(tw, "\t\t\t\t\t\t\t\t\t")
	fmt.Fprintln(tw, "size B\traw msg/s\tdatapath msg/s\tapp msg/s\tdatapath/raw\tapp/raw\t\t\t\t")
	for _, r := range rep.Rows {
		fmt.Fprintf(tw, "%d\t%.0f\t%.0f\t%.0f\t%.2f\t%.2f\t\t\t\t\n", r.Size, r.RawRate, r.DatapathRate, r.AppRate, r.DatapathRatex, r.AppRatex)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range rep.Rows {
		for _, e := range r.Errors {
			fmt.Fprintf(w, "size %d: %s\n", r.Size, e)
		}
	}
	for _, n := range rep.Notes {
		fmt.Fprintln(w, "note:", n)
	}
	return nil
}
