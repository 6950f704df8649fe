// Package benchtest holds test helpers of veloce-bench's benchmarks.
package benchtest

import (
	"bytes"
	"context"
	"io"
	"testing"
)

// RefusesArgs checks that main (a benchmark's Main) refuses each of cases
// with an error and prints nothing to stdout.
func RefusesArgs(t *testing.T, main func(ctx context.Context, args []string, stdout, stderr io.Writer) error, cases [][]string) {
	t.Helper()
	for _, args := range cases {
		var out, errb bytes.Buffer
		if err := main(context.Background(), args, &out, &errb); err == nil {
			t.Errorf("%q: no error", args)
		}
		if out.Len() != 0 {
			t.Errorf("%q: printed %q", args, out.String())
		}
	}
}
