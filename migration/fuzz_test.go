package migration

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
)

var genCorpus = flag.Bool("gencorpus", false, "rewrite testdata/fuzz/FuzzDecode")

// corpusSeeds are the seed inputs of FuzzDecode, by file name: valid
// encodings and one of each failure class.
func corpusSeeds(t testing.TB) map[string][]byte {
	valid := mustEncode(t, sample())
	signed, err := EncodeSigned(sample(), testKey)
	if err != nil {
		t.Fatal(err)
	}
	version := bytes.Clone(valid)
	le.PutUint16(version[4:], 2)
	flipped := bytes.Clone(valid)
	flipped[40] ^= 0x10
	dangling := sample()
	dangling.Sinks[0].Stream = 99
	return map[string][]byte{
		"valid_empty":      mustEncode(t, &PortSnapshot{}),
		"valid_sample":     valid,
		"valid_signed":     signed,
		"valid_one_sink":   mustEncode(t, &PortSnapshot{Sessions: []Session{{ID: 1}}, Streams: []Stream{{ID: 2, Session: 1}}, Sinks: []Sink{{ID: 3, Stream: 2, Queued: []Message{{Seq: 1, Payload: []byte("x")}}}}}),
		"truncated":        valid[:len(valid)/2],
		"flipped":          flipped,
		"version_2":        reseal(version),
		"dangling_stream":  marshalRaw(dangling),
		"huge_count":       inflate(t.(*testing.T), 1<<31),
		"trailing_garbage": append(bytes.Clone(valid), "junk"...),
	}
}

// TestGenerateFuzzCorpus rewrites the committed seed corpus when run with
// -gencorpus.
func TestGenerateFuzzCorpus(t *testing.T) {
	if !*genCorpus {
		t.Skip("run with -gencorpus to rewrite testdata/fuzz/FuzzDecode")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range corpusSeeds(t) {
		data := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(b)))
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// FuzzDecode: decoding never panics, fails only with the documented error
// classes, and a snapshot it accepts encodes again to an equal value (and,
// unsigned, to the same bytes).
func FuzzDecode(f *testing.F) {
	f.Add(mustEncode(f, sample()))
	f.Add(mustEncode(f, &PortSnapshot{}))
	f.Fuzz(func(t *testing.T, b []byte) {
		checkDecode(t, b)
		// The checksum stops almost every mutation at the envelope: fix
		// length and CRC so that the fuzzer reaches the body's parser.
		if len(b) >= HeaderLen+crcLen+macLen && string(b[:len(Magic)]) == Magic {
			b = bytes.Clone(b)
			le.PutUint32(b[8:], uint32(len(b)))
			end := len(b) - crcLen
			if le.Uint16(b[6:])&FlagSigned != 0 {
				end -= macLen
			}
			le.PutUint32(b[end:], crc32.Checksum(b[:end], castagnoli))
			checkDecode(t, b)
		}
	})
}

func checkDecode(t *testing.T, b []byte) {
	{
		s, err := Decode(b, nil)
		ss, serr := DecodeSigned(b, testKey, nil)
		if serr == nil && (err != nil || !reflect.DeepEqual(s, ss)) {
			t.Fatalf("DecodeSigned accepted what Decode did not: %v", err)
		}
		if err != nil {
			if s != nil {
				t.Fatal("a value with an error")
			}
			if c := errClass(err); c != ErrTruncated && c != ErrCorrupt && c != ErrVersion && c != ErrTooLarge && c != ErrInvalid {
				t.Fatalf("error of no class: %v", err)
			}
			return
		}
		again, err := Encode(s)
		if err != nil {
			t.Fatalf("Encode of a decoded snapshot: %v", err)
		}
		s2, err := Decode(again, nil)
		if err != nil {
			t.Fatalf("Decode of a re-encoded snapshot: %v", err)
		}
		if !reflect.DeepEqual(s, s2) {
			t.Fatalf("re-encoded snapshot differs:\n%+v\n%+v", s, s2)
		}
		if le.Uint16(b[6:])&FlagSigned == 0 && !bytes.Equal(again, b) {
			t.Fatal("re-encoding differs from the input")
		}
	}
}

func TestFuzzSeedsClassify(t *testing.T) {
	want := map[string]error{
		"valid_empty": nil, "valid_sample": nil, "valid_signed": nil, "valid_one_sink": nil,
		"truncated": ErrTruncated, "flipped": ErrCorrupt, "version_2": ErrVersion,
		"dangling_stream": ErrInvalid, "huge_count": ErrTooLarge, "trailing_garbage": ErrCorrupt,
	}
	for name, b := range corpusSeeds(t) {
		_, err := Decode(b, nil)
		if w, ok := want[name]; !ok || !errors.Is(err, w) && !(w == nil && err == nil) {
			t.Errorf("%s: Decode = %v, want %v", name, err, w)
		}
	}
}
