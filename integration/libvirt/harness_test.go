package libvirt

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/images"
	"github.com/veloce-io/veloce/images/guestinit"
	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/vmtest"
)

// Bounds: each turns a hang into a failure that says what hung; none is a
// performance assertion.
const (
	virshWithin   = time.Minute      // one virsh command (start includes QEMU's start-up)
	libvirtWithin = time.Minute      // libvirtd started to answering
	readyWithin   = 30 * time.Second // veloced started to its ready line
	guestWithin   = 4 * time.Minute  // domain started to the guest's result line (TCG)
	stopWithin    = 10 * time.Second // veloced's exit after SIGTERM
)

// uri is libvirt's system QEMU driver: the one whose domains run as
// libvirt-qemu.
const uri = "qemu:///system"

var (
	binDir   string
	binOnce  sync.Once
	binErr   error
	veloced  string
	velocect string

	libvirtOnce sync.Once
	libvirtErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "veloce-libvirt-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// gate skips (fails under CI) when the tests cannot run here, then builds
// veloced and velocectl (once) and makes sure libvirtd answers.
func gate(t *testing.T) {
	t.Helper()
	testutil.RequiresRoot(t)
	testutil.RequiresCommand(t, "qemu-system-x86_64", "qemu-system-x86")
	testutil.RequiresCommand(t, "virsh", "libvirt-clients")
	testutil.RequiresCommand(t, "libvirtd", "libvirt-daemon-system")
	testutil.RequiresCommand(t, "virtlogd", "libvirt-daemon-system")
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	_, err := os.Stat(gobin)
	testutil.Require(t, err == nil, "needs the go toolchain at %s to build veloced", gobin)
	binOnce.Do(func() {
		veloced = filepath.Join(binDir, "veloced")
		velocect = filepath.Join(binDir, "velocectl")
		cmd := exec.Command(gobin, "build", "-o", binDir+"/", "./cmd/veloced", "./cmd/velocectl")
		cmd.Dir = moduleRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build veloced velocectl: %v: %s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	libvirtOnce.Do(func() { libvirtErr = ensureLibvirtd() })
	if libvirtErr != nil {
		t.Fatal(libvirtErr)
	}
}

func moduleRoot() string {
	wd, _ := os.Getwd()
	return filepath.Join(wd, "..", "..")
}

// ensureLibvirtd starts virtlogd and libvirtd (daemonized, as `-d` does
// without systemd) unless they already answer, and waits until
// `virsh version` does. libvirtd needs virtlogd for its domains' logs
// (qemu.conf stdio_handler = "logd") and, privileged, does not start it.
func ensureLibvirtd() error {
	if _, err := virshErr(context.Background(), "version"); err == nil {
		return nil
	}
	if c, err := net.Dial("unix", "/run/libvirt/virtlogd-sock"); err == nil {
		c.Close()
	} else if out, err := exec.Command("virtlogd", "-d").CombinedOutput(); err != nil {
		return fmt.Errorf("start virtlogd: %v: %s", err, out)
	}
	if out, err := exec.Command("libvirtd", "-d").CombinedOutput(); err != nil {
		return fmt.Errorf("start libvirtd: %v: %s", err, out)
	}
	deadline := time.Now().Add(libvirtWithin)
	for {
		_, err := virshErr(context.Background(), "version")
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("libvirtd started but does not answer within %v: %w", libvirtWithin, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// virshErr runs virsh against the system driver and returns its output.
func virshErr(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, virshWithin)
	defer cancel()
	cmd := exec.CommandContext(ctx, "virsh", append([]string{"-c", uri}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("virsh %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// virsh is virshErr failing the test.
func virsh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := virshErr(context.Background(), args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// qemuGroup returns the group QEMU runs in under libvirt: qemu.conf's
// group, else the Debian package's built-in default, libvirt-qemu.
func qemuGroup(t *testing.T) string {
	t.Helper()
	g := "libvirt-qemu"
	if f, err := os.Open("/etc/libvirt/qemu.conf"); err == nil {
		re := regexp.MustCompile(`^\s*group\s*=\s*"([^"]+)"`)
		s := bufio.NewScanner(f)
		for s.Scan() {
			if m := re.FindStringSubmatch(s.Text()); m != nil {
				g = m[1]
			}
		}
		f.Close()
	}
	_, err := user.LookupGroup(g)
	testutil.Require(t, err == nil, "needs group %s, which QEMU runs in under libvirt (libvirt-daemon-system creates it): %v", g, err)
	return g
}

// hostDirs makes the two directories a domain needs outside /root and the
// test's temporary directories, both removed when the test ends:
//
//   - images, under /var/lib/libvirt/images, holding copies (mode 0644) of
//     the guest kernel and initramfs, readable by QEMU's user, and the
//     serial log (opened by libvirtd itself);
//   - sockets, under /run, group group, mode 0770: QEMU searches it to
//     connect (mode='client') and writes its socket there (mode='server').
func hostDirs(t *testing.T, group string) (imageDir, sockDir string) {
	t.Helper()
	kernel, initramfs := guestImage(t)
	var err error
	if err = os.MkdirAll("/var/lib/libvirt/images", 0o711); err != nil {
		t.Fatal(err)
	}
	if imageDir, err = os.MkdirTemp("/var/lib/libvirt/images", "veloce-test-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(imageDir) })
	if err := os.Chmod(imageDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct{ src, dst string }{{kernel, "vmlinuz"}, {initramfs, "initramfs.cpio.gz"}} {
		if err := copyFile(f.src, filepath.Join(imageDir, f.dst), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if sockDir, err = os.MkdirTemp("/run", "veloce-libvirt-test-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	g, _ := user.LookupGroup(group)
	var gid int
	fmt.Sscan(g.Gid, &gid)
	if err := os.Chown(sockDir, 0, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sockDir, 0o770); err != nil {
		t.Fatal(err)
	}
	return imageDir, sockDir
}

// guestImage returns the default guest image (make images), or builds one
// for the test when it is absent.
func guestImage(t *testing.T) (kernel, initramfs string) {
	t.Helper()
	dir := images.DefaultImageDir()
	kernel, initramfs = filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initramfs.cpio.gz")
	_, err1 := os.Stat(kernel)
	_, err2 := os.Stat(initramfs)
	if err1 == nil && err2 == nil {
		return kernel, initramfs
	}
	t.Logf("no default guest image in %s (make images): building one", dir)
	return vmtest.Image(t, vmtest.Guest{})
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, mode) // past the umask
}

// daemon is one veloced process with one vhost-user port.
type daemon struct {
	ctl    string // control socket
	log    *testutil.LineWatcher
	cmd    *exec.Cmd
	done   chan struct{}
	exited error
}

// startVeloced runs veloced with args plus a private control socket (and
// no app socket) until the test ends, and waits for its ready line.
func startVeloced(t *testing.T, args ...string) *daemon {
	t.Helper()
	d := &daemon{ctl: filepath.Join(t.TempDir(), "control.sock"), done: make(chan struct{})}
	d.log = testutil.WatchLine(control.ReadyLine, nil)
	args = append(args, "--control", d.ctl, "--app-socket", "")
	d.cmd = exec.Command(veloced, args...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start veloced: %v", err)
	}
	go func() { d.exited = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(stopWithin):
			t.Errorf("veloced did not exit within %v of SIGTERM; killed", stopWithin)
			d.cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("veloced %s:\n%s", strings.Join(args, " "), d.log.String())
		}
	})
	d.log.Wait(t, d.done, readyWithin)
	return d
}

// ports runs `velocectl ports -o json`, the operator's view.
func (d *daemon) ports(t *testing.T) []control.PortInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, velocect, "--control", d.ctl, "ports", "-o", "json").Output()
	if err != nil {
		t.Fatalf("velocectl ports: %v", err)
	}
	var ports []control.PortInfo
	if err := json.Unmarshal(out, &ports); err != nil {
		t.Fatalf("velocectl ports -o json: %v\n%s", err, out)
	}
	return ports
}

// domainXML renders examples/libvirt/veloce-vm.xml, replacing every
// placeholder; it fails the test when one is left.
func domainXML(t *testing.T, vars map[string]string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(moduleRoot(), "examples", "libvirt", "veloce-vm.xml"))
	if err != nil {
		t.Fatal(err)
	}
	var pairs []string
	for k, v := range vars {
		pairs = append(pairs, "@"+k+"@", v)
	}
	s := strings.NewReplacer(pairs...).Replace(string(b))
	if m := regexp.MustCompile(`@[A-Z_]+@`).FindString(s); m != "" {
		t.Fatalf("example domain: placeholder %s not replaced", m)
	}
	return s
}

// guestConfig decodes the guestinit Config on a domain's kernel command
// line (<os><cmdline>).
func guestConfig(t *testing.T, domXML string) *guestinit.Config {
	t.Helper()
	var dom struct {
		Cmdline string `xml:"os>cmdline"`
	}
	if err := xml.Unmarshal([]byte(domXML), &dom); err != nil {
		t.Fatalf("example domain is not XML: %v", err)
	}
	c, err := guestinit.ParseCmdline(dom.Cmdline)
	if err != nil {
		t.Fatalf("example domain's cmdline %q: %v", dom.Cmdline, err)
	}
	return c
}

// domain is a defined libvirt domain, destroyed and undefined when the
// test ends.
type domain struct {
	name      string
	serialLog string
}

// defineDomain writes domXML next to the images and defines it.
func defineDomain(t *testing.T, name, domXML, imageDir, serialLog string) *domain {
	t.Helper()
	f := filepath.Join(imageDir, name+".xml")
	if err := os.WriteFile(f, []byte(domXML), 0o644); err != nil {
		t.Fatal(err)
	}
	virsh(t, "define", f)
	d := &domain{name: name, serialLog: serialLog}
	t.Cleanup(func() {
		if t.Failed() {
			d.logTails(t)
		}
		// destroy fails when the guest has already powered off: fine.
		virshErr(context.Background(), "destroy", name)
		if _, err := virshErr(context.Background(), "undefine", name); err != nil {
			t.Error(err)
		}
		os.Remove(filepath.Join("/var/log/libvirt/qemu", name+".log"))
	})
	return d
}

func (d *domain) logTails(t *testing.T) {
	for _, f := range []string{d.serialLog, filepath.Join("/var/log/libvirt/qemu", d.name+".log")} {
		b, _ := os.ReadFile(f)
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		t.Logf("%s ends:\n%s", f, b)
	}
}

// state returns virsh domstate's answer ("running", "shut off", ...).
func (d *domain) state(t *testing.T) string {
	t.Helper()
	return strings.TrimSpace(virsh(t, "domstate", d.name))
}

// waitGuest waits for the guest's result line on the serial log and
// returns it with the time from start to the begin marker (boot to the
// program) and to the result. A domain that ends without a result, or a
// guest silent past guestWithin, fails the test.
func (d *domain) waitGuest(t *testing.T, started time.Time, onBegin func()) (r *guestinit.Result, boot, total time.Duration) {
	t.Helper()
	deadline := started.Add(guestWithin)
	for tick := 0; ; tick++ {
		b, _ := os.ReadFile(d.serialLog)
		// The serial line discipline ends lines with \r\n.
		if boot == 0 && bytes.Contains(bytes.ReplaceAll(b, []byte("\r"), nil), []byte(guestinit.BeginMarker+"\n")) {
			boot = time.Since(started)
			if onBegin != nil {
				onBegin()
			}
		}
		r, err := guestinit.ParseResult(b)
		switch {
		case err == nil:
			return r, boot, time.Since(started)
		case !errors.Is(err, guestinit.ErrNoResult):
			t.Fatal(err)
		}
		if tick%8 == 7 {
			if st := d.state(t); st != "running" {
				// One more read: the result may have landed just before.
				b, _ = os.ReadFile(d.serialLog)
				if r, err := guestinit.ParseResult(b); err == nil {
					return r, boot, time.Since(started)
				}
				t.Fatalf("domain %s is %q without a result on its console", d.name, st)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no result from the guest within %v", guestWithin)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
