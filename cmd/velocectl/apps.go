package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

func init() { register(newAppsCmd) }

func newAppsCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "apps",
		Short:   "Show host applications: the app socket's clients, their sessions and shared memory",
		GroupID: groupShow,
		Long: `Show the host transport: the app socket and the applications attached to it
(guestlib on the host), each with its session, shared region, TX and RX slots,
the RX slots it holds, malformed ring entries and wakeups.

-o json prints one object (the app socket): socket, sessions, mapped_bytes,
malformed, wakeups, and clients, a list with one object per application.`,
		Args: argsRange(0, 0, ""),
		RunE: func(*cobra.Command, []string) error {
			info, err := a.client().Apps(a.ctx)
			if err != nil {
				return err
			}
			return a.print(info, func(tw io.Writer, wide bool) {
				head := "CLIENT\tSESSION\tREGION\tTX SLOTS\tRX SLOTS\tRX WITH APP\tMALFORMED\tWAKEUPS"
				if wide {
					head += "\tUNSENT REPLIES\tPOLLING"
				}
				fmt.Fprintln(tw, head)
				for _, c := range info.Clients {
					fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d", c.Name, c.Session, c.RegionBytes, c.TXSlots, c.RXSlots, c.RXWithApp, c.Malformed, c.Wakeups)
					if wide {
						fmt.Fprintf(tw, "\t%d\t%v", c.Unsent, c.Polling)
					}
					fmt.Fprintln(tw)
				}
				fmt.Fprintf(tw, "\nsocket %s: %d sessions, %d bytes mapped, %d malformed in all, %d wakeups\n", dash(info.Socket), info.Sessions, info.MappedBytes, info.Malformed, info.Wakeups)
			})
		},
	}
}
