// Package benchutil holds what veloce-bench's benchmarks (internal/benchstreams,
// internal/benchdpdk) share that belongs to neither: rounding for reports,
// the receiver's count a sender waits on, network namespaces joined by a
// veth, and writing a report.
package benchutil

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/internal/dpdk"
)

// Micros is d in microseconds, rounded to two decimals.
func Micros(d time.Duration) float64 { return Round2(float64(d) / 1e3) }

// Round2 rounds v to two decimals.
func Round2(v float64) float64 { return math.Round(v*100) / 100 }

// Round4 rounds v to four decimals.
func Round4(v float64) float64 { return math.Round(v*1e4) / 1e4 }

// Progress counts what a receiver got and wakes a sender waiting for the
// count to reach a target (flow control without polling).
type Progress struct {
	n      atomic.Uint64
	target atomic.Uint64 // 0: nobody waits
	wake   chan struct{}
}

// NewProgress returns a Progress at 0.
func NewProgress() *Progress { return &Progress{wake: make(chan struct{}, 1)} }

// Count is the count so far.
func (p *Progress) Count() uint64 { return p.n.Load() }

// Add adds k to the count and wakes the waiting sender if it reached its
// target.
func (p *Progress) Add(k uint64) {
	v := p.n.Add(k)
	if t := p.target.Load(); t != 0 && v >= t && p.target.CompareAndSwap(t, 0) {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// WaitAtLeast waits until the count reaches t, for at most timeout (on
// timer, which it leaves stopped), and reports whether it did.
func (p *Progress) WaitAtLeast(t uint64, timer *time.Timer, timeout time.Duration) bool {
	timer.Reset(timeout)
	defer timer.Stop()
	for p.n.Load() < t {
		p.target.Store(t)
		if p.n.Load() >= t {
			p.target.Store(0)
			return true
		}
		select {
		case <-p.wake:
		case <-timer.C:
			p.target.Store(0)
			return p.n.Load() >= t
		}
	}
	return true
}

// ParseArgs parses a benchmark's command line with fs: no arguments may
// be left over, and *output (its -o flag) must be table or json.
func ParseArgs(fs *flag.FlagSet, args []string, output *string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *output != "table" && *output != "json" {
		return fmt.Errorf("-o %q: want table or json", *output)
	}
	return nil
}

// ParseInts parses a comma-separated list of integers in [lo, hi], empty
// entries skipped (none at all: nil, no error); what names them in errors.
func ParseInts(s, what string, lo, hi int) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < lo || n > hi {
			return nil, fmt.Errorf("%s %q: want %d to %d", what, f, lo, hi)
		}
		out = append(out, n)
	}
	return out, nil
}

// WriteJSON prints v as indented JSON.
func WriteJSON(w io.Writer, v any) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(v)
}

// Written writes what a run's outcome calls for before the caller's text
// report, and reports whether that was all. After a failed run (runErr
// not nil) that is, for output table, table of what was measured when
// partial says something was, and the error; after a run with output json,
// rep as JSON (WriteJSON) and its error. Otherwise nothing is written
// and the caller writes its text report.
func Written(w io.Writer, output string, rep any, partial bool, runErr error, table func(io.Writer) error) (bool, error) {
	if runErr != nil {
		if partial && output == "table" {
			table(w)
		}
		return true, runErr
	}
	if output == "json" {
		return true, WriteJSON(w, rep)
	}
	return false, nil
}

// SetAllThreads applies set to every thread of the process
// (/proc/self/task): a benchmark's pinned polling threads go back to Go's
// pool when they stop, and later runs must not inherit their pinning. A
// thread that exits meanwhile is skipped.
func SetAllThreads(set *unix.CPUSet) error {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, set); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("sched_setaffinity thread %d: %w", tid, err)
		}
	}
	return nil
}

// OnEALCore runs f on a goroutine locked to a fresh OS thread pinned to cpu
// (-1: not pinned) and registered with the EAL, and returns its result on
// the channel. The goroutine never unlocks: the thread, with its one-CPU
// affinity, exits with it instead of going back to the Go scheduler.
func OnEALCore(cpu int, f func() error) <-chan error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if cpu >= 0 {
			var set unix.CPUSet
			set.Set(cpu)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				done <- fmt.Errorf("pin to CPU %d: %w", cpu, err)
				return
			}
		}
		if err := dpdk.RegisterThread(); err != nil {
			done <- err
			return
		}
		defer dpdk.UnregisterThread()
		done <- f()
	}()
	return done
}
