package vhostuser

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// TestRXBacklogIsAFIFOInItsArena drives the backlog's arena arithmetic
// (wrap-around, full by entries, full by bytes) against a plain slice.
func TestRXBacklogIsAFIFOInItsArena(t *testing.T) {
	b := newRXBacklog(4096, 16)
	var model [][]byte
	rng := rand.New(rand.NewPCG(1, 2))
	src := make([]byte, 4096)
	for i := range src {
		src[i] = byte(i * 7)
	}
	for step := range 200000 {
		if rng.IntN(2) == 0 {
			l := 1 + rng.IntN(1500)
			if rng.IntN(50) == 0 {
				l = 4096 // exactly the arena
			}
			o := rng.IntN(len(src) - l + 1)
			f := src[o : o+l]
			if b.push(f) {
				model = append(model, f)
			} else if len(model) == 0 {
				t.Fatalf("step %d: push of %d bytes into an empty backlog refused", step, l)
			}
		} else if len(model) > 0 {
			if got := b.peek(); !bytes.Equal(got, model[0]) {
				t.Fatalf("step %d: peek = %d bytes, want %d", step, len(got), len(model[0]))
			}
			b.pop()
			model = model[1:]
		}
		if b.Len() != len(model) {
			t.Fatalf("step %d: Len = %d, want %d", step, b.Len(), len(model))
		}
	}
	for b.Len() > 0 {
		b.pop()
	}
	for i := range 16 {
		if !b.push(src[:100]) {
			t.Fatalf("frame %d of 16 refused", i+1)
		}
	}
	if b.push(src[:1]) {
		t.Error("a 17th entry was accepted")
	}
	b.reset()
	if b.push(make([]byte, 4097)) || b.push(nil) {
		t.Error("a frame larger than the arena, or empty, was accepted")
	}
}
