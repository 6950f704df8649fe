// Package lunarstream is the INSANE paper's second application, Lunar
// Streaming (section 6.2), on the Veloce API: a producer sends
// video-sized frames (by default 1280x720 RGB, 2,764,800 bytes) at a set
// frame rate on a channel; consumers verify every byte of every frame
// and report frames per second and frame latency. The same producer and
// consumer also run over a plain TCP connection (length-prefixed frames),
// the reference the benchmark (veloce-bench lunar) measures against.
//
// A frame is a header and a body. The header carries the frame number,
// the producer's send time (wall clock, Unix nanoseconds: latency is
// meaningful only when producer and consumer share a clock, as two
// network namespaces of one host do), the body's length and its CRC-32C.
// The body is derived from the frame number alone (Fill), so a consumer
// checks every byte against what it must be, not only the checksum.
//
// On a stream a frame goes as one message when the session's largest
// message holds it (Sender.MessageSize at least HeaderLen+frame size);
// otherwise as consecutive parts, each a message with its own header
// whose Offset says where its bytes go. Parts of one frame are expected
// back to back and in order (QoS Reliable gives that); a part out of place
// spoils its frame, which then counts as corrupt, and a frame of which
// nothing or only a part arrived counts as lost.
//
//	src, _ := stream.CreateSource(ctx, 7)
//	snd := lunarstream.NewSender(lunarstream.Options{FrameSize: lunarstream.DefaultFrameSize, FPS: 30, Frames: 300})
//	snd.Run(ctx, lunarstream.SourceEmitter(src, guestlib.MaxMessage))
//
//	sink, _ := stream.CreateSink(ctx, 7, guestlib.SinkOptions{})
//	rcv := lunarstream.NewReceiver(300, lunarstream.DefaultFrameSize)
//	lunarstream.ConsumeSink(ctx, sink, rcv, 5*time.Second)
//	fmt.Println(rcv.Summary())
package lunarstream

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

const (
	// DefaultFrameSize is one 1280x720 RGB frame.
	DefaultFrameSize = 1280 * 720 * 3
	// MaxFrameSize bounds a frame's body (a hostile header cannot make a
	// consumer expect more): 64 MiB, the daemon's largest --max-message.
	MaxFrameSize = 64 << 20
	// HeaderLen is the length of a frame's (or a part's) header.
	HeaderLen = 32
	// Magic opens every header ("LUN1").
	Magic = 0x4c554e31
)

// Header is what precedes a frame's body (over TCP) or each part of it
// (on a stream), big-endian on the wire:
//
//	0  magic      uint32 (Magic)
//	4  frame      uint64 frame number, from 0
//	12 send time  int64  Unix nanoseconds when the producer began the frame
//	20 length     uint32 the frame body's length
//	24 offset     uint32 where this part's bytes go in the body (TCP: 0)
//	28 checksum   uint32 CRC-32C (Castagnoli) of the whole body
type Header struct {
	Frame    uint64
	SendTime int64
	Length   uint32
	Offset   uint32
	Checksum uint32
}

// Errors of Parse.
var (
	ErrShort    = errors.New("lunarstream: message shorter than a header")
	ErrMagic    = errors.New("lunarstream: bad magic")
	ErrTooLarge = fmt.Errorf("lunarstream: frame longer than %d bytes", MaxFrameSize)
	ErrOffset   = errors.New("lunarstream: part beyond its frame's length")
)

// castagnoli is CRC-32C's table (hardware-accelerated on amd64 and arm64).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum is CRC-32C of body, the header's Checksum.
func Checksum(body []byte) uint32 { return crc32.Checksum(body, castagnoli) }

// Put writes h into b[:HeaderLen]; b must be at least that long.
func (h *Header) Put(b []byte) {
	_ = b[HeaderLen-1]
	binary.BigEndian.PutUint32(b[0:], Magic)
	binary.BigEndian.PutUint64(b[4:], h.Frame)
	binary.BigEndian.PutUint64(b[12:], uint64(h.SendTime))
	binary.BigEndian.PutUint32(b[20:], h.Length)
	binary.BigEndian.PutUint32(b[24:], h.Offset)
	binary.BigEndian.PutUint32(b[28:], h.Checksum)
}

// Parse reads a header from b. It returns ErrShort, ErrMagic, ErrTooLarge
// (Length over MaxFrameSize) or ErrOffset (Offset past Length); partLen
// is how many body bytes follow the header in this message (for a TCP
// frame header, 0), and the part must end within the frame.
func Parse(b []byte, partLen int) (Header, error) {
	if len(b) < HeaderLen {
		return Header{}, ErrShort
	}
	if binary.BigEndian.Uint32(b) != Magic {
		return Header{}, ErrMagic
	}
	h := Header{
		Frame:    binary.BigEndian.Uint64(b[4:]),
		SendTime: int64(binary.BigEndian.Uint64(b[12:])),
		Length:   binary.BigEndian.Uint32(b[20:]),
		Offset:   binary.BigEndian.Uint32(b[24:]),
		Checksum: binary.BigEndian.Uint32(b[28:]),
	}
	if h.Length > MaxFrameSize {
		return Header{}, ErrTooLarge
	}
	if uint64(h.Offset)+uint64(partLen) > uint64(h.Length) {
		return Header{}, ErrOffset
	}
	return h, nil
}

// mix is splitmix64's finaliser: a bijection that spreads every input bit.
func mix(z uint64) uint64 {
	z += 0x9e3779b97f4a7c15
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// Fill writes into dst the bytes of frame's body from offset off on: byte
// i of a body is byte i%8 (little-endian) of mix(mix(frame)+i/8), so
// any range can be produced, or checked, without the rest.
func Fill(dst []byte, frame uint64, off int) {
	key := mix(frame)
	w := uint64(off / 8)
	if r := off % 8; r != 0 {
		v := mix(key+w) >> (8 * r)
		n := 0
		for ; n < 8-r && n < len(dst); n++ {
			dst[n] = byte(v)
			v >>= 8
		}
		dst = dst[n:]
		w++
	}
	for len(dst) >= 8 {
		binary.LittleEndian.PutUint64(dst, mix(key+w))
		dst = dst[8:]
		w++
	}
	if len(dst) > 0 {
		v := mix(key + w)
		for i := range dst {
			dst[i] = byte(v)
			v >>= 8
		}
	}
}
