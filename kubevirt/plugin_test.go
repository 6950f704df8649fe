package kubevirt_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"libvirt.org/go/libvirtxml"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/kubevirt"
	"github.com/veloce-io/veloce/kubevirt/hookapi/info"
	"github.com/veloce-io/veloce/kubevirt/hookapi/v1alpha2"
	"github.com/veloce-io/veloce/kubevirt/hookapi/v1alpha3"
)

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// serveHook runs the sidecar's gRPC server on a unix socket, as
// virt-launcher finds it, and returns a client connection to it.
func serveHook(t *testing.T, p *kubevirt.Plugin) *grpc.ClientConn {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "veloce.sock")
	l, err := kubevirt.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	s := kubevirt.NewGRPCServer(p)
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// checkDomain decodes a mutated domain and checks what vhost-user needs.
func checkDomain(t *testing.T, xml []byte, wantSocket string) {
	t.Helper()
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(string(xml)); err != nil {
		t.Fatalf("mutated domain does not parse: %v\n%s", err, xml)
	}
	mb := dom.MemoryBacking
	if mb == nil || mb.MemorySource == nil || mb.MemorySource.Type != "memfd" || mb.MemoryAccess == nil || mb.MemoryAccess.Mode != "shared" {
		t.Errorf("memoryBacking = %+v, want memfd source and shared access", mb)
	}
	ifs := dom.Devices.Interfaces
	if len(ifs) != 2 {
		t.Fatalf("%d interfaces, want 2 (the pod network's and Veloce's, replaced in place)", len(ifs))
	}
	if ifs[0].Alias.Name != "ua-default" || ifs[0].Source == nil || ifs[0].Source.Ethernet == nil {
		t.Errorf("interface 0 = %+v, want the pod network's ethernet interface untouched", ifs[0])
	}
	fast := ifs[1]
	if fast.Alias == nil || fast.Alias.Name != "ua-fast" {
		t.Fatalf("interface 1 alias = %+v, want ua-fast", fast.Alias)
	}
	if fast.Source == nil || fast.Source.VHostUser == nil || fast.Source.VHostUser.Chardev == nil || fast.Source.VHostUser.Chardev.UNIX == nil {
		t.Fatalf("interface ua-fast source = %+v, want vhostuser unix", fast.Source)
	}
	u := fast.Source.VHostUser.Chardev.UNIX
	if u.Path != wantSocket || u.Mode != "server" {
		t.Errorf("vhostuser source = path %q mode %q, want %q server", u.Path, u.Mode, wantSocket)
	}
	if fast.Model == nil || fast.Model.Type != "virtio" {
		t.Errorf("model = %+v, want virtio", fast.Model)
	}
	if fast.MAC == nil || fast.MAC.Address != "02:00:00:aa:bb:02" {
		t.Errorf("mac = %+v, want the VMI's 02:00:00:aa:bb:02", fast.MAC)
	}
	if fast.Driver == nil || fast.Driver.Queues != 2 {
		t.Errorf("driver = %+v, want 2 queues (multiqueue, 2 vCPUs)", fast.Driver)
	}
	if a := fast.Address; a == nil || a.PCI == nil || a.PCI.Bus == nil || *a.PCI.Bus != 2 {
		t.Errorf("address = %+v, want KubeVirt's PCI bus 2 kept", a)
	}
	if dom.Name != "default_vm-fast" || len(dom.Devices.Disks) != 1 {
		t.Errorf("domain name %q, %d disks: the rest of the domain changed", dom.Name, len(dom.Devices.Disks))
	}
}

// TestVirtLauncherDefinesDomain: virt-launcher's calls in order — Info,
// then OnDefineDomain in the newest version both know, then Shutdown —
// over the hook socket, with a domain as KubeVirt writes it.
func TestVirtLauncherDefinesDomain(t *testing.T) {
	dom, vmi := readTestdata(t, "domain.xml"), readTestdata(t, "vmi.json")
	cc := serveHook(t, kubevirt.New(kubevirt.Options{}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	in, err := info.NewInfoClient(cc).Info(ctx, &info.InfoParams{})
	if err != nil {
		t.Fatal(err)
	}
	if in.GetName() != "veloce" || len(in.GetHookPoints()) != 1 || in.GetHookPoints()[0].GetName() != "OnDefineDomain" {
		t.Errorf("Info = %v, want veloce subscribed to OnDefineDomain", in)
	}
	if strings.Join(in.GetVersions(), ",") != "v1alpha3,v1alpha2" {
		t.Errorf("versions = %v", in.GetVersions())
	}
	want := "/var/run/veloce/vms/default_vm-fast_fast.sock"

	r3, err := v1alpha3.NewCallbacksClient(cc).OnDefineDomain(ctx, &v1alpha3.OnDefineDomainParams{DomainXML: dom, Vmi: vmi})
	if err != nil {
		t.Fatal(err)
	}
	checkDomain(t, r3.GetDomainXML(), want)
	r2, err := v1alpha2.NewCallbacksClient(cc).OnDefineDomain(ctx, &v1alpha2.OnDefineDomainParams{DomainXML: dom, Vmi: vmi})
	if err != nil {
		t.Fatal(err)
	}
	checkDomain(t, r2.GetDomainXML(), want)
	// Defining the mutated domain again changes nothing (virt-launcher
	// redefines a domain on some updates).
	again, err := v1alpha3.NewCallbacksClient(cc).OnDefineDomain(ctx, &v1alpha3.OnDefineDomainParams{DomainXML: r3.GetDomainXML(), Vmi: vmi})
	if err != nil {
		t.Fatal(err)
	}
	checkDomain(t, again.GetDomainXML(), want)
	if _, err := v1alpha3.NewCallbacksClient(cc).Shutdown(ctx, &v1alpha3.ShutdownParams{}); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// TestHookRefusesBadInput: a domain or VMI that does not parse, and a
// non-virtio model, are InvalidArgument with a reason; a VMI without a
// Veloce interface passes its domain through unchanged.
func TestHookRefusesBadInput(t *testing.T) {
	dom, vmi := readTestdata(t, "domain.xml"), readTestdata(t, "vmi.json")
	cc := serveHook(t, kubevirt.New(kubevirt.Options{}))
	cb := v1alpha3.NewCallbacksClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name     string
		dom, vmi []byte
		want     string
	}{
		{"domain", []byte("<domain><devices>"), vmi, "domain XML"},
		{"vmi", dom, []byte("{"), "VMI JSON"},
		{"model", dom, []byte(strings.Replace(string(vmi), `"binding": {"name": "veloce"}`, `"model": "e1000", "binding": {"name": "veloce"}`, 1)), "virtio only"},
	} {
		_, err := cb.OnDefineDomain(ctx, &v1alpha3.OnDefineDomainParams{DomainXML: tc.dom, Vmi: tc.vmi})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want InvalidArgument about %q", tc.name, err, tc.want)
		}
	}
	plain := strings.Replace(string(vmi), `"binding": {"name": "veloce"}`, `"bridge": {}`, 1)
	r, err := cb.OnDefineDomain(ctx, &v1alpha3.OnDefineDomainParams{DomainXML: dom, Vmi: []byte(plain)})
	if err != nil {
		t.Fatal(err)
	}
	if string(r.GetDomainXML()) != string(dom) {
		t.Errorf("a VMI without a Veloce interface changed its domain")
	}
}

// TestSocketNamesDoNotCollide: every pod's VMI interface gets its own
// socket, and names a socket path cannot hold are hashed.
func TestSocketNamesDoNotCollide(t *testing.T) {
	dir := kubevirt.DefaultSocketDir
	seen := map[string]string{}
	long := strings.Repeat("a", 63)
	for _, n := range [][3]string{
		{"default", "vm1", "net0"}, {"default", "vm1", "net1"}, {"default", "vm2", "net0"},
		{"other", "vm1", "net0"}, {"default", "vm1-net0", "x"}, {"default-vm1", "net0", "x"},
		{long, long + ".b", "net0"}, {long, long + ".c", "net0"}, {"ns", "vm", "Net_0"}, {"ns", "vm", "net-0"},
	} {
		s := kubevirt.SocketName(dir, n[0], n[1], n[2])
		if prev, ok := seen[s]; ok {
			t.Errorf("%v and %s share socket %s", n, prev, s)
		}
		seen[s] = strings.Join(n[:], "/")
		if p := filepath.Join(dir, s); len(p) > 107 || strings.ContainsAny(s, "/_") && !strings.HasPrefix(s, n[0]+"_") {
			t.Errorf("%v: socket path %q too long or unsafe", n, p)
		}
	}
	if got := kubevirt.SocketName(dir, "default", "vm1", "net0"); got != "default_vm1_net0.sock" {
		t.Errorf("plain names: %q, want default_vm1_net0.sock", got)
	}
}

// TestHookRegistersPortsWithVeloced: with a control socket the sidecar
// adds a client-mode port per interface to a running veloced, at the path
// veloced sees, and removes it at Shutdown.
func TestHookRegistersPortsWithVeloced(t *testing.T) {
	dir := t.TempDir()
	d, err := backend.NewDaemon(backend.DaemonOptions{ControlSocket: filepath.Join(dir, "control.sock")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	hostDir := filepath.Join(dir, "vms")
	if err := os.Mkdir(hostDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctl := control.NewClient(filepath.Join(dir, "control.sock"))
	cc := serveHook(t, kubevirt.New(kubevirt.Options{Control: ctl, HostSocketDir: hostDir}))
	cb := v1alpha3.NewCallbacksClient(cc)
	r, err := cb.OnDefineDomain(ctx, &v1alpha3.OnDefineDomainParams{DomainXML: readTestdata(t, "domain.xml"), Vmi: readTestdata(t, "vmi.json")})
	if err != nil {
		t.Fatal(err)
	}
	checkDomain(t, r.GetDomainXML(), "/var/run/veloce/vms/default_vm-fast_fast.sock")
	ports, err := ctl.Ports(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var found *control.PortInfo
	for i := range ports {
		if ports[i].Name == "default_vm-fast_fast" {
			found = &ports[i]
		}
	}
	if found == nil {
		t.Fatalf("ports %+v: no default_vm-fast_fast", ports)
	}
	if found.Socket != filepath.Join(hostDir, "default_vm-fast_fast.sock") || found.Mode != "client" || found.MaxQueues != 2 {
		t.Errorf("port = socket %s mode %s queues %d, want the host path, client mode, 2 queues", found.Socket, found.Mode, found.MaxQueues)
	}
	// virt-launcher defines the domain again after a sidecar restart: the
	// port is there already, which is fine.
	if _, err := cb.OnDefineDomain(ctx, &v1alpha3.OnDefineDomainParams{DomainXML: readTestdata(t, "domain.xml"), Vmi: readTestdata(t, "vmi.json")}); err != nil {
		t.Errorf("second OnDefineDomain: %v", err)
	}
	if _, err := cb.Shutdown(ctx, &v1alpha3.ShutdownParams{}); err != nil {
		t.Fatal(err)
	}
	ports, err = ctl.Ports(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ports {
		if p.Name == "default_vm-fast_fast" {
			t.Errorf("port still there after Shutdown: %+v", p)
		}
	}
}
