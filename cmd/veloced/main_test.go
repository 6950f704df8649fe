package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--app-socket", ""}, "no ports"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--service-ip", "999.1.1.1"}, "--service-ip"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--guest-ip", "169.254.77.2"}, "--guest-ip"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--service-mac", "zz"}, "--service-mac"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--log-level", "loud"}, "--log-level"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--guest-ip", "10.0.0.2/24"}, "invalid"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--vhost-user", "/tmp/x.sock"}, "twice"},
		{[]string{"--vhost-user", "/tmp/x.sock", "extra"}, "unexpected argument"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--poll-cpus", "0,9999"}, "--poll-cpus"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--poll-cpus", "a"}, "--poll-cpus"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--peer", "127.0.0.1:7078"}, "--peer needs --listen"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--listen", "nowhere"}, "--listen"},
		{[]string{"--vhost-user", "/tmp/x.sock", "--listen", "127.0.0.1:0", "--peer", "x"}, "--peer"},
	} {
		var stderr bytes.Buffer
		err := run(context.Background(), tc.args, &stderr)
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(tc.want)) {
			t.Errorf("%v: got %v, want an error mentioning %q", tc.args, err, tc.want)
		}
	}
}
