package benchtsn

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestMainRefusesBadArguments(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--schedule", "S 01 1ms"}, "no entry opens gate 1"},
		{[]string{"--schedule", "X"}, "bad gate schedule"},
		{[]string{"--size", "4"}, "--size"},
		{[]string{"--duration", "0s"}, "--duration"},
		{[]string{"-o", "yaml"}, "want table or json"},
		{[]string{"extra"}, "unexpected"},
	} {
		var out, errb bytes.Buffer
		err := Main(context.Background(), tc.args, &out, &errb)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Main(%q) = %v, want an error saying %q", tc.args, err, tc.want)
		}
	}
}

func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	rep := &Report{Schedule: "base=0,cycle=1ms,S 01 800µs,S 02 200µs", Size: 1024, Rows: []Row{
		{Case: "idle link, FIFO", Sent: 10, Messages: 10, P50Micros: 80, P99Micros: 100, MaxMicros: 120, P99VsIdle: 1}}}
	if err := WriteTable(&b, rep); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"S 02 200µs", "idle link, FIFO", "P99/IDLE", "100.0"} {
		if !strings.Contains(b.String(), w) {
			t.Errorf("table lacks %q:\n%s", w, b.String())
		}
	}
}
