// Package vmtest boots real QEMU virtual machines for Veloce's tests and
// tools: Debian kernel, the project's initramfs (package images), guest
// memory in a shared memfd (as vhost-user needs), any number of vhost-user
// NICs, the serial console captured to a file, and a QMP handle
// (github.com/digitalocean/go-qemu).
//
// Lifecycle follows firecracker-go-sdk: New(opts) validates, Start(ctx)
// launches QEMU once (cleaning up on failure), Wait(ctx) returns the guest
// program's result, Shutdown(ctx) asks QEMU to quit and kills it when it
// does not. Each VM works in its own directory (Options.Dir or a fresh
// temporary one), so tests boot VMs in parallel.
//
// For tests, Boot and RunGuest wrap that lifecycle with t.Cleanup, keep the
// work directory (serial log, QEMU's log) when the test failed, and gate on
// QEMU and a kernel: outside CI a missing one skips the test saying why;
// with CI=true it fails it (see internal/testutil).
//
// Machine facts this package encodes (QEMU 7.2 under TCG, no KVM): the
// vhost-user NIC has MSI-X off (vectors=0) since QEMU crashes otherwise;
// guest memory is a memory-backend-memfd with share=on. Why not
// hugelgupf/vmtest: it builds u-root guests and has no vhost-user or
// shared-memory knobs; the parts Veloce needs fit in this file.
package vmtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/veloce-io/veloce/images/guestinit"
)

// NIC is a virtio-net device backed by vhost-user.
type NIC struct {
	// Socket is the vhost-user unix socket path.
	Socket string
	// Server makes QEMU listen on Socket and the backend connect to it
	// (veloced --vhost-user-client); otherwise QEMU connects to a backend
	// that listens (veloced --vhost-user, DPDK net_vhost).
	Server bool
	// Reconnect, for a client socket, makes QEMU retry a lost or absent
	// backend every Reconnect seconds instead of failing.
	Reconnect int
	// MAC is the guest's MAC address; default 52:54:00:00:00:NN.
	MAC string
	// Queues is the number of queue pairs (multiqueue); default 1.
	Queues int
	// Extra device properties appended to -device virtio-net-pci, e.g.
	// "mrg_rxbuf=off" or "host_mtu=9000".
	DeviceProps []string
}

// Options configure a VM. Kernel and Initramfs are required unless Disk
// is set.
type Options struct {
	// QEMU is the emulator binary; default qemu-system-x86_64.
	QEMU string
	// Kernel is the vmlinuz path.
	Kernel string
	// Initramfs is the initramfs path (images.Initramfs output).
	Initramfs string
	// Guest is what /init does; it rides on the kernel command line.
	// Nil boots to a shell (or nothing, without busybox).
	Guest *guestinit.Config
	// Cmdline is appended to the kernel command line.
	Cmdline []string
	// Memory is the guest RAM in QEMU's size syntax; default "512M".
	// Migration tests use a size that is not a multiple of 256 KiB, such
	// as "262152K" (see DESIGN.md).
	Memory string
	// CPUs is the number of vCPUs; default 1.
	CPUs int
	// NICs are the vhost-user network devices, eth0 first.
	NICs []NIC
	// Incoming starts QEMU waiting for an incoming migration
	// ("-incoming URI", e.g. "tcp:127.0.0.1:4444" or "defer").
	Incoming string
	// ExtraArgs are appended to QEMU's command line.
	ExtraArgs []string
	// Dir is the work directory (sockets, logs). Empty means a new
	// temporary directory, removed by Close unless KeepDir is set.
	Dir string
	// KeepDir keeps the work directory on Close.
	KeepDir bool
	// Console, when set, receives a live copy of the serial console.
	Console io.Writer
	// Disk, when set, boots the VM from a disk image through UEFI firmware
	// instead of Kernel and Initramfs (see DiskBoot).
	Disk *DiskBoot
}

// ErrExited is returned by operations on a VM whose QEMU is gone.
var ErrExited = errors.New("qemu has exited")

// VM is one QEMU process.
type VM struct {
	opts    Options
	dir     string
	ownDir  bool
	qmpPath string
	cmd     *exec.Cmd

	console consoleBuffer

	monMu sync.Mutex
	// mon is nil before Start.
	mon *qmp.SocketMonitor // +checklocks:monMu

	eventsMu sync.Mutex
	events   []qmp.Event   // +checklocks:eventsMu
	eventsCh chan struct{} // +checklocks:eventsMu

	done    chan struct{} // closed when QEMU has exited
	waitErr error         // QEMU's exit, valid after done
	readers sync.WaitGroup
}

// New validates opts and prepares the work directory. It starts nothing.
func New(opts Options) (*VM, error) {
	if (opts.Kernel == "" || opts.Initramfs == "") && opts.Disk == nil {
		return nil, errors.New("vmtest: Kernel and Initramfs are required")
	}
	if opts.QEMU == "" {
		opts.QEMU = "qemu-system-x86_64"
	}
	if opts.Memory == "" {
		opts.Memory = "512M"
	}
	if opts.CPUs == 0 {
		opts.CPUs = 1
	}
	vm := &VM{opts: opts, done: make(chan struct{}), eventsCh: make(chan struct{})}
	vm.console.changed = make(chan struct{})
	if opts.Dir == "" {
		d, err := os.MkdirTemp("", "veloce-vm-")
		if err != nil {
			return nil, err
		}
		vm.dir, vm.ownDir = d, true
	} else {
		if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
			return nil, err
		}
		vm.dir = opts.Dir
	}
	vm.qmpPath = filepath.Join(vm.dir, "qmp.sock")
	return vm, nil
}

// Dir returns the VM's work directory.
func (vm *VM) Dir() string { return vm.dir }

// SerialLog returns the path of the file holding the serial console.
func (vm *VM) SerialLog() string { return filepath.Join(vm.dir, "serial.log") }

// QEMULog returns the path of the file holding QEMU's own stderr.
func (vm *VM) QEMULog() string { return filepath.Join(vm.dir, "qemu.log") }

// Args returns QEMU's command line (without the binary).
func (vm *VM) Args() ([]string, error) {
	o := vm.opts
	cmdline := []string{"console=ttyS0", "panic=-1", "quiet", "loglevel=4"}
	if o.Guest != nil {
		arg, err := o.Guest.KernelArg()
		if err != nil {
			return nil, err
		}
		cmdline = append(cmdline, arg)
	}
	cmdline = append(cmdline, o.Cmdline...)
	args := []string{
		"-machine", "pc,accel=tcg,memory-backend=mem",
		"-object", "memory-backend-memfd,id=mem,size=" + o.Memory + ",share=on",
		"-m", o.Memory,
		"-smp", strconv.Itoa(o.CPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-chardev", "stdio,id=con,signal=off",
		"-serial", "chardev:con",
		"-qmp", "unix:" + vm.qmpPath + ",server=on,wait=off",
		// Entropy: without it getrandom(2) blocks in a TCG guest.
		"-device", "virtio-rng-pci,vectors=0",
	}
	if o.Disk != nil {
		disk, err := o.Disk.diskArgs(&o, vm.dir)
		if err != nil {
			return nil, err
		}
		args = append(args, disk...)
	} else {
		args = append(args, "-kernel", o.Kernel, "-initrd", o.Initramfs, "-append", strings.Join(cmdline, " "))
	}
	for i, n := range o.NICs {
		if n.Socket == "" {
			return nil, fmt.Errorf("vmtest: NIC %d has no socket path", i)
		}
		chardev := fmt.Sprintf("socket,id=vu%d,path=%s", i, n.Socket)
		switch {
		case n.Server:
			chardev += ",server=on,wait=off"
		case n.Reconnect > 0:
			chardev += ",reconnect=" + strconv.Itoa(n.Reconnect)
		}
		queues := max(n.Queues, 1)
		mac := n.MAC
		if mac == "" {
			mac = fmt.Sprintf("52:54:00:00:00:%02x", i+1)
		}
		dev := fmt.Sprintf("virtio-net-pci,netdev=n%d,mac=%s,romfile=,vectors=0", i, mac)
		if queues > 1 {
			// MSI-X stays off (QEMU 7.2 under TCG crashes with it), so
			// queues share the legacy interrupt.
			dev += ",mq=on"
		}
		for _, p := range n.DeviceProps {
			dev += "," + p
		}
		args = append(args,
			"-chardev", chardev,
			"-netdev", fmt.Sprintf("vhost-user,id=n%d,chardev=vu%d,queues=%d", i, i, queues),
			"-device", dev)
	}
	if o.Incoming != "" {
		args = append(args, "-incoming", o.Incoming)
	}
	return append(args, o.ExtraArgs...), nil
}

// Start launches QEMU and connects QMP. It may be called once. On failure
// QEMU is stopped and the error carries the end of QEMU's log.
func (vm *VM) Start(ctx context.Context) error {
	if vm.cmd != nil {
		return errors.New("vmtest: Start called twice")
	}
	args, err := vm.Args()
	if err != nil {
		return err
	}
	serial, err := os.Create(vm.SerialLog())
	if err != nil {
		return err
	}
	qlog, err := os.Create(vm.QEMULog())
	if err != nil {
		serial.Close()
		return err
	}
	fmt.Fprintf(qlog, "%s %s\n", vm.opts.QEMU, shellQuote(args))
	cmd := exec.Command(vm.opts.QEMU, args...)
	cmd.Stderr = qlog
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		serial.Close()
		qlog.Close()
		return err
	}
	if err := cmd.Start(); err != nil {
		serial.Close()
		qlog.Close()
		return fmt.Errorf("start qemu: %w", err)
	}
	vm.cmd = cmd
	vm.readers.Add(1)
	go func() {
		defer vm.readers.Done()
		defer serial.Close()
		var sinks []io.Writer = []io.Writer{serial, &vm.console}
		if vm.opts.Console != nil {
			sinks = append(sinks, vm.opts.Console)
		}
		io.Copy(io.MultiWriter(sinks...), stdout)
	}()
	go func() {
		vm.readers.Wait()
		vm.waitErr = cmd.Wait()
		qlog.Close()
		close(vm.done)
	}()
	if err := vm.connectQMP(ctx); err != nil {
		vm.kill()
		return fmt.Errorf("start qemu: %w%s", err, vm.logTail())
	}
	return nil
}

func (vm *VM) connectQMP(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		mon, err := qmp.NewSocketMonitor("unix", vm.qmpPath, 2*time.Second)
		if err == nil {
			if err = connectMonitor(ctx, mon, vm.done); err == nil {
				events, _ := mon.Events(context.Background())
				go vm.drainEvents(events)
				vm.monMu.Lock()
				vm.mon = mon
				vm.monMu.Unlock()
				return nil
			}
			mon.Disconnect()
		}
		select {
		case <-vm.done:
			return ErrExited
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("connect qmp %s: %w", vm.qmpPath, err)
		}
	}
}

// connectMonitor runs go-qemu's Connect (the greeting and capabilities
// handshake), which has no deadline of its own: QEMU answers only once it
// has finished starting up, and a vhost-user netdev whose backend does not
// answer holds its start-up. On ctx's end or QEMU's exit, the socket is
// closed, which ends Connect.
func connectMonitor(ctx context.Context, mon *qmp.SocketMonitor, exited <-chan struct{}) error {
	errc := make(chan error, 1)
	go func() { errc <- mon.Connect() }()
	select {
	case err := <-errc:
		return err
	case <-exited:
		mon.Disconnect()
		return ErrExited
	case <-ctx.Done():
		mon.Disconnect()
		return fmt.Errorf("qmp greeting: %w (is QEMU waiting for a vhost-user backend?)", ctx.Err())
	}
}

// drainEvents keeps go-qemu's event channel flowing (an unread channel
// blocks command replies) and records every event for WaitEvent.
func (vm *VM) drainEvents(events <-chan qmp.Event) {
	for e := range events {
		vm.eventsMu.Lock()
		vm.events = append(vm.events, e)
		close(vm.eventsCh)
		vm.eventsCh = make(chan struct{})
		vm.eventsMu.Unlock()
	}
}

// WaitEvent waits until QMP has delivered an event named name (since the
// VM started) and returns the first such event at or after index from; it
// also returns the index after it, for waiting on the next one.
func (vm *VM) WaitEvent(ctx context.Context, name string, from int) (qmp.Event, int, error) {
	for {
		vm.eventsMu.Lock()
		for i := from; i < len(vm.events); i++ {
			if vm.events[i].Event == name {
				e := vm.events[i]
				vm.eventsMu.Unlock()
				return e, i + 1, nil
			}
		}
		ch := vm.eventsCh
		vm.eventsMu.Unlock()
		select {
		case <-ch:
		case <-vm.done:
			return qmp.Event{}, from, fmt.Errorf("wait for event %s: %w", name, ErrExited)
		case <-ctx.Done():
			return qmp.Event{}, from, fmt.Errorf("wait for event %s: %w", name, ctx.Err())
		}
	}
}

// QMP runs a QMP command with optional arguments and decodes the "return"
// member into out (when out is non-nil).
func (vm *VM) QMP(ctx context.Context, command string, args any, out any) error {
	vm.monMu.Lock()
	mon := vm.mon
	vm.monMu.Unlock()
	if mon == nil {
		return errors.New("vmtest: QMP before Start")
	}
	cmd := qmp.Command{Execute: command}
	if args != nil {
		cmd.Args = toArgs(args)
	}
	req, err := json.Marshal(cmd)
	if err != nil {
		return err
	}
	type reply struct {
		raw []byte
		err error
	}
	ch := make(chan reply, 1)
	go func() {
		raw, err := mon.Run(req)
		ch <- reply{raw, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return fmt.Errorf("qmp %s: %w", command, r.err)
		}
		if out == nil {
			return nil
		}
		var resp struct {
			Return json.RawMessage `json:"return"`
		}
		if err := json.Unmarshal(r.raw, &resp); err != nil {
			return fmt.Errorf("qmp %s: %w", command, err)
		}
		return json.Unmarshal(resp.Return, out)
	case <-vm.done:
		return fmt.Errorf("qmp %s: %w", command, ErrExited)
	case <-ctx.Done():
		return fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
}

func toArgs(args any) map[string]any {
	if args == nil {
		return nil
	}
	if m, ok := args.(map[string]any); ok {
		return m
	}
	b, _ := json.Marshal(args)
	var m map[string]any
	json.Unmarshal(b, &m)
	return m
}

// Console returns a copy of everything the guest printed so far.
func (vm *VM) Console() []byte { return vm.console.bytes() }

// WaitConsole waits until the console shows s and returns the console up
// to and including it.
func (vm *VM) WaitConsole(ctx context.Context, s string) ([]byte, error) {
	for {
		b, changed := vm.console.snapshot()
		if i := bytes.Index(b, []byte(s)); i >= 0 {
			return b[:i+len(s)], nil
		}
		select {
		case <-changed:
		case <-vm.done:
			// The reader has drained stdout: one last look.
			if b := vm.console.bytes(); bytes.Contains(b, []byte(s)) {
				continue
			}
			return nil, fmt.Errorf("wait for %q on the console: %w%s", s, ErrExited, vm.logTail())
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for %q on the console: %w", s, ctx.Err())
		}
	}
}

// Wait waits for the guest program's result and for QEMU to exit (the
// guest powers off after reporting). The error is non-nil only when no
// result could be had; the program's own failure is in the Result (see
// Result.Err).
func (vm *VM) Wait(ctx context.Context) (*guestinit.Result, error) {
	if _, err := vm.WaitConsole(ctx, guestinit.ExitMarker); err != nil {
		return nil, err
	}
	// The marker is there; wait for its line to end and for QEMU to go.
	for {
		b, changed := vm.console.snapshot()
		r, err := guestinit.ParseResult(b)
		if err == nil {
			select {
			case <-vm.done:
			case <-ctx.Done():
				return r, fmt.Errorf("guest reported but qemu did not exit: %w", ctx.Err())
			}
			return r, nil
		}
		if !errors.Is(err, guestinit.ErrNoResult) {
			return nil, err
		}
		select {
		case <-changed:
		case <-vm.done:
			b := vm.console.bytes()
			if r, err := guestinit.ParseResult(b); err == nil {
				return r, nil
			}
			return nil, fmt.Errorf("guest result: %w", ErrExited)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Done is closed when QEMU has exited.
func (vm *VM) Done() <-chan struct{} { return vm.done }

// Shutdown stops QEMU: a QMP quit, then SIGKILL if it has not exited
// within ctx (or 10 s without a deadline). It returns nil once QEMU is gone.
func (vm *VM) Shutdown(ctx context.Context) error {
	if vm.cmd == nil {
		return nil
	}
	select {
	case <-vm.done:
		return nil
	default:
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	vm.QMP(qctx, "quit", nil, nil)
	select {
	case <-vm.done:
		return nil
	case <-qctx.Done():
	}
	vm.kill()
	return nil
}

func (vm *VM) kill() {
	if vm.cmd != nil && vm.cmd.Process != nil {
		vm.cmd.Process.Kill()
		<-vm.done
	}
}

// Close shuts QEMU down, disconnects QMP, and removes the work directory
// unless it was given or KeepDir is set.
func (vm *VM) Close() error {
	vm.Shutdown(context.Background())
	vm.monMu.Lock()
	if vm.mon != nil {
		vm.mon.Disconnect()
		vm.mon = nil
	}
	vm.monMu.Unlock()
	if vm.ownDir && !vm.opts.KeepDir {
		return os.RemoveAll(vm.dir)
	}
	return nil
}

// logTail returns the end of QEMU's stderr and the console, for errors.
func (vm *VM) logTail() string {
	var sb strings.Builder
	if b, err := os.ReadFile(vm.QEMULog()); err == nil && len(b) > 0 {
		sb.WriteString("\nqemu: ")
		sb.Write(tail(b, 1500))
	}
	if b := vm.console.bytes(); len(b) > 0 {
		sb.WriteString("\nconsole: ")
		sb.Write(tail(b, 1500))
	}
	return sb.String()
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func shellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \t'\"$") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}

// consoleBuffer collects the serial console and wakes waiters on writes.
type consoleBuffer struct {
	mu  sync.Mutex
	buf []byte // +checklocks:mu
	// changed is closed and replaced on each write.
	changed chan struct{} // +checklocks:mu
}

func (c *consoleBuffer) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.buf = append(c.buf, p...)
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	return len(p), nil
}

func (c *consoleBuffer) bytes() []byte {
	b, _ := c.snapshot()
	return b
}

func (c *consoleBuffer) snapshot() ([]byte, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.buf), c.changed
}
