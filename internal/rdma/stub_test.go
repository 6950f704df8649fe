//go:build !rdma || !cgo

package rdma

import (
	"errors"
	"testing"
)

func TestStubUnavailable(t *testing.T) {
	if Available() {
		t.Fatal("stub says available")
	}
	if _, err := Open("rxe0"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Open: %v, want ErrUnavailable", err)
	}
}
