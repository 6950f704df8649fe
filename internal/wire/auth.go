package wire

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
)

// # Authenticated mode
//
// Daemons of one fleet that share a key (MinKeyLen or more random bytes)
// put an AuthTrailer after the payload of every datagram and set
// FlagAuthenticated in its header:
//
//	[Header, 32 bytes][payload, PayloadLen bytes][trailer, 32 bytes]
//
//	trailer offset size field
//	        0      8    boot id of the sending daemon (random per start)
//	        8      8    counter: per sending daemon, strictly increasing
//	                    with every datagram it seals, across restarts
//	                    (seeded from the clock at start, see Sealer)
//	       16     16    tag: HMAC-SHA256(key, header || payload || boot
//	                    id || counter), the first 16 bytes
//
// PayloadLen does not count the trailer. The tag covers every header byte,
// the flag included, so a datagram cannot lose its trailer on the way: a
// receiver with a key drops datagrams without the flag (ErrNoAuth), and a
// receiver without a key rejects flagged ones (Parse sees bytes after the
// payload: ErrMalformed) — each side fails closed. A receiver keeps a
// ReplayWindow per sender over the counters, so a captured datagram is
// taken once at most, and never after it fell out of the window.
//
// The MAC is HMAC-SHA256 from the standard library, truncated to 128 bits
// (as RFC 4868 truncates it for IPsec): a standard construction, with
// SHA-NI or AVX2 assembly on amd64 and a FIPS 140 implementation, and no
// dependency outside the standard library. A Sealer or Opener holds one
// HMAC state and resets it per datagram: no allocation per packet. It
// authenticates; it does not encrypt.

// Authentication constants.
const (
	// AuthTrailerLen is the size of the trailer after an authenticated
	// datagram's payload.
	AuthTrailerLen = 32
	// AuthTagLen is the size of the tag that ends the trailer.
	AuthTagLen = 16
	// MinKeyLen is the shortest key ParseKey accepts, in bytes.
	MinKeyLen = 32
	// ReplayWindowSize is how many counters below the highest one a
	// ReplayWindow still admits (each once): room for the reordering of
	// several sending threads and datapaths.
	ReplayWindowSize = 1024
)

// AuthError is the error type of authentication. Its values are
// constants, so returning one does not allocate.
type AuthError uint8

// Authentication errors.
const (
	// ErrNoAuth means a datagram without FlagAuthenticated (or too short
	// for a trailer) where the receiver requires one: a daemon without
	// the key, or an injection.
	ErrNoAuth AuthError = iota + 1
	// ErrBadTag means the tag does not match: another key, or a datagram
	// changed on the way.
	ErrBadTag
	// ErrReplay means a counter the sender's ReplayWindow has admitted
	// before or that fell out of the window: a replayed datagram.
	ErrReplay
)

var authErrorStrings = [...]string{
	ErrNoAuth: "wire: datagram not authenticated",
	ErrBadTag: "wire: authentication tag mismatch",
	ErrReplay: "wire: replayed datagram",
}

// Error implements the error interface.
func (e AuthError) Error() string {
	if int(e) < len(authErrorStrings) && authErrorStrings[e] != "" {
		return authErrorStrings[e]
	}
	return "wire: unknown authentication error"
}

// Trailer is a decoded AuthTrailer, without its tag.
type Trailer struct {
	Boot    uint64 // the sender's boot id
	Counter uint64 // the sender's datagram counter
}

// IsAuthenticated reports whether b holds a Veloce header with
// FlagAuthenticated set. It validates nothing else; a receiver without a
// key uses it to count such datagrams apart.
func IsAuthenticated(b []byte) bool {
	return len(b) > offFlags && b[offMagic] == Magic0 && b[offMagic+1] == Magic1 && Flags(b[offFlags])&FlagAuthenticated != 0
}

// Sealer authenticates datagrams for one sending goroutine. It is not safe
// for concurrent use: give each goroutine its own (they may share the
// key, the boot id and the counter).
type Sealer struct {
	mac  hash.Hash
	boot uint64
	sum  [sha256.Size]byte
}

// NewSealer returns a Sealer for the daemon with boot id boot, keyed with
// key (see ParseKey). It copies nothing: key must not change afterwards.
func NewSealer(key []byte, boot uint64) *Sealer {
	return &Sealer{mac: hmac.New(sha256.New, key), boot: boot}
}

// Seal authenticates the datagram in b[:n] (a header and its payload, as
// Header.MarshalPacket writes them): it sets FlagAuthenticated in the
// header, writes the trailer with counter at b[n:n+AuthTrailerLen] and
// returns n+AuthTrailerLen. The counter must increase with every datagram
// the daemon seals (all its Sealers draw from one sequence). It returns
// ErrShortBuffer when b cannot hold the trailer and ErrNotVeloce or
// ErrTruncated when b[:n] is no header. It does not allocate.
func (s *Sealer) Seal(b []byte, n int, counter uint64) (int, error) {
	if n < HeaderLen || n > len(b) {
		return 0, ErrTruncated
	}
	if b[offMagic] != Magic0 || b[offMagic+1] != Magic1 {
		return 0, ErrNotVeloce
	}
	if len(b)-n < AuthTrailerLen {
		return 0, ErrShortBuffer
	}
	b[offFlags] |= byte(FlagAuthenticated)
	t := b[n : n+AuthTrailerLen]
	binary.LittleEndian.PutUint64(t[0:], s.boot)
	binary.LittleEndian.PutUint64(t[8:], counter)
	s.mac.Reset()
	s.mac.Write(b[:n+16])
	copy(t[16:], s.mac.Sum(s.sum[:0]))
	return n + AuthTrailerLen, nil
}

// Opener verifies authenticated datagrams for one receiving goroutine. It
// is not safe for concurrent use.
type Opener struct {
	mac hash.Hash
	sum [sha256.Size]byte
}

// NewOpener returns an Opener keyed with key. key must not change
// afterwards.
func NewOpener(key []byte) *Opener { return &Opener{mac: hmac.New(sha256.New, key)} }

// Open verifies the authenticated datagram b and returns its header, its
// payload (aliasing b) and its trailer. The tag is checked before anything
// else is trusted, in constant time. Errors, in this order:
//
//   - ErrNotVeloce: b does not start with the magic;
//   - ErrNoAuth: FlagAuthenticated is not set, or b is too short for a
//     header and a trailer;
//   - ErrBadTag: the tag does not match;
//   - Parse's errors for the datagram without its trailer.
//
// Open does not check the counter: that is the caller's ReplayWindow for
// the sender. It does not allocate.
func (o *Opener) Open(b []byte) (Header, []byte, Trailer, error) {
	if len(b) >= 2 && (b[offMagic] != Magic0 || b[offMagic+1] != Magic1) {
		return Header{}, nil, Trailer{}, ErrNotVeloce
	}
	if len(b) < HeaderLen+AuthTrailerLen || Flags(b[offFlags])&FlagAuthenticated == 0 {
		return Header{}, nil, Trailer{}, ErrNoAuth
	}
	n := len(b) - AuthTrailerLen
	o.mac.Reset()
	o.mac.Write(b[:n+16])
	if subtle.ConstantTimeCompare(o.mac.Sum(o.sum[:0])[:AuthTagLen], b[n+16:]) != 1 {
		return Header{}, nil, Trailer{}, ErrBadTag
	}
	h, payload, err := Parse(b[:n])
	if err != nil {
		return Header{}, nil, Trailer{}, err
	}
	return h, payload, Trailer{Boot: binary.LittleEndian.Uint64(b[n:]), Counter: binary.LittleEndian.Uint64(b[n+8:])}, nil
}

// ReplayWindow admits each counter of one sender at most once, and none
// that is ReplayWindowSize or more below the highest it admitted. Its zero
// value admits anything above zero. It is not safe for concurrent use:
// one goroutine owns it.
type ReplayWindow struct {
	top  uint64                        // highest counter admitted
	bits [ReplayWindowSize / 64]uint64 // bit c%ReplayWindowSize: counter c admitted
}

// Admit reports whether counter is fresh and records it. Call it only for
// datagrams whose tag verified.
func (w *ReplayWindow) Admit(counter uint64) bool {
	if counter > w.top {
		if d := counter - w.top; d >= ReplayWindowSize || w.top == 0 {
			clear(w.bits[:])
		} else {
			for c := w.top + 1; c < counter; c++ {
				w.bits[c/64%(ReplayWindowSize/64)] &^= 1 << (c % 64)
			}
		}
		w.top = counter
		w.bits[counter/64%(ReplayWindowSize/64)] |= 1 << (counter % 64)
		return true
	}
	if w.top-counter >= ReplayWindowSize {
		return false
	}
	word, bit := &w.bits[counter/64%(ReplayWindowSize/64)], uint64(1)<<(counter%64)
	if *word&bit != 0 {
		return false
	}
	*word |= bit
	return true
}

// Top returns the highest counter admitted, 0 before the first.
func (w *ReplayWindow) Top() uint64 { return w.top }

// ErrWeakKey is what KeyError matches with errors.Is.
var ErrWeakKey = weakKey{}

type weakKey struct{}

func (weakKey) Error() string { return "wire: weak key" }

// KeyError is ParseKey's error: why the key was refused.
type KeyError struct {
	Reason string
}

func (e *KeyError) Error() string { return "wire: key refused: " + e.Reason }

// Is makes errors.Is(err, ErrWeakKey) true.
func (e *KeyError) Is(target error) bool { return target == ErrWeakKey }

// ParseKey returns the fleet key that the contents of a key file hold:
// hexadecimal (an even number of hex digits, whitespace around them
// ignored) or raw bytes. It refuses, with a *KeyError, a key shorter than
// MinKeyLen bytes, a raw key that is printable text (a passphrase, not
// random bytes) and a key with few distinct byte values (zeros, a
// repeated pattern). These checks catch mistakes; they cannot prove a key
// random. Generate one with: head -c 32 /dev/urandom > FILE.
func ParseKey(data []byte) ([]byte, error) {
	key := data
	text := bytes.TrimSpace(data)
	if len(text) > 0 && len(text)%2 == 0 && isHex(text) {
		k := make([]byte, len(text)/2)
		if _, err := hex.Decode(k, text); err != nil {
			return nil, &KeyError{Reason: err.Error()}
		}
		key = k
	} else if isText(data) && len(data) > 0 {
		return nil, &KeyError{Reason: "the file holds text that is not hex (a passphrase?): use random bytes, e.g. head -c 32 /dev/urandom"}
	}
	if len(key) < MinKeyLen {
		return nil, &KeyError{Reason: fmt.Sprintf("%d bytes, need at least %d random bytes", len(key), MinKeyLen)}
	}
	var seen [256]bool
	distinct := 0
	for _, c := range key {
		if !seen[c] {
			seen[c] = true
			distinct++
		}
	}
	// 32 random bytes hold about 30 distinct values; fewer than 16 happens
	// by chance with a probability below 2^-60.
	if distinct < 16 {
		return nil, &KeyError{Reason: fmt.Sprintf("only %d distinct byte values: not random", distinct)}
	}
	return bytes.Clone(key), nil
}

func isHex(b []byte) bool {
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

func isText(b []byte) bool {
	for _, c := range b {
		if (c < 0x20 || c > 0x7e) && c != '\n' && c != '\r' && c != '\t' {
			return false
		}
	}
	return true
}
