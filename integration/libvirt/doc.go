// Package libvirt tests Veloce the way an operator runs it under libvirt:
// the real libvirtd (Debian's libvirt 9.0, started by the test when it is
// not running) defines and starts a TCG domain from
// examples/libvirt/veloce-vm.xml, attached to a real veloced over
// vhost-user, in both socket modes:
//
//   - veloced listens (--vhost-user PATH --socket-group GROUP), the
//     domain's interface has mode='client': QEMU connects;
//   - veloced connects (--vhost-user-client PATH), the interface has
//     mode='server': QEMU listens.
//
// The guest (the project's kernel and initramfs, direct kernel boot) runs
// udhcpc and pings the service address, and reports on its serial console,
// which libvirt writes to a file the test reads. velocectl must then show
// the port with the guest's traffic.
//
// What QEMU under libvirt needs from the host, which these tests set up
// and the README repeats for operators: QEMU runs as user libvirt-qemu,
// group libvirt-qemu (qemu.conf's user and group), so the kernel and
// initramfs sit in a directory it can read (/var/lib/libvirt/images/...,
// not /root), and the socket's directory is searchable (mode='client') or
// writable (mode='server') by that group.
//
//	make deps && make images
//	go test -count=1 -v ./integration/libvirt/
//
// The tests need root, libvirt (libvirt-daemon-system, libvirt-clients),
// QEMU and the Go toolchain that runs them (they build veloced and
// velocectl); outside CI a missing requirement skips them, with CI=true it
// fails them (internal/testutil). -short skips them. They leave libvirtd
// running when they started it, as a service is left after install.
package libvirt
