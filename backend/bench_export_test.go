package backend

import (
	"testing"
)

// A local session's deliver function is called synchronously, with the
// sink's id, for every message on its sinks' channels; false is a drop.
func TestOpenLocalSessionDeliversSynchronously(t *testing.T) {
	r := NewRuntime(RuntimeOptions{NodeID: 3})
	type got struct {
		sink        uint32
		source, seq uint64
		payload     string
	}
	var gots []got
	take := true
	s := r.OpenLocalSession(func(sink uint32, source, seq uint64, payload []byte) bool {
		gots = append(gots, got{sink, source, seq, string(payload)})
		return take
	})
	st, err := s.CreateStream(StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	src, _ := s.CreateSource(st.ID, 4)
	sk, _ := s.CreateSink(st.ID, 4)
	if n := r.Emit(src, []byte("hi")); n != 1 || len(gots) != 1 {
		t.Fatalf("Emit reached %d sinks, deliveries %+v", n, gots)
	}
	if want := (got{sk.ID, 3<<32 | uint64(src.ID), 1, "hi"}); gots[0] != want {
		t.Errorf("delivery %+v, want %+v", gots[0], want)
	}
	take = false
	if n := r.Emit(src, []byte("no")); n != 0 {
		t.Errorf("refused delivery counted: Emit = %d", n)
	}
	info := r.Streams()
	if len(info) != 1 || info[0].Endpoint != "local" || info[0].Sinks[0].Delivered != 1 || info[0].Sinks[0].Dropped != 1 {
		t.Errorf("streams: %+v", info)
	}
	s.Close()
	if n := r.Emit(src, []byte("gone")); n != 0 || len(gots) != 2 {
		t.Errorf("after Close: Emit = %d, deliveries %d", n, len(gots))
	}
}
