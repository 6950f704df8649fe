// Command velocectl is the operator's CLI for veloced. It speaks the
// control API (package control) and links nothing else of the project.
//
//	velocectl [--control PATH] [-o table|wide|json] COMMAND [ARGS] [flags]
//
// Flags go anywhere on the line. --control defaults to $VELOCE_CONTROL,
// then to control.DefaultSocket. Exit status: 0 done, 1 failed, 2 the
// command line was wrong.
//
// # Output
//
// -o table (the default) and -o wide (more columns) print aligned tables.
// -o json prints what the daemon answered, indented: a JSON list for the
// listing commands (ports, streams: one object per port or stream, with the
// contract fields of DESIGN.md), one object for the commands that describe
// one thing (apps, remote, stats, log-level, version, add-port, del-port).
// Each command's help says which.
//
// # Adding a command
//
// A command is one file: a constructor func(*app) *cobra.Command, passed to
// register from the file's init. It reads the global flags through app
// (app.client, app.output) and returns errors without printing them: run's
// caller prints each once (describe), and a usageError exits 2.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/veloce-io/veloce/control"
)

// envControl names the environment variable that gives --control's
// default.
const envControl = "VELOCE_CONTROL"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := exitCode(run(ctx, os.Args[1:], os.Stdout, os.Stderr), os.Stderr)
	stop()
	os.Exit(code)
}

// exitCode prints err once, for a human, and returns the exit status: 0
// for nil, 2 for a usage error, 1 otherwise.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "velocectl:", describe(err))
	if _, ok := errors.AsType[*usageError](err); ok {
		return 2
	}
	return 1
}

// app is what every command shares: the global flags and the output.
type app struct {
	ctx            context.Context
	stdout, stderr io.Writer
	socket         string // --control
	output         string // -o
	cl             *control.Client
}

// client returns the control-API client for --control.
func (a *app) client() *control.Client {
	if a.cl == nil {
		a.cl = control.NewClient(a.socket)
	}
	return a.cl
}

// commands are velocectl's subcommands, one file each.
var commands []func(a *app) *cobra.Command

// register adds a subcommand; call it from the command file's init.
func register(newCmd func(a *app) *cobra.Command) { commands = append(commands, newCmd) }

// The help's command groups.
const (
	groupShow   = "show"
	groupChange = "change"
)

// run runs velocectl with args; it prints results to stdout and help to
// stdout, and returns errors without printing them.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a := &app{ctx: ctx, stdout: stdout, stderr: stderr}
	root := newRoot(a)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if a.cl != nil {
		a.cl.CloseIdleConnections()
	}
	return err
}

func newRoot(a *app) *cobra.Command {
	def := control.DefaultSocket
	if env := os.Getenv(envControl); env != "" {
		def = env
	}
	root := &cobra.Command{
		Use:   "velocectl",
		Short: "velocectl administers veloced, Veloce's host daemon",
		Long: `velocectl shows and changes a running veloced through its control socket:
its VM ports (vhost-user), streams, host applications, datapaths to other hosts
and counters; it adds and removes ports and sets the log level at run time, and
prints the libvirt XML that attaches a VM to a port.

Flags go anywhere on the line. --control defaults to $` + envControl + `, then to
` + control.DefaultSocket + `.

Output (-o): table (default) and wide print aligned tables; json prints a JSON
list for listing commands (ports, streams) and one object for the commands that
describe one thing (each command's help says which).

Exit status: 0 done, 1 failed, 2 the command line was wrong.`,
		Example: `  velocectl ports
  velocectl --control /run/veloce/control.sock streams -o json
  VELOCE_CONTROL=/tmp/ctl.sock velocectl stats --watch 1s
  velocectl add-port vm1 --socket /run/veloce/vm1.sock --queues 2
  velocectl libvirt-xml vm1 --tcg`,
		Version:                    versionString(),
		SilenceErrors:              true,
		SilenceUsage:               true,
		SuggestionsMinimumDistance: 2,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			msg := fmt.Sprintf("unknown command %q", args[0])
			if s := c.SuggestionsFor(args[0]); len(s) > 0 {
				msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(s, " or "))
			}
			return usageErrorf(c, "%s", msg)
		},
		RunE: func(c *cobra.Command, _ []string) error {
			var names []string
			for _, sub := range c.Commands() {
				if sub.IsAvailableCommand() && sub.Name() != "help" && sub.Name() != "completion" {
					names = append(names, sub.Name())
				}
			}
			return usageErrorf(c, "no command: give one of %s", strings.Join(names, ", "))
		},
		PersistentPreRunE: func(c *cobra.Command, _ []string) error {
			if a.socket == "" {
				return usageErrorf(c, "--control \"\": give the path of veloced's control socket")
			}
			if !slices.Contains(outputFormats, a.output) {
				return usageErrorf(c, "-o %q: want table or json, or wide (a table with every column)", a.output)
			}
			return nil
		},
	}
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	root.PersistentFlags().StringVar(&a.socket, "control", def, "veloced's control socket ($"+envControl+" sets the default)")
	root.PersistentFlags().StringVarP(&a.output, "output", "o", "table", "output format: "+strings.Join(outputFormats, ", "))
	root.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(outputFormats, cobra.ShellCompDirectiveNoFileComp))
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		msg := err.Error()
		if rest, ok := strings.CutPrefix(msg, "unknown flag: "); ok {
			msg = "flag provided but not defined: " + rest
		}
		return usageErrorf(c, "%s", msg)
	})
	root.AddGroup(&cobra.Group{ID: groupShow, Title: "Show:"}, &cobra.Group{ID: groupChange, Title: "Change:"})
	for _, newCmd := range commands {
		root.AddCommand(newCmd(a))
	}
	return root
}

// usageError is a command line velocectl cannot run: exit status 2.
type usageError struct {
	cmd string // the command's path, for the help hint
	msg string
}

func (e *usageError) Error() string { return e.msg }

func usageErrorf(c *cobra.Command, format string, args ...any) error {
	return &usageError{cmd: c.CommandPath(), msg: fmt.Sprintf(format, args...)}
}

// args returns a cobra.PositionalArgs that accepts min to max (-1: any
// number) arguments, named by use in its errors.
func argsRange(min, max int, use string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		switch {
		case len(args) < min:
			return usageErrorf(c, "missing %s", use)
		case max >= 0 && len(args) > max:
			return usageErrorf(c, "unexpected argument %q (usage: %s)", args[max], c.UseLine())
		}
		return nil
	}
}
