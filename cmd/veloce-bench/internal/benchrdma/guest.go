package benchrdma

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/veloce-io/veloce/backend"
	irdma "github.com/veloce-io/veloce/internal/rdma"
	"github.com/veloce-io/veloce/plugins/rdma/rdmatest"
)

// The guest's topology.
var (
	addrA = netip.MustParsePrefix("10.77.0.1/24")
	addrB = netip.MustParsePrefix("10.77.0.2/24")
)

const (
	devA, devB = "rxe0", "rxe1"
	// veloce's ports: datapath (TCP set-up) for the plugin pair and
	// the daemons.
	portPlugins = 7100
	portDaemons = 7000
)

// RunGuest sets up the soft-RoCE topology and measures every size; what
// fails is recorded in the row (or the notes) and the rest goes on.
func RunGuest(ctx context.Context, cfg Config, log io.Writer) *Report {
	rep := &Report{Notes: []string{
		fmt.Sprintf("TCG guest, %d vCPUs, soft-RoCE (rdma_rxe) over a veth: absolute times are the emulator's; compare the ratios", runtime.NumCPU()),
		"raw: perftest ib_send_lat (RTT = 2 x t_typical) and ib_send_bw (MsgRate), RC sends between rxe0 and rxe1, polling; where perftest's own clock failed (it calibrates the TSC, which TCG does not always allow; the row says timed), the figure is the difference of two runs' wall times over the difference of their iterations",
		"datapath: plugins/rdma to plugins/rdma (runtime to runtime, no daemons): SendBatch, RC send, the peer's polling thread echoes",
		"app: two daemons with the RDMA datapath and host applications (guestlib over the app sockets): application to application",
	}}
	if err := rdmatest.Setup(rdmatest.Topology{A: addrA, B: addrB}); err != nil {
		rep.Notes = append(rep.Notes, "set-up failed: "+err.Error())
		return rep
	}
	gidA, errA := waitGID(devA, addrA.Addr())
	gidB, errB := waitGID(devB, addrB.Addr())
	if errA != nil || errB != nil {
		rep.Notes = append(rep.Notes, fmt.Sprintf("GID tables: %v %v", errA, errB))
		return rep
	}
	pp, err := openPluginPair()
	if err != nil {
		rep.Notes = append(rep.Notes, "datapath pair: "+err.Error())
	}
	ap, aerr := openAppPair(ctx)
	if aerr != nil {
		rep.Notes = append(rep.Notes, "daemons: "+aerr.Error())
	}
	for _, size := range cfg.Sizes {
		r := Row{Size: size}
		fail := func(what string, err error) {
			if err != nil {
				r.Errors = append(r.Errors, what+": "+err.Error())
			}
		}
		fmt.Fprintf(log, "veloce-bench rdma: %d B: perftest\n", size)
		r.RawRTT, r.RawTimed, err = perftestLat(ctx, size, cfg.Count, gidA, gidB)
		fail("ib_send_lat", err)
		var timed bool
		r.RawRate, timed, err = perftestBW(ctx, size, cfg.Duration, gidA, gidB)
		r.RawTimed = r.RawTimed || timed
		fail("ib_send_bw", err)
		if pp != nil {
			fmt.Fprintf(log, "veloce-bench rdma: %d B: datapath\n", size)
			r.DatapathRTT, err = pp.rtt(ctx, size, cfg.Count)
			fail("datapath rtt", err)
			r.DatapathRate, err = pp.throughput(ctx, size, cfg.Duration)
			fail("datapath throughput", err)
		}
		if ap != nil && size > backend.MaxRemotePayload {
			r.Errors = append(r.Errors, fmt.Sprintf("app: skipped, larger than the runtime's one-datagram message (%d B; fragmentation is not there yet)", backend.MaxRemotePayload))
		} else if ap != nil {
			fmt.Fprintf(log, "veloce-bench rdma: %d B: application to application\n", size)
			r.AppRTT, err = ap.rtt(ctx, size, cfg.Count)
			fail("app rtt", err)
			r.AppRate, err = ap.throughput(ctx, size, cfg.Duration)
			fail("app throughput", err)
		}
		r.derive()
		rep.Rows = append(rep.Rows, r)
	}
	if pp != nil {
		pp.close()
	}
	if ap != nil {
		ap.close()
	}
	return rep
}

// waitGID waits for the address's RoCE v2 GID (the table follows the
// netdev's addresses a moment later).
func waitGID(dev string, ip netip.Addr) (int, error) {
	var err error
	for range 50 {
		var i int
		if i, err = irdma.GIDIndex(dev, 1, ip); err == nil {
			return i, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0, err
}

// perftest runs a perftest server on rxe1 and its client on rxe0 and
// returns the client's output.
func perftest(ctx context.Context, bin string, gidA, gidB int, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	srv := exec.CommandContext(ctx, bin, append([]string{"-d", devB, "-i", "1", "-x", strconv.Itoa(gidB), "-F"}, args...)...)
	var srvOut strings.Builder
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		return "", err
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	var out []byte
	var err error
	// The server listens a moment after it starts: retry the client.
	for range 40 {
		time.Sleep(250 * time.Millisecond)
		cl := exec.CommandContext(ctx, bin, append(append([]string{"-d", devA, "-i", "1", "-x", strconv.Itoa(gidA), "-F"}, args...), addrB.Addr().String())...)
		out, err = cl.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "Couldn't connect") {
			break
		}
	}
	if err != nil {
		return string(out), fmt.Errorf("%s: %v\n%s\nserver:\n%s", bin, err, out, srvOut.String())
	}
	return string(out), nil
}

// resultFields returns the fields of perftest's result line for size
// (the line that starts with the size, after the header with #bytes).
func resultFields(out string, size int) []string {
	header := false
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 && f[0] == "#bytes" {
			header = true
			continue
		}
		if header && len(f) >= 5 && f[0] == strconv.Itoa(size) {
			return f
		}
	}
	return nil
}

// ParseLat returns ib_send_lat's t_typical (µs, half a round trip).
func ParseLat(out string, size int) (float64, error) {
	f := resultFields(out, size)
	if f == nil {
		return 0, fmt.Errorf("no result line for %d B in ib_send_lat's output:\n%s", size, out)
	}
	return strconv.ParseFloat(f[4], 64)
}

// ParseBW returns ib_send_bw's message rate in messages per second.
func ParseBW(out string, size int) (float64, error) {
	f := resultFields(out, size)
	if f == nil {
		return 0, fmt.Errorf("no result line for %d B in ib_send_bw's output:\n%s", size, out)
	}
	mpps, err := strconv.ParseFloat(f[4], 64)
	if err == nil && (math.IsInf(mpps, 0) || math.IsNaN(mpps)) {
		err = fmt.Errorf("ib_send_bw reported a message rate of %v:\n%s", f[4], out)
	}
	return mpps * 1e6, err
}

// perftestRun runs bin with n iterations and returns its output and
// how long the run took (start-up and connection set-up included).
func perftestRun(ctx context.Context, bin string, size, n, gidA, gidB int) (string, time.Duration, error) {
	start := time.Now()
	out, err := perftest(ctx, bin, gidA, gidB, "-s", strconv.Itoa(size), "-n", strconv.Itoa(n))
	took := time.Since(start)
	if err == nil && resultFields(out, size) == nil {
		err = fmt.Errorf("no result line for %d B in %s's output:\n%s", size, bin, out)
	}
	return out, took, err
}

// perftestFigure runs bin with n iterations and returns parse's figure
// from its output; when perftest's clock failed (it calibrates the TSC
// at start, which under TCG does not always work: it then prints inf),
// it runs bin again with n/10 iterations and returns the wall time per
// extra iteration instead (start-up and set-up cancel out), with timed
// true.
func perftestFigure(ctx context.Context, bin string, size, n, gidA, gidB int, parse func(string, int) (float64, error)) (v float64, perIter time.Duration, timed bool, err error) {
	out, took, err := perftestRun(ctx, bin, size, n, gidA, gidB)
	if err != nil {
		return 0, 0, false, err
	}
	if v, perr := parse(out, size); perr == nil && v > 0 && !math.IsInf(v, 0) && !math.IsNaN(v) {
		return v, 0, false, nil
	}
	_, took1, err := perftestRun(ctx, bin, size, n/10, gidA, gidB)
	if err != nil {
		return 0, 0, true, err
	}
	if took <= took1 {
		return 0, 0, true, fmt.Errorf("%s: perftest's clock failed and %d iterations took %v, %d took %v: too noisy, raise --count", bin, n, took, n/10, took1)
	}
	return 0, (took - took1) / time.Duration(n-n/10), true, nil
}

// perftestLat returns ib_send_lat's round trip in µs: 2 x t_typical, or
// timed (see perftestFigure).
func perftestLat(ctx context.Context, size, count, gidA, gidB int) (rtt float64, timed bool, err error) {
	half, per, timed, err := perftestFigure(ctx, "/usr/bin/ib_send_lat", size, count, gidA, gidB, ParseLat)
	if timed {
		return float64(per) / 1e3, true, err
	}
	return 2 * half, false, err
}

// perftestBW returns ib_send_bw's message rate (its MsgRate, or timed).
func perftestBW(ctx context.Context, size int, dur time.Duration, gidA, gidB int) (float64, bool, error) {
	n := max(10000, int(dur/time.Millisecond)*10)
	rate, per, timed, err := perftestFigure(ctx, "/usr/bin/ib_send_bw", size, n, gidA, gidB, ParseBW)
	if timed {
		if per <= 0 {
			return 0, true, err
		}
		return float64(time.Second) / float64(per), true, err
	}
	return rate, false, err
}
