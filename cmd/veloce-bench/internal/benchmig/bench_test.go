package benchmig

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"
)

func TestParseArgs(t *testing.T) {
	cfg, out, err := parseArgs(nil, io.Discard)
	if err != nil || out != "table" || cfg.Streams != 10 || cfg.Rate != 2000 || cfg.Migrations != 3 || cfg.Settle != 4*time.Second {
		t.Fatalf("defaults: %+v %q %v", cfg, out, err)
	}
	cfg, out, err = parseArgs([]string{"-o", "json", "--streams", "4", "--rate", "500", "--migrations", "2", "-q"}, io.Discard)
	if err != nil || out != "json" || cfg.Streams != 4 || cfg.Rate != 500 || cfg.Migrations != 2 || cfg.Log != io.Discard {
		t.Fatalf("flags: %+v %q %v", cfg, out, err)
	}
	for _, bad := range [][]string{
		{"-o", "yaml"}, {"--streams", "3"}, {"--streams", "0"}, {"--streams", "42"}, {"--rate", "0"},
		{"--migrations", "0"}, {"--settle", "-1s"}, {"--timeout", "10s"}, {"extra"}, {"--nope"},
	} {
		if _, _, err := parseArgs(bad, io.Discard); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{9, 1, 5}, 5}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func sample() *Report {
	r := &Report{Reference: Case{Name: "no streams"}, Streams: Case{Name: "streams", Streams: 10, Rate: 2000}}
	for i, d := range []float64{30, 40, 35} {
		r.Reference.Migrations = append(r.Reference.Migrations, Migration{From: "a", To: "b", Status: "completed", DowntimeMs: d, HandoffMs: 0.5, TotalMs: 3000 + float64(i)})
	}
	for i, d := range []float64{38, 41, 36, 90} {
		r.Streams.Migrations = append(r.Streams.Migrations, Migration{From: "b", To: "a", Status: "completed", DowntimeMs: d, HandoffMs: 2 + float64(i),
			TotalMs: 3100, StateBytes: 5000 + 100*i, Streams: 10, Queued: i, Forwarded: uint64(10 * i)})
	}
	// A failed migration counts in no median.
	r.Streams.Migrations = append(r.Streams.Migrations, Migration{From: "a", To: "b", Status: "failed", DowntimeMs: 1000, HandoffMs: 1000, StateBytes: 1})
	r.finish()
	return r
}

func TestSummary(t *testing.T) {
	r := sample()
	if r.Reference.DowntimeMs != 35 || r.Reference.BytesPerStream != 0 || r.Reference.StateBytes != 0 {
		t.Errorf("reference: %+v", r.Reference)
	}
	s := r.Streams
	if s.DowntimeMs != 39.5 || s.HandoffMs != 3.5 || s.TotalMs != 3100 || s.StateBytes != 5150 || s.BytesPerStream != 515 || s.Forwarded != 15 || s.Queued != 1.5 {
		t.Errorf("streams: %+v", s)
	}
	if r.ExtraDowntimeMs != 4.5 || r.ExtraHandoffMs != 3 || !r.Met || r.AimMs != 5 {
		t.Errorf("report: extra %v / %v, met %v", r.ExtraDowntimeMs, r.ExtraHandoffMs, r.Met)
	}
	r.Streams.Migrations[0].DowntimeMs = 40
	r.finish()
	if r.Met || r.ExtraDowntimeMs != 5.5 {
		t.Errorf("a 5.5 ms difference met the aim: %+v", r)
	}
	if (&Report{}).Met {
		t.Error("an empty report met the aim")
	}
}

func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	if err := WriteTable(&b, sample()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"10 streams at 2000 msg/s vs no streams", "downtime ms", "vs no streams ms", "B/stream", "queued",
		"+4.50", "515", "Streams add +4.50 ms of downtime (hand-off +3.00 ms); aim at most 5 ms more: met.", "failed"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	lines := strings.Split(out, "\n")
	if !strings.HasPrefix(strings.TrimSpace(lines[3]), "no streams") || !strings.HasPrefix(strings.TrimSpace(lines[4]), "streams") {
		t.Errorf("rows out of place:\n%s", out)
	}
}

func TestJSONFields(t *testing.T) {
	b, err := json.Marshal(sample())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(b, &m)
	for _, k := range []string{"reference", "streams", "extra_downtime_ms", "extra_handoff_ms", "aim_met"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, b)
		}
	}
	s := m["streams"].(map[string]any)
	for _, k := range []string{"downtime_ms", "handoff_ms", "total_time_ms", "state_bytes_per_stream", "messages_forwarded", "migrations"} {
		if _, ok := s[k]; !ok {
			t.Errorf("streams case lacks %q", k)
		}
	}
}

// velocectl migrate's -o json summary decodes into a Migration.
func TestMigrationDecodesVelocectlSummary(t *testing.T) {
	var m Migration
	in := `{"port":"vm","status":"completed","total_time_ms":2500.5,"downtime_ms":41,"downtime_reported":true,"state_bytes":6000,
		"sessions":10,"streams":10,"queued_messages":3,"messages_forwarded":7,"handoff_ms":1.25,"destination_port":"vm"}`
	if err := json.Unmarshal([]byte(in), &m); err != nil {
		t.Fatal(err)
	}
	if m.Status != "completed" || m.TotalMs != 2500.5 || m.DowntimeMs != 41 || m.StateBytes != 6000 || m.Streams != 10 || m.Forwarded != 7 || m.HandoffMs != 1.25 || m.Queued != 3 {
		t.Errorf("%+v", m)
	}
}

func TestGuestScript(t *testing.T) {
	s := guestScript(4, 2000)
	if !strings.Contains(s, "$(seq 61 62); do /bin/veloce-perf sink --channel $c") || !strings.Contains(s, "$(seq 21 22); do /bin/veloce-perf source --rate 2000") || !strings.Contains(s, guestUp) {
		t.Errorf("%s", s)
	}
	if s := guestScript(0, 2000); strings.Contains(s, "veloce-perf") || !strings.Contains(s, guestUp) {
		t.Errorf("no streams: %s", s)
	}
}
