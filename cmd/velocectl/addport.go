package main

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/veloce-io/veloce/control"
)

func init() { register(newAddPortCmd) }

func newAddPortCmd(a *app) *cobra.Command {
	var req control.AddPortRequest
	c := &cobra.Command{
		Use:     "add-port NAME --socket PATH [--client] [--queues N]",
		Short:   "Create and start a VM port at run time (like ovs-vsctl add-port)",
		GroupID: groupChange,
		Long: `Create a VM port called NAME and start it: veloced listens on --socket for a
frontend (QEMU, Cloud Hypervisor, DPDK virtio-user) to connect, or with
--client connects to a frontend listening there (and reconnects when it
restarts). The port gets the daemon's link settings (service and guest
addresses, polling CPUs) and, without --queues, its queue pairs (veloced
--queues). A name or socket another port has is refused; a relative --socket
is taken from the current directory.

The port lasts until del-port or until veloced stops: add it to veloced's
command line to keep it across restarts.

-o json prints one object: the new port, as velocectl ports -o json shows it.`,
		Example: `  velocectl add-port vm1 --socket /run/veloce/vm1.sock
  velocectl add-port vm2 --socket /run/vm2/net.sock --client --queues 4`,
		Args: argsRange(1, 1, "NAME (the new port's name)"),
		RunE: func(c *cobra.Command, args []string) error {
			req.Name = args[0]
			if req.Socket == "" {
				return usageErrorf(c, "--socket: give the vhost-user socket's path")
			}
			if c.Flags().Changed("queues") && (req.Queues < 1 || req.Queues > 128) {
				return usageErrorf(c, "--queues %d: give 1 to 128 queue pairs", req.Queues)
			}
			abs, err := filepath.Abs(req.Socket)
			if err != nil {
				return usageErrorf(c, "--socket %q: %v", req.Socket, err)
			}
			req.Socket = abs
			p, err := a.client().AddPort(a.ctx, req)
			if err != nil {
				return err
			}
			return a.print(p, func(tw io.Writer, _ bool) {
				role := "listens on"
				if p.Mode == "client" {
					role = "connects to"
				}
				fmt.Fprintf(tw, "port %s added: veloced %s %s, %d queue pairs (velocectl libvirt-xml %s prints the libvirt interface)\n", p.Name, role, p.Socket, p.MaxQueues, p.Name)
			})
		},
	}
	c.Flags().StringVar(&req.Socket, "socket", "", "the vhost-user socket's `PATH` (required)")
	c.Flags().BoolVar(&req.Client, "client", false, "connect to a frontend listening on --socket instead of listening")
	c.Flags().IntVar(&req.Queues, "queues", 0, "most queue pairs the guest may use, `N` from 1 to 128 (default: veloced's --queues)")
	c.MarkFlagFilename("socket", "sock")
	return c
}
