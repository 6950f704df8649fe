package main

import (
	"flag"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/veloce-io/veloce/backend"
)

// tenantsHelp is the usage text on tenants, shared channels and limits.
const tenantsHelp = `Tenants: every port is a tenant of its own, named after the port (the socket's
base name) unless --tenant PORT=TENANT says otherwise (PORT: the port's name or
socket path; ports given one tenant share its channels). Host applications are
mapped by their connection's uid or gid (--app-tenant uid:N=TENANT or
gid:N=TENANT; a uid rule wins); by default uid 0 is the operator tenant "host"
and uid N the tenant "uid:N". A tenant's channels are its own: a sink sees only
its tenant's sources, except on the channels --shared-channel lists, which every
tenant (and every peer daemon) shares. Peers' messages belong to the "host"
tenant until the wire carries tenants.

Limits, per port and per host tenant (0: the default, -1: none): --max-sessions,
--max-streams, --max-sources, --max-sinks, --control-rate (requests per second,
bursts of --control-burst). A request past a limit fails in the application
with guestlib.ErrLimit naming the limit; velocectl ports shows limit_refusals.
`

type tenantOpts struct {
	tenants, appTenants, shared listFlag
	limits                      backend.Limits
}

func tenantFlags(fs *flag.FlagSet) *tenantOpts {
	t := &tenantOpts{}
	fs.Var(&t.tenants, "tenant", "PORT=TENANT: the tenant of a port, by the port's name (socket base name) or socket path (repeatable); default the port's name")
	fs.Var(&t.appTenants, "app-tenant", "uid:N=TENANT or gid:N=TENANT: the tenant of host applications of that uid or gid (repeatable); default uid 0 \"host\", uid N \"uid:N\"")
	fs.Var(&t.shared, "shared-channel", "channel id (or comma-separated ids) every tenant shares (repeatable); other channels are each tenant's own")
	d := backend.DefaultLimits
	fs.IntVar(&t.limits.MaxSessions, "max-sessions", 0, fmt.Sprintf("open sessions per port or host tenant; 0: %d, -1: no limit", d.MaxSessions))
	fs.IntVar(&t.limits.MaxStreams, "max-streams", 0, fmt.Sprintf("streams per port or host tenant; 0: %d, -1: no limit", d.MaxStreams))
	fs.IntVar(&t.limits.MaxSources, "max-sources", 0, fmt.Sprintf("sources per port or host tenant; 0: %d, -1: no limit", d.MaxSources))
	fs.IntVar(&t.limits.MaxSinks, "max-sinks", 0, fmt.Sprintf("sinks per port or host tenant; 0: %d, -1: no limit", d.MaxSinks))
	fs.IntVar(&t.limits.ControlRate, "control-rate", 0, fmt.Sprintf("control requests per second per port or host tenant (pings excepted); 0: %d, -1: no limit", d.ControlRate))
	fs.IntVar(&t.limits.ControlBurst, "control-burst", 0, "control requests at once after a quiet spell; 0: --control-rate's value")
	return t
}

// apply puts the flags into opts, whose Ports are set.
func (t *tenantOpts) apply(opts *backend.DaemonOptions) error {
	opts.Limits = t.limits
	for _, v := range t.tenants {
		port, tenant, ok := strings.Cut(v, "=")
		if !ok || port == "" || tenant == "" {
			return fmt.Errorf("--tenant %q: want PORT=TENANT", v)
		}
		found := false
		for i := range opts.Ports {
			if po := &opts.Ports[i]; po.Socket == port || filepath.Base(po.Socket) == port || po.Name == port {
				po.Tenant, found = tenant, true
			}
		}
		if !found {
			return fmt.Errorf("--tenant %q: no port %q (give its name or --vhost-user socket path)", v, port)
		}
	}
	for _, v := range t.appTenants {
		who, tenant, ok := strings.Cut(v, "=")
		kind, id, ok2 := strings.Cut(who, ":")
		n, err := strconv.ParseUint(id, 10, 32)
		if !ok || !ok2 || tenant == "" || (kind != "uid" && kind != "gid") || err != nil {
			return fmt.Errorf("--app-tenant %q: want uid:N=TENANT or gid:N=TENANT", v)
		}
		opts.AppTenants = append(opts.AppTenants, backend.AppTenant{GID: kind == "gid", ID: uint32(n), Tenant: tenant})
	}
	for _, v := range t.shared {
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 32)
			if err != nil {
				return fmt.Errorf("--shared-channel %q: not a channel id", f)
			}
			opts.Runtime.SharedChannels = append(opts.Runtime.SharedChannels, uint32(n))
		}
	}
	return nil
}
