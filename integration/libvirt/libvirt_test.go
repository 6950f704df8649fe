package libvirt

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) packets received`)

// TestLibvirtDomainGetsDHCPAndPingsVeloced: an operator attaches a libvirt
// domain (examples/libvirt/veloce-vm.xml) to veloced, in each socket mode;
// the stock guest gets its address by DHCP, pings the service address, and
// velocectl shows the port carrying the guest's frames.
func TestLibvirtDomainGetsDHCPAndPingsVeloced(t *testing.T) {
	gate(t)
	group := qemuGroup(t)
	for _, tc := range []struct {
		name string
		// mode is the domain's <source mode=...>, QEMU's side.
		mode string
		// portMode is velocectl's mode for veloced's side.
		portMode string
		args     func(sock string) []string
	}{
		{"VelocedListensQEMUConnects", "client", "server", func(sock string) []string {
			return []string{"--vhost-user", sock, "--socket-group", group}
		}},
		{"QEMUListensVelocedConnects", "server", "client", func(sock string) []string {
			return []string{"--vhost-user-client", sock}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			imageDir, sockDir := hostDirs(t, group)
			sock := filepath.Join(sockDir, "vm0.sock")
			serialLog := filepath.Join(imageDir, "serial.log")
			name := fmt.Sprintf("veloce-test-%d-%s", os.Getpid(), tc.mode)

			// veloced first in both modes: listening, it is there when
			// QEMU connects; connecting, it retries until QEMU's socket
			// appears (and QEMU, as a server, waits for it before it
			// runs the guest).
			d := startVeloced(t, tc.args(sock)...)

			xml := domainXML(t, map[string]string{
				"NAME": name, "KERNEL": filepath.Join(imageDir, "vmlinuz"),
				"INITRD": filepath.Join(imageDir, "initramfs.cpio.gz"), "SERIAL_LOG": serialLog,
				"SOCKET": sock, "MODE": tc.mode,
			})
			if c := guestConfig(t, xml); len(c.Run) == 0 || !strings.Contains(strings.Join(c.Run, " "), "ping") ||
				!strings.Contains(strings.Join(c.Run, " "), "169.254.77.1") {
				t.Fatalf("example domain's guest does not ping the service address: %+v", c)
			}
			dom := defineDomain(t, name, xml, imageDir, serialLog)
			started := time.Now()
			virsh(t, "start", name)
			r, boot, total := dom.waitGuest(t, started, func() {
				// While the guest runs: what libvirt itself knows of the
				// interface (logged, not asserted: see the README).
				out, _ := virshErr(t.Context(), "domiflist", name)
				t.Logf("virsh domiflist:\n%s", out)
			})
			t.Logf("boot time (virsh start to the guest's /init running its program): %.1fs; to its result: %.1fs", boot.Seconds(), total.Seconds())
			if err := r.Err(); err != nil {
				t.Fatalf("%v; output:\n%s", err, r.Output)
			}
			if !strings.Contains(r.Output, "inet 169.254.77.2/24") {
				t.Errorf("guest did not get 169.254.77.2/24 by DHCP:\n%s", r.Output)
			}
			if m := pingSummary.FindStringSubmatch(r.Output); m == nil || m[1] != "5" || m[2] != "5" {
				t.Errorf("want 5 of 5 pings answered; output:\n%s", r.Output)
			}

			var found bool
			for _, p := range d.ports(t) {
				if p.Socket != sock {
					continue
				}
				found = true
				t.Logf("velocectl ports: %+v", p)
				if p.Mode != tc.portMode || p.GuestTXPackets == 0 || p.GuestRXPackets == 0 || p.GuestIP != "169.254.77.2" {
					t.Errorf("port %s: mode %q (want %q), guest_tx_packets %d, guest_rx_packets %d (want > 0), guest_ip %q",
						p.Name, p.Mode, tc.portMode, p.GuestTXPackets, p.GuestRXPackets, p.GuestIP)
				}
				if p.GuestMAC != "" && p.GuestMAC != "52:54:00:77:00:02" {
					t.Errorf("port %s: guest_mac %q, want the domain's 52:54:00:77:00:02", p.Name, p.GuestMAC)
				}
				if p.Errors != 0 {
					t.Errorf("port %s: %d errors on a clean run", p.Name, p.Errors)
				}
			}
			if !found {
				t.Errorf("velocectl ports shows no port on %s", sock)
			}
		})
	}
}
