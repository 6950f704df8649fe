package wire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
)

// golden is a data message: fragment 2 of 3, 5 payload bytes, on channel
// 0x01020304 from source 7 of node 0x0a0b0c0d, sequence 0x1122334455667788,
// class accelerated|reliable, flag retransmit. The bytes spell the layout
// in the package doc; C overlays in the DPDK and RDMA plugins rely on it.
const goldenHex = "564c" + // magic
	"01" + // version
	"01" + // kind data
	"09" + // class accelerated|reliable
	"01" + // flags retransmit
	"0200" + // fragment index 2
	"0300" + // fragment count 3
	"0500" + // payload length 5
	"04030201" + // channel
	"070000000d0c0b0a" + // source
	"8877665544332211" + // sequence
	"68656c6c6f" // "hello"

var goldenHeader = Header{
	Kind:       KindData,
	Class:      ClassAccelerated | ClassReliable,
	Flags:      FlagRetransmit,
	FragIndex:  2,
	FragCount:  3,
	PayloadLen: 5,
	Channel:    0x01020304,
	Source:     NewSourceID(0x0a0b0c0d, 7),
	Seq:        0x1122334455667788,
}

func mustUnhex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func patch(b []byte, off int, v ...byte) []byte {
	c := bytes.Clone(b)
	copy(c[off:], v)
	return c
}

func TestLayoutMatchesPackageDoc(t *testing.T) {
	want := mustUnhex(goldenHex)
	if len(want) != HeaderLen+5 {
		t.Fatalf("golden is %d bytes", len(want))
	}
	var b [64]byte
	h := goldenHeader
	n, err := h.MarshalPacket(b[:], []byte("hello"))
	if err != nil || n != len(want) {
		t.Fatalf("MarshalPacket = %d, %v", n, err)
	}
	if !bytes.Equal(b[:n], want) {
		t.Fatalf("marshalled\n %x\nwant\n %x", b[:n], want)
	}
	got, payload, err := Parse(want)
	if err != nil {
		t.Fatal(err)
	}
	if got != goldenHeader || string(payload) != "hello" {
		t.Fatalf("Parse = %+v %q", got, payload)
	}
	if got.Source.Node() != 0x0a0b0c0d || got.Source.Local() != 7 {
		t.Fatalf("source %#x: node %#x local %d", uint64(got.Source), got.Source.Node(), got.Source.Local())
	}
}

func TestParseValidation(t *testing.T) {
	g := mustUnhex(goldenHex)
	ack := patch(g[:HeaderLen], offKind, byte(KindAck))
	ack = patch(ack, offFragIndex, 0, 0, 1, 0, 0, 0) // index 0, count 1, no payload
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"valid data", g, nil},
		{"valid ack", ack, nil},
		{"valid directory", patch(g, offKind, byte(KindDirectory)), nil},
		{"empty", nil, ErrTruncated},
		{"one byte", []byte{'V'}, ErrTruncated},
		{"header cut short", g[:HeaderLen-1], ErrTruncated},
		{"payload cut short", g[:len(g)-1], ErrTruncated},
		{"payload length beyond buffer", patch(g, offPayloadLen, 0xff, 0xff), ErrTruncated},
		{"foreign datagram", []byte("GET / HTTP/1.1\r\n"), ErrNotVeloce},
		{"foreign short datagram", []byte{0, 0}, ErrNotVeloce},
		{"second magic byte", patch(g, 1, 'X'), ErrNotVeloce},
		{"version 0", patch(g, offVersion, 0), ErrVersion},
		{"version 2", patch(g, offVersion, 2), ErrVersion},
		{"kind 0", patch(g, offKind, 0), ErrUnknownKind},
		{"kind reserved", patch(g, offKind, 4), ErrUnknownKind},
		{"kind 255", patch(g, offKind, 255), ErrUnknownKind},
		{"class reserved bit", patch(g, offClass, 0x10), ErrMalformed},
		{"flags reserved bit", patch(g, offFlags, 0x80), ErrMalformed},
		{"fragment count 0", patch(g, offFragCount, 0, 0), ErrMalformed},
		{"fragment index = count", patch(g, offFragIndex, 3, 0), ErrMalformed},
		{"fragment index > count", patch(g, offFragIndex, 0xff, 0xff), ErrMalformed},
		{"trailing bytes", append(bytes.Clone(g), 0), ErrMalformed},
		{"ack payload over MaxAckLen", patch(append(bytes.Clone(g[:HeaderLen]), make([]byte, MaxAckLen+1)...), offKind, byte(KindAck), 0, 0, 0, 0, 1, 0, MaxAckLen+1, 0), ErrMalformed},
		{"fragmented ack", patch(ack, offFragCount, 2, 0), ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, payload, err := Parse(tc.b)
			if err != tc.want {
				t.Fatalf("Parse = %v, want %v", err, tc.want)
			}
			if err != nil {
				if h != (Header{}) || payload != nil {
					t.Fatalf("error with non-zero results: %+v %x", h, payload)
				}
				return
			}
			if len(payload) != int(h.PayloadLen) || HeaderLen+len(payload) != len(tc.b) {
				t.Fatalf("payload %d bytes, header says %d, buffer %d", len(payload), h.PayloadLen, len(tc.b))
			}
		})
	}
}

func TestMarshalValidation(t *testing.T) {
	ok := Header{Kind: KindData, FragCount: 1}
	for _, tc := range []struct {
		name string
		h    Header
		len  int
		want error
	}{
		{"minimal data", ok, HeaderLen, nil},
		{"last fragment", Header{Kind: KindData, FragIndex: MaxFragments - 1, FragCount: MaxFragments, PayloadLen: MaxPayload}, HeaderLen, nil},
		{"short buffer", ok, HeaderLen - 1, ErrShortBuffer},
		{"zero header", Header{}, HeaderLen, ErrUnknownKind},
		{"reserved kind", Header{Kind: 9, FragCount: 1}, HeaderLen, ErrUnknownKind},
		{"reserved class", Header{Kind: KindData, FragCount: 1, Class: 0x80}, HeaderLen, ErrMalformed},
		{"reserved flag", Header{Kind: KindData, FragCount: 1, Flags: 0x08}, HeaderLen, ErrMalformed},
		{"no fragments", Header{Kind: KindData}, HeaderLen, ErrMalformed},
		{"index beyond count", Header{Kind: KindData, FragIndex: 1, FragCount: 1}, HeaderLen, ErrMalformed},
		{"ack payload over MaxAckLen", Header{Kind: KindAck, FragCount: 1, PayloadLen: MaxAckLen + 1}, HeaderLen, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := make([]byte, tc.len)
			n, err := tc.h.Marshal(b)
			if err != tc.want {
				t.Fatalf("Marshal = %d, %v, want %v", n, err, tc.want)
			}
			if err != nil {
				if n != 0 || !bytes.Equal(b, make([]byte, tc.len)) {
					t.Fatalf("error, but wrote %d bytes: %x", n, b)
				}
				return
			}
			if n != HeaderLen {
				t.Fatalf("n = %d", n)
			}
		})
	}
}

func TestMarshalPacket(t *testing.T) {
	t.Run("copies payload", func(t *testing.T) {
		h := Header{Kind: KindData, FragCount: 1, Channel: 5}
		b := make([]byte, 100)
		n, err := h.MarshalPacket(b, []byte("abc"))
		if err != nil || n != HeaderLen+3 || h.PayloadLen != 3 {
			t.Fatalf("MarshalPacket = %d, %v, PayloadLen %d", n, err, h.PayloadLen)
		}
		got, p, err := Parse(b[:n])
		if err != nil || got != h || string(p) != "abc" {
			t.Fatalf("Parse = %+v %q %v", got, p, err)
		}
	})
	t.Run("payload built in place", func(t *testing.T) {
		b := make([]byte, HeaderLen+4)
		copy(b[HeaderLen:], "ping")
		h := Header{Kind: KindData, FragCount: 1}
		n, err := h.MarshalPacket(b, b[HeaderLen:])
		if err != nil || n != len(b) || string(b[HeaderLen:]) != "ping" {
			t.Fatalf("MarshalPacket = %d, %v, %q", n, err, b[HeaderLen:])
		}
	})
	t.Run("empty payload", func(t *testing.T) {
		h := Header{Kind: KindAck, FragCount: 1, Seq: 9}
		var b [HeaderLen]byte
		if n, err := h.MarshalPacket(b[:], nil); err != nil || n != HeaderLen {
			t.Fatalf("MarshalPacket = %d, %v", n, err)
		}
	})
	for _, tc := range []struct {
		name    string
		h       Header
		buf     int
		payload int
		want    error
	}{
		{"too long", Header{Kind: KindData, FragCount: 1, PayloadLen: 7}, MaxPayload + 100, MaxPayload + 1, ErrTooLong},
		{"short buffer", Header{Kind: KindData, FragCount: 1, PayloadLen: 7}, HeaderLen + 2, 3, ErrShortBuffer},
		{"ack payload over MaxAckLen", Header{Kind: KindAck, FragCount: 1}, 1000, MaxAckLen + 1, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.h
			n, err := h.MarshalPacket(make([]byte, tc.buf), make([]byte, tc.payload))
			if n != 0 || err != tc.want {
				t.Fatalf("MarshalPacket = %d, %v, want %v", n, err, tc.want)
			}
			if h != tc.h {
				t.Fatalf("header changed on error: %+v", h)
			}
		})
	}
}

func TestRoundTripAllKindsAndBits(t *testing.T) {
	b := make([]byte, HeaderLen+MaxPayload)
	for _, kind := range []Kind{KindData, KindDirectory, KindAck} {
		for class := Class(0); class <= classDefined; class++ {
			for flags := Flags(0); flags <= flagsDefined; flags++ {
				h := Header{Kind: kind, Class: class, Flags: flags, FragIndex: 0, FragCount: 1,
					Channel: ^uint32(0), Source: NewSourceID(^uint32(0), 1), Seq: ^uint64(0)}
				if kind != KindAck {
					h.FragIndex, h.FragCount, h.PayloadLen = MaxFragments-1, MaxFragments, MaxPayload
				}
				if _, err := h.Marshal(b); err != nil {
					t.Fatalf("%+v: %v", h, err)
				}
				got, p, err := Parse(b[:HeaderLen+int(h.PayloadLen)])
				if err != nil || got != h || len(p) != int(h.PayloadLen) {
					t.Fatalf("%+v: Parse = %+v, %d bytes, %v", h, got, len(p), err)
				}
			}
		}
	}
}

func TestErrors(t *testing.T) {
	var err error = ErrTruncated
	if !errors.Is(err, ErrTruncated) || errors.Is(err, ErrMalformed) {
		t.Fatal("errors.Is does not tell the constants apart")
	}
	for e := ErrTruncated; e <= ErrTooLong; e++ {
		if s := e.Error(); s == "wire: unknown error" || s == "" {
			t.Errorf("Error(%d) has no string", e)
		}
	}
	if Error(200).Error() != "wire: unknown error" {
		t.Error("out-of-range error string")
	}
}

func TestStrings(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{KindData.String(), "data"},
		{KindDirectory.String(), "directory"},
		{KindAck.String(), "ack"},
		{Kind(0).String(), "reserved"},
		{Kind(77).String(), "reserved"},
		{Class(0).String(), "best-effort"},
		{(ClassAccelerated | ClassReliable).String(), "accelerated|reliable"},
		{(ClassFrugal | ClassTimeSensitive | 0x40).String(), "frugal|time-sensitive|reserved"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestPacketBytes(t *testing.T) {
	p := Packet{Buf: []byte("abcdef"), N: 3}
	if string(p.Bytes()) != "abc" {
		t.Fatalf("Bytes = %q", p.Bytes())
	}
}
