package testutil_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/testutil"
)

func TestLineWatcherSeesALineWrittenInPieces(t *testing.T) {
	var log bytes.Buffer
	w := testutil.WatchLine("veloced: ready", &log)
	for _, s := range []string{"level=INFO msg=\"not veloced: ready\"\nveloced: re", "ady", "\nafter\n"} {
		select {
		case <-w.Seen():
			t.Fatalf("seen before %q", s)
		default:
		}
		w.Write([]byte(s))
	}
	w.Wait(t, nil, time.Minute) // already seen: returns at once
	if log.String() != w.String() || w.String() == "" {
		t.Errorf("copied %q, kept %q", log.String(), w.String())
	}
}
