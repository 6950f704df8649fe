package main

import (
	"context"
	"io"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchxdp"
)

// runXDP is the xdp command: a raw AF_XDP ping-pong vs Veloce on XDP vs
// Veloce on kernel UDP over one veth between two network namespaces, and
// the idle CPU of a veloced on XDP (see cmd/veloce-bench/internal/benchxdp).
// Needs root.
func runXDP(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return benchxdp.Main(ctx, args, stdout, stderr)
}
