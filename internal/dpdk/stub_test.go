//go:build !dpdk || !cgo

package dpdk

import (
	"errors"
	"testing"
)

// TestStub: without DPDK the package compiles and says so.
func TestStub(t *testing.T) {
	if Available() || Initialized() {
		t.Fatal("stub build reports DPDK available")
	}
	if err := Init([]string{"--no-huge"}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Init: %v, want ErrUnavailable", err)
	}
	if _, err := NewMempool("p", 63, 0, 2048); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("NewMempool: %v, want ErrUnavailable", err)
	}
	if _, err := OpenPort("net_ring0", PortConfig{}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("OpenPort: %v, want ErrUnavailable", err)
	}
	if err := RegisterThread(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("RegisterThread: %v, want ErrUnavailable", err)
	}
}
