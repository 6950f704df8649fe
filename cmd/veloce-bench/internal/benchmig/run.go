package benchmig

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchutil"
	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/guestlib"
	"github.com/veloce-io/veloce/images"
	"github.com/veloce-io/veloce/images/guestinit"
	"github.com/veloce-io/veloce/internal/netns"
	"github.com/veloce-io/veloce/plugins/udp"
	"github.com/veloce-io/veloce/vmtest"
)

// The VM's channels: its sources emit on fromVMBase+i, its sinks take
// toVMBase+i.
const (
	fromVMBase = 21
	toVMBase   = 61
	guestUp    = "veloce-bench-migrate-guest-up"
)

// host is one daemon in its namespace.
type host struct {
	name, addr string // addr: its datapath address (the peer's side)
	ns         *benchutil.Netns
	d          *backend.Daemon
	ctl, app   string
	sock       string // the VM port's vhost-user socket ("" on the peer)
	mig        string // migration listener as the other host reaches it
}

type topology struct {
	a, b, peer *host
	nss        []*benchutil.Netns
	dir        string
}

func (t *topology) close() {
	for _, h := range []*host{t.a, t.b, t.peer} {
		if h != nil && h.d != nil {
			h.d.Close()
		}
	}
	for _, n := range t.nss {
		n.Del()
	}
	os.RemoveAll(t.dir)
}

// newTopology: namespaces a, b (the two hosts) and p (the remote peer),
// veths a-p, b-p and a-b (migration), a daemon in each.
func newTopology(key []byte) (t *topology, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root (network namespaces)")
	}
	t = &topology{}
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	if t.dir, err = os.MkdirTemp("", "veloce-bench-migrate-"); err != nil {
		return nil, err
	}
	pid := os.Getpid()
	ns := map[string]*benchutil.Netns{}
	for _, n := range []string{"a", "b", "p"} {
		x, err := benchutil.NewNetns(fmt.Sprintf("vbmig-%d-%s", pid, n))
		if err != nil {
			return nil, err
		}
		ns[n] = x
		t.nss = append(t.nss, x)
	}
	veth := func(i byte, x, y string, ax, ay string) error {
		mac := func(end byte) net.HardwareAddr {
			return net.HardwareAddr{0x02, 0x77, byte(pid >> 8), byte(pid), i, end}
		}
		return netns.AddVeth(netns.Veth{
			A: netns.VethEnd{NS: ns[x].Name, Name: netns.IfName(fmt.Sprintf("vm%c%c%d", x[0], y[0], pid)), MAC: mac(1), Addr: netip.MustParsePrefix(ax)},
			B: netns.VethEnd{NS: ns[y].Name, Name: netns.IfName(fmt.Sprintf("vm%c%c%d", y[0], x[0], pid)), MAC: mac(2), Addr: netip.MustParsePrefix(ay)},
		})
	}
	if err := errors.Join(veth(1, "a", "p", "10.74.1.1/24", "10.74.1.2/24"), veth(2, "b", "p", "10.74.2.1/24", "10.74.2.2/24"),
		veth(3, "a", "b", "10.74.3.1/24", "10.74.3.2/24")); err != nil {
		return nil, err
	}
	if t.peer, err = t.start("peer", ns["p"], 3, []string{"10.74.1.1:7078", "10.74.2.1:7078"}, false, "", key); err != nil {
		return nil, err
	}
	if t.a, err = t.start("a", ns["a"], 1, []string{"10.74.1.2:7078"}, true, "10.74.3.1:7079", key); err != nil {
		return nil, err
	}
	t.a.addr = "10.74.1.1:7078"
	if t.b, err = t.start("b", ns["b"], 2, []string{"10.74.2.2:7078"}, true, "10.74.3.2:7079", key); err != nil {
		return nil, err
	}
	t.b.addr = "10.74.2.1:7078"
	return t, nil
}

func (t *topology) start(name string, ns *benchutil.Netns, nodeID uint32, peers []string, port bool, migAddr string, key []byte) (*host, error) {
	dir := filepath.Join(t.dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	h := &host{name: name, ns: ns, ctl: filepath.Join(dir, "control.sock"), app: filepath.Join(dir, "app.sock"), mig: migAddr}
	shared := []uint32{}
	for i := range uint32(40) {
		shared = append(shared, fromVMBase+i, toVMBase+i)
	}
	opts := backend.DaemonOptions{ControlSocket: h.ctl, AppSocket: h.app,
		Runtime: backend.RuntimeOptions{NodeID: nodeID, SharedChannels: shared},
		Migration: backend.MigrationOptions{Key: key, Listen: "0.0.0.0:7079",
			Dial: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
				err = ns.Do(func() error {
					var d net.Dialer
					c, err = d.DialContext(ctx, network, addr)
					return err
				})
				return c, err
			}}}
	if port {
		h.sock = filepath.Join(dir, "vm.sock")
		opts.Ports = []backend.PortOptions{{Name: "vm", Socket: h.sock}}
	}
	for _, p := range peers {
		opts.Runtime.Remote.Peers = append(opts.Runtime.Remote.Peers, netip.MustParseAddrPort(p))
	}
	err := ns.Do(func() error {
		dp, err := udp.New(udp.Options{Listen: netip.MustParseAddrPort("0.0.0.0:7078")})
		if err != nil {
			return err
		}
		opts.Runtime.Remote.Datapath = dp
		if h.d, err = backend.NewDaemon(opts); err != nil {
			return err
		}
		return h.d.Start(context.Background())
	})
	if err != nil {
		return nil, fmt.Errorf("daemon %s: %w", name, err)
	}
	return h, nil
}

// outbox is the frames the VM port on h holds for its guest.
func (h *host) outbox(ctx context.Context) (int, error) {
	ports, err := control.NewClient(h.ctl).Ports(ctx)
	if err != nil {
		return 0, fmt.Errorf("ports of %s: %w", h.name, err)
	}
	for _, p := range ports {
		if p.Name == "vm" {
			return p.OutboxQueued, nil
		}
	}
	return 0, fmt.Errorf("no port vm on %s", h.name)
}

// recreate deletes the VM port on h and adds it again.
func (h *host) recreate(ctx context.Context) error {
	c := control.NewClient(h.ctl)
	if _, err := c.DelPort(ctx, control.DelPortRequest{Name: "vm"}); err != nil {
		return fmt.Errorf("delete port vm on %s: %w", h.name, err)
	}
	if _, err := c.AddPort(ctx, control.AddPortRequest{Name: "vm", Socket: h.sock}); err != nil {
		return fmt.Errorf("add port vm on %s again: %w", h.name, err)
	}
	return nil
}

// listens reports whether h sees the peer at addr listing every channel
// in chs.
func (h *host) listens(ctx context.Context, addr string, chs []uint32) bool {
	ri, err := control.NewClient(h.ctl).Remote(ctx)
	if err != nil {
		return false
	}
	for _, p := range ri.Peers {
		if p.Addr != addr {
			continue
		}
		have := map[uint32]bool{}
		for _, c := range p.Channels {
			have[c] = true
		}
		for _, c := range chs {
			if !have[c] {
				return false
			}
		}
		return true
	}
	return false
}

func waitFor(ctx context.Context, what string, d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", d, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// guestScript is the VM's program: n/2 sinks, n/2 sources at rate, run
// until the VM is shut down; n 0: nothing but idle.
func guestScript(n, rate int) string {
	var b strings.Builder
	// The guest's socket buffer must hold the burst of the downtime
	// (see cmd/velocectl's migration test).
	b.WriteString("echo 16777216 > /proc/sys/net/core/rmem_max; ")
	// A loop each: the script rides on the kernel command line.
	perf := func(first int, args string) {
		if n > 0 {
			fmt.Fprintf(&b, "for c in $(seq %d %d); do /bin/veloce-perf %s --channel $c --count 1099511627776 --timeout 1000h >/dev/null 2>&1 & done; ",
				first, first+n/2-1, args)
		}
	}
	perf(toVMBase, "sink")
	perf(fromVMBase, fmt.Sprintf("source --rate %d --size 64", rate))
	fmt.Fprintf(&b, "echo %s; sleep 1000000", guestUp)
	return b.String()
}

// image builds the guest's initramfs (veloce-perf in /bin).
func image(ctx context.Context, cfg Config, dir string) (kernel, initramfs string, err error) {
	kctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	k, err := images.EnsureKernel(kctx, images.KernelOptions{})
	if err != nil {
		return "", "", fmt.Errorf("the guest kernel (make images): %w", err)
	}
	b := images.NewInitramfs(k)
	b.AddFile("/bin/veloce-perf", cfg.Perf, 0o755)
	initramfs = filepath.Join(dir, "initramfs.cpio.gz")
	if err := b.WriteFile(initramfs, cfg.Init); err != nil {
		return "", "", fmt.Errorf("build the guest's initramfs: %w", err)
	}
	return k.Vmlinuz, initramfs, nil
}

// Run runs both cases, the reference first, and returns the report
// (nil if nothing was measured).
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.binaries(); err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return nil, errors.New("no qemu-system-x86_64: make deps")
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	key := make([]byte, 32)
	copy(key, fmt.Sprintf("veloce-bench migrate %d %d", os.Getpid(), time.Now().UnixNano()))
	topo, err := newTopology(key)
	if err != nil {
		return nil, err
	}
	defer topo.close()
	kernel, initramfs, err := image(ctx, cfg, topo.dir)
	if err != nil {
		return nil, err
	}
	rep := &Report{Reference: Case{Name: "no streams"}, Streams: Case{Name: "streams", Streams: cfg.Streams, Rate: cfg.Rate}}
	var errs []error
	for _, c := range []*Case{&rep.Reference, &rep.Streams} {
		fmt.Fprintf(cfg.Log, "veloce-bench migrate: case %q (%d streams), %d migrations each way\n", c.Name, c.Streams, cfg.Migrations)
		if err := runCase(ctx, cfg, topo, kernel, initramfs, c); err != nil {
			c.Errors = append(c.Errors, err.Error())
			errs = append(errs, fmt.Errorf("%s: %w", c.Name, err))
		}
	}
	rep.finish()
	rep.Notes = append(rep.Notes, "QEMU 7.2 under TCG on a shared machine: absolute times vary from run to run; the difference against the no-stream case of the same run is the figure")
	if len(rep.Reference.Migrations)+len(rep.Streams.Migrations) == 0 {
		return nil, errors.Join(errs...)
	}
	return rep, errors.Join(errs...)
}

// runCase boots the VM on host a with c.Streams applications and
// migrates it back and forth.
func runCase(ctx context.Context, cfg Config, t *topology, kernel, initramfs string, c *Case) error {
	n := c.Streams
	guest := &guestinit.Config{Net: []guestinit.NetConfig{{Name: "eth0", DHCP: true}}, Run: []string{"/bin/sh", "-c", guestScript(n, c.Rate)}}
	var vms []*vmtest.VM
	defer func() {
		for _, vm := range vms {
			vm.Close()
		}
	}()
	boot := func(h *host, incoming string) (*vmtest.VM, string, error) {
		dir, err := os.MkdirTemp(t.dir, "vm-")
		if err != nil {
			return nil, "", err
		}
		qmp := filepath.Join(dir, "ctl-qmp.sock")
		vm, err := vmtest.New(vmtest.Options{Kernel: kernel, Initramfs: initramfs, Memory: cfg.Memory, Dir: dir,
			NICs: []vmtest.NIC{{Socket: h.sock}}, Guest: guest, Incoming: incoming,
			ExtraArgs: []string{"-qmp", "unix:" + qmp + ",server=on,wait=off"}})
		if err != nil {
			return nil, "", err
		}
		vms = append(vms, vm)
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		if err := vm.Start(sctx); err != nil {
			return nil, "", fmt.Errorf("start QEMU on %s: %w", h.name, err)
		}
		return vm, qmp, nil
	}

	// The peer's application: sinks for the VM's sources, sources for
	// its sinks.
	app, err := guestlib.Open(ctx, guestlib.Options{Socket: t.peer.app})
	if err != nil {
		return err
	}
	defer app.Close()
	var fromVM, toVM atomic.Uint64
	var fromCh, toCh []uint32
	var srcs []*guestlib.Source
	if n > 0 {
		st, err := app.CreateStream(ctx, guestlib.StreamOptions{})
		if err != nil {
			return err
		}
		for i := range uint32(n / 2) {
			fromCh, toCh = append(fromCh, fromVMBase+i), append(toCh, toVMBase+i)
			sk, err := st.CreateSink(ctx, fromVMBase+i, guestlib.SinkOptions{Queue: 1 << 16})
			if err != nil {
				return err
			}
			go func() {
				for {
					m, err := sk.Consume(ctx)
					if err != nil {
						return
					}
					fromVM.Add(1)
					m.Release()
				}
			}()
			src, err := st.CreateSource(ctx, toVMBase+i)
			if err != nil {
				return err
			}
			srcs = append(srcs, src)
		}
		for _, h := range []*host{t.a, t.b} {
			if err := waitFor(ctx, "host "+h.name+" to see the peer's sinks", 2*time.Minute, func() bool {
				return h.listens(ctx, "10.74."+map[string]string{"a": "1", "b": "2"}[h.name]+".2:7078", fromCh)
			}); err != nil {
				return err
			}
		}
	}

	vm, qmp, err := boot(t.a, "")
	if err != nil {
		return err
	}
	if _, err := vm.WaitConsole(ctx, guestUp); err != nil {
		return fmt.Errorf("the guest did not come up: %w", err)
	}
	var measured time.Time
	stopSources := func() {}
	if n > 0 {
		if err := waitFor(ctx, "the peer to see the VM's sinks", 3*time.Minute, func() bool { return t.peer.listens(ctx, t.a.addr, toCh) }); err != nil {
			return err
		}
		sctx, scancel := context.WithCancel(ctx)
		done := make(chan struct{})
		stopSources = func() { scancel(); <-done }
		defer stopSources()
		go func() {
			defer close(done)
			paced := make(chan struct{}, len(srcs))
			for _, src := range srcs {
				go func() {
					defer func() { paced <- struct{}{} }()
					start := time.Now()
					for i := int64(0); ; i++ {
						if d := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(c.Rate))); d > 0 {
							select {
							case <-sctx.Done():
								return
							case <-time.After(d):
							}
						}
						buf, err := src.GetBufferContext(sctx, 64)
						if err != nil {
							return
						}
						if _, err := src.Emit(buf); err != nil {
							return
						}
						toVM.Add(1)
					}
				}()
			}
			for range srcs {
				<-paced
			}
		}()
		if err := waitFor(ctx, "the VM's messages at the peer", 3*time.Minute, func() bool { return fromVM.Load() > uint64(c.Rate) }); err != nil {
			return err
		}
		measured = time.Now()
		fromVM.Store(0)
		toVM.Store(0)
	}

	from, to := t.a, t.b
	for i := range 2 * cfg.Migrations {
		// A port whose VM left should hold no frames; import into one
		// that does is refused (port not idle). Seen: the previous
		// migration's source port kept 1024 stale Deliver frames. Say
		// so, and recreate the port so that the run goes on.
		if q, err := to.outbox(ctx); err != nil {
			return err
		} else if q > 0 {
			c.Stale = append(c.Stale, fmt.Sprintf("before migration %d, port vm on %s (its VM gone) held %d queued frames: port recreated", i+1, to.name, q))
			fmt.Fprintf(cfg.Log, "  %s\n", c.Stale[len(c.Stale)-1])
			if err := to.recreate(ctx); err != nil {
				return err
			}
		}
		uri, err := vmtest.IncomingURI()
		if err != nil {
			return err
		}
		next, nextQMP, err := boot(to, uri)
		if err != nil {
			return err
		}
		m, err := migrate(ctx, cfg.Velocectl, from, to, qmp, nextQMP, uri)
		fmt.Fprintf(cfg.Log, "  %d: %s -> %s %s: downtime %.0f ms, hand-off %.2f ms, total %.0f ms, state %d B (%d streams), %d forwarded\n",
			i+1, from.name, to.name, m.Status, m.DowntimeMs, m.HandoffMs, m.TotalMs, m.StateBytes, m.Streams, m.Forwarded)
		if err != nil {
			return fmt.Errorf("migration %d (%s -> %s): %w", i+1, from.name, to.name, err)
		}
		c.Migrations = append(c.Migrations, m)
		if m.Streams != n {
			c.Errors = append(c.Errors, fmt.Sprintf("migration %d moved %d streams, want %d (did a guest application exit?)", i+1, m.Streams, n))
		}
		q1, _ := from.outbox(ctx)
		sctx, scancel := context.WithTimeout(ctx, time.Minute)
		vm.Shutdown(sctx) // as libvirt does: the source QEMU goes, freeing its port
		scancel()
		q2, _ := from.outbox(ctx)
		if q1+q2 > 0 {
			fmt.Fprintf(cfg.Log, "     source port on %s: %d queued frames after velocectl migrate, %d after its QEMU quit\n", from.name, q1, q2)
		}
		vm, qmp = next, nextQMP
		from, to = to, from
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(cfg.Settle):
		}
	}
	if n > 0 {
		secs := time.Since(measured).Seconds()
		c.FromVMRate, c.ToVMRate = benchutil.Round2(float64(fromVM.Load())/secs), benchutil.Round2(float64(toVM.Load())/secs)
		stopSources()
	}
	return nil
}

// migrate runs velocectl migrate vm from one host to the other and
// returns its JSON summary.
func migrate(ctx context.Context, velocectl string, from, to *host, qmp, destQMP, uri string) (Migration, error) {
	m := Migration{From: from.name, To: to.name}
	cmd := exec.CommandContext(ctx, velocectl, "--control", from.ctl, "-o", "json", "migrate", "vm", "--to-control", to.ctl,
		"--dest-addr", to.mig, "--qmp", qmp, "--dest-qmp", destQMP, "--uri", uri, "--timeout", "10m")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	runErr := cmd.Run()
	if err := json.Unmarshal(out.Bytes(), &m); err != nil && runErr == nil {
		return m, fmt.Errorf("velocectl migrate printed no summary (%v): %s", err, out.String())
	}
	m.From, m.To = from.name, to.name
	if runErr != nil || m.Status != "completed" {
		return m, fmt.Errorf("velocectl migrate: %v, status %q: %s", runErr, m.Status, strings.TrimSpace(lastLines(errb.String(), 5)))
	}
	return m, nil
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}
