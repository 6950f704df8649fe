package wire

import (
	"bytes"
	"testing"
)

// goldenDirHex is node 0x0a0b0c0d, generation 0x0102030405060708, boot
// 0x1112131415161718, channels 1, 2 and 0x10000.
const goldenDirHex = "0d0c0b0a" + "0300" + "0200" + "0807060504030201" + "1817161514131211" +
	"01000000" + "02000000" + "00000100"

func TestDirectoryLayout(t *testing.T) {
	want := mustUnhex(goldenDirHex)
	d := Directory{Node: 0x0a0b0c0d, Generation: 0x0102030405060708, Boot: 0x1112131415161718, Channels: []uint32{1, 2, 0x10000}}
	b := make([]byte, MaxDirectoryLen)
	n, err := d.Marshal(b)
	if err != nil || n != len(want) || n != DirectoryLen(3) {
		t.Fatalf("Marshal = %d, %v", n, err)
	}
	if !bytes.Equal(b[:n], want) {
		t.Fatalf("marshalled %x, want %x", b[:n], want)
	}
	chans := make([]uint32, 0, MaxDirectoryChannels)
	got, err := ParseDirectory(want, chans)
	if err != nil || got.Node != d.Node || got.Generation != d.Generation || got.Boot != d.Boot || !equal(got.Channels, d.Channels) {
		t.Fatalf("ParseDirectory = %+v, %v", got, err)
	}
	if &got.Channels[0] != &chans[:1][0] {
		t.Fatal("ParseDirectory did not use the caller's slice")
	}
}

func equal(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestDirectoryLimits(t *testing.T) {
	if l := HeaderLen + MaxDirectoryLen + AuthTrailerLen + 8 + 40; l > 1280 {
		t.Fatalf("a full directory datagram over IPv6 is %d bytes, above the IPv6 minimum MTU", l)
	}
	full := make([]uint32, MaxDirectoryChannels)
	for i := range full {
		full[i] = uint32(i * 3)
	}
	b := make([]byte, MaxDirectoryLen+4)
	d := Directory{Node: 1, Generation: 2, Channels: full}
	n, err := d.Marshal(b)
	if err != nil || n != MaxDirectoryLen {
		t.Fatalf("full Marshal = %d, %v", n, err)
	}
	got, err := ParseDirectory(b[:n], make([]uint32, 0, MaxDirectoryChannels))
	if err != nil || !equal(got.Channels, full) {
		t.Fatalf("full ParseDirectory: %v", err)
	}
	d.Channels = append(full, 1<<31)
	if _, err := d.Marshal(b); err != ErrTooLong {
		t.Fatalf("Marshal of %d channels = %v", len(d.Channels), err)
	}
	empty := Directory{Node: 3, Generation: 4}
	n, err = empty.Marshal(b)
	if err != nil || n != DirectoryHeaderLen {
		t.Fatalf("empty Marshal = %d, %v", n, err)
	}
	if got, err := ParseDirectory(b[:n], nil); err != nil || got.Node != 3 || len(got.Channels) != 0 {
		t.Fatalf("empty ParseDirectory = %+v, %v", got, err)
	}
}

func TestDirectoryMarshalValidation(t *testing.T) {
	for _, tc := range []struct {
		name  string
		chans []uint32
		buf   int
		want  error
	}{
		{"ascending", []uint32{0, 1, 1 << 31}, 64, nil},
		{"duplicate", []uint32{1, 1}, 64, ErrMalformed},
		{"descending", []uint32{2, 1}, 64, ErrMalformed},
		{"short buffer", []uint32{1, 2}, DirectoryLen(2) - 1, ErrShortBuffer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Directory{Channels: tc.chans}
			if n, err := d.Marshal(make([]byte, tc.buf)); err != tc.want || (err != nil && n != 0) {
				t.Fatalf("Marshal = %d, %v, want %v", n, err, tc.want)
			}
		})
	}
}

func TestParseDirectoryValidation(t *testing.T) {
	g := mustUnhex(goldenDirHex)
	for _, tc := range []struct {
		name string
		b    []byte
		cap  int
		want error
	}{
		{"valid", g, 3, nil},
		{"empty", nil, 8, ErrTruncated},
		{"header cut short", g[:DirectoryHeaderLen-1], 8, ErrTruncated},
		{"list cut short", g[:len(g)-1], 8, ErrTruncated},
		{"count beyond buffer", patch(g, 4, 4, 0), 8, ErrTruncated},
		{"count above limit", patch(g, 4, 1, 1), 1024, ErrTooLong},
		{"layout 0 (no boot id)", patch(g, 6, 0, 0), 8, ErrVersion},
		{"unknown layout", patch(g, 6, 3, 0), 8, ErrVersion},
		{"version only", g[:8], 8, ErrTruncated},
		{"trailing bytes", append(bytes.Clone(g), 0), 8, ErrMalformed},
		{"duplicate id", patch(g, DirectoryHeaderLen+4, 1), 8, ErrMalformed},
		{"descending ids", patch(g, DirectoryHeaderLen, 5), 8, ErrMalformed},
		{"caller slice too small", g, 2, ErrShortBuffer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := ParseDirectory(tc.b, make([]uint32, 0, tc.cap))
			if err != tc.want {
				t.Fatalf("ParseDirectory = %v, want %v", err, tc.want)
			}
			if err != nil && (d.Node != 0 || d.Channels != nil) {
				t.Fatalf("error with non-zero result %+v", d)
			}
		})
	}
}

// A directory travels as the payload of a KindDirectory message.
func TestDirectoryInMessage(t *testing.T) {
	buf := make([]byte, HeaderLen+MaxDirectoryLen)
	d := Directory{Node: 42, Generation: 7, Channels: []uint32{10, 20, 30}}
	n, err := d.Marshal(buf[HeaderLen:])
	if err != nil {
		t.Fatal(err)
	}
	h := Header{Kind: KindDirectory, FragCount: 1, Source: NewSourceID(42, 0), Seq: 1}
	m, err := h.MarshalPacket(buf, buf[HeaderLen:HeaderLen+n])
	if err != nil {
		t.Fatal(err)
	}
	got, payload, err := Parse(buf[:m])
	if err != nil || got.Kind != KindDirectory {
		t.Fatalf("Parse = %+v, %v", got, err)
	}
	var chans [MaxDirectoryChannels]uint32
	gd, err := ParseDirectory(payload, chans[:0])
	if err != nil || gd.Node != 42 || gd.Generation != 7 || !equal(gd.Channels, d.Channels) {
		t.Fatalf("ParseDirectory = %+v, %v", gd, err)
	}
}
