package main

import (
	"slices"
	"time"

	"github.com/spf13/cobra"
	"github.com/veloce-io/veloce/control"
)

// completePorts completes port names from the daemon (within a second;
// nothing if it does not answer), leaving out the names already given
// when many is true, and offering none past the first otherwise.
func (a *app) completePorts(many bool) cobra.CompletionFunc {
	return func(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if !many && len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return a.portNames(args), cobra.ShellCompDirectiveNoFileComp
	}
}

// portNames asks the daemon for its ports' names, leaving out skip.
func (a *app) portNames(skip []string) []cobra.Completion {
	cl := control.NewClientWith(control.ClientOptions{Socket: a.socket, Timeout: time.Second})
	defer cl.CloseIdleConnections()
	ports, err := cl.Ports(a.ctx)
	if err != nil {
		return nil
	}
	var names []cobra.Completion
	for _, p := range ports {
		if !slices.Contains(skip, p.Name) {
			names = append(names, cobra.CompletionWithDesc(p.Name, p.Mode+" "+p.Socket))
		}
	}
	return names
}
