package main

import (
	"bytes"
	"strings"
	"testing"
	"text/tabwriter"

	"github.com/veloce-io/veloce/control"
)

// The directory part of velocectl remote: its sources and etcd's health.
// (cmd/veloced's TestFiveDaemonsFindEachOtherInEtcd reads the same fields
// from real daemons.)
func TestRemoteShowsDirectory(t *testing.T) {
	for _, tc := range []struct {
		d    control.DirectoryInfo
		want []string
	}{
		{control.DirectoryInfo{Sources: []string{"static"}}, []string{"directory: static\n"}},
		{control.DirectoryInfo{}, []string{"directory: -\n"}},
		{control.DirectoryInfo{Sources: []string{"static", "etcd"}, Etcd: &control.EtcdInfo{Endpoints: []string{"http://a:2379", "http://b:2379"},
			Key: "/veloce/nodes/3", Connected: false, LastError: "grant lease: context deadline exceeded", Revision: 42, Nodes: 4,
			Puts: 5, PutBytes: 600, Events: 7, ReadBytes: 800}},
			[]string{"directory: static+etcd\n", "etcd: http://a:2379,http://b:2379 (disconnected), key /veloce/nodes/3, revision 42, 4 nodes; 5 puts (600 bytes), 7 events, 800 bytes read; last error: grant lease: context deadline exceeded"}},
	} {
		var b bytes.Buffer
		tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
		printDirectory(tw, tc.d)
		tw.Flush()
		for _, w := range tc.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("no %q in:\n%s", w, b.String())
			}
		}
	}
}
