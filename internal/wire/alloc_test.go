package wire

import "testing"

// The per-packet path must not allocate: marshal and parse headers and
// directories, including the error paths.

func TestHeaderDoesNotAllocate(t *testing.T) {
	msg := mustUnhex(goldenHex)
	bad := patch(msg, offFragIndex, 9, 0)
	buf := make([]byte, 128)
	payload := []byte("hello")
	var sink int
	allocs := testing.AllocsPerRun(1000, func() {
		h := goldenHeader
		n, _ := h.Marshal(buf)
		sink += n
		n, _ = h.MarshalPacket(buf, payload)
		sink += n
		g, p, _ := Parse(msg)
		sink += len(p) + int(g.FragIndex)
		if _, _, err := Parse(bad); err != nil {
			sink++
		}
		if _, err := h.Marshal(buf[:3]); err != nil {
			sink++
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per run, want 0 (sink %d)", allocs, sink)
	}
}

func TestDirectoryDoesNotAllocate(t *testing.T) {
	d := Directory{Node: 1, Generation: 2, Channels: make([]uint32, MaxDirectoryChannels)}
	for i := range d.Channels {
		d.Channels[i] = uint32(i)
	}
	buf := make([]byte, MaxDirectoryLen)
	n, err := d.Marshal(buf)
	if err != nil {
		t.Fatal(err)
	}
	chans := make([]uint32, 0, MaxDirectoryChannels)
	var sink int
	allocs := testing.AllocsPerRun(1000, func() {
		m, _ := d.Marshal(buf)
		got, _ := ParseDirectory(buf[:n], chans)
		sink += m + len(got.Channels)
		if _, err := ParseDirectory(buf[:n-1], chans); err != nil {
			sink++
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per run, want 0 (sink %d)", allocs, sink)
	}
}

// Sealing, opening (good and bad tags) and the replay window: the
// authenticated per-packet path.
func TestAuthDoesNotAllocate(t *testing.T) {
	s, o := NewSealer(testKey, 7), NewOpener(testKey)
	buf := make([]byte, 256)
	g := mustUnhex(goldenHex)
	bad := sealed(t, testKey, 1)
	bad[len(bad)-1] ^= 1
	var w ReplayWindow
	var counter uint64 = 1 << 60
	var sink int
	allocs := testing.AllocsPerRun(1000, func() {
		n := copy(buf, g)
		m, _ := s.Seal(buf, n, counter)
		counter++
		h, p, tr, err := o.Open(buf[:m])
		if err == nil && w.Admit(tr.Counter) {
			sink += len(p) + int(h.FragIndex)
		}
		if _, _, _, err := o.Open(bad); err != nil {
			sink++
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per run, want 0 (sink %d)", allocs, sink)
	}
}
