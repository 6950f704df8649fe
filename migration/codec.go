package migration

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"net/netip"
)

// Envelope constants (the same in every format version).
const (
	// Magic starts every snapshot.
	Magic = "VSNP"
	// Version is the format version this package writes and reads.
	Version = 1
	// HeaderLen is the size of the header.
	HeaderLen = 12
	// FlagSigned marks a snapshot with an HMAC-SHA256 trailer.
	FlagSigned = 1 << 0
	// MinKeySize is the shortest HMAC key EncodeSigned and DecodeSigned
	// take.
	MinKeySize = 32

	crcLen = 4
	macLen = sha256.Size
)

// Section tags of format version 1, in the order they appear.
const (
	secPort = iota + 1
	secLink
	secSessions
	secStreams
	secSources
	secSinks
	secReplay
	secExtensions
	numSections = secExtensions
)

// Record sizes: fixed ones, and the least a variable one takes.
const (
	sectionHdrLen  = 6
	linkLen        = 34
	minAddrLen     = 3
	minSessionLen  = 4 + 8 + minAddrLen
	minStreamLen   = 4 + 4 + 4 + 2 + 2
	sourceLen      = 4 + 4 + 4 + 8 + 8 + 8 + 8
	minSinkLen     = 4 + 4 + 4 + 8 + 8 + 4
	minMessageLen  = 8 + 8 + 4
	minReplayLen   = minAddrLen + 4 + 4 + 1 + 8 + 2
	minExtLen      = 2 + 4
	linkMACKnown   = 1 << 0
	addrFamilyNone = 0
	addrFamily4    = 4
	addrFamily6    = 6
)

var (
	le         = binary.LittleEndian
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
)

// Encode returns the encoding of s, unsigned. It validates s first
// (Validate) and returns an error wrapping ErrInvalid or ErrTooLarge (also
// when the encoding would exceed MaxSnapshotSize) instead of encoding a
// snapshot that no decoder would accept. The encoding is deterministic.
func Encode(s *PortSnapshot) ([]byte, error) {
	return encode(s, nil)
}

// EncodeSigned is Encode with an HMAC-SHA256 trailer under key, a secret
// every daemon of the fleet shares: DecodeSigned with the same key accepts
// the result. It returns ErrKey for a key shorter than MinKeySize.
func EncodeSigned(s *PortSnapshot, key []byte) ([]byte, error) {
	if len(key) < MinKeySize {
		return nil, fmt.Errorf("encode snapshot: %w", ErrKey)
	}
	return encode(s, key)
}

func encode(s *PortSnapshot, key []byte) ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("encode snapshot: %w", err)
	}
	size := encodedSize(s, key != nil)
	if size > MaxSnapshotSize {
		return nil, fmt.Errorf("encode snapshot: %w", tooLarge("MaxSnapshotSize", MaxSnapshotSize, uint64(size)))
	}
	return marshal(s, key, size), nil
}

// marshal encodes s, valid or not, in size bytes (encodedSize); tests use
// it to build invalid snapshots.
func marshal(s *PortSnapshot, key []byte, size int) []byte {
	w := writer{b: make([]byte, 0, size)}
	w.b = append(w.b, Magic...)
	w.u16(Version)
	var flags uint16
	if key != nil {
		flags |= FlagSigned
	}
	w.u16(flags)
	w.u32(uint32(size))

	w.section(secPort, func() { w.str16(s.Port) })
	w.section(secLink, func() { w.link(&s.Link) })
	w.section(secSessions, func() {
		w.u32(uint32(len(s.Sessions)))
		for i := range s.Sessions {
			se := &s.Sessions[i]
			w.u32(se.ID)
			w.u64(uint64(se.LastSeen))
			w.addr(se.Addr)
		}
	})
	w.section(secStreams, func() {
		w.u32(uint32(len(s.Streams)))
		for i := range s.Streams {
			st := &s.Streams[i]
			w.u32(st.ID)
			w.u32(st.Session)
			w.b = append(w.b, st.QoS.Acceleration, st.QoS.ResourceUse, st.QoS.TimeSensitive, st.QoS.Reliable)
			w.str16(st.Datapath)
			w.str16(st.Warning)
		}
	})
	w.section(secSources, func() {
		w.u32(uint32(len(s.Sources)))
		for i := range s.Sources {
			so := &s.Sources[i]
			w.u32(so.ID)
			w.u32(so.Stream)
			w.u32(so.Channel)
			w.u64(so.Global)
			w.u64(so.NextSeq)
			w.u64(so.Emitted)
			w.u64(so.Full)
		}
	})
	w.section(secSinks, func() {
		w.u32(uint32(len(s.Sinks)))
		for i := range s.Sinks {
			sk := &s.Sinks[i]
			w.u32(sk.ID)
			w.u32(sk.Stream)
			w.u32(sk.Channel)
			w.u64(sk.Delivered)
			w.u64(sk.Dropped)
			w.u32(uint32(len(sk.Queued)))
			for j := range sk.Queued {
				m := &sk.Queued[j]
				w.u64(m.Source)
				w.u64(m.Seq)
				w.u32(uint32(len(m.Payload)))
				w.b = append(w.b, m.Payload...)
			}
		}
	})
	w.section(secReplay, func() {
		w.u32(uint32(len(s.Replay)))
		for i := range s.Replay {
			e := &s.Replay[i]
			w.addr(e.Src)
			w.u32(e.Session)
			w.u32(e.Request)
			w.b = append(w.b, e.Type)
			w.u64(uint64(e.At))
			w.u16(uint16(len(e.Reply)))
			w.b = append(w.b, e.Reply...)
		}
	})
	w.section(secExtensions, func() {
		w.u32(uint32(len(s.Extensions)))
		for i := range s.Extensions {
			e := &s.Extensions[i]
			w.u16(e.Tag)
			w.u32(uint32(len(e.Data)))
			w.b = append(w.b, e.Data...)
		}
	})

	w.u32(crc32.Checksum(w.b, castagnoli))
	if key != nil {
		m := hmac.New(sha256.New, key)
		m.Write(w.b)
		w.b = m.Sum(w.b)
	}
	if len(w.b) != size {
		panic(fmt.Sprintf("migration: encoded %d bytes, computed %d", len(w.b), size))
	}
	return w.b
}

// encodedSize is the length of s's encoding. It does not overflow: every
// field it adds was bounded by Validate or by the memory s occupies.
func encodedSize(s *PortSnapshot, signed bool) int {
	n := HeaderLen + numSections*sectionHdrLen + crcLen
	if signed {
		n += macLen
	}
	n += 2 + len(s.Port) + linkLen
	n += 4
	for i := range s.Sessions {
		n += minSessionLen + addrBytes(s.Sessions[i].Addr)
	}
	n += 4
	for i := range s.Streams {
		n += minStreamLen + len(s.Streams[i].Datapath) + len(s.Streams[i].Warning)
	}
	n += 4 + sourceLen*len(s.Sources)
	n += 4
	for i := range s.Sinks {
		n += minSinkLen
		for j := range s.Sinks[i].Queued {
			n += minMessageLen + len(s.Sinks[i].Queued[j].Payload)
		}
	}
	n += 4
	for i := range s.Replay {
		n += minReplayLen + addrBytes(s.Replay[i].Src) + len(s.Replay[i].Reply)
	}
	n += 4
	for i := range s.Extensions {
		n += minExtLen + len(s.Extensions[i].Data)
	}
	return n
}

// addrBytes is the number of address bytes after the family byte.
func addrBytes(a netip.AddrPort) int {
	switch {
	case a.Addr().Is4():
		return 4
	case a.Addr().Is6():
		return 16
	}
	return 0
}

type writer struct{ b []byte }

func (w *writer) u16(v uint16) { w.b = le.AppendUint16(w.b, v) }
func (w *writer) u32(v uint32) { w.b = le.AppendUint32(w.b, v) }
func (w *writer) u64(v uint64) { w.b = le.AppendUint64(w.b, v) }

func (w *writer) str16(s string) {
	w.u16(uint16(len(s)))
	w.b = append(w.b, s...)
}

// section writes tag, a length and the content f appends.
func (w *writer) section(tag uint16, f func()) {
	w.u16(tag)
	at := len(w.b)
	w.u32(0)
	f()
	le.PutUint32(w.b[at:], uint32(len(w.b)-at-4))
}

func (w *writer) addr(a netip.AddrPort) {
	switch ip := a.Addr(); {
	case ip.Is4():
		b := ip.As4()
		w.b = append(append(w.b, addrFamily4), b[:]...)
	case ip.Is6():
		b := ip.As16()
		w.b = append(append(w.b, addrFamily6), b[:]...)
	default:
		w.b = append(w.b, addrFamilyNone)
	}
	w.u16(a.Port())
}

func (w *writer) link(l *LinkState) {
	var flags byte
	if l.GuestMACKnown {
		flags |= linkMACKnown
	}
	w.b = append(w.b, flags)
	w.b = append(w.b, l.GuestMAC[:]...)
	w.b = append(w.b, l.ServiceMAC[:]...)
	w.u16(l.ServicePort)
	w.u16(l.MTU)
	w.b = append(w.b, l.Lease.Addr[:]...)
	w.b = append(w.b, l.Lease.PrefixBits)
	w.b = append(w.b, l.Lease.ServerID[:]...)
	w.u32(l.Lease.Seconds)
	w.u32(l.Lease.RemainingSeconds)
}

// Decode decodes and validates a snapshot, signed or not (an HMAC trailer
// is not checked: use DecodeSigned where the sender must prove it holds
// the key). opts may be nil for the defaults.
//
// The input is checked whole before anything is returned: the result is a
// new value that shares no memory with b, and on error it is nil. Errors
// wrap ErrTruncated, ErrCorrupt, ErrVersion (a *VersionError), ErrTooLarge
// (a *LimitError), or ErrInvalid.
func Decode(b []byte, opts *DecodeOptions) (*PortSnapshot, error) {
	return decode(b, nil, opts)
}

// DecodeSigned is Decode for a snapshot EncodeSigned made with key: it
// also returns an error wrapping ErrUnauthenticated when b carries no HMAC
// or one that does not verify under key, and ErrKey for a key shorter than
// MinKeySize. Nothing past the envelope is parsed before the HMAC
// verifies.
func DecodeSigned(b, key []byte, opts *DecodeOptions) (*PortSnapshot, error) {
	if len(key) < MinKeySize {
		return nil, fmt.Errorf("decode snapshot: %w", ErrKey)
	}
	return decode(b, key, opts)
}

func decode(b, key []byte, opts *DecodeOptions) (*PortSnapshot, error) {
	o := opts.withDefaults()
	body, err := open(b, key, &o)
	if err != nil {
		return nil, fmt.Errorf("decode snapshot: %w", err)
	}
	// One copy of the body backs every byte field of the result.
	d := decoder{r: reader{b: bytes.Clone(body)}, o: &o}
	s, err := d.snapshot()
	if err != nil {
		return nil, fmt.Errorf("decode snapshot: %w", err)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("decode snapshot: %w", err)
	}
	return s, nil
}

// open checks the envelope (magic, length, checksum, HMAC when key is not
// nil, version, flags) and returns the body, a view of b.
func open(b, key []byte, o *DecodeOptions) ([]byte, error) {
	if len(b) < len(Magic) {
		if !bytes.HasPrefix([]byte(Magic), b) {
			return nil, fmt.Errorf("magic: %w", ErrCorrupt)
		}
		return nil, fmt.Errorf("header: %w", ErrTruncated)
	}
	if string(b[:len(Magic)]) != Magic {
		return nil, fmt.Errorf("magic %q: %w", b[:len(Magic)], ErrCorrupt)
	}
	if len(b) < HeaderLen {
		return nil, fmt.Errorf("header: %w", ErrTruncated)
	}
	version, flags, total := le.Uint16(b[4:]), le.Uint16(b[6:]), le.Uint32(b[8:])
	if uint64(total) > uint64(o.MaxBytes) {
		return nil, tooLarge("MaxBytes", uint64(o.MaxBytes), uint64(total))
	}
	trailer := crcLen
	if flags&FlagSigned != 0 {
		trailer += macLen
	}
	if int(total) < HeaderLen+trailer {
		return nil, fmt.Errorf("total length %d: %w", total, ErrCorrupt)
	}
	if len(b) < int(total) {
		return nil, fmt.Errorf("%d of %d bytes: %w", len(b), total, ErrTruncated)
	}
	if len(b) > int(total) {
		return nil, fmt.Errorf("%d bytes after the snapshot: %w", len(b)-int(total), ErrCorrupt)
	}
	end := int(total) - trailer // the CRC's offset
	if got, want := crc32.Checksum(b[:end], castagnoli), le.Uint32(b[end:]); got != want {
		return nil, fmt.Errorf("checksum %#08x, want %#08x: %w", got, want, ErrCorrupt)
	}
	if key != nil {
		if flags&FlagSigned == 0 {
			return nil, fmt.Errorf("no HMAC: %w", ErrUnauthenticated)
		}
		m := hmac.New(sha256.New, key)
		m.Write(b[:end+crcLen])
		if !hmac.Equal(m.Sum(nil), b[end+crcLen:]) {
			return nil, fmt.Errorf("HMAC does not verify: %w", ErrUnauthenticated)
		}
	}
	if version != Version {
		return nil, &VersionError{Found: version, Supported: Version}
	}
	if flags&^FlagSigned != 0 {
		return nil, fmt.Errorf("reserved flags %#x: %w", flags&^FlagSigned, ErrCorrupt)
	}
	return b[HeaderLen:end], nil
}

// reader reads little-endian fields from b. A read past the end returns
// zeros and sets err (ErrTruncated); callers check err before using a
// length or count, and after each record.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) left() int { return len(r.b) - r.off }

// take returns the next n bytes, a full-capacity view of b.
func (r *reader) take(n int) []byte {
	if r.err != nil || n < 0 || n > r.left() { // n < 0: a u32 length on a 32-bit int
		if r.err == nil {
			r.err = ErrTruncated
		}
		return nil
	}
	v := r.b[r.off : r.off+n : r.off+n]
	r.off += n
	return v
}

func (r *reader) u8() uint8 {
	if v := r.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if v := r.take(2); v != nil {
		return le.Uint16(v)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if v := r.take(4); v != nil {
		return le.Uint32(v)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if v := r.take(8); v != nil {
		return le.Uint64(v)
	}
	return 0
}

// bytes returns a field of n bytes (nil when n is 0), bounded by max.
func (r *reader) bytes(n int, limit string, max int) ([]byte, error) {
	if n > max {
		return nil, tooLarge(limit, uint64(max), uint64(n))
	}
	v := r.take(n)
	if r.err != nil {
		return nil, r.err
	}
	if n == 0 {
		return nil, nil
	}
	return v, nil
}

// str16 reads a u16-prefixed string of at most max bytes.
func (r *reader) str16(limit string, max int) (string, error) {
	v, err := r.bytes(int(r.u16()), limit, max)
	return string(v), err
}

// count reads a record count and checks it against the limit and against
// what is left of the section (each record takes at least minLen bytes),
// before the caller allocates for it.
func (r *reader) count(limit string, max, minLen int) (int, error) {
	n := uint64(r.u32())
	if r.err != nil {
		return 0, r.err
	}
	if n > uint64(max) {
		return 0, tooLarge(limit, uint64(max), n)
	}
	if n*uint64(minLen) > uint64(r.left()) {
		return 0, fmt.Errorf("%d records of at least %d bytes in %d: %w", n, minLen, r.left(), ErrTruncated)
	}
	return int(n), nil
}

func (r *reader) addr() (netip.AddrPort, error) {
	var ip netip.Addr
	switch fam := r.u8(); fam {
	case addrFamilyNone:
	case addrFamily4:
		if v := r.take(4); v != nil {
			ip = netip.AddrFrom4([4]byte(v))
		}
	case addrFamily6:
		if v := r.take(16); v != nil {
			ip = netip.AddrFrom16([16]byte(v))
		}
	default:
		if r.err == nil {
			return netip.AddrPort{}, fmt.Errorf("address family %d: %w", fam, ErrCorrupt)
		}
	}
	port := r.u16()
	return netip.AddrPortFrom(ip, port), r.err
}

type decoder struct {
	r      reader // the body
	o      *DecodeOptions
	queued int // messages queued so far, all sinks
}

// sectionNames name the sections by tag.
var sectionNames = [numSections + 1]string{"", "port", "link", "sessions", "streams", "sources", "sinks", "replay", "extensions"}

// snapshot parses the body's sections.
func (d *decoder) snapshot() (*PortSnapshot, error) {
	s := new(PortSnapshot)
	for want := uint16(1); want <= numSections; want++ {
		name := sectionNames[want]
		tag, n := d.r.u16(), int(d.r.u32())
		if d.r.err != nil {
			return nil, fmt.Errorf("%s section: %w", name, d.r.err)
		}
		if tag != want {
			return nil, fmt.Errorf("section tag %d where %s (%d) belongs: %w", tag, name, want, ErrCorrupt)
		}
		content := d.r.take(n)
		if d.r.err != nil {
			return nil, fmt.Errorf("%s section of %d bytes: %w", name, n, d.r.err)
		}
		r := &reader{b: content}
		var err error
		switch want {
		case secPort:
			s.Port, err = r.str16("MaxNameLen", MaxNameLen)
		case secLink:
			err = d.link(r, &s.Link)
		case secSessions:
			s.Sessions, err = d.sessions(r)
		case secStreams:
			s.Streams, err = d.streams(r)
		case secSources:
			s.Sources, err = d.sources(r)
		case secSinks:
			s.Sinks, err = d.sinks(r)
		case secReplay:
			s.Replay, err = d.replay(r)
		case secExtensions:
			s.Extensions, err = d.extensions(r)
		}
		if err == nil {
			err = r.err
		}
		if err == nil && r.left() != 0 {
			err = fmt.Errorf("%d bytes left over: %w", r.left(), ErrCorrupt)
		}
		if err != nil {
			return nil, fmt.Errorf("%s section: %w", name, err)
		}
	}
	if d.r.left() != 0 {
		return nil, fmt.Errorf("%d bytes after the last section: %w", d.r.left(), ErrCorrupt)
	}
	return s, nil
}

func (d *decoder) link(r *reader, l *LinkState) error {
	v := r.take(linkLen)
	if r.err != nil {
		return r.err
	}
	if v[0]&^linkMACKnown != 0 {
		return fmt.Errorf("reserved flags %#x: %w", v[0], ErrCorrupt)
	}
	l.GuestMACKnown = v[0]&linkMACKnown != 0
	l.GuestMAC = [6]byte(v[1:7])
	l.ServiceMAC = [6]byte(v[7:13])
	l.ServicePort = le.Uint16(v[13:])
	l.MTU = le.Uint16(v[15:])
	l.Lease.Addr = [4]byte(v[17:21])
	l.Lease.PrefixBits = v[21]
	l.Lease.ServerID = [4]byte(v[22:26])
	l.Lease.Seconds = le.Uint32(v[26:])
	l.Lease.RemainingSeconds = le.Uint32(v[30:])
	return nil
}

func (d *decoder) sessions(r *reader) ([]Session, error) {
	n, err := r.count("MaxSessions", d.o.MaxSessions, minSessionLen)
	if err != nil || n == 0 {
		return nil, err
	}
	out := make([]Session, n)
	for i := range out {
		se := &out[i]
		se.ID = r.u32()
		se.LastSeen = int64(r.u64())
		if se.Addr, err = r.addr(); err != nil {
			return nil, fmt.Errorf("session %d: %w", i, err)
		}
	}
	return out, nil
}

func (d *decoder) streams(r *reader) ([]Stream, error) {
	n, err := r.count("MaxStreams", d.o.MaxStreams, minStreamLen)
	if err != nil || n == 0 {
		return nil, err
	}
	out := make([]Stream, n)
	for i := range out {
		st := &out[i]
		st.ID = r.u32()
		st.Session = r.u32()
		st.QoS = QoS{r.u8(), r.u8(), r.u8(), r.u8()}
		if st.Datapath, err = r.str16("MaxNameLen", MaxNameLen); err == nil {
			st.Warning, err = r.str16("MaxTextLen", MaxTextLen)
		}
		if err != nil {
			return nil, fmt.Errorf("stream %d: %w", st.ID, err)
		}
	}
	return out, nil
}

func (d *decoder) sources(r *reader) ([]Source, error) {
	n, err := r.count("MaxSources", d.o.MaxSources, sourceLen)
	if err != nil || n == 0 {
		return nil, err
	}
	out := make([]Source, n)
	for i := range out {
		out[i] = Source{ID: r.u32(), Stream: r.u32(), Channel: r.u32(),
			Global: r.u64(), NextSeq: r.u64(), Emitted: r.u64(), Full: r.u64()}
	}
	return out, r.err
}

func (d *decoder) sinks(r *reader) ([]Sink, error) {
	n, err := r.count("MaxSinks", d.o.MaxSinks, minSinkLen)
	if err != nil || n == 0 {
		return nil, err
	}
	out := make([]Sink, n)
	for i := range out {
		sk := &out[i]
		sk.ID, sk.Stream, sk.Channel = r.u32(), r.u32(), r.u32()
		sk.Delivered, sk.Dropped = r.u64(), r.u64()
		if sk.Queued, err = d.messages(r); err != nil {
			return nil, fmt.Errorf("sink %d: %w", sk.ID, err)
		}
	}
	return out, nil
}

func (d *decoder) messages(r *reader) ([]Message, error) {
	n, err := r.count("MaxMessagesPerSink", d.o.MaxMessagesPerSink, minMessageLen)
	if err != nil || n == 0 {
		return nil, err
	}
	if d.queued+n > d.o.MaxMessages {
		return nil, tooLarge("MaxMessages", uint64(d.o.MaxMessages), uint64(d.queued+n))
	}
	d.queued += n
	out := make([]Message, n)
	for i := range out {
		m := &out[i]
		m.Source, m.Seq = r.u64(), r.u64()
		if m.Payload, err = r.bytes(int(r.u32()), "MaxPayload", d.o.MaxPayload); err != nil {
			return nil, fmt.Errorf("message %d: %w", i, err)
		}
	}
	return out, nil
}

func (d *decoder) replay(r *reader) ([]ReplayEntry, error) {
	n, err := r.count("MaxReplay", d.o.MaxReplay, minReplayLen)
	if err != nil || n == 0 {
		return nil, err
	}
	out := make([]ReplayEntry, n)
	for i := range out {
		e := &out[i]
		if e.Src, err = r.addr(); err == nil {
			e.Session, e.Request, e.Type, e.At = r.u32(), r.u32(), r.u8(), int64(r.u64())
			e.Reply, err = r.bytes(int(r.u16()), "MaxReplyLen", MaxReplyLen)
		}
		if err != nil {
			return nil, fmt.Errorf("replay entry %d: %w", i, err)
		}
	}
	return out, nil
}

// extensions reads the extension records. Version 1 defines none (so
// Validate refuses any), but the records are parsed so that the error says
// which tag it was.
func (d *decoder) extensions(r *reader) ([]Extension, error) {
	n, err := r.count("extensions", 1<<16, minExtLen)
	if err != nil || n == 0 {
		return nil, err
	}
	out := make([]Extension, n)
	for i := range out {
		out[i].Tag = r.u16()
		if out[i].Data, err = r.bytes(int(r.u32()), "MaxBytes", d.o.MaxBytes); err != nil {
			return nil, fmt.Errorf("extension %d: %w", i, err)
		}
	}
	return out, nil
}
