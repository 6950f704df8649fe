package main

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
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
