package main

import (
	"flag"
	"io"
	"slices"
	"testing"

	"github.com/veloce-io/veloce/backend"
)

// TestTenantFlagsApply: --tenant names a port by its socket's base name
// or path, --app-tenant takes uid and gid rules, --shared-channel lists
// and commas add up, and the limit flags land in DaemonOptions.Limits.
func TestTenantFlagsApply(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	ten := tenantFlags(fs)
	err := fs.Parse([]string{"--tenant", "a.sock=blue", "--tenant", "/run/b.sock=blue", "--app-tenant", "uid:1000=blue",
		"--app-tenant", "gid:50=green", "--shared-channel", "1,2", "--shared-channel", "9", "--max-sessions", "8", "--control-rate", "-1"})
	if err != nil {
		t.Fatal(err)
	}
	opts := backend.DaemonOptions{Ports: []backend.PortOptions{{Socket: "/run/a.sock"}, {Socket: "/run/b.sock"}, {Socket: "/run/c.sock"}}}
	if err := ten.apply(&opts); err != nil {
		t.Fatal(err)
	}
	if opts.Ports[0].Tenant != "blue" || opts.Ports[1].Tenant != "blue" || opts.Ports[2].Tenant != "" {
		t.Errorf("port tenants %q %q %q", opts.Ports[0].Tenant, opts.Ports[1].Tenant, opts.Ports[2].Tenant)
	}
	want := []backend.AppTenant{{ID: 1000, Tenant: "blue"}, {GID: true, ID: 50, Tenant: "green"}}
	if !slices.Equal(opts.AppTenants, want) {
		t.Errorf("app tenants %v", opts.AppTenants)
	}
	if !slices.Equal(opts.Runtime.SharedChannels, []uint32{1, 2, 9}) {
		t.Errorf("shared %v", opts.Runtime.SharedChannels)
	}
	if opts.Limits.MaxSessions != 8 || opts.Limits.ControlRate != -1 || opts.Limits.MaxSinks != 0 {
		t.Errorf("limits %+v", opts.Limits)
	}
}
