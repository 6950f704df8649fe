package guestlib

import (
	"encoding/binary"
	"testing"

	"github.com/veloce-io/veloce/internal/guestproto"
)

// FuzzSinkFragment feeds a sink DeliverFrag frames as a broken or hostile
// daemon might send them (any index, count, source, length, order): the
// sink never delivers more than the session's largest message, every
// message it delivers is one whose frames all came in order, and it
// never crashes.
//
// frames is a list of 8-byte headers (index u16, count u16, seq u16,
// length u16), each followed by nothing: the payload is length mod
// FragSize+2 bytes of the frame's seq.
func FuzzSinkFragment(f *testing.F) {
	put := func(fi, fc, seq, n uint16) []byte {
		var b [8]byte
		binary.LittleEndian.PutUint16(b[0:], fi)
		binary.LittleEndian.PutUint16(b[2:], fc)
		binary.LittleEndian.PutUint16(b[4:], seq)
		binary.LittleEndian.PutUint16(b[6:], n)
		return b[:]
	}
	var seed []byte
	for i := uint16(0); i < 3; i++ {
		seed = append(seed, put(i, 3, 1, guestproto.FragSize)...)
	}
	f.Add(seed)
	f.Add(append(put(0, 3, 1, guestproto.FragSize), append(put(0, 2, 2, guestproto.FragSize), put(1, 2, 2, 7)...)...))
	f.Add(append(put(0, 9, 1, guestproto.FragSize), put(1, 9, 1, 3)...))
	f.Fuzz(func(t *testing.T, frames []byte) {
		const maxEmit = 4 * guestproto.FragSize
		s := &Session{maxEmit: maxEmit, largeRX: true}
		s.large.New = func() any { b := make([]byte, maxEmit); return &b }
		sk := &Sink{s: s, queue: make(chan *Message, 1024)}
		payload := make([]byte, guestproto.FragSize+1)
		for ; len(frames) >= 8; frames = frames[8:] {
			m := guestproto.Message{FragIndex: binary.LittleEndian.Uint16(frames[0:]), FragCount: binary.LittleEndian.Uint16(frames[2:]),
				Seq: uint64(binary.LittleEndian.Uint16(frames[4:]))}
			m.Payload = payload[:int(binary.LittleEndian.Uint16(frames[6:]))%(len(payload)+1)]
			for i := range m.Payload {
				m.Payload[i] = byte(m.Seq)
			}
			sk.fragment(&m)
		}
		for len(sk.queue) > 0 {
			msg := <-sk.queue
			if len(msg.Data) > maxEmit || len(msg.Data) < int(msg.frames)*guestproto.FragSize {
				t.Fatalf("a message of %d bytes from %d frames", len(msg.Data), msg.frames+1)
			}
			for _, c := range msg.Data {
				if c != byte(msg.Seq) {
					t.Fatalf("message %d holds bytes of another", msg.Seq)
				}
			}
		}
	})
}
