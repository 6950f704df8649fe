package migration

import (
	"bytes"
	"errors"
	"hash/crc32"
	"math"
	"net/netip"
	"reflect"
	"runtime"
	"testing"
)

var testKey = bytes.Repeat([]byte("fleet-key/"), 4)

// sample is a port with every kind of state, as backend would export it
// after a guest opened two sessions.
func sample() *PortSnapshot {
	return &PortSnapshot{
		Port: "vm1",
		Link: LinkState{
			GuestMAC: [6]byte{0x52, 0x54, 0, 0x12, 0x34, 0x56}, GuestMACKnown: true,
			ServiceMAC: [6]byte{0x02, 0x56, 0x4c, 0x4f, 0x43, 0x01}, ServicePort: 7077, MTU: 1500,
			Lease: Lease{Addr: [4]byte{169, 254, 77, 2}, PrefixBits: 24, ServerID: [4]byte{169, 254, 77, 1},
				Seconds: 86400, RemainingSeconds: 0},
		},
		Sessions: []Session{
			{ID: 1, Addr: netip.MustParseAddrPort("169.254.77.2:40000"), LastSeen: 1_700_000_000_000_000_000},
			{ID: 5, Addr: netip.MustParseAddrPort("[fe80::1]:40001"), LastSeen: -1},
		},
		Streams: []Stream{
			{ID: 2, Session: 1, QoS: QoS{Acceleration: AccelerationRequired, Reliable: ReliableInOrder}, Datapath: "udp",
				Warning: "acceleration requested, but this host has no accelerated datapath (RDMA, DPDK, AF_XDP): using kernel UDP"},
			{ID: 6, Session: 5, QoS: QoS{TimeSensitive: ScheduleQbv, ResourceUse: ResourceUseFrugal}, Datapath: "xdp"},
		},
		Sources: []Source{
			{ID: 3, Stream: 2, Channel: 42, Global: 0xabcd_0000_0003, NextSeq: 1001, Emitted: 1000, Full: 7},
		},
		Sinks: []Sink{
			{ID: 4, Stream: 2, Channel: 42, Delivered: 998, Dropped: 1, Queued: []Message{
				{Source: 0xabcd_0000_0003, Seq: 999, Payload: []byte("hello")},
				{Source: 0xabcd_0000_0003, Seq: 1000}, // empty payload
			}},
			{ID: 7, Stream: 6, Channel: 9},
		},
		Replay: []ReplayEntry{
			{Src: netip.MustParseAddrPort("169.254.77.2:40000"), Session: 0, Request: 11, Type: 0x01, At: 123, Reply: []byte{0, 0, 1, 0, 0, 0, 0, 0, 0, 0}},
			{Src: netip.MustParseAddrPort("169.254.77.2:40000"), Session: 1, Request: 12, Type: 0x03, At: 456, Reply: []byte{0, 0, 2, 0, 0, 0, 3, 0, 'u', 'd', 'p', 0, 0}},
		},
	}
}

func mustEncode(t testing.TB, s *PortSnapshot) []byte {
	t.Helper()
	b, err := Encode(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// reseal recomputes the CRC of an unsigned encoding after a test edited it.
func reseal(b []byte) []byte {
	end := len(b) - crcLen
	le.PutUint32(b[end:], crc32.Checksum(b[:end], castagnoli))
	return b
}

// marshalRaw encodes s without validating it.
func marshalRaw(s *PortSnapshot) []byte { return marshal(s, nil, encodedSize(s, false)) }

func TestRoundTrip(t *testing.T) {
	for name, s := range map[string]*PortSnapshot{
		"empty":  {},
		"sample": sample(),
	} {
		t.Run(name, func(t *testing.T) {
			b := mustEncode(t, s)
			got, err := Decode(b, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, s) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, s)
			}
			if again := mustEncode(t, got); !bytes.Equal(again, b) {
				t.Fatal("re-encoding differs")
			}

			sb, err := EncodeSigned(s, testKey)
			if err != nil {
				t.Fatal(err)
			}
			if len(sb) != len(b)+macLen {
				t.Errorf("signed encoding %d bytes, want %d", len(sb), len(b)+macLen)
			}
			got, err = DecodeSigned(sb, testKey, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, s) {
				t.Fatal("signed round trip differs")
			}
			if _, err := Decode(sb, nil); err != nil {
				t.Errorf("Decode of a signed snapshot: %v", err)
			}
		})
	}
}

func TestDecodedValueOwnsItsMemory(t *testing.T) {
	b := mustEncode(t, sample())
	got, err := Decode(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	clear(b)
	if p := got.Sinks[0].Queued[0].Payload; string(p) != "hello" || cap(p) != len(p) {
		t.Fatalf("payload %q (cap %d) after the input was cleared", p, cap(p))
	}
}

// large fills s up to the limits of o (all of them, when full).
func large(o DecodeOptions, payload int) *PortSnapshot {
	s := &PortSnapshot{Port: string(bytes.Repeat([]byte{'p'}, MaxNameLen))}
	for i := range o.MaxSessions {
		s.Sessions = append(s.Sessions, Session{ID: uint32(1 + i), Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 40000)})
	}
	for i := range o.MaxStreams {
		s.Streams = append(s.Streams, Stream{ID: uint32(1 + i), Session: uint32(1 + i%o.MaxSessions), Datapath: "udp"})
	}
	for i := range o.MaxSources {
		s.Sources = append(s.Sources, Source{ID: uint32(1 + i), Stream: uint32(1 + i%o.MaxStreams), NextSeq: uint64(i)})
	}
	left := o.MaxMessages
	for i := range o.MaxSinks {
		sk := Sink{ID: uint32(1 + i), Stream: uint32(1 + i%o.MaxStreams)}
		for j := 0; j < o.MaxMessagesPerSink && left > 0; j++ {
			sk.Queued = append(sk.Queued, Message{Source: 1, Seq: uint64(j), Payload: bytes.Repeat([]byte{byte(j)}, payload)})
			left--
		}
		s.Sinks = append(s.Sinks, sk)
	}
	for i := range o.MaxReplay {
		s.Replay = append(s.Replay, ReplayEntry{Request: uint32(i), Reply: make([]byte, MaxReplyLen)})
	}
	return s
}

func TestRoundTripAtTheLimits(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		o := (*DecodeOptions)(nil).withDefaults()
		s := large(o, 1400) // 16384 messages of an MTU's payload: 23 MB
		b := mustEncode(t, s)
		got, err := Decode(b, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, s) {
			t.Fatal("round trip differs")
		}
		t.Logf("%d bytes", len(b))
	})

	small := DecodeOptions{MaxSessions: 3, MaxStreams: 4, MaxSources: 5, MaxSinks: 3, MaxMessagesPerSink: 4,
		MaxMessages: 10, MaxPayload: 100, MaxReplay: 2}
	s := large(small, small.MaxPayload)
	b := mustEncode(t, s)
	small.MaxBytes = len(b)
	if _, err := Decode(b, &small); err != nil {
		t.Fatalf("at the limits: %v", err)
	}
	// One more of anything is refused, naming the limit.
	for _, tc := range []struct {
		limit string
		grow  func(s *PortSnapshot)
	}{
		{"MaxBytes", func(s *PortSnapshot) { s.Port = s.Port[1:]; s.Streams[0].Warning = "xy" }},
		{"MaxSessions", func(s *PortSnapshot) { s.Sessions = append(s.Sessions, Session{ID: 99}) }},
		{"MaxStreams", func(s *PortSnapshot) { s.Streams = append(s.Streams, Stream{ID: 99, Session: 1}) }},
		{"MaxSources", func(s *PortSnapshot) { s.Sources = append(s.Sources, Source{ID: 99, Stream: 1}) }},
		{"MaxSinks", func(s *PortSnapshot) { s.Sinks = append(s.Sinks, Sink{ID: 99, Stream: 1}) }},
		{"MaxMessagesPerSink", func(s *PortSnapshot) { s.Sinks[0].Queued = append(s.Sinks[0].Queued, Message{}) }},
		{"MaxMessages", func(s *PortSnapshot) { s.Sinks[2].Queued = append(s.Sinks[2].Queued, Message{}) }},
		{"MaxPayload", func(s *PortSnapshot) { s.Sinks[0].Queued[0].Payload = append(s.Sinks[0].Queued[0].Payload, 0) }},
		{"MaxReplay", func(s *PortSnapshot) { s.Replay = append(s.Replay, ReplayEntry{}) }},
	} {
		t.Run(tc.limit, func(t *testing.T) {
			s := large(small, small.MaxPayload)
			tc.grow(s)
			o := small
			if tc.limit != "MaxBytes" {
				o.MaxBytes = 0
			}
			_, err := Decode(mustEncode(t, s), &o)
			var le *LimitError
			if !errors.Is(err, ErrTooLarge) || !errors.As(err, &le) || le.Limit != tc.limit {
				t.Fatalf("Decode = %v, want a LimitError for %s", err, tc.limit)
			}
		})
	}
}

// errClass returns the one sentinel err wraps.
func errClass(err error) error {
	for _, c := range []error{ErrTruncated, ErrCorrupt, ErrVersion, ErrTooLarge, ErrUnauthenticated, ErrInvalid, ErrKey} {
		if errors.Is(err, c) {
			return c
		}
	}
	return err
}

func TestDecodeTruncatedAtEveryLength(t *testing.T) {
	unsigned := mustEncode(t, sample())
	signed, _ := EncodeSigned(sample(), testKey)
	for name, tc := range map[string]struct {
		b      []byte
		decode func([]byte) (*PortSnapshot, error)
	}{
		"unsigned":      {unsigned, func(b []byte) (*PortSnapshot, error) { return Decode(b, nil) }},
		"signed":        {signed, func(b []byte) (*PortSnapshot, error) { return DecodeSigned(b, testKey, nil) }},
		"signed-Decode": {signed, func(b []byte) (*PortSnapshot, error) { return Decode(b, nil) }},
	} {
		for n := range len(tc.b) {
			s, err := tc.decode(tc.b[:n])
			if c := errClass(err); s != nil || (c != ErrTruncated && c != ErrCorrupt) {
				t.Fatalf("%s: %d of %d bytes: %v, %v; want ErrTruncated or ErrCorrupt", name, n, len(tc.b), s, err)
			}
		}
	}
}

func TestDecodeFlippedBytes(t *testing.T) {
	check := func(t *testing.T, b []byte, decode func([]byte) (*PortSnapshot, error), want func(i int) []error) {
		for i := range b {
			for _, bit := range []byte{0x01, 0x80} {
				c := bytes.Clone(b)
				c[i] ^= bit
				s, err := decode(c)
				got := errClass(err)
				ok := false
				for _, w := range want(i) {
					ok = ok || got == w
				}
				if s != nil || !ok {
					t.Fatalf("byte %d ^ %#x: %v, %v; want one of %v", i, bit, s, err, want(i))
				}
			}
		}
	}
	corrupt := []error{ErrCorrupt}
	// A flipped total length may claim more than there is, or more than
	// the limit.
	lengthField := []error{ErrCorrupt, ErrTruncated, ErrTooLarge}
	t.Run("unsigned", func(t *testing.T) {
		check(t, mustEncode(t, sample()), func(b []byte) (*PortSnapshot, error) { return Decode(b, nil) }, func(i int) []error {
			if i >= 8 && i < 12 {
				return lengthField
			}
			return corrupt
		})
	})
	t.Run("signed", func(t *testing.T) {
		b, _ := EncodeSigned(sample(), testKey)
		check(t, b, func(b []byte) (*PortSnapshot, error) { return DecodeSigned(b, testKey, nil) }, func(i int) []error {
			switch {
			case i >= 8 && i < 12:
				return lengthField
			case i >= len(b)-macLen:
				return []error{ErrUnauthenticated} // the CRC does not cover the HMAC
			}
			return corrupt
		})
	})
}

func TestDecodeVersion(t *testing.T) {
	b := mustEncode(t, sample())
	le.PutUint16(b[4:], 2)
	_, err := Decode(reseal(b), nil)
	var ve *VersionError
	if !errors.Is(err, ErrVersion) || !errors.As(err, &ve) || ve.Found != 2 || ve.Supported != Version {
		t.Fatalf("Decode = %v, want VersionError{2, %d}", err, Version)
	}
	t.Log(err)
}

func TestDecodeEnvelope(t *testing.T) {
	valid := mustEncode(t, sample())
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"foreign", []byte("GET / HTTP/1.1\r\n"), ErrCorrupt},
		{"foreign-short", []byte("VX"), ErrCorrupt},
		{"trailing-byte", append(bytes.Clone(valid), 0), ErrCorrupt},
		{"reserved-flag", func() []byte { b := bytes.Clone(valid); b[6] |= 0x2; return reseal(b) }(), ErrCorrupt},
		{"length-below-minimum", func() []byte { b := bytes.Clone(valid)[:16]; le.PutUint32(b[8:], 15); return b }(), ErrCorrupt},
		{"section-out-of-order", func() []byte { b := bytes.Clone(valid); b[HeaderLen] = secLink; return reseal(b) }(), ErrCorrupt},
		{"over-MaxSnapshotSize", func() []byte { b := bytes.Clone(valid); le.PutUint32(b[8:], MaxSnapshotSize+1); return b }(), ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Decode(tc.b, nil); errClass(err) != tc.want {
				t.Fatalf("Decode = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestDecodeSigned(t *testing.T) {
	signed, err := EncodeSigned(sample(), testKey)
	if err != nil {
		t.Fatal(err)
	}
	otherKey := bytes.Repeat([]byte{0x55}, MinKeySize)
	stripped := func() []byte { // flag cleared, HMAC dropped, CRC and length fixed
		b := bytes.Clone(signed[:len(signed)-macLen])
		le.PutUint16(b[6:], 0)
		le.PutUint32(b[8:], uint32(len(b)))
		return reseal(b)
	}()
	for _, tc := range []struct {
		name string
		b    []byte
		key  []byte
		want error
	}{
		{"wrong-key", signed, otherKey, ErrUnauthenticated},
		{"unsigned", mustEncode(t, sample()), testKey, ErrUnauthenticated},
		{"stripped", stripped, testKey, ErrUnauthenticated},
		{"bad-hmac", func() []byte { b := bytes.Clone(signed); b[len(b)-1] ^= 1; return b }(), testKey, ErrUnauthenticated},
		{"short-key", signed, testKey[:MinKeySize-1], ErrKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if s, err := DecodeSigned(tc.b, tc.key, nil); s != nil || errClass(err) != tc.want {
				t.Fatalf("DecodeSigned = %v, %v; want %v", s, err, tc.want)
			}
		})
	}
	if _, err := EncodeSigned(sample(), nil); !errors.Is(err, ErrKey) {
		t.Errorf("EncodeSigned without a key = %v, want ErrKey", err)
	}
}

func TestDecodeInvalid(t *testing.T) {
	for _, tc := range []struct {
		name   string
		edit   func(s *PortSnapshot)
		detail string
	}{
		{"stream-without-session", func(s *PortSnapshot) { s.Streams[1].Session = 77 }, "decode snapshot: stream 6: session 77 not in the snapshot"},
		{"source-without-stream", func(s *PortSnapshot) { s.Sources[0].Stream = 77 }, "decode snapshot: source 3: stream 77 not in the snapshot"},
		{"sink-without-stream", func(s *PortSnapshot) { s.Sinks[1].Stream = 77 }, "decode snapshot: sink 7: stream 77 not in the snapshot"},
		{"duplicate-session", func(s *PortSnapshot) { s.Sessions[1].ID = 1 }, "decode snapshot: session 1: duplicate id"},
		{"duplicate-stream", func(s *PortSnapshot) { s.Streams[1].ID = 2 }, "decode snapshot: stream 2: duplicate id"},
		{"duplicate-source", func(s *PortSnapshot) { s.Sources = append(s.Sources, s.Sources[0]) }, "decode snapshot: source 3: duplicate id"},
		{"duplicate-sink", func(s *PortSnapshot) { s.Sinks[1].ID = 4 }, "decode snapshot: sink 4: duplicate id"},
		{"id-zero", func(s *PortSnapshot) { s.Sinks[1].ID = 0 }, "decode snapshot: sink 0: id 0"},
		{"qos-out-of-range", func(s *PortSnapshot) { s.Streams[0].QoS.Reliable = 2 }, "decode snapshot: stream 2: QoS"},
		{"prefix-out-of-range", func(s *PortSnapshot) { s.Link.Lease.PrefixBits = 33 }, "decode snapshot: link: prefix length 33"},
		{"extension", func(s *PortSnapshot) { s.Extensions = []Extension{{Tag: 9, Data: []byte{1}}} }, "decode snapshot: extension tag 9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := sample()
			tc.edit(s)
			if _, err := Encode(s); !errors.Is(err, ErrInvalid) {
				t.Errorf("Encode = %v, want ErrInvalid", err)
			}
			got, err := Decode(marshalRaw(s), nil)
			if got != nil || !errors.Is(err, ErrInvalid) || !bytes.HasPrefix([]byte(err.Error()), []byte(tc.detail)) {
				t.Fatalf("Decode = %v, %v; want ErrInvalid, %q...", got, err, tc.detail)
			}
		})
	}
}

// inflate returns a small well-sealed snapshot with one sink whose
// message count claims n messages it does not hold.
func inflate(t *testing.T, n uint32) []byte {
	s := &PortSnapshot{Sessions: []Session{{ID: 1}}, Streams: []Stream{{ID: 2, Session: 1}}, Sinks: []Sink{{ID: 3, Stream: 2}}}
	b := mustEncode(t, s)
	// The sink's message count is its last field, just before the replay
	// section (6 + 4 bytes), the extensions section (6 + 4) and the CRC.
	at := len(b) - crcLen - 2*(sectionHdrLen+4) - 4
	if le.Uint32(b[at:]) != 0 {
		t.Fatal("message count not where expected")
	}
	le.PutUint32(b[at:], n)
	return reseal(b)
}

func TestDecodeHugeCountsAllocateLittle(t *testing.T) {
	huge := inflate(t, 1<<31)
	roomy := &DecodeOptions{MaxMessagesPerSink: math.MaxInt32, MaxMessages: math.MaxInt32}
	short := make([]byte, 64) // a header claiming 2^31 bytes
	copy(short, Magic)
	le.PutUint16(short[4:], Version)
	le.PutUint32(short[8:], 1<<31)
	for _, tc := range []struct {
		name string
		b    []byte
		opts *DecodeOptions
		want error
	}{
		{"over-limit", huge, nil, ErrTooLarge},
		{"over-input", inflate(t, 1<<30), roomy, ErrTruncated},
		{"64-byte-header-claims-2GiB", short, &DecodeOptions{MaxBytes: MaxSnapshotSize}, ErrTooLarge},
		{"64-byte-prefix", mustEncode(t, sample())[:64], nil, ErrTruncated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Decode(tc.b, tc.opts); errClass(err) != tc.want {
				t.Fatalf("Decode = %v, want %v", err, tc.want)
			}
			const runs = 100
			allocs := testing.AllocsPerRun(runs, func() { Decode(tc.b, tc.opts) })
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for range runs {
				Decode(tc.b, tc.opts)
			}
			runtime.ReadMemStats(&after)
			perRun := (after.TotalAlloc - before.TotalAlloc) / runs
			t.Logf("%d-byte input: %.0f allocations, %d bytes per decode", len(tc.b), allocs, perRun)
			if allocs > 30 || perRun > 4096 {
				t.Errorf("decoding a %d-byte input allocated %.0f times, %d bytes", len(tc.b), allocs, perRun)
			}
		})
	}
}

// TestDecodeAllocationIsProportional: a valid snapshot decodes into a
// small multiple of its size.
func TestDecodeAllocationIsProportional(t *testing.T) {
	o := DecodeOptions{MaxSessions: 200, MaxStreams: 200, MaxSources: 200, MaxSinks: 200, MaxMessagesPerSink: 10, MaxMessages: 2000, MaxReplay: 0}
	b := mustEncode(t, large(o.withDefaults(), 0))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := Decode(b, nil); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 8*uint64(len(b)) {
		t.Errorf("decoding %d bytes allocated %d", len(b), got)
	}
}

func TestErrorsNameTheirPlace(t *testing.T) {
	s := sample()
	s.Sinks[0].Queued[1].Payload = make([]byte, 101)
	_, err := Decode(mustEncode(t, s), &DecodeOptions{MaxPayload: 100})
	want := "decode snapshot: sinks section: sink 4: message 1: snapshot exceeds MaxPayload: 101 > 100"
	if err == nil || err.Error() != want {
		t.Fatalf("error %q, want %q", err, want)
	}
}
