package testutil

import (
	"bytes"
	"io"
	"sync"
	"testing"
	"time"
)

// LineWatcher is an io.Writer for a program's output (a process's
// Stderr, a run function's stderr) that keeps what was written, copies it
// on to another writer if given one, and signals when a given line was
// written: the readiness line a daemon prints (control.ReadyLine), for a
// test to wait on instead of polling for socket files. It is safe for
// one writer and any number of readers.
type LineWatcher struct {
	line string
	next io.Writer
	seen chan struct{}

	mu  sync.Mutex
	all bytes.Buffer // +checklocks:mu
	// partial is the unfinished last line.
	partial []byte // +checklocks:mu
	found   bool   // +checklocks:mu
}

// WatchLine returns a writer that signals once line (without its
// newline) was written alone on a line; next, when not nil, gets
// everything written too (a log file).
func WatchLine(line string, next io.Writer) *LineWatcher {
	return &LineWatcher{line: line, next: next, seen: make(chan struct{})}
}

// Write implements io.Writer.
func (w *LineWatcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.all.Write(p)
	if !w.found {
		w.partial = append(w.partial, p...)
		for {
			i := bytes.IndexByte(w.partial, '\n')
			if i < 0 {
				break
			}
			if string(bytes.TrimSuffix(w.partial[:i], []byte("\r"))) == w.line {
				w.found = true
				close(w.seen)
				w.partial = nil
				break
			}
			w.partial = w.partial[i+1:]
		}
	}
	w.mu.Unlock()
	if w.next != nil {
		return w.next.Write(p)
	}
	return len(p), nil
}

// Seen is closed once the line was written.
func (w *LineWatcher) Seen() <-chan struct{} { return w.seen }

// String returns everything written so far.
func (w *LineWatcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.all.String()
}

// Wait waits for the line, failing the test with the output so far when
// exited (a process's end, a run function's return; may be nil) comes
// first or timeout passes (a bound on a hang, not a timing assertion).
func (w *LineWatcher) Wait(t testing.TB, exited <-chan struct{}, timeout time.Duration) {
	t.Helper()
	select {
	case <-w.seen:
	case <-exited:
		t.Fatalf("ended before printing %q; output:\n%s", w.line, w.String())
	case <-time.After(timeout):
		t.Fatalf("did not print %q in %v; output:\n%s", w.line, timeout, w.String())
	}
}
