package metrics_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/internal/metrics"
	"github.com/veloce-io/veloce/plugins/udp"
)

// daemon starts a real daemon with one VM port (no VM: it waits), the
// app socket, a UDP datapath and a peer, and returns its control socket.
func daemon(t *testing.T) (dir, controlSock string) {
	t.Helper()
	dir = t.TempDir()
	dp, err := udp.New(udp.Options{Listen: netip.MustParseAddrPort("127.0.0.1:0")})
	if err != nil {
		t.Fatal(err)
	}
	opts := backend.DaemonOptions{
		ControlSocket: filepath.Join(dir, "control.sock"),
		AppSocket:     filepath.Join(dir, "app.sock"),
		Ports:         []backend.PortOptions{{Socket: filepath.Join(dir, "vm0.sock"), QueuePairs: 1}},
	}
	opts.Runtime.Remote.Datapath = dp
	opts.Runtime.Remote.Peers = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")}
	d, err := backend.NewDaemon(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := d.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := d.Wait(); err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
	return dir, opts.ControlSocket
}

// streamThree has a host application send three messages on channel 7 to
// its own sink and receive them.
func streamThree(t *testing.T, appSock string) *guestlib.Session {
	t.Helper()
	ctx := context.Background()
	s, err := guestlib.Open(ctx, guestlib.Options{Socket: appSock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	st, err := s.CreateStream(ctx, guestlib.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sink, err := st.CreateSink(ctx, 7, guestlib.SinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	src, err := st.CreateSource(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		b, err := src.GetBufferContext(ctx, 16)
		if err != nil {
			t.Fatal(err)
		}
		copy(b.Data, "message")
		b.Data[0] = byte(i)
		if _, err := src.Emit(b); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		m, err := sink.Consume(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m.Release()
	}
	return s
}

func scrape(t *testing.T, c *http.Client, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse the exposition: %v", err)
	}
	return mfs
}

// delivered sums veloce_stream_sink_delivered_messages_total over the
// sinks on channel.
func delivered(mfs map[string]*dto.MetricFamily, channel string) float64 {
	var n float64
	for _, m := range mfs["veloce_stream_sink_delivered_messages_total"].GetMetric() {
		for _, l := range m.Label {
			if l.GetName() == "channel" && l.GetValue() == channel {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}

// find returns the value of the series of family name whose labels
// include want, or fails.
func find(t *testing.T, mfs map[string]*dto.MetricFamily, name string, typ dto.MetricType, want map[string]string) float64 {
	t.Helper()
	mf := mfs[name]
	if mf == nil {
		t.Errorf("no %s", name)
		return -1
	}
	if mf.GetType() != typ {
		t.Errorf("%s: type %s, want %s", name, mf.GetType(), typ)
	}
next:
	for _, m := range mf.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if v == "*" && have[k] != "" {
				continue
			}
			if have[k] != v {
				continue next
			}
		}
		switch typ {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue()
		default:
			return m.GetUntyped().GetValue()
		}
	}
	t.Errorf("%s: no series with %v among %v", name, want, mf.Metric)
	return -1
}

// TestScrapeADaemon: Prometheus scrapes a running daemon, with a port, a
// host application streaming to itself, a datapath and a peer, and sees
// each with its labels and values.
func TestScrapeADaemon(t *testing.T) {
	dir, controlSock := daemon(t)
	streamThree(t, filepath.Join(dir, "app.sock"))
	srv, err := metrics.New(metrics.Options{Addr: "127.0.0.1:0", Service: control.NewClient(controlSock), Version: "v1.2.3"})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	url := "http://" + srv.Addr().String() + metrics.Path
	mfs := scrape(t, http.DefaultClient, url)
	// The daemon counts a delivery just after the application can take
	// the message: the counters catch up with what was consumed within
	// moments, not at the same instant.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); mfs = scrape(t, http.DefaultClient, url) {
		if delivered(mfs, "7") >= 3 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}

	const c, g, u = dto.MetricType_COUNTER, dto.MetricType_GAUGE, dto.MetricType_UNTYPED
	port := map[string]string{"port": "vm0.sock"}
	for _, tc := range []struct {
		name   string
		typ    dto.MetricType
		labels map[string]string
		want   float64 // -1: any value
	}{
		{"veloce_build_info", g, map[string]string{"version": "v1.2.3", "goversion": "*"}, 1},
		{"veloce_port_state", g, map[string]string{"port": "vm0.sock", "state": "waiting"}, 1},
		{"veloce_port_state", g, map[string]string{"port": "vm0.sock", "state": "running"}, 0},
		{"veloce_port_info", g, map[string]string{"port": "vm0.sock", "mode": "server", "socket": filepath.Join(dir, "vm0.sock")}, 1},
		{"veloce_port_guest_tx_packets_total", c, port, 0},
		{"veloce_port_guest_tx_bytes_total", c, port, 0},
		{"veloce_port_guest_rx_packets_total", c, port, 0},
		{"veloce_port_guest_rx_bytes_total", c, port, 0},
		{"veloce_port_drops_total", c, port, 0},
		{"veloce_port_errors_total", c, port, 0},
		{"veloce_port_max_queues", g, port, 1},
		{"veloce_stream_info", g, map[string]string{"session": "*", "stream": "*", "datapath": "*"}, 1},
		{"veloce_stream_source_emitted_messages_total", c, map[string]string{"channel": "7", "session": "*", "stream": "*", "source": "*"}, 3},
		{"veloce_stream_source_full_total", c, map[string]string{"channel": "7"}, 0},
		{"veloce_stream_sink_delivered_messages_total", c, map[string]string{"channel": "7", "sink": "*"}, 3},
		{"veloce_stream_sink_dropped_messages_total", c, map[string]string{"channel": "7"}, 0},
		{"veloce_host_app_clients", g, nil, 1},
		{"veloce_host_app_sessions", g, nil, 1},
		{"veloce_host_app_mapped_bytes", g, nil, -1},
		{"veloce_remote_sent_packets_total", c, nil, -1},
		{"veloce_datapath_info", g, map[string]string{"datapath": "udp", "addr": "*", "default": "true"}, 1},
		{"veloce_datapath_peers", g, map[string]string{"datapath": "udp"}, 1},
		{"veloce_datapath_queued_messages", g, map[string]string{"datapath": "udp"}, -1},
		{"veloce_datapath_tx_packets_total", c, map[string]string{"datapath": "udp"}, -1},
		{"veloce_datapath_rx_bytes_total", c, map[string]string{"datapath": "udp"}, -1},
		{"veloce_datapath_stat", u, map[string]string{"datapath": "udp", "stat": "send_errors"}, -1},
		{"veloce_peer_info", g, map[string]string{"peer": "127.0.0.1:9", "node": "*"}, 1},
		{"veloce_peer_source", g, map[string]string{"peer": "127.0.0.1:9", "source": "static"}, 1},
		{"go_goroutines", g, nil, -1},
	} {
		v := find(t, mfs, tc.name, tc.typ, tc.labels)
		if tc.want >= 0 && v != tc.want {
			t.Errorf("%s%v = %g, want %g", tc.name, tc.labels, v, tc.want)
		}
	}
	if v := find(t, mfs, "veloce_host_app_mapped_bytes", g, nil); v <= 0 {
		t.Errorf("veloce_host_app_mapped_bytes = %g with a session open", v)
	}
}

// TestScrapeOverUnixSocket: --metrics unix:PATH.
func TestScrapeOverUnixSocket(t *testing.T) {
	dir, controlSock := daemon(t)
	sock := filepath.Join(dir, "sub", "metrics.sock")
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := metrics.New(metrics.Options{Addr: "unix:" + sock, Service: control.NewClient(controlSock)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	mfs := scrape(t, hc, "http://veloced"+metrics.Path)
	find(t, mfs, "veloce_port_state", dto.MetricType_GAUGE, map[string]string{"port": "vm0.sock", "state": "waiting"})
	cancel() // the context ends the server
	if err := srv.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, err := net.Dial("unix", sock); err == nil {
		t.Error("the metrics socket still answers after the context ended")
	}
}

// TestScrapeWithTheDaemonGone: a daemon that does not answer still gives
// build_info, and the scrape says what failed.
func TestScrapeWithTheDaemonGone(t *testing.T) {
	srv, err := metrics.New(metrics.Options{Addr: "127.0.0.1:0", Service: control.NewClient(filepath.Join(t.TempDir(), "absent.sock"))})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	mfs := scrape(t, http.DefaultClient, "http://"+srv.Addr().String()+metrics.Path)
	find(t, mfs, "veloce_build_info", dto.MetricType_GAUGE, nil)
	if mfs["veloce_port_state"] != nil {
		t.Error("port metrics without a daemon")
	}
}

// TestCollectorLint runs promtool's lint (client_golang's testutil) on
// the collector of a daemon with every kind of object.
func TestCollectorLint(t *testing.T) {
	dir, controlSock := daemon(t)
	streamThree(t, filepath.Join(dir, "app.sock"))
	problems, err := testutil.CollectAndLint(metrics.NewCollector(metrics.CollectorOptions{Service: control.NewClient(controlSock)}))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	if n := testutil.CollectAndCount(metrics.NewCollector(metrics.CollectorOptions{Service: control.NewClient(controlSock)})); n < 40 {
		t.Errorf("collected %d series, want every kind", n)
	}
}

func TestListenErrors(t *testing.T) {
	for _, addr := range []string{"nowhere", "unix:", "256.0.0.1:1"} {
		_, err := metrics.New(metrics.Options{Addr: addr, Service: control.NewClient("x")})
		if err == nil {
			var srv *metrics.Server
			srv, _ = metrics.New(metrics.Options{Addr: addr, Service: control.NewClient("x")})
			err = srv.Start(context.Background())
		}
		if err == nil || !strings.HasPrefix(err.Error(), "--metrics "+addr) {
			t.Errorf("%s: %v, want an error naming --metrics and the address", addr, err)
		}
	}
}
