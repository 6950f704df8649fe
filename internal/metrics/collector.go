// Package metrics exports veloced's state to Prometheus.
//
// A Collector reads a control.Service (the data velocectl shows: ports,
// streams, host applications, datapaths and peers) on every scrape, so
// the figures are the daemon's own counters at scrape time and nothing is
// kept twice. It does not import package backend: veloced hands it a
// control.Client on its own control socket, a test may hand it anything
// that implements control.Service. A Server serves the Collector, Go's
// and the process's collectors on /metrics over TCP or a unix socket.
//
// Names follow Prometheus conventions: prefix veloce_, counters end in
// _total, sizes are in bytes, states are a gauge per state with value 1
// for the current one. Labels: port (a port's name), session and stream
// (a stream's ids; veloce_stream_info carries its datapath), source, sink
// and channel, datapath and addr (a datapath to other hosts), peer.
package metrics

import (
	"context"
	"encoding/json"
	"log/slog"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/veloce-io/veloce/control"
)

// PortStates are the states a port reports (control.PortInfo.State);
// veloce_port_state has a series for each, 1 for the current one.
var PortStates = []string{"waiting", "connected", "running", "failed"}

// CollectorOptions configure a Collector.
type CollectorOptions struct {
	// Service is the daemon's state, read on every scrape. Required.
	Service control.Service
	// Timeout bounds one scrape's reads of Service; default 5s.
	Timeout time.Duration
	// Version is veloce_build_info's version label; empty: the main
	// module's version from the binary's build information.
	Version string
	// Logger receives the errors of Service's methods (each also fails
	// its part of the scrape); nil discards them.
	Logger *slog.Logger
}

// Collector is a prometheus.Collector of a daemon's state. Create it with
// NewCollector.
type Collector struct {
	opts CollectorOptions
	log  *slog.Logger
	info [3]string // version, revision, goversion
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a Collector of opts.Service.
func NewCollector(opts CollectorOptions) *Collector {
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	c := &Collector{opts: opts, log: opts.Logger}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.info = [3]string{opts.Version, "unknown", runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if c.info[0] == "" {
			c.info[0] = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				c.info[1] = s.Value
			}
		}
	}
	if c.info[0] == "" {
		c.info[0] = "unknown"
	}
	return c
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("veloce_"+name, help, labels, nil)
}

var (
	portL   = []string{"port"}
	sourceL = []string{"session", "stream", "source", "channel"}
	sinkL   = []string{"session", "stream", "sink", "channel"}
	dpL     = []string{"datapath", "addr"}
	peerL   = []string{"peer"}

	buildInfo = desc("build_info", "veloced's build: 1, with its version, VCS revision and Go version as labels.", "version", "revision", "goversion")

	portInfo      = desc("port_info", "A VM port: 1, with its socket, mode (server or client), guest address and MAC as labels.", "port", "socket", "mode", "guest_ip", "guest_mac")
	portState     = desc("port_state", "A port's state: 1 for the current one (waiting, connected, running, failed), 0 for the others.", "port", "state")
	portTXPackets = desc("port_guest_tx_packets_total", "Frames the guest sent (taken off its TX queues).", portL...)
	portTXBytes   = desc("port_guest_tx_bytes_total", "Bytes of the frames the guest sent.", portL...)
	portRXPackets = desc("port_guest_rx_packets_total", "Frames put on the guest's RX queues.", portL...)
	portRXBytes   = desc("port_guest_rx_bytes_total", "Bytes of the frames put on the guest's RX queues.", portL...)
	portDrops     = desc("port_drops_total", "Frames the port dropped.", portL...)
	portErrors    = desc("port_errors_total", "Errors on the port's queues.", portL...)
	portARP       = desc("port_arp_replies_total", "ARP replies the link peer sent the guest.", portL...)
	portEcho      = desc("port_echo_replies_total", "ICMP echo replies the link peer sent the guest.", portL...)
	portDHCP      = desc("port_dhcp_replies_total", "DHCP replies the link peer sent the guest.", portL...)
	portLinkDrops = desc("port_link_drops_total", "Frames the link peer counted and dropped (not for the service).", portL...)
	portService   = desc("port_service_datagrams_total", "Datagrams the guest sent to the service address (guestlib's protocol).", portL...)
	portMalformed = desc("port_malformed_datagrams_total", "Service datagrams that did not parse.", portL...)
	portQueues    = desc("port_queues", "Queue pairs the frontend uses.", portL...)
	portMaxQueues = desc("port_max_queues", "Queue pairs the port offers.", portL...)
	portSessions  = desc("port_sessions", "Open guestlib sessions on the port.", portL...)
	portOutbox    = desc("port_outbox_queued_messages", "Messages waiting for room on the guest's RX queues.", portL...)
	portLogging   = desc("port_dirty_logging", "1 while the frontend has the daemon log dirty pages (live migration).", portL...)

	streamInfo     = desc("stream_info", "A stream: 1, with its endpoint and datapath as labels.", "session", "stream", "endpoint", "datapath")
	streamDegraded = desc("stream_degraded", "1 if the stream did not get the datapath its QoS asked for (velocectl streams shows why).", "session", "stream")
	sourceEmitted  = desc("stream_source_emitted_messages_total", "Messages a source emitted.", sourceL...)
	sourceFull     = desc("stream_source_full_total", "Messages a source emitted that found its pool empty (back-pressure).", sourceL...)
	sinkDelivered  = desc("stream_sink_delivered_messages_total", "Messages delivered to a sink.", sinkL...)
	sinkDropped    = desc("stream_sink_dropped_messages_total", "Messages dropped for a sink.", sinkL...)

	appClients   = desc("host_app_clients", "Host applications attached to the app socket.")
	appSessions  = desc("host_app_sessions", "The host applications' open sessions.")
	appMapped    = desc("host_app_mapped_bytes", "Shared memory mapped for host applications.")
	appMalformed = desc("host_app_malformed_total", "Bad ring entries and requests from host applications.")
	appWakeups   = desc("host_app_wakeups_total", "Eventfd signals to host applications.")

	remoteSent      = desc("remote_sent_packets_total", "Wire packets sent to other hosts, over every datapath.")
	remoteReceived  = desc("remote_received_packets_total", "Wire packets received from other hosts.")
	remoteDropped   = desc("remote_dropped_packets_total", "Packets for other hosts that could not go.")
	remoteMalformed = desc("remote_malformed_packets_total", "Packets from other hosts that did not parse.")
	dpInfo          = desc("datapath_info", "A datapath to other hosts: 1; default is true for the one streams use without acceleration.", "datapath", "addr", "default")
	dpQueued        = desc("datapath_queued_messages", "Messages queued on the datapath.", dpL...)
	dpPeers         = desc("datapath_peers", "Peers the datapath reaches.", dpL...)
	dpTXPackets     = desc("datapath_tx_packets_total", "Packets the datapath sent (if it counts them).", dpL...)
	dpTXBytes       = desc("datapath_tx_bytes_total", "Bytes the datapath sent (if it counts them).", dpL...)
	dpRXPackets     = desc("datapath_rx_packets_total", "Packets the datapath received (if it counts them).", dpL...)
	dpRXBytes       = desc("datapath_rx_bytes_total", "Bytes the datapath received (if it counts them).", dpL...)
	dpStat          = desc("datapath_stat", "The datapath's other counters and gauges, by the name velocectl remote shows (nested ones joined by _).", "datapath", "addr", "stat")
	peerInfo        = desc("peer_info", "A peer daemon: 1, with its node id as a label.", "peer", "node")
	peerChannels    = desc("peer_channels", "Channels the peer has sinks for.", peerL...)
	peerLastSeen    = desc("peer_last_directory_timestamp_seconds", "When the peer's last channel directory arrived (Unix time).", peerL...)
	peerSource      = desc("peer_source", "Where the peer and its channels come from: 1, with the source (static or etcd) as a label.", "peer", "source")
	etcdConnected   = desc("etcd_connected", "1 while the fleet directory's last request to etcd succeeded and its watch runs (veloced --etcd).")
	etcdRevision    = desc("etcd_revision", "The etcd revision the fleet directory is current to.")
	etcdNodes       = desc("etcd_nodes", "Other daemons in the fleet directory.")
	etcdPuts        = desc("etcd_puts_total", "Writes of this daemon's fleet directory key.")
	etcdPutBytes    = desc("etcd_put_bytes_total", "Value bytes of those writes.")
	etcdEvents      = desc("etcd_watch_events_total", "Watch events the fleet directory received.")
	etcdReadBytes   = desc("etcd_read_bytes_total", "Value bytes the fleet directory read (lists and watch events).")
)

var allDescs = []*prometheus.Desc{buildInfo,
	portInfo, portState, portTXPackets, portTXBytes, portRXPackets, portRXBytes, portDrops, portErrors,
	portARP, portEcho, portDHCP, portLinkDrops, portService, portMalformed, portQueues, portMaxQueues,
	portSessions, portOutbox, portLogging,
	streamInfo, streamDegraded, sourceEmitted, sourceFull, sinkDelivered, sinkDropped,
	appClients, appSessions, appMapped, appMalformed, appWakeups,
	remoteSent, remoteReceived, remoteDropped, remoteMalformed,
	dpInfo, dpQueued, dpPeers, dpTXPackets, dpTXBytes, dpRXPackets, dpRXBytes, dpStat,
	peerInfo, peerChannels, peerLastSeen, peerSource,
	etcdConnected, etcdRevision, etcdNodes, etcdPuts, etcdPutBytes, etcdEvents, etcdReadBytes,
}

// Describe sends every metric's description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

// Collect reads the Service and sends the metrics. A method of the
// Service that fails fails its part of the scrape (an invalid metric,
// which promhttp reports) and is logged; the other parts still come.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.Timeout)
	defer cancel()
	ch <- prometheus.MustNewConstMetric(buildInfo, prometheus.GaugeValue, 1, c.info[:]...)
	if ports, err := c.opts.Service.Ports(ctx); err != nil {
		c.fail(ch, portState, "ports", err)
	} else {
		collectPorts(ch, ports)
	}
	if streams, err := c.opts.Service.Streams(ctx); err != nil {
		c.fail(ch, streamInfo, "streams", err)
	} else {
		collectStreams(ch, streams)
	}
	if apps, err := c.opts.Service.Apps(ctx); err != nil {
		c.fail(ch, appClients, "apps", err)
	} else {
		collectApps(ch, apps)
	}
	if remote, err := c.opts.Service.Remote(ctx); err != nil {
		c.fail(ch, remoteSent, "remote", err)
	} else {
		collectRemote(ch, remote)
	}
}

func (c *Collector) fail(ch chan<- prometheus.Metric, d *prometheus.Desc, part string, err error) {
	c.log.Warn("metrics: reading the daemon's state", "part", part, "err", err)
	ch <- prometheus.NewInvalidMetric(d, err)
}

func counter(ch chan<- prometheus.Metric, d *prometheus.Desc, v uint64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func u32(v uint32) string { return strconv.FormatUint(uint64(v), 10) }

func collectPorts(ch chan<- prometheus.Metric, ports []control.PortInfo) {
	for _, p := range ports {
		n := p.Name
		gauge(ch, portInfo, 1, n, p.Socket, p.Mode, p.GuestIP, p.GuestMAC)
		known := false
		for _, s := range PortStates {
			known = known || s == p.State
			gauge(ch, portState, b2f(s == p.State), n, s)
		}
		if !known {
			gauge(ch, portState, 1, n, p.State)
		}
		counter(ch, portTXPackets, p.GuestTXPackets, n)
		counter(ch, portTXBytes, p.GuestTXBytes, n)
		counter(ch, portRXPackets, p.GuestRXPackets, n)
		counter(ch, portRXBytes, p.GuestRXBytes, n)
		counter(ch, portDrops, p.Drops, n)
		counter(ch, portErrors, p.Errors, n)
		counter(ch, portARP, p.ARPReplies, n)
		counter(ch, portEcho, p.EchoReplies, n)
		counter(ch, portDHCP, p.DHCPReplies, n)
		counter(ch, portLinkDrops, p.LinkDrops, n)
		counter(ch, portService, p.ServiceDatagrams, n)
		counter(ch, portMalformed, p.Malformed, n)
		gauge(ch, portQueues, float64(p.Queues), n)
		gauge(ch, portMaxQueues, float64(p.MaxQueues), n)
		gauge(ch, portSessions, float64(p.Sessions), n)
		gauge(ch, portOutbox, float64(p.OutboxQueued), n)
		gauge(ch, portLogging, b2f(p.Logging), n)
	}
}

func collectStreams(ch chan<- prometheus.Metric, streams []control.StreamInfo) {
	for _, s := range streams {
		ss, st := u32(s.Session), u32(s.Stream)
		gauge(ch, streamInfo, 1, ss, st, s.Endpoint, s.Datapath)
		gauge(ch, streamDegraded, b2f(s.Warning != ""), ss, st)
		for _, so := range s.Sources {
			l := []string{ss, st, u32(so.ID), u32(so.Channel)}
			counter(ch, sourceEmitted, so.Emitted, l...)
			counter(ch, sourceFull, so.Full, l...)
		}
		for _, sk := range s.Sinks {
			l := []string{ss, st, u32(sk.ID), u32(sk.Channel)}
			counter(ch, sinkDelivered, sk.Delivered, l...)
			counter(ch, sinkDropped, sk.Dropped, l...)
		}
	}
}

func collectApps(ch chan<- prometheus.Metric, a control.HostAppsInfo) {
	gauge(ch, appClients, float64(len(a.Clients)))
	gauge(ch, appSessions, float64(a.Sessions))
	gauge(ch, appMapped, float64(a.MappedBytes))
	counter(ch, appMalformed, a.Malformed)
	counter(ch, appWakeups, a.Wakeups)
}

// Datapath counters by the names the plugins give them (snake_case).
var (
	txPacketNames = []string{"tx_packets", "tx_datagrams", "packets_sent"}
	txByteNames   = []string{"tx_bytes", "bytes_sent"}
	rxPacketNames = []string{"rx_packets", "packets_received"}
	rxByteNames   = []string{"rx_bytes", "bytes_received"}
)

func collectRemote(ch chan<- prometheus.Metric, r control.RemoteInfo) {
	counter(ch, remoteSent, r.Sent)
	counter(ch, remoteReceived, r.Received)
	counter(ch, remoteDropped, r.Dropped)
	counter(ch, remoteMalformed, r.Malformed)
	for _, d := range r.Datapaths {
		l := []string{d.Name, d.Addr}
		gauge(ch, dpInfo, 1, d.Name, d.Addr, strconv.FormatBool(d.Default))
		gauge(ch, dpQueued, float64(d.Queued), l...)
		gauge(ch, dpPeers, float64(len(d.Peers)), l...)
		stats := flatten(d.Stats)
		for _, m := range []struct {
			d     *prometheus.Desc
			names []string
		}{{dpTXPackets, txPacketNames}, {dpTXBytes, txByteNames}, {dpRXPackets, rxPacketNames}, {dpRXBytes, rxByteNames}} {
			for _, name := range m.names {
				if v, ok := stats[name]; ok {
					ch <- prometheus.MustNewConstMetric(m.d, prometheus.CounterValue, v, l...)
					delete(stats, name)
					break
				}
			}
		}
		names := make([]string, 0, len(stats))
		for k := range stats {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			ch <- prometheus.MustNewConstMetric(dpStat, prometheus.UntypedValue, stats[k], d.Name, d.Addr, k)
		}
	}
	for _, p := range r.Peers {
		gauge(ch, peerInfo, 1, p.Addr, u32(p.Node))
		gauge(ch, peerChannels, float64(len(p.Channels)), p.Addr)
		if t, err := time.Parse(time.RFC3339Nano, p.LastSeen); err == nil {
			gauge(ch, peerLastSeen, float64(t.UnixNano())/1e9, p.Addr)
		}
		if p.Source != "" {
			gauge(ch, peerSource, 1, p.Addr, p.Source)
		}
	}
	if e := r.Directory.Etcd; e != nil {
		up := 0.0
		if e.Connected {
			up = 1
		}
		gauge(ch, etcdConnected, up)
		gauge(ch, etcdRevision, float64(e.Revision))
		gauge(ch, etcdNodes, float64(e.Nodes))
		counter(ch, etcdPuts, e.Puts)
		counter(ch, etcdPutBytes, e.PutBytes)
		counter(ch, etcdEvents, e.Events)
		counter(ch, etcdReadBytes, e.ReadBytes)
	}
}

// flatten turns a datapath's stats (a struct in process, a map after a
// trip through the control API's JSON) into snake_case names and numbers;
// booleans are 0 or 1, strings are left out, nested objects' names are
// joined with "_".
func flatten(stats any) map[string]float64 {
	out := map[string]float64{}
	if stats == nil {
		return out
	}
	b, err := json.Marshal(stats)
	if err != nil {
		return out
	}
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		return out
	}
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			name := prefix + snake(k)
			switch v := v.(type) {
			case float64:
				out[name] = v
			case bool:
				out[name] = b2f(v)
			case map[string]any:
				walk(name+"_", v)
			}
		}
	}
	walk("", m)
	return out
}

// snake turns PacketsSent or rx-ring full into packets_sent, rx_ring_full.
func snake(s string) string {
	var b strings.Builder
	prevLower := false
	for _, r := range s {
		switch {
		case unicode.IsUpper(r):
			if prevLower {
				b.WriteByte('_')
			}
			b.WriteRune(unicode.ToLower(r))
			prevLower = false
		case unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
			prevLower = true
		default:
			if b.Len() > 0 && !strings.HasSuffix(b.String(), "_") {
				b.WriteByte('_')
			}
			prevLower = false
		}
	}
	return strings.Trim(b.String(), "_")
}
