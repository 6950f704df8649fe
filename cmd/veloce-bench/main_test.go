package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// Bad arguments are refused before anything starts (no testpmd needed).
func TestRunRefusesBadArguments(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"nosuch"},
		{"vhost", "--sizes", "64,x"},
		{"vhost", "--sizes", "20"},
		{"vhost", "--directions", "up"},
		{"vhost", "-o", "yaml"},
		{"vhost", "--repeat", "0"},
		{"vhost", "--frontend-cpu", "1", "--backend-cpu", "1"},
		{"vhost", "extra"},
	} {
		var out, errb bytes.Buffer
		if err := run(context.Background(), args, &out, &errb); err == nil {
			t.Errorf("%q: no error", args)
		}
		if out.Len() != 0 {
			t.Errorf("%q: printed %q", args, out.String())
		}
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"help"}, &out, &out); err != nil || !strings.Contains(out.String(), "vhost") {
		t.Errorf("help: %v %q", err, out.String())
	}
}
