// Command veloce-init is the /init of Veloce guest images: it sets the
// guest up, runs the program named on the kernel command line, reports its
// result on the console and powers off. See package guestinit.
//
// Build it static: CGO_ENABLED=0 go build ./cmd/veloce-init
package main

import (
	"os"

	"github.com/veloce-io/veloce/images/guestinit"
)

func main() {
	if os.Getpid() != 1 {
		os.Stderr.WriteString("veloce-init: not PID 1; this is a guest's /init, see 'veloce-image'\n")
		os.Exit(2)
	}
	guestinit.Main(os.Stdout)
}
