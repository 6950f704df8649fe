package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"
	"github.com/veloce-io/veloce/control"
)

func init() { register(newLogLevelCmd) }

var logLevels = []string{"debug", "info", "warn", "error"}

func newLogLevelCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "log-level [LEVEL]",
		Short:   "Show or set veloced's log level (debug, info, warn, error) at run time",
		GroupID: groupChange,
		Long: `Without LEVEL, show veloced's log level; with it, set it at once, until
veloced restarts (its --log-level flag sets the level at start). LEVEL is
debug, info, warn or error.

-o json prints one object: {"level": "INFO"}.`,
		Example: `  velocectl log-level
  velocectl log-level debug`,
		Args:      argsRange(0, 1, ""),
		ValidArgs: logLevels,
		RunE: func(c *cobra.Command, args []string) error {
			var info control.LogLevelInfo
			var err error
			if len(args) == 0 {
				info, err = a.client().LogLevel(a.ctx)
			} else {
				var l slog.Level
				if l.UnmarshalText([]byte(args[0])) != nil {
					return usageErrorf(c, "level %q: give one of %s", args[0], strings.Join(logLevels, ", "))
				}
				info, err = a.client().SetLogLevel(a.ctx, control.LogLevelRequest{Level: l.String()})
			}
			if err != nil {
				return err
			}
			return a.print(info, func(tw io.Writer, _ bool) {
				fmt.Fprintln(tw, strings.ToLower(info.Level))
			})
		},
	}
}
