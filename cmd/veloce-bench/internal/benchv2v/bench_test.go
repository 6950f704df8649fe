package benchv2v

import (
	"bytes"
	"encoding/json"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/veloce-io/veloce/backend"
	"github.com/veloce-io/veloce/internal/guestproto"
	"github.com/veloce-io/veloce/internal/netstack"
	"github.com/veloce-io/veloce/internal/pkt"
)

func TestParse(t *testing.T) {
	o, err := parse(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c := o.cfg; c.Rounds != 3 || c.Samples != 3 || c.Warmup != 2 || c.Size != 64 || c.RefSize != 64 ||
		c.GuestCPU != 0 || c.HostCPU != 1 || c.Testpmd != "dpdk-testpmd" || c.NoReference || o.output != "table" {
		t.Errorf("defaults: %+v, -o %q", c, o.output)
	}
	o, err = parse([]string{"--rounds", "5", "-o", "json", "--host-cpu", "-1", "--no-reference", "-q"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.Rounds != 5 || o.output != "json" || o.cfg.HostCPU != -1 || !o.cfg.NoReference || o.cfg.Log != io.Discard {
		t.Errorf("flags not taken: %+v, -o %q", o.cfg, o.output)
	}
	for _, bad := range [][]string{
		{"--rounds", "0"}, {"--samples", "0"}, {"--warmup", "-1"}, {"-o", "xml"}, {"extra"},
		{"--size", "0"}, {"--size", "5000"}, {"--ref-size", "20"}, {"--guest-cpu", "1"},
		{"--guest-cpu", "-1"}, {"--host-cpu", "-2"}, {"--nope"},
	} {
		if _, err := parse(bad, io.Discard); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestReport(t *testing.T) {
	res := &Result{VeloceMpps: 1.5, ReferenceMpps: 3, Ratio: 0.5, VeloceRounds: []float64{1.2, 1.5},
		ReferenceRounds: []float64{3, 2.9}, MessageSize: 64, EmitFrameSize: 130, ReferenceFrameSize: 64}
	var b bytes.Buffer
	if err := Report(&b, res, "table"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"veloce (64 B messages)", "1.500", "3.000", "1.200 1.500", "ratio veloce/dpdk: 0.500"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	if err := Report(&b, res, "json"); err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back["veloce_mpps"] != 1.5 || back["reference_mpps"] != 3.0 || back["ratio"] != 0.5 || back["emit_frame_size"] != 130.0 {
		t.Errorf("json: %s", b.String())
	}
	b.Reset()
	if err := Report(&b, &Result{VeloceMpps: 1, VeloceRounds: []float64{1}}, "table"); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "ratio") || strings.Contains(b.String(), "dpdk") {
		t.Errorf("no reference, yet:\n%s", b.String())
	}
	if Report(&b, res, "xml") == nil {
		t.Error("format xml accepted")
	}
}

// TestReceiverCountsDeliversWithoutAllocating: guest 2's per-frame work
// counts a Deliver for its sink, not one for another sink, not another
// message type, not a frame for another port; and allocates nothing.
func TestReceiverCountsDeliversWithoutAllocating(t *testing.T) {
	gmac := pkt.MAC{0x02, 0, 0, 0, 0, 2}
	host, err := netstack.New(netstack.Config{MAC: gmac, Addr: backend.DefaultGuestIP, TrustChecksums: true})
	if err != nil {
		t.Fatal(err)
	}
	g := &guest{host: host, srcPort: 40000}
	svc, err := netstack.New(netstack.Config{MAC: pkt.MAC(backend.DefaultServiceMAC), Addr: netip24(backend.DefaultServiceIP.As4())})
	if err != nil {
		t.Fatal(err)
	}
	frame := func(port uint16, put func([]byte) (int, error)) []byte {
		msg := make([]byte, 256)
		n, err := put(msg)
		if err != nil {
			t.Fatal(err)
		}
		f := make([]byte, 512)
		l, err := svc.PutUDPFrame(f, gmac, backend.DefaultGuestIP.Addr().As4(), backend.DefaultServicePort, port, msg[:n])
		if err != nil {
			t.Fatal(err)
		}
		return f[:l]
	}
	payload := make([]byte, 64)
	deliver := func(sink uint32) func([]byte) (int, error) {
		return func(b []byte) (int, error) { return guestproto.PutDeliver(b, 1, sink, 1, 0, 7, 9, payload) }
	}
	count := g.deliverCounter(1, 3, false)
	good := frame(40000, deliver(3))
	for name, f := range map[string][]byte{
		"other sink":  frame(40000, deliver(4)),
		"other port":  frame(40001, deliver(3)),
		"outcome":     frame(40000, func(b []byte) (int, error) { return guestproto.PutOutcome(b, 1, 3, 0, guestproto.StatusNoBuffers) }),
		"truncated":   good[:len(good)-10],
		"not a frame": {1, 2, 3},
	} {
		if count(f) {
			t.Errorf("%s counted", name)
		}
	}
	if !count(good) {
		t.Fatal("Deliver for the sink not counted")
	}
	if a := testing.AllocsPerRun(1000, func() { count(good) }); a != 0 {
		t.Errorf("%v allocations per frame", a)
	}
}

func netip24(a [4]byte) netip.Prefix { return netip.PrefixFrom(netip.AddrFrom4(a), 24) }
