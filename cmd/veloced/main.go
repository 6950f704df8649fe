// Command veloced is Veloce's host daemon: it serves each VM a virtio-net
// device over vhost-user and answers the guest on its link (ARP, ICMP echo,
// DHCP). See package backend.
//
//	veloced --vhost-user /run/veloce/vm0.sock [--vhost-user-client PATH]... [--control PATH]
//	        [--tenant PORT=TENANT]... [--app-tenant uid:N=TENANT]... [--shared-channel C]...
//	        [--max-sessions N] [--max-streams N] [--max-sources N] [--max-sinks N] [--control-rate N]
//
// Once every socket listens it writes the line "veloced: ready"
// (control.ReadyLine) to stderr: the readiness signal for whoever started
// it as a process; under systemd (Type=notify) it also sends READY=1 on
// $NOTIFY_SOCKET, and STOPPING=1 when it shuts down (package sdnotify).
//
// Every flag can be set in /etc/veloce/veloced.toml (--config), keyed by
// its name; the command line wins (package config, dist/veloced.toml).
// --metrics serves Prometheus metrics (package metrics).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/internal/config"
	"github.com/veloce-io/veloce/internal/metrics"
	"github.com/veloce-io/veloce/internal/sdnotify"
	"github.com/veloce-io/veloce/internal/sockfile"
	"github.com/veloce-io/veloce/internal/tsn"
	"github.com/veloce-io/veloce/plugins/dpdk"
	"github.com/veloce-io/veloce/plugins/udp"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "veloced:", err)
		}
		os.Exit(2)
	}
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }
func (l *listFlag) Get() any           { return []string(*l) } // repeatable: an array in veloced.toml

// stdout receives --print-config; defaultConfig is --config's default
// (tests clear it so that no /etc/veloce/veloced.toml reaches them).
var (
	stdout        io.Writer = os.Stdout
	defaultConfig           = config.DefaultPath
)

// defaultRingStateDir is --ring-state-dir's default: /run is tmpfs, and
// outlives veloced (not the host, nor, then, the VMs).
const defaultRingStateDir = "/run/veloce/rings"

func run(ctx context.Context, args []string, stderr io.Writer) (rerr error) {
	fs := flag.NewFlagSet("veloced", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: veloced [flags]\n\nServes VMs virtio-net devices over vhost-user. One port per --vhost-user or\n--vhost-user-client socket.\n\n%s\nReadiness: once the control socket, the app socket and every --vhost-user socket\nlisten, veloced writes the line %q alone on stderr; a supervisor or test\nwaits for that line instead of polling for socket files.\n\nFlags:\n", tenantsHelp, control.ReadyLine)
		fs.PrintDefaults()
	}
	var servers, clients listFlag
	fs.Var(&servers, "vhost-user", "vhost-user socket to listen on, one port each; QEMU connects (repeatable)")
	fs.Var(&clients, "vhost-user-client", "vhost-user socket to connect to, one port each; the frontend listens, veloced reconnects when it restarts (repeatable)")
	controlSock := fs.String("control", control.DefaultSocket, "unix socket for velocectl")
	appSocket := fs.String("app-socket", backend.DefaultAppSocket, "unix socket for applications on the host (guestlib's host transport); empty disables")
	serviceIP := fs.String("service-ip", backend.DefaultServiceIP.String(), "address the daemon answers at on every port")
	serviceMAC := fs.String("service-mac", backend.DefaultServiceMAC.String(), "MAC the daemon answers with; keep it equal on every daemon so migrated guests' ARP entries stay valid")
	guestIP := fs.String("guest-ip", backend.DefaultGuestIP.String(), "address and prefix DHCP hands each guest (no router option)")
	queues := fs.Int("queues", 1, "queue pairs each port offers (multiqueue)")
	listen := fs.String("listen", "", "UDP address for streams to and from other daemons (e.g. 10.0.0.1:7078); empty: this host only")
	var peers listFlag
	fs.Var(&peers, "peer", "another daemon's --listen address (repeatable)")
	peerKey := fs.String("peer-key", "", "file with the fleet key (32+ random bytes, raw or hex; mode 0400) for the authenticated mode: every datagram between daemons carries a MAC, unauthenticated or replayed ones are dropped; every daemon of the fleet needs the same key")
	peerExpiry := fs.Duration("peer-expiry", 0, "how long a peer's channel directory stays valid without a newer one (then the peer is stale and gets no messages); default 3 directory intervals")
	reliableTimeout := fs.Duration("reliable-timeout", backend.DefaultReliableTimeout, "how long a peer may acknowledge nothing of a reliable stream's messages before the source fails (its emits then report peer unreachable)")
	maxMessage := fs.Int("max-message", backend.DefaultMaxMessage, "largest message to other hosts, in bytes; larger than one datagram, it goes as fragments, reassembled by the receiving daemon (each datapath's receiver keeps up to 8 such messages in progress); give every daemon of the fleet the same")
	tsnSchedule := fs.String("tsn-schedule", "", "802.1Qbv gate `SCHEDULE` every datapath to other hosts applies, taprio's parameters: 'base=NS|RFC3339,cycle=DURATION,S MASK INTERVAL,...' (e.g. 'base=0,S 01 600us,S 02 400us'); gate bit 0 is bulk traffic, bit 1 time-sensitive streams', which leave only while their gate is open; empty: FIFO, and time-sensitive streams get a warning")
	nodeID := fs.Uint("node-id", 0, "this daemon's id in global source ids, distinct among peers; default random")
	dpdkDev := fs.String("dpdk", "", "DPDK device arguments for the accelerated datapath (e.g. a PCI address on the EAL allowlist, or net_af_packet0,iface=eth1); streams asking for acceleration use it. If DPDK cannot start, veloced warns and such streams fall back to UDP")
	dpdkAddr := fs.String("dpdk-addr", "", "the DPDK port's IPv4 address and link prefix (e.g. 10.0.1.1/24); its UDP port is --listen's, or 7000")
	dpdkEAL := fs.String("dpdk-eal", strings.Join(dpdk.DefaultEAL, " "), "DPDK EAL arguments (space-separated)")
	dpdkCPU := fs.Int("dpdk-cpu", -1, "pin the DPDK polling thread to this CPU; -1: unpinned")
	pollCPUs := fs.String("poll-cpus", "", "pin polling threads to these CPUs (comma-separated, e.g. 2,3), queue pair i of each port on the i-th; default unpinned")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", config.LogText, "log format: text (key=value) or json (one object a line)")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics on /metrics at this address: host:port (e.g. 127.0.0.1:9464) or unix:PATH; empty: none")
	sockMode := fs.String("socket-mode", "0660", "permission bits of the vhost-user sockets veloced listens on")
	sockGroup := fs.String("socket-group", "", "group of those sockets, a name or gid (QEMU under libvirt runs as libvirt-qemu: give its group, or use --vhost-user-client); default veloced's group")
	ctlMode := fs.String("control-mode", "0660", "permission bits of the --control socket")
	ctlGroup := fs.String("control-group", "", "group of the --control socket (operators who may run velocectl), a name or gid; default veloced's group")
	appMode := fs.String("app-socket-mode", "0660", "permission bits of --app-socket (0666: any local user may attach applications)")
	appGroup := fs.String("app-socket-group", "", "group of --app-socket, a name or gid; default veloced's group")
	ringState := fs.String("ring-state-dir", defaultRingStateDir, "directory where veloced keeps the positions of packed virtqueues (QEMU packed=on) so that the VMs' rings survive a veloced restart or crash; on tmpfs; empty: none (such rings then stop at a restart)")
	maxApps := fs.Int("max-app-clients", backend.DefaultMaxAppClients, "most host applications attached at once (each holds a 3 MiB shared region); -1: no limit")
	ten := tenantFlags(fs)
	rdmaF := rdmaFlags(fs)
	xdpF := xdpFlags(fs)
	mig := migrationFlags(fs)
	etcdF := etcdFlags(fs)
	cfg := config.New(fs, defaultConfig) // --config, --print-config: flags from veloced.toml
	if err := cfg.Parse(args); err != nil {
		return err
	}
	if cfg.Printing() {
		return cfg.Print(stdout)
	}
	defer func() { rerr = cfg.Annotate(rerr) }() // a bad value from the file: name its line
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if len(servers)+len(clients) == 0 && *appSocket == "" {
		fs.Usage()
		return errors.New("no ports: give --vhost-user, --vhost-user-client or --app-socket")
	}
	log, logLevelVar, err := config.NewLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	link := backend.LinkPeerOptions{}
	if link.ServiceIP, err = netip.ParseAddr(*serviceIP); err != nil {
		return fmt.Errorf("--service-ip: %w", err)
	}
	if link.GuestIP, err = netip.ParsePrefix(*guestIP); err != nil {
		return fmt.Errorf("--guest-ip: %w", err)
	}
	if link.ServiceMAC, err = net.ParseMAC(*serviceMAC); err != nil {
		return fmt.Errorf("--service-mac: %w", err)
	}
	var cpus []int
	if *pollCPUs != "" {
		for _, f := range strings.Split(*pollCPUs, ",") {
			c, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || c < 0 || c >= runtime.NumCPU() {
				return fmt.Errorf("--poll-cpus: %q is not a CPU of this machine (0-%d)", f, runtime.NumCPU()-1)
			}
			cpus = append(cpus, c)
		}
	}
	opts := backend.DaemonOptions{ControlSocket: *controlSock, AppSocket: *appSocket, Logger: log,
		SocketGroup: *sockGroup, AppSocketGroup: *appGroup, ControlSocketGroup: *ctlGroup, MaxAppClients: *maxApps}
	if opts.ControlSocketMode, err = sockfile.ParseMode(*ctlMode); err != nil {
		return fmt.Errorf("--control-mode: %w", err)
	}
	if opts.SocketMode, err = sockfile.ParseMode(*sockMode); err != nil {
		return fmt.Errorf("--socket-mode: %w", err)
	}
	if opts.AppSocketMode, err = sockfile.ParseMode(*appMode); err != nil {
		return fmt.Errorf("--app-socket-mode: %w", err)
	}
	if *maxApps == 0 || *maxApps < -1 {
		return fmt.Errorf("--max-app-clients: %d: give a positive number, or -1 for no limit", *maxApps)
	}
	opts.Runtime.NodeID = uint32(*nodeID)
	if len(peers) > 0 && *listen == "" && *dpdkDev == "" && !rdmaF.enabled() && !xdpF.enabled() {
		return errors.New("--peer needs --listen or --dpdk (or --rdma, --xdp)")
	}
	for _, p := range peers {
		pa, err := netip.ParseAddrPort(p)
		if err != nil {
			return fmt.Errorf("--peer: %w", err)
		}
		opts.Runtime.Remote.Peers = append(opts.Runtime.Remote.Peers, pa)
	}
	if *peerKey != "" {
		if opts.Runtime.Remote.Key, err = backend.LoadPeerKey(*peerKey); err != nil {
			return fmt.Errorf("--peer-key: %w", err)
		}
	}
	if *peerExpiry < 0 {
		return errors.New("--peer-expiry: negative")
	}
	opts.Runtime.Remote.DirectoryExpiry = *peerExpiry
	if *reliableTimeout <= 0 {
		return errors.New("--reliable-timeout: must be positive (e.g. 5s)")
	}
	opts.Runtime.Remote.ReliableTimeout = *reliableTimeout
	if *maxMessage < backend.MaxRemotePayload || *maxMessage > backend.MaxMaxMessage {
		return fmt.Errorf("--max-message: %d not within %d..%d bytes", *maxMessage, backend.MaxRemotePayload, backend.MaxMaxMessage)
	}
	opts.Runtime.Remote.MaxMessage = *maxMessage
	if *tsnSchedule != "" {
		sched, err := tsn.Parse(*tsnSchedule)
		if err == nil {
			err = backend.CheckSchedule(sched)
		}
		if err != nil {
			return fmt.Errorf("--tsn-schedule: %w", err)
		}
		opts.Runtime.Remote.Schedule = sched
	}
	udpPort := uint16(dpdk.DefaultPort)
	// The datapaths opened below (sockets, DPDK ports) are the daemon's
	// once NewDaemon took them; an error before that closes them.
	owned := false
	defer func() {
		if owned {
			return
		}
		if dp := opts.Runtime.Remote.Datapath; dp != nil {
			dp.Close()
		}
		for _, dp := range opts.Runtime.Remote.Accelerated {
			dp.Close()
		}
	}()
	if *listen != "" {
		la, err := netip.ParseAddrPort(*listen)
		if err != nil {
			return fmt.Errorf("--listen: %w", err)
		}
		dp, err := udp.New(udp.Options{Listen: la, Logger: log})
		if err != nil {
			return fmt.Errorf("--listen: %w", err)
		}
		opts.Runtime.Remote.Datapath = dp
		udpPort = dp.LocalAddr().Port()
	}
	if *dpdkDev != "" {
		if *dpdkAddr == "" {
			return errors.New("--dpdk needs --dpdk-addr")
		}
		pa, err := netip.ParsePrefix(*dpdkAddr)
		if err != nil {
			return fmt.Errorf("--dpdk-addr: %w", err)
		}
		if *dpdkCPU < -1 || *dpdkCPU >= runtime.NumCPU() {
			return fmt.Errorf("--dpdk-cpu: %d is not a CPU of this machine (0-%d)", *dpdkCPU, runtime.NumCPU()-1)
		}
		dp, err := dpdk.New(dpdk.Options{EAL: strings.Fields(*dpdkEAL), Device: *dpdkDev, Addr: pa, Port: udpPort, CPU: *dpdkCPU, Logger: log})
		if err != nil {
			// The policy warns each stream that asked for acceleration.
			log.Warn("DPDK datapath unavailable; streams asking for acceleration will use kernel UDP", "err", err)
		} else {
			opts.Runtime.Remote.Accelerated = append(opts.Runtime.Remote.Accelerated, dp)
		}
	}
	if err := rdmaF.apply(ctx, &opts, *listen, log); err != nil {
		return err
	}
	if err := xdpF.apply(&opts, udpPort, log); err != nil {
		return err
	}
	if len(peers) > 0 && opts.Runtime.Remote.Datapath == nil && len(opts.Runtime.Remote.Accelerated) == 0 {
		return errors.New("--peer: no datapath to reach peers (DPDK failed and no --listen)")
	}
	if err := etcdF.apply(&opts, log); err != nil {
		return err
	}
	for _, s := range servers {
		opts.Ports = append(opts.Ports, backend.PortOptions{Socket: s, QueuePairs: *queues, Link: link, PollCPUs: cpus})
	}
	for _, s := range clients {
		opts.Ports = append(opts.Ports, backend.PortOptions{Socket: s, Client: true, QueuePairs: *queues, Link: link, PollCPUs: cpus})
	}
	if err := ten.apply(&opts); err != nil {
		return err
	}
	if err := mig.apply(&opts, *peerKey); err != nil {
		return err
	}
	if *ringState != "" {
		if err := os.MkdirAll(*ringState, 0o700); err != nil {
			log.Warn("--ring-state-dir unusable: packed virtqueues will not survive a veloced restart", "err", err)
		} else {
			opts.RingStateDir = *ringState
		}
	}
	opts.Admin = backend.AdminOptions{LogLevel: logLevelVar, PortDefaults: backend.PortOptions{QueuePairs: *queues, Link: link, PollCPUs: cpus}}
	d, err := backend.NewDaemon(opts)
	if err != nil {
		return err
	}
	owned = true
	log.Info("veloced starting", "ports", len(opts.Ports), "control", *controlSock)
	if err := d.Start(ctx); err != nil {
		return inUseHint(err, map[string]string{*appSocket: "--app-socket", *controlSock: "--control"})
	}
	if *metricsAddr != "" {
		m, err := metrics.New(metrics.Options{Addr: *metricsAddr, Service: control.NewClient(*controlSock),
			SocketMode: opts.SocketMode, SocketGroup: *sockGroup, Logger: log})
		if err == nil {
			err = m.Start(ctx)
		}
		if err != nil {
			d.Close()
			return err
		}
		defer m.Close()
	}
	log.Info("veloced ready", "ports", len(opts.Ports), "control", *controlSock)
	ready(ctx, stderr, log)
	err = d.Wait()
	log.Info("veloced stopped")
	return err
}

// ready tells whoever started veloced that every socket listens: the
// documented line control.ReadyLine on stderr (the help says so), and
// systemd's "READY=1" on $NOTIFY_SOCKET (Type=notify units). When ctx
// ends, shutdown begins: systemd gets "STOPPING=1".
func ready(ctx context.Context, stderr io.Writer, log *slog.Logger) {
	fmt.Fprintln(stderr, control.ReadyLine)
	if _, err := sdnotify.Notify(sdnotify.Ready); err != nil {
		log.Warn("telling systemd veloced is ready", "err", err)
	}
	context.AfterFunc(ctx, func() {
		if _, err := sdnotify.Notify(sdnotify.Stopping); err != nil {
			log.Warn("telling systemd veloced is stopping", "err", err)
		}
	})
}
