package guestinit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/ulikunitz/xz"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ModuleOrderFile lists the modules to load, as the image builder writes it.
const moduleOrderFile = "/lib/modules/veloce.order"

// Main is the whole of /init: it never returns. console receives the
// program's output and the result line (normally os.Stdout, which the
// kernel connects to /dev/console).
func Main(console *os.File) {
	res := run(console)
	fmt.Fprintln(console, res.ExitLine())
	unix.Sync()
	// Power off; under QEMU with -no-reboot a reboot ends QEMU too.
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	}
	select {}
}

func run(console *os.File) (res *Result) {
	res = &Result{Status: -1}
	defer func() {
		if p := recover(); p != nil {
			res = &Result{Status: -1, Error: fmt.Sprintf("init panic: %v", p)}
		}
	}()
	fail := func(format string, args ...any) *Result {
		res.Error = fmt.Sprintf(format, args...)
		return res
	}
	if err := mountAll(); err != nil {
		return fail("mount: %v", err)
	}
	os.Setenv("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
	os.Setenv("HOME", "/")
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fail("read /proc/cmdline: %v", err)
	}
	cfg, err := ParseCmdline(string(cmdline))
	if errors.Is(err, ErrNoConfig) {
		cfg = &Config{}
	} else if err != nil {
		return fail("%v", err)
	}
	logf := func(string, ...any) {}
	if cfg.Verbose {
		logf = func(format string, args ...any) { fmt.Fprintf(console, "veloce-init: "+format+"\n", args...) }
	} else {
		os.WriteFile("/proc/sys/kernel/printk", []byte("1"), 0) // keep kernel messages off the program's output
	}
	if err := loadModules(cfg.Modules, logf); err != nil {
		return fail("load modules: %v", err)
	}
	if err := configureNet(cfg.Net, logf); err != nil {
		return fail("network: %v", err)
	}
	argv := cfg.Run
	if len(argv) == 0 {
		if _, err := os.Stat("/bin/sh"); err != nil {
			return fail("nothing to run: no program configured and no /bin/sh")
		}
		argv = []string{"/bin/sh"}
	}
	ctx := context.Background()
	if cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(cfg.Timeout))
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = console, console, console
	cmd.Env = append(os.Environ(), cfg.Env...)
	cmd.Dir = cfg.Dir
	if len(cfg.Run) == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	}
	fmt.Fprintln(console, BeginMarker)
	err = cmd.Run()
	res.Status = cmd.ProcessState.ExitCode()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		res.Signal = ws.Signal().String()
	}
	switch {
	case ctx.Err() != nil:
		res.Error = fmt.Sprintf("timed out after %s", time.Duration(cfg.Timeout))
	case err != nil && cmd.ProcessState == nil:
		res.Error = err.Error()
	}
	return res
}

func mountAll() error {
	for _, m := range []struct{ src, dst, fstype, data string }{
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		{"devtmpfs", "/dev", "devtmpfs", "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", "mode=1777"},
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fstype, 0, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("%s on %s: %w", m.fstype, m.dst, err)
		}
	}
	os.MkdirAll("/dev/pts", 0o755)
	unix.Mount("devpts", "/dev/pts", "devpts", 0, "")
	return nil
}

// loadModules loads the modules the image lists, then extra ones named in
// the config (searched under /lib/modules).
func loadModules(extra []string, logf func(string, ...any)) error {
	var paths []string
	if b, err := os.ReadFile(moduleOrderFile); err == nil {
		paths = strings.Fields(string(b))
	}
	for _, name := range extra {
		p, err := findModule(name)
		if err != nil {
			return err
		}
		paths = append(paths, p)
	}
	for _, p := range paths {
		if err := loadModule(p); err != nil {
			return err
		}
		logf("loaded %s", p)
	}
	return nil
}

func findModule(name string) (string, error) {
	want := strings.ReplaceAll(name, "-", "_")
	var found string
	errFound := errors.New("found")
	err := walk("/lib/modules", func(p string) error {
		base := p[strings.LastIndexByte(p, '/')+1:]
		base = strings.TrimSuffix(strings.TrimSuffix(base, ".xz"), ".ko")
		if strings.ReplaceAll(base, "-", "_") == want {
			found = p
			return errFound
		}
		return nil
	})
	if found != "" {
		return found, nil
	}
	if err != nil && !errors.Is(err, errFound) {
		return "", err
	}
	return "", fmt.Errorf("module %s is not in the image", name)
}

func walk(dir string, fn func(string) error) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		p := dir + "/" + e.Name()
		if e.IsDir() {
			err = walk(p, fn)
		} else {
			err = fn(p)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// loadModule inserts one module, decompressing .ko.xz in memory. A module
// that is already loaded is not an error.
func loadModule(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if strings.HasSuffix(path, ".xz") {
		r, err := xz.NewReader(bytes.NewReader(data))
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if data, err = io.ReadAll(r); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	if err := unix.InitModule(data, ""); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("insert %s: %w", path, err)
	}
	return nil
}

func configureNet(nets []NetConfig, logf func(string, ...any)) error {
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		netlink.LinkSetUp(lo)
	}
	for _, n := range nets {
		wait := time.Duration(n.Wait)
		if wait <= 0 {
			wait = 20 * time.Second
		}
		link, err := waitLink(n.Name, wait)
		if err != nil {
			return err
		}
		if n.MTU > 0 {
			if err := netlink.LinkSetMTU(link, n.MTU); err != nil {
				return fmt.Errorf("%s: set mtu %d: %w", n.Name, n.MTU, err)
			}
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("%s: up: %w", n.Name, err)
		}
		switch {
		case n.Addr != "":
			addr, err := netlink.ParseAddr(n.Addr)
			if err != nil {
				return fmt.Errorf("%s: %w", n.Name, err)
			}
			if err := netlink.AddrAdd(link, addr); err != nil {
				return fmt.Errorf("%s: add %s: %w", n.Name, n.Addr, err)
			}
			logf("%s: %s (static)", n.Name, n.Addr)
		case n.DHCP:
			if err := dhcp(link, logf); err != nil {
				return fmt.Errorf("%s: dhcp: %w", n.Name, err)
			}
		}
	}
	return nil
}

func waitLink(name string, d time.Duration) (netlink.Link, error) {
	deadline := time.Now().Add(d)
	for {
		link, err := netlink.LinkByName(name)
		if err == nil {
			return link, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("interface %s did not appear within %s: %w", name, d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func dhcp(link netlink.Link, logf func(string, ...any)) error {
	opts := []nclient4.ClientOpt{nclient4.WithTimeout(2 * time.Second), nclient4.WithRetry(10)}
	if os.Getenv("VELOCE_DHCP_DEBUG") != "" {
		opts = append(opts, nclient4.WithDebugLogger())
	}
	logf("%s: dhcp", link.Attrs().Name)
	c, err := nclient4.New(link.Attrs().Name, opts...)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lease, err := c.Request(ctx)
	if err != nil {
		return err
	}
	ip := lease.ACK.YourIPAddr
	mask := lease.ACK.SubnetMask()
	if mask == nil {
		mask = ip.DefaultMask()
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: mask}}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("add %s: %w", addr, err)
	}
	for _, r := range lease.ACK.Router() {
		netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: r})
		break
	}
	logf("%s: %s (dhcp from %s)", link.Attrs().Name, addr.IPNet, lease.ACK.ServerIPAddr)
	return nil
}
