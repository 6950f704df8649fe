// Package benchmig is veloce-bench migrate: the downtime a VM's streams add
// to a live migration. A real QEMU VM (TCG) moves between two veloced
// daemons (backend.Daemon, what veloced runs, in two network namespaces as
// two hosts; a third namespace is a remote peer) by `velocectl migrate`,
// several times each way, in two cases in the same run:
//
//   - reference: the VM runs no Veloce application (no streams);
//   - streams: the VM runs --streams veloce-perf applications (default
//     10), half sources streaming --rate messages/s each to sinks on the
//     remote peer, half sinks fed at --rate each by sources on the peer.
//
// For each migration it keeps velocectl migrate's JSON summary: QEMU's
// reported downtime, the stream hand-off time, total time, bytes of
// state, messages forwarded. The table shows medians per case and the
// difference of the streams case's downtime against the reference (the
// aim: at most 5 ms more).
package benchmig

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
)

// AimMs is the aim: streams add at most this much downtime.
const AimMs = 5.0

// Config is one run's settings.
type Config struct {
	Streams    int           // VM applications (streams) in the streams case
	Rate       int           // messages/s per stream
	Migrations int           // migrations each way per case
	Memory     string        // guest memory (QEMU size syntax)
	Settle     time.Duration // pause after each migration
	Timeout    time.Duration // the whole run
	Velocectl  string        // velocectl binary
	Perf       string        // static veloce-perf (goes into the guest)
	Init       string        // static veloce-init (the guest's /init)
	Log        io.Writer     // progress
}

// Migration is one velocectl migrate, as its JSON summary reports it.
type Migration struct {
	From       string  `json:"from"`
	To         string  `json:"to"`
	Status     string  `json:"status"`
	TotalMs    float64 `json:"total_time_ms"`
	DowntimeMs float64 `json:"downtime_ms"`
	HandoffMs  float64 `json:"handoff_ms"`
	StateBytes int     `json:"state_bytes"`
	Streams    int     `json:"streams"`
	Sessions   int     `json:"sessions"`
	Queued     int     `json:"queued_messages"`
	Forwarded  uint64  `json:"messages_forwarded"`
}

// Case is one case's migrations and their medians.
type Case struct {
	Name       string      `json:"name"`
	Streams    int         `json:"streams"`
	Rate       int         `json:"rate_per_stream"`
	Migrations []Migration `json:"migrations"`
	// Medians over Migrations.
	DowntimeMs     float64 `json:"downtime_ms"`
	HandoffMs      float64 `json:"handoff_ms"`
	TotalMs        float64 `json:"total_time_ms"`
	StateBytes     float64 `json:"state_bytes"`
	BytesPerStream float64 `json:"state_bytes_per_stream"`
	Forwarded      float64 `json:"messages_forwarded"`
	// Queued is the sinks' undelivered messages that moved with the
	// state (part of StateBytes).
	Queued float64 `json:"queued_messages"`
	// FromVMRate is what the peer's sinks received from the VM's
	// sources, messages/s over the case, all streams together (what the
	// VM's streams really carried under TCG).
	FromVMRate float64 `json:"from_vm_msgs_per_s,omitempty"`
	// ToVMRate is what the peer's sources emitted to the VM's sinks.
	ToVMRate float64  `json:"to_vm_msgs_per_s,omitempty"`
	Errors   []string `json:"errors,omitempty"`
	// Stale says where a port whose VM had left still held frames
	// (velocectl migrate would be refused); the bench recreated it.
	Stale []string `json:"stale_ports,omitempty"`
}

// Report is a run's result.
type Report struct {
	Reference Case `json:"reference"`
	Streams   Case `json:"streams"`
	// ExtraDowntimeMs is the streams case's median downtime minus the
	// reference's; ExtraHandoffMs the same for the hand-off.
	ExtraDowntimeMs float64  `json:"extra_downtime_ms"`
	ExtraHandoffMs  float64  `json:"extra_handoff_ms"`
	AimMs           float64  `json:"aim_ms"`
	Met             bool     `json:"aim_met"`
	Notes           []string `json:"notes,omitempty"`
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

// summarize fills c's medians from its completed migrations.
func (c *Case) summarize() {
	var down, hand, total, state, per, fwd, queued []float64
	for _, m := range c.Migrations {
		if m.Status != "completed" {
			continue
		}
		down = append(down, m.DowntimeMs)
		hand = append(hand, m.HandoffMs)
		total = append(total, m.TotalMs)
		state = append(state, float64(m.StateBytes))
		if m.Streams > 0 {
			per = append(per, float64(m.StateBytes)/float64(m.Streams))
		}
		fwd = append(fwd, float64(m.Forwarded))
		queued = append(queued, float64(m.Queued))
	}
	c.Queued = median(queued)
	c.DowntimeMs, c.HandoffMs, c.TotalMs = benchutil.Round2(median(down)), benchutil.Round2(median(hand)), benchutil.Round2(median(total))
	c.StateBytes, c.BytesPerStream, c.Forwarded = median(state), benchutil.Round2(median(per)), median(fwd)
}

// finish computes the report's medians and differences.
func (r *Report) finish() {
	r.Reference.summarize()
	r.Streams.summarize()
	r.AimMs = AimMs
	r.ExtraDowntimeMs = benchutil.Round2(r.Streams.DowntimeMs - r.Reference.DowntimeMs)
	r.ExtraHandoffMs = benchutil.Round2(r.Streams.HandoffMs - r.Reference.HandoffMs)
	r.Met = len(r.Streams.Migrations) > 0 && len(r.Reference.Migrations) > 0 && r.ExtraDowntimeMs <= AimMs
}

// Main is veloce-bench migrate.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, output, err := parseArgs(args, stderr)
	if err != nil {
		return err
	}
	rep, err := Run(ctx, cfg)
	if rep == nil {
		return err
	}
	if output == "json" {
		if werr := benchutil.WriteJSON(stdout, rep); werr != nil {
			return werr
		}
	} else if werr := WriteTable(stdout, rep); werr != nil {
		return werr
	}
	return err
}

func parseArgs(args []string, stderr io.Writer) (Config, string, error) {
	fs := flag.NewFlagSet("veloce-bench migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := Config{Log: stderr}
	fs.IntVar(&cfg.Streams, "streams", 10, "VM applications (one stream each) in the streams case: half sources to the peer, half sinks fed by the peer")
	fs.IntVar(&cfg.Rate, "rate", 2000, "messages/s per stream")
	fs.IntVar(&cfg.Migrations, "migrations", 3, "migrations each way per case (medians over all)")
	fs.StringVar(&cfg.Memory, "memory", "262152K", "guest memory (not a multiple of 256 KiB: see DESIGN.md on QEMU 7.2 under TCG)")
	fs.DurationVar(&cfg.Settle, "settle", 4*time.Second, "pause after each migration (the source forwards for 3 s; peers move over)")
	fs.DurationVar(&cfg.Timeout, "timeout", 40*time.Minute, "give up after this long")
	fs.StringVar(&cfg.Velocectl, "velocectl", "", "velocectl binary (default: beside veloce-bench, else $PATH)")
	fs.StringVar(&cfg.Perf, "veloce-perf", "", "static veloce-perf for the guest (default: beside veloce-bench)")
	output := fs.String("o", "table", "output format: table or json")
	quiet := fs.Bool("q", false, "no progress lines on stderr")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: veloce-bench migrate [flags]\n\nLive-migration downtime of a QEMU VM (TCG) moved between two veloced daemons\nby velocectl migrate, with --streams streams at --rate messages/s each vs with\nno streams, in one run (see the package doc). Needs root, QEMU and a guest\nkernel (make deps images build).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := benchutil.ParseArgs(fs, args, output); err != nil {
		return cfg, "", err
	}
	switch {
	case cfg.Streams < 2 || cfg.Streams > 40 || cfg.Streams%2 != 0:
		return cfg, "", fmt.Errorf("--streams %d: want an even number from 2 to 40", cfg.Streams)
	case cfg.Rate < 1 || cfg.Rate > 100000:
		return cfg, "", fmt.Errorf("--rate %d: want 1 to 100000", cfg.Rate)
	case cfg.Migrations < 1 || cfg.Migrations > 50:
		return cfg, "", fmt.Errorf("--migrations %d: want 1 to 50", cfg.Migrations)
	case cfg.Settle < 0:
		return cfg, "", fmt.Errorf("--settle %v: want 0 or more", cfg.Settle)
	case cfg.Timeout < time.Minute:
		return cfg, "", fmt.Errorf("--timeout %v: want at least 1m", cfg.Timeout)
	}
	if *quiet {
		cfg.Log = io.Discard
	}
	return cfg, *output, nil
}

// binaries finds velocectl, veloce-perf and veloce-init: flags, then
// $VELOCE_INIT, then beside this executable (make build puts them in bin/).
func (cfg *Config) binaries() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	dir := filepath.Dir(exe)
	find := func(p *string, name, env string) error {
		if *p == "" && env != "" {
			*p = os.Getenv(env)
		}
		if *p == "" {
			*p = filepath.Join(dir, name)
		}
		if _, err := os.Stat(*p); err != nil {
			if lp, lerr := exec.LookPath(name); lerr == nil && name == "velocectl" {
				*p = lp
				return nil
			}
			return fmt.Errorf("no %s at %s: make build (bin/%s), or give its path", name, *p, name)
		}
		return nil
	}
	return errors.Join(find(&cfg.Velocectl, "velocectl", ""), find(&cfg.Perf, "veloce-perf", ""), find(&cfg.Init, "veloce-init", "VELOCE_INIT"))
}

// WriteTable prints the report.
func WriteTable(w io.Writer, r *Report) error {
	fmt.Fprintf(w, "Live migration by velocectl migrate, QEMU (TCG) between two veloced daemons: %d streams at %d msg/s vs no streams\n",
		r.Streams.Streams, r.Streams.Rate)
	fmt.Fprintf(w, "(medians over %d+%d migrations, both ways; downtime as QEMU reports it, hand-off as velocectl does)\n",
		len(r.Reference.Migrations), len(r.Streams.Migrations))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "case\tstreams\tdowntime ms\tvs no streams ms\thand-off ms\ttotal ms\tstate B\tB/stream\tqueued\tforwarded\tVM->peer msg/s\tpeer->VM msg/s\t")
	for i, c := range []Case{r.Reference, r.Streams} {
		diff := "-"
		if i == 1 {
			diff = fmt.Sprintf("%+.2f", r.ExtraDowntimeMs)
		}
		per := "-"
		if c.BytesPerStream > 0 {
			per = fmt.Sprintf("%.0f", c.BytesPerStream)
		}
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%s\t%.2f\t%.0f\t%.0f\t%s\t%.0f\t%.0f\t%.0f\t\n", c.Name, c.Streams, c.DowntimeMs, diff, c.HandoffMs, c.TotalMs, c.StateBytes, per, c.Forwarded, c.FromVMRate, c.ToVMRate)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	verdict := "met"
	if !r.Met {
		verdict = "NOT met"
	}
	if r.Streams.Queued > 0 {
		fmt.Fprintf(w, "The streams' state includes the sinks' undelivered messages (median %.0f, payload and all), moved with it.\n", r.Streams.Queued)
	}
	fmt.Fprintf(w, "Streams add %+.2f ms of downtime (hand-off %+.2f ms); aim at most %.0f ms more: %s.\n", r.ExtraDowntimeMs, r.ExtraHandoffMs, r.AimMs, verdict)
	fmt.Fprintln(w, "\nEach migration (downtime / hand-off / total ms, state B, streams, queued, forwarded):")
	for _, c := range []Case{r.Reference, r.Streams} {
		for _, m := range c.Migrations {
			fmt.Fprintf(w, "  %-10s %s->%s %-9s %6.0f / %6.2f / %6.0f  %6d B  %2d  %5d  %d\n", c.Name, m.From, m.To, m.Status, m.DowntimeMs, m.HandoffMs, m.TotalMs, m.StateBytes, m.Streams, m.Queued, m.Forwarded)
		}
		for _, e := range c.Stale {
			fmt.Fprintf(w, "  %s: %s\n", c.Name, e)
		}
		for _, e := range c.Errors {
			fmt.Fprintf(w, "  %s: %s\n", c.Name, e)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintln(w, "note:", n)
	}
	return nil
}
