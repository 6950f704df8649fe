package benchvhost

import (
	"bytes"
	"strings"
	"testing"

	"github.com/veloce-io/veloce/internal/pkt"
)

// Periodic statistics as testpmd 22.11 prints them with --stats-period 1
// (the screen-clearing escape included), then a block cut short.
const periodicOutput = "txonly packet forwarding - ports=1 - cores=1 - streams=1\n" +
	"\x1b[2J\x1b[1;1H\nPort statistics ====================================\n" +
	`  ######################## NIC statistics for port 0  ########################
  RX-packets: 0          RX-missed: 0          RX-bytes:  0
  RX-errors: 0
  RX-nombuf:  0         
  TX-packets: 256        TX-errors: 0          TX-bytes:  16384

  Throughput (since last show)
  Rx-pps:            0          Rx-bps:            0
  Tx-pps:            0          Tx-bps:            0
  ############################################################################
` + "\x1b[2J\x1b[1;1H\nPort statistics ====================================\n" +
	`  ######################## NIC statistics for port 0  ########################
  RX-packets: 0          RX-missed: 0          RX-bytes:  0
  RX-errors: 0
  RX-nombuf:  0         
  TX-packets: 24577568   TX-errors: 0          TX-bytes:  1572964352

  Throughput (since last show)
  Rx-pps:            0          Rx-bps:            0
  Tx-pps:     12281887          Tx-bps:   6288326576
  ############################################################################
  ######################## NIC statistics for port 1  ########################
  RX-packets: 5          RX-missed: 0          RX-bytes:  320
  RX-errors: 0
  RX-nombuf:  0         
  TX-packets: 0          TX-errors: 0          TX-bytes:  0

  Throughput (since last show)
  Rx-pps:            5          Rx-bps:         2560
  Tx-pps:            0          Tx-bps:            0
  ############################################################################
` + "\x1b[2J\x1b[1;1H\nPort statistics ====================================\n" +
	`  ######################## NIC statistics for port 0  ########################
  RX-packets: 0          RX-missed: 0          RX-bytes:  0
  RX-errors: 0
  RX-nombuf:  0         
  TX-packets: 50000000   TX-errors: 0          TX-bytes:  3200000000

  Throughput (since last show)
  Rx-pps:            0          Rx-bps:            0
  Tx-pps:     25422432          Tx-bps:  13016285184
  ############################################################################
` + "\x1b[2J\x1b[1;1H\nPort statistics ====================================\n" +
	`  ######################## NIC statistics for port 0  ########################
  RX-packets: 0          RX-missed: 0          RX-bytes:  0
  RX-errors: 0
  RX-nombuf:  0         
  TX-packets: 75000000   TX-errors: 0          TX-bytes:  4800000000

  Throughput (since last show)
  Rx-pps:            0          Rx-bps:            0
  Tx-pps:     24999`

func TestParsePortSamples(t *testing.T) {
	got := ParsePortSamples([]byte(periodicOutput), 0)
	want := []PortSample{
		{Port: 0, TXPackets: 256},
		{Port: 0, TXPackets: 24577568, TXPPS: 12281887},
		{Port: 0, TXPackets: 50000000, TXPPS: 25422432},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d samples %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("sample %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	p1 := ParsePortSamples([]byte(periodicOutput), 1)
	if len(p1) != 1 || p1[0] != (PortSample{Port: 1, RXPackets: 5, RXPPS: 5}) {
		t.Errorf("port 1: %+v", p1)
	}
	if s := ParsePortSamples([]byte("EAL: Detected CPU lcores: 2\n"), 0); len(s) != 0 {
		t.Errorf("samples from output without statistics: %+v", s)
	}
}

func TestSteadyWindow(t *testing.T) {
	s := []PortSample{{TXPPS: 0}, {TXPPS: 5}, {TXPPS: 10}, {TXPPS: 20}, {TXPPS: 30}, {TXPPS: 40}}
	// First non-zero (5) is partial; one warmup (10) skipped; then 2.
	w, ok := SteadyWindow(s, TXRate, 1, 2)
	if !ok || len(w) != 2 || w[0].TXPPS != 20 || w[1].TXPPS != 30 {
		t.Fatalf("window %+v %v", w, ok)
	}
	if m := MeanRate(w, TXRate); m != 25 {
		t.Errorf("mean %v", m)
	}
	if _, ok := SteadyWindow(s, TXRate, 1, 4); ok {
		t.Error("window beyond the samples")
	}
	if _, ok := SteadyWindow(s[:1], TXRate, 0, 1); ok {
		t.Error("window without traffic")
	}
	if _, ok := SteadyWindow(s, RXRate, 0, 1); ok {
		t.Error("window on a rate that stays zero")
	}
}

func TestBuildUDPFrame(t *testing.T) {
	for _, size := range []int{42, 64, 512, 1500, 9000} {
		f, err := BuildUDPFrame(size)
		if err != nil {
			t.Fatalf("%d: %v", size, err)
		}
		if len(f) != size {
			t.Fatalf("%d: frame of %d bytes", size, len(f))
		}
		e, err := pkt.ParseEthernet(f)
		if err != nil || e.Type != pkt.EtherTypeIPv4 {
			t.Fatalf("%d: ethernet %+v %v", size, e, err)
		}
		ip, err := pkt.ParseIPv4(e.Payload)
		if err != nil || ip.TotalLen() != size-pkt.EthernetHeaderLen {
			t.Fatalf("%d: ipv4 %+v %v", size, ip, err)
		}
		u, err := pkt.ParseUDP(ip.Payload)
		if err != nil || !u.ChecksumValid(ip.Src, ip.Dst) || len(u.Payload) != size-frameHeaderLen {
			t.Fatalf("%d: udp %+v %v", size, u, err)
		}
	}
	for _, size := range []int{0, 41, 70000} {
		if _, err := BuildUDPFrame(size); err == nil {
			t.Errorf("size %d accepted", size)
		}
	}
}

func TestSourceWritesHeadersIntoItsOwnBuffer(t *testing.T) {
	f, _ := BuildUDPFrame(128)
	h := &sourceHandler{pin: pinner{cpu: -1}, frame: f}
	buf := make([]byte, 256)
	if n := h.FillRX(0, buf); n != 128 || !bytes.Equal(buf[:n], f) {
		t.Fatalf("first fill: %d", n)
	}
	// Headers are rewritten every time; the payload stays.
	for i := range buf[:frameHeaderLen] {
		buf[i] = 0
	}
	if n := h.FillRX(0, buf); n != 128 || !bytes.Equal(buf[:n], f) {
		t.Fatalf("second fill: %d", n)
	}
	// Another buffer gets the whole frame.
	other := make([]byte, 256)
	if n := h.FillRX(0, other); n != 128 || !bytes.Equal(other[:n], f) {
		t.Fatalf("fill into another buffer: %d", n)
	}
	if n := h.FillRX(0, make([]byte, 64)); n != 0 {
		t.Errorf("fill into a short buffer: %d", n)
	}
}

func TestParseSizes(t *testing.T) {
	s, err := ParseSizes("64, 512,1500")
	if err != nil || len(s) != 3 || s[0] != 64 || s[1] != 512 || s[2] != 1500 {
		t.Fatalf("%v %v", s, err)
	}
	for _, bad := range []string{"", "64,x", "10", "64k"} {
		if _, err := ParseSizes(bad); err == nil {
			t.Errorf("%q accepted", bad)
		} else if strings.TrimSpace(err.Error()) == "" {
			t.Errorf("%q: empty error", bad)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{9, 1, 5}, 5}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := Median(c.in); got != c.want {
			t.Errorf("Median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	xs := []float64{3, 1, 2}
	Median(xs)
	if xs[0] != 3 {
		t.Error("Median sorted its argument")
	}
}

// The output grows a byte at a time; the reader finds each block once,
// when it is complete.
func TestSampleReaderIncremental(t *testing.T) {
	out := []byte(periodicOutput)
	var r sampleReader
	total := 0
	for i := 0; i <= len(out); i++ {
		total += r.update(out[:i])
		if r.off > i {
			t.Fatalf("consumed %d of %d bytes", r.off, i)
		}
	}
	if total != 3 || len(r.samples) != 3 || r.samples[2].TXPPS != 25422432 {
		t.Fatalf("%d new samples: %+v", total, r.samples)
	}
}
