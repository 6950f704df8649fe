package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/veloce-io/veloce/kubevirt/hookapi/info"
)

func TestFlagsAreValidated(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--max-queues", "0"}, "--max-queues"},
		{[]string{"--socket-dir", "relative"}, "--socket-dir"},
		{[]string{"--log-level", "loud"}, "--log-level"},
		{[]string{"extra"}, "unexpected argument"},
	} {
		var out, errs bytes.Buffer
		err := run(context.Background(), tc.args, &out, &errs)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want one naming %s", tc.args, err, tc.want)
		}
	}
	var out, errs bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, &out, &errs); !errors.Is(err, flag.ErrHelp) || !strings.Contains(errs.String(), "--hook-socket") && !strings.Contains(errs.String(), "-hook-socket") {
		t.Errorf("--help: %v\n%s", err, errs.String())
	}
}

// TestSidecarServesUntilStopped: the sidecar answers Info on its hook
// socket and removes the socket when it is stopped.
func TestSidecarServesUntilStopped(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "veloce.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var out, errs bytes.Buffer
	go func() { done <- run(ctx, []string{"--hook-socket", sock}, &out, &errs) }()
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ictx, icancel := context.WithTimeout(ctx, time.Minute)
	defer icancel()
	r, err := info.NewInfoClient(cc).Info(ictx, &info.InfoParams{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	if r.GetName() != "veloce" {
		t.Errorf("Info name %q", r.GetName())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v\n%s", err, errs.String())
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("hook socket left behind: %v", err)
	}
}
