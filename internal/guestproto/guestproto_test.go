package guestproto

import (
	"bytes"
	"testing"
)

func TestRequestsRoundTrip(t *testing.T) {
	for _, in := range []Message{
		{Header: Header{Type: OpenSession, RequestID: 1}},
		{Header: Header{Type: CloseSession, RequestID: 2, Session: 7}},
		{Header: Header{Type: Ping, RequestID: 3, Session: 7}},
		{Header: Header{Type: CreateStream, RequestID: 4, Session: 7}, Options: StreamOptions{Acceleration: 1, ResourceUse: 1, TimeSensitive: 0, Reliable: 1}},
		{Header: Header{Type: CloseStream, RequestID: 5, Session: 7}, ID: 9},
		{Header: Header{Type: CreateSource, RequestID: 6, Session: 7}, Stream: 9, Channel: 0xdeadbeef},
		{Header: Header{Type: CreateSink, RequestID: 7, Session: 7}, Stream: 9, Channel: 42},
		{Header: Header{Type: CloseSource, RequestID: 8, Session: 7}, ID: 3},
		{Header: Header{Type: CloseSink, RequestID: 9, Session: 7}, ID: 4},
	} {
		t.Run(in.Type.String(), func(t *testing.T) {
			var b [64]byte
			n, err := PutRequest(b[:], &in)
			if err != nil {
				t.Fatal(err)
			}
			var out Message
			if err := Parse(b[:n], &out); err != nil {
				t.Fatal(err)
			}
			if out.Header != in.Header || out.Options != in.Options || out.ID != in.ID || out.Stream != in.Stream || out.Channel != in.Channel {
				t.Fatalf("got %+v, want %+v", out, in)
			}
			if _, err := PutRequest(b[:n-1], &in); err != ErrShortBuffer && n > HeaderLen {
				t.Errorf("short buffer: %v", err)
			}
		})
	}
}

func TestReplyRoundTrip(t *testing.T) {
	var b [256]byte
	r := Result{Status: StatusOK, ID: 12, Plugin: []byte("udp"), Message: []byte("acceleration requested but none available: using udp")}
	n, err := PutReply(b[:], Header{Type: CreateStream, RequestID: 99, Session: 3}, &r)
	if err != nil {
		t.Fatal(err)
	}
	var m Message
	if err := Parse(b[:n], &m); err != nil {
		t.Fatal(err)
	}
	if m.Type != Reply || m.RequestID != 99 || m.Result.ID != 12 || string(m.Result.Plugin) != "udp" || !bytes.Equal(m.Result.Message, r.Message) {
		t.Fatalf("got %+v", m)
	}
	if _, err := PutReply(b[:], Header{}, &Result{Message: make([]byte, MaxText+1)}); err != ErrTextTooLong {
		t.Errorf("long text: %v", err)
	}
}

func TestDataRoundTripInPlace(t *testing.T) {
	b := make([]byte, 2048)
	payload := b[EmitOverhead : EmitOverhead+100]
	for i := range payload {
		payload[i] = byte(i)
	}
	n, err := PutEmit(b, 5, 6, 77, payload)
	if err != nil {
		t.Fatal(err)
	}
	var m Message
	if err := Parse(b[:n], &m); err != nil {
		t.Fatal(err)
	}
	if m.Type != Emit || m.Session != 5 || m.ID != 6 || m.Token != 77 || len(m.Payload) != 100 || m.Payload[99] != 99 {
		t.Fatalf("emit: %+v", m)
	}
	d := make([]byte, 2048)
	n, err = PutDeliver(d, 5, 8, 42, 0xfffffffe, 1<<32|3, 1000, m.Payload)
	if err != nil {
		t.Fatal(err)
	}
	if err := Parse(d[:n], &m); err != nil {
		t.Fatal(err)
	}
	if m.Type != Deliver || m.ID != 8 || m.Channel != 42 || m.RequestID != 0xfffffffe || m.Source != 1<<32|3 || m.Seq != 1000 || m.Payload[50] != 50 {
		t.Fatalf("deliver: %+v", m)
	}
	n, _ = PutOutcome(d, 5, 6, 77, StatusNoBuffers)
	if err := Parse(d[:n], &m); err != nil || m.Status != StatusNoBuffers || m.Token != 77 {
		t.Fatalf("outcome: %+v %v", m, err)
	}
	n, _ = PutCredit(d, 5, 8, 1<<31, 512)
	if err := Parse(d[:n], &m); err != nil || m.Type != Credit || m.Session != 5 || m.ID != 8 || m.Seen != 1<<31 || m.Room != 512 {
		t.Fatalf("credit: %+v %v", m, err)
	}
}

func TestParseRejects(t *testing.T) {
	good := func(typ Type, body ...byte) []byte {
		b := []byte{Magic0, Magic1, Version, byte(typ), 0, 0, 0, 0, 0, 0, 0, 0}
		return append(b, body...)
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrShort},
		{"short header", good(Ping)[:11], ErrShort},
		{"magic", append([]byte{'X'}, good(Ping)[1:]...), ErrMagic},
		{"version", func() []byte { b := good(Ping); b[2] = 9; return b }(), ErrVersion},
		{"type", good(0x33), ErrType},
		{"ping with body", good(Ping, 1), ErrLength},
		{"create stream short", good(CreateStream, 1, 0, 0), ErrLength},
		{"emit short", good(Emit, 1, 2, 3), ErrLength},
		{"deliver short", good(Deliver, make([]byte, 23)...), ErrLength},
		{"reply plugin overrun", good(Reply, 0, 0, 0, 0, 0, 0, 0xff, 0x00, 0, 0), ErrLength},
		{"reply trailing bytes", good(Reply, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1), ErrLength},
		{"credit short", good(Credit, make([]byte, 11)...), ErrLength},
		{"credit long", good(Credit, make([]byte, 13)...), ErrLength},
		{"credit with a request id", func() []byte { b := good(Credit, make([]byte, 12)...); b[7] = 1; return b }(), ErrRequestID},
		{"emit with a request id", func() []byte { b := good(Emit, make([]byte, 12)...); b[4] = 1; return b }(), ErrRequestID},
	} {
		var m Message
		if err := Parse(tc.b, &m); err != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestNoAllocations(t *testing.T) {
	b := make([]byte, 2048)
	var m Message
	n, _ := PutEmit(b, 1, 2, 3, make([]byte, 512))
	if a := testing.AllocsPerRun(1000, func() {
		PutEmit(b, 1, 2, 3, b[EmitOverhead:EmitOverhead+512])
		Parse(b[:n], &m)
		PutDeliver(b, 1, 2, 3, 9, 4, 5, b[DeliverOverhead:DeliverOverhead+512])
		PutCredit(b[1024:], 1, 2, 3, 4)
		Parse(b[1024:1024+CreditLen], &m)
		Parse(b[:5], &m) // an error path
	}); a != 0 {
		t.Fatalf("%v allocations per run", a)
	}
}

func FuzzParse(f *testing.F) {
	b := make([]byte, 256)
	for _, m := range []Message{{Header: Header{Type: CreateStream}}, {Header: Header{Type: CreateSink}, Stream: 1, Channel: 2}} {
		n, _ := PutRequest(b, &m)
		f.Add(append([]byte(nil), b[:n]...))
	}
	n, _ := PutReply(b, Header{}, &Result{Plugin: []byte("udp"), Message: []byte("warn")})
	f.Add(append([]byte(nil), b[:n]...))
	n, _ = PutDeliver(b, 1, 2, 3, 7, 4, 5, []byte("hello"))
	f.Add(append([]byte(nil), b[:n]...))
	n, _ = PutCredit(b, 1, 2, 3, 4)
	f.Add(append([]byte(nil), b[:n]...))
	n, _ = PutEmitFrag(b, 1, 2, 3, 1, 4, []byte("part"))
	f.Add(append([]byte(nil), b[:n]...))
	f.Fuzz(func(t *testing.T, data []byte) {
		var m Message
		if err := Parse(data, &m); err != nil {
			return
		}
		// Whatever parses re-encodes to the same bytes.
		out := make([]byte, len(data)+64)
		var n int
		var err error
		switch m.Type {
		case Reply:
			n, err = PutReply(out, m.Header, &m.Result)
		case Emit:
			n, err = PutEmit(out, m.Session, m.ID, m.Token, m.Payload)
		case EmitFrag:
			n, err = PutEmitFrag(out, m.Session, m.ID, m.Token, m.FragIndex, m.FragCount, m.Payload)
		case Deliver:
			n, err = PutDeliver(out, m.Session, m.ID, m.Channel, m.RequestID, m.Source, m.Seq, m.Payload)
		case Credit:
			n, err = PutCredit(out, m.Session, m.ID, m.Seen, m.Room)
		case StreamChanged:
			n, err = PutStreamChanged(out, m.Session, m.ID, m.Result.Plugin, m.Result.Message)
		case Outcome:
			n, err = PutOutcome(out, m.Session, m.ID, m.Token, m.Status)
		default:
			n, err = PutRequest(out, &m)
		}
		if err != nil {
			t.Fatalf("re-encode %v: %v", m.Type, err)
		}
		if !bytes.Equal(out[:n], data) {
			t.Fatalf("re-encoded %x, parsed from %x", out[:n], data)
		}
	})
}

func TestStreamChangedRoundTrip(t *testing.T) {
	b := make([]byte, 256)
	n, err := PutStreamChanged(b, 3, 9, []byte("dpdk"), []byte("frugal but DPDK"))
	var m Message
	if err != nil || Parse(b[:n], &m) != nil || m.Type != StreamChanged || m.Session != 3 || m.ID != 9 ||
		string(m.Result.Plugin) != "dpdk" || string(m.Result.Message) != "frugal but DPDK" {
		t.Fatalf("%v: %+v", err, m)
	}
	for _, bad := range [][]byte{b[:HeaderLen+7], b[:n-1], append(b[:n:n], 0)} {
		if err := Parse(bad, &m); err != ErrLength {
			t.Errorf("%x: %v, want ErrLength", bad, err)
		}
	}
	if _, err := PutStreamChanged(b[:n-1], 3, 9, []byte("dpdk"), []byte("frugal but DPDK")); err != ErrShortBuffer {
		t.Errorf("short buffer: %v", err)
	}
}
