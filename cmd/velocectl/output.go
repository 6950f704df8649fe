package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/veloce-io/veloce/control"
)

// outputFormats are -o's values.
var outputFormats = []string{"table", "wide", "json"}

// print writes v as indented JSON (-o json) or as the table table writes
// (-o table; wide is true for -o wide), its columns aligned.
func (a *app) print(v any, table func(tw io.Writer, wide bool)) error {
	if a.output == "json" {
		return writeJSON(a.stdout, v)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	table(tw, a.output == "wide")
	return tw.Flush()
}

func writeJSON(w io.Writer, v any) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(v)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// describe says what went wrong for a human: the daemon's own message for
// an API error, what to check for a daemon it cannot reach, no Go
// internals.
func describe(err error) string {
	if ue, ok := errors.AsType[*usageError](err); ok {
		return fmt.Sprintf("%s (see %s --help)", ue.msg, ue.cmd)
	}
	if ue, ok := errors.AsType[*control.UnreachableError](err); ok {
		return fmt.Sprintf("cannot reach veloced at %s: %s (is veloced running? is --control right?)", ue.Socket, dialReason(ue.Err))
	}
	if ae, ok := errors.AsType[*control.APIError](err); ok {
		if ae.Status == http.StatusNotFound && strings.HasPrefix(ae.Message, "no endpoint ") ||
			ae.Status == http.StatusMethodNotAllowed {
			return fmt.Sprintf("this veloced does not serve %s %s: it is older than velocectl (run matching versions)", ae.Method, ae.Path)
		}
		return ae.Message
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Sprintf("veloced did not answer within %v (is it stuck? see its log)", control.DefaultTimeout)
	}
	return err.Error()
}

// dialReason names why a dial failed in a few words.
func dialReason(err error) string {
	switch {
	case errors.Is(err, syscall.ENOENT):
		return "no such file"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused (a socket file nobody serves)"
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return "permission denied (run as root or as a member of the socket's group)"
	case errors.Is(err, syscall.ENOTSOCK):
		return "not a socket"
	}
	if errno, ok := errors.AsType[syscall.Errno](err); ok {
		return errno.Error()
	}
	return err.Error()
}
