package main

import (
	"bytes"
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/internal/testutil"
)

func TestEtcdFlagErrors(t *testing.T) {
	base := []string{"--vhost-user", "/tmp/x.sock", "--control", "", "--app-socket", ""}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--etcd", "http://127.0.0.1:2379"}, "--etcd needs --listen"},
		{[]string{"--etcd-cacert", "/x"}, "need --etcd"},
		{[]string{"--listen", "127.0.0.1:0", "--etcd", "127.0.0.1:2379"}, "want http://HOST:PORT"},
		{[]string{"--listen", "127.0.0.1:0", "--etcd", "http://a:1,ftp://b:2"}, "\"ftp://b:2\""},
		{[]string{"--listen", "127.0.0.1:0", "--etcd", "http://a:1", "--etcd-prefix", "veloce"}, "--etcd-prefix"},
		{[]string{"--listen", "127.0.0.1:0", "--etcd", "http://a:1", "--etcd-prefix", "/"}, "--etcd-prefix"},
		{[]string{"--listen", "127.0.0.1:0", "--etcd", "http://a:1", "--etcd-ttl", "1s"}, "--etcd-ttl 1s: at least 2s"},
		{[]string{"--listen", "127.0.0.1:0", "--etcd", "http://a:1", "--etcd-dial-timeout", "0s"}, "--etcd-dial-timeout"},
		{[]string{"--listen", "127.0.0.1:0", "--etcd", "http://a:1", "--etcd-cert", "/c"}, "go together"},
		{[]string{"--listen", "127.0.0.1:0", "--etcd", "https://a:1", "--etcd-cacert", "/nonexistent"}, "--etcd-cacert"},
	} {
		var stderr bytes.Buffer
		err := run(context.Background(), append(slices.Clone(base), tc.args...), &stderr)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error mentioning %q", tc.args, err, tc.want)
		}
	}
}

// TestEtcdUnreachableDaemonStarts: with etcd down veloced still starts
// (static peers and local streams work) and velocectl remote says etcd is
// disconnected, with the error.
func TestEtcdUnreachableDaemonStarts(t *testing.T) {
	testutil.Integration(t)
	dir := t.TempDir()
	ctl := filepath.Join(dir, "ctl")
	ctx, _, _ := inProcess(t, nil, "--app-socket", filepath.Join(dir, "app"), "--control", ctl, "--listen", "127.0.0.1:0",
		"--etcd", "http://127.0.0.1:1", "--etcd-dial-timeout", "200ms", "--etcd-ttl", "2s")
	c := control.NewClient(ctl)
	deadline := time.Now().Add(30 * time.Second)
	for {
		info, err := c.Remote(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if e := info.Directory.Etcd; e != nil && !e.Connected && e.LastError != "" {
			if !slices.Equal(info.Directory.Sources, []string{"etcd"}) || !slices.Equal(e.Endpoints, []string{"http://127.0.0.1:1"}) || e.Prefix != "/veloce" {
				t.Errorf("directory %+v etcd %+v", info.Directory, e)
			}
			t.Logf("etcd down: %s", e.LastError)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no etcd error within 30s: %+v", info.Directory)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
