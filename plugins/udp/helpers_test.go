package udp

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/veloce-io/veloce/internal/testutil"
	"github.com/veloce-io/veloce/internal/wire"
)

// newPlugin opens a Plugin on listen and closes it when the test ends.
func newPlugin(t testing.TB, listen string, opts Options) *Plugin {
	t.Helper()
	opts.Listen = netip.MustParseAddrPort(listen)
	p, err := New(opts)
	if err != nil {
		t.Fatalf("New(%s): %v", listen, err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

// fillMessage writes a data message of total size n (at least
// wire.HeaderLen) into b: header for (src, seq) and a payload whose bytes
// derive from src and seq, so checkMessage can verify it.
func fillMessage(t testing.TB, b []byte, src wire.SourceID, seq uint64, n int) int {
	t.Helper()
	h := wire.Header{Kind: wire.KindData, FragCount: 1, Channel: 7, Source: src, Seq: seq}
	payload := b[wire.HeaderLen:n]
	for i := range payload {
		payload[i] = byte(uint64(i) + seq*31 + uint64(src))
	}
	m, err := h.MarshalPacket(b, payload)
	if err != nil || m != n {
		t.Fatalf("MarshalPacket = %d, %v", m, err)
	}
	return m
}

// checkMessage parses a datagram made by fillMessage and returns its
// header, or an error describing what is wrong with it.
func checkMessage(b []byte) (wire.Header, error) {
	h, payload, err := wire.Parse(b)
	if err != nil {
		return h, fmt.Errorf("parse %d bytes: %w", len(b), err)
	}
	for i, c := range payload {
		if want := byte(uint64(i) + h.Seq*31 + uint64(h.Source)); c != want {
			return h, fmt.Errorf("source %#x seq %d: payload byte %d is %#x, want %#x", uint64(h.Source), h.Seq, i, c, want)
		}
	}
	return h, nil
}

// recvAll receives until want datagrams have arrived or nothing arrives for
// a while, and returns copies of them.
func recvAll(t testing.TB, p *Plugin, want int) []wire.Packet {
	t.Helper()
	pkts := make([]wire.Packet, 64)
	for i := range pkts {
		pkts[i].Buf = make([]byte, 65536)
	}
	var got []wire.Packet
	idle := 0
	for len(got) < want && idle < 20 {
		n, err := p.RecvBatch(pkts, 250*time.Millisecond)
		if err != nil {
			t.Fatalf("RecvBatch: %v", err)
		}
		if n == 0 {
			idle++
		}
		for _, r := range pkts[:n] {
			got = append(got, wire.Packet{Addr: r.Addr, Buf: bytes.Clone(r.Buf[:r.N]), N: r.N})
		}
	}
	if len(got) != want {
		t.Fatalf("received %d datagrams, want %d", len(got), want)
	}
	return got
}

// netns is one of the test's hosts (internal/testutil.Netns).
type netns struct{ *testutil.Netns }

func newNetns(t *testing.T) netns { return netns{testutil.NewNetns(t)} }

// newPlugin opens a Plugin whose socket lives in the namespace.
func (n netns) newPlugin(t *testing.T, listen string, opts Options) *Plugin {
	t.Helper()
	var p *Plugin
	err := n.Do(func() (err error) {
		opts.Listen = netip.MustParseAddrPort(listen)
		p, err = New(opts)
		return err
	})
	if err != nil {
		if p != nil {
			p.Close()
		}
		t.Fatalf("New(%s) in %s: %v", listen, n.Name, err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}
