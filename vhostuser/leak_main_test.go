package vhostuser_test

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/fd"
)

// TestMain fails the run on descriptors whose owner was dropped open
// (internal/fd's leak cleanup reports them), as cilium's testmain does.
func TestMain(m *testing.M) {
	var mu sync.Mutex
	var leaks []fd.Leak
	stop := fd.TraceLeaks(func(l fd.Leak) {
		mu.Lock()
		leaks = append(leaks, l)
		mu.Unlock()
	})
	code := m.Run()
	for range 3 {
		runtime.GC()
		time.Sleep(10 * time.Millisecond) // let the cleanup goroutine run
	}
	stop()
	mu.Lock()
	defer mu.Unlock()
	for _, l := range leaks {
		fmt.Fprintln(os.Stderr, l)
	}
	if len(leaks) > 0 && code == 0 {
		fmt.Fprintf(os.Stderr, "FAIL: %d file descriptors leaked\n", len(leaks))
		code = 1
	}
	os.Exit(code)
}
