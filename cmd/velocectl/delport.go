package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"github.com/veloce-io/veloce/control"
)

func init() { register(newDelPortCmd) }

func newDelPortCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "del-port NAME",
		Short:   "Stop and remove a VM port: its frontend is disconnected, its socket removed",
		GroupID: groupChange,
		Long: `Stop the port called NAME and remove it: its frontend (the VM) is disconnected
and sees its link go down, the guest's sessions are released (their streams,
sources and sinks with them) and, when veloced was listening, the socket file
is removed.

-o json prints one object: the port as it was last (its final counters).`,
		Example:           `  velocectl del-port vm1`,
		Args:              argsRange(1, 1, "NAME (the port to remove)"),
		ValidArgsFunction: a.completePorts(false),
		RunE: func(c *cobra.Command, args []string) error {
			p, err := a.client().DelPort(a.ctx, control.DelPortRequest{Name: args[0]})
			if err != nil {
				return err
			}
			return a.print(p, func(tw io.Writer, _ bool) {
				fmt.Fprintf(tw, "port %s removed (%s); its guest had sent %d packets and received %d\n", p.Name, p.Socket, p.GuestTXPackets, p.GuestRXPackets)
			})
		},
	}
}
