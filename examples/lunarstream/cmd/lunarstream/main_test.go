package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/veloce-io/veloce/examples/lunarstream"
)

func TestRefusesBadArguments(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"stream"},
		{"produce", "--frames", "0"},
		{"consume", "--frame-size", "-1"},
		{"produce", "--frame-size", "70000000"},
		{"produce", "--fps", "-1"},
		{"consume", "-o", "yaml"},
		{"produce", "extra"},
	} {
		var out, errb bytes.Buffer
		if err := run(context.Background(), args, &out, &errb); err == nil {
			t.Errorf("%q: no error", args)
		}
		if out.Len() != 0 {
			t.Errorf("%q: printed %q", args, out.String())
		}
	}
}

// syncBuf is a bytes.Buffer safe for a writer and a reader.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer // +checklocks:mu
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The TCP reference end to end, as a user runs it: consume listens,
// produce dials, the consumer's JSON summary has every frame verified.
func TestTCPReference(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var cout bytes.Buffer
	var cerr syncBuf
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"consume", "--tcp", addr, "--frames", "5", "--frame-size", "100000", "-o", "json"}, &cout, &cerr)
	}()
	for !strings.Contains(cerr.String(), readyLine) {
		if ctx.Err() != nil {
			t.Fatal("consumer never ready")
		}
		time.Sleep(5 * time.Millisecond)
	}
	var pout, perr bytes.Buffer
	if err := run(ctx, []string{"produce", "--tcp", addr, "--frames", "5", "--frame-size", "100000", "--fps", "0", "-o", "json"}, &pout, &perr); err != nil {
		t.Fatalf("produce: %v\n%s", err, perr.String())
	}
	if err := <-done; err != nil {
		t.Fatalf("consume: %v\n%s", err, cerr.String())
	}
	var s lunarstream.Summary
	if err := json.Unmarshal(cout.Bytes(), &s); err != nil {
		t.Fatalf("%v: %q", err, cout.String())
	}
	if s.Transport != "tcp" || s.Frames != 5 || s.Verified != 5 || s.FrameSize != 100000 {
		t.Fatalf("%+v", s)
	}
}
