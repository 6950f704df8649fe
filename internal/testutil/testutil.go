// Package testutil gates tests on what the machine has. Outside CI a
// missing requirement skips the test and says why; with CI=true it fails
// the test, because CI installs everything (make test) and a skip there
// would hide a broken install.
//
// Under `go test -short` every integration test (Integration, and so
// RequiresRoot and RequiresCommand) skips, in CI too: -short asks for the
// unit tests alone (make unit).
package testutil

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true or CI=1).
func InCI() bool {
	v := os.Getenv("CI")
	return v == "true" || v == "1"
}

// Integration marks a test that needs the machine rather than only the
// code: root, QEMU, DPDK, network namespaces, a daemon process. `go test
// -short` skips it, so the unit tests run in seconds; make test (and CI)
// run everything. RequiresRoot and RequiresCommand call it, so a test
// gated on either is an integration test without saying so twice.
func Integration(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: skipped under -short (make test runs it)")
	}
}

// Require fails (under CI) or skips (elsewhere) the test when ok is false.
func Require(t testing.TB, ok bool, format string, args ...any) {
	t.Helper()
	if ok {
		return
	}
	if InCI() {
		t.Fatalf("missing requirement (CI=true, so this fails instead of skipping): "+format, args...)
	}
	t.Skipf("skipped: "+format+" (run 'make test' to install and run everything)", args...)
}

// RequiresRoot needs uid 0 (vhost-user sockets in /run, namespaces, DPDK).
func RequiresRoot(t testing.TB) {
	t.Helper()
	Integration(t)
	Require(t, os.Geteuid() == 0, "needs root")
}

// RequiresCommand needs an executable on PATH, from Debian package pkg,
// and returns its path.
func RequiresCommand(t testing.TB, name, pkg string) string {
	t.Helper()
	Integration(t)
	p, err := exec.LookPath(name)
	Require(t, err == nil, "needs %s (apt-get install %s)", name, pkg)
	return p
}
