package guestinit

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestConfigRoundTripsThroughCmdline(t *testing.T) {
	in := &Config{
		Net:     []NetConfig{{Name: "eth0", Addr: "169.254.77.2/24", MTU: 1500}, {Name: "eth1", DHCP: true}},
		Run:     []string{"/bin/ping", "-c", "3", "169.254.77.1"},
		Env:     []string{"A=b c"},
		Timeout: Duration(90 * time.Second),
	}
	arg, err := in.KernelArg()
	if err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(arg, " \"'") {
		t.Fatalf("kernel argument %q needs quoting", arg)
	}
	out, err := ParseCmdline("console=ttyS0 quiet " + arg + " panic=-1")
	if err != nil {
		t.Fatal(err)
	}
	if out.Net[0].Addr != in.Net[0].Addr || !out.Net[1].DHCP || out.Run[3] != "169.254.77.1" || out.Env[0] != "A=b c" || out.Timeout != in.Timeout {
		t.Fatalf("round trip: got %+v, want %+v", out, in)
	}
}

func TestParseCmdlineErrors(t *testing.T) {
	if _, err := ParseCmdline("console=ttyS0"); !errors.Is(err, ErrNoConfig) {
		t.Fatalf("missing config: got %v", err)
	}
	for _, bad := range []string{KernelParam + "=!!!", KernelParam + "=W10", KernelParam + "=bm90IGpzb24"} {
		if _, err := ParseCmdline(bad); err == nil || errors.Is(err, ErrNoConfig) {
			t.Errorf("%s: got %v, want a decode error", bad, err)
		}
	}
}

func TestConfigTooLongForCmdline(t *testing.T) {
	c := &Config{Run: []string{strings.Repeat("x", 2000)}}
	if _, err := c.KernelArg(); err == nil {
		t.Fatal("a 2000-byte argument fit on the kernel command line")
	}
}

func TestParseResult(t *testing.T) {
	for _, tc := range []struct {
		name, log, output string
		status            int
		err               error
		wantErr           bool
	}{
		{name: "ok", log: "[ 1.0] boot\r\n" + BeginMarker + "\r\nhello\r\nworld\r\n" + ExitMarker + `{"status":0}` + "\r\n", output: "hello\nworld\n"},
		{name: "failed", log: BeginMarker + "\n" + ExitMarker + `{"status":3}` + "\n", status: 3, wantErr: true},
		{name: "setup error without begin", log: ExitMarker + `{"status":-1,"error":"eth0: no such link"}` + "\n", status: -1, wantErr: true},
		{name: "migrated: no begin on this console", log: "seq=41\r\nseq=42\r\n" + ExitMarker + `{"status":0}` + "\n", output: "seq=41\nseq=42\n"},
		{name: "partial line", log: BeginMarker + "\n" + ExitMarker + `{"sta`, err: ErrNoResult},
		{name: "none", log: "kernel panic\n", err: ErrNoResult},
		{name: "marker inside a line", log: "echo " + ExitMarker + `{"status":0}` + "\n", err: ErrNoResult},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParseResult([]byte(tc.log))
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("got %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.Status != tc.status || r.Output != tc.output || (r.Err() != nil) != tc.wantErr {
				t.Fatalf("got %+v (err %v)", r, r.Err())
			}
		})
	}
}

func FuzzParseResult(f *testing.F) {
	f.Add([]byte(BeginMarker + "\nx\n" + ExitMarker + `{"status":1}` + "\n"))
	f.Add([]byte(ExitMarker + "{\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseResult(b)
		if err == nil && r == nil {
			t.Fatal("nil result without error")
		}
	})
}

func FuzzParseCmdline(f *testing.F) {
	c := &Config{Run: []string{"/bin/true"}, Net: []NetConfig{{Name: "eth0", DHCP: true}}}
	arg, _ := c.KernelArg()
	f.Add("console=ttyS0 " + arg)
	f.Add(KernelParam + "=")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCmdline(s)
		if err == nil && c == nil {
			t.Fatal("nil config without error")
		}
	})
}
