package main

import (
	"context"
	"io"

	"github.com/veloce-io/veloce/cmd/veloce-bench/internal/benchdpdk"
)

// runDPDK is the dpdk command: raw DPDK vs Veloce on DPDK vs Veloce on
// kernel UDP, ping-pong and throughput over one veth between two network
// namespaces (see cmd/veloce-bench/internal/benchdpdk). Needs root and a build with
// -tags dpdk and cgo (make build).
func runDPDK(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return benchdpdk.Main(ctx, args, stdout, stderr)
}
