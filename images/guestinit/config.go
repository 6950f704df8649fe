// Package guestinit is the /init of Veloce's guest images, and the contract
// between it and the host: the configuration the host puts on the kernel
// command line, and the lines /init prints on the serial console that the
// host parses for the program's output and exit status.
//
// The guest side (Main, Linux only) mounts /proc, /sys, /dev, /tmp and
// /run, loads the kernel modules listed in the initramfs (decompressing
// .ko.xz), brings interfaces up and configures them (DHCP or static), runs
// the configured program with its output on the console, prints a result
// line and powers the machine off.
//
// The host side encodes a Config with Config.KernelArg and parses the
// serial log with ParseResult. The console protocol is line based:
//
//	==veloce== begin
//	... the program's stdout and stderr ...
//	==veloce== exit {"status":0}
//
// Kernel messages may interleave; keep the kernel quiet (loglevel) for
// clean output.
package guestinit

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// KernelParam is the kernel command-line parameter carrying the Config.
const KernelParam = "veloce.cfg"

// The console markers around the program's output.
const (
	BeginMarker = "==veloce== begin"
	ExitMarker  = "==veloce== exit "
)

// Config says what /init does after the system is up. It travels on the
// kernel command line as base64url(JSON), so keep it small (the x86 command
// line holds 2048 bytes).
type Config struct {
	// Net lists the interfaces to configure; unlisted interfaces stay down
	// (lo is always up).
	Net []NetConfig `json:"net,omitempty"`
	// Run is the program and its arguments. Empty means an interactive
	// /bin/sh on the console when busybox is present.
	Run []string `json:"run,omitempty"`
	// Env is added to the program's environment (KEY=value).
	Env []string `json:"env,omitempty"`
	// Dir is the program's working directory; default /.
	Dir string `json:"dir,omitempty"`
	// Timeout kills the program after this long; zero means no limit.
	Timeout Duration `json:"timeout,omitempty"`
	// Modules are loaded in addition to those listed in the initramfs.
	Modules []string `json:"modules,omitempty"`
	// Verbose lets kernel messages through to the console and logs each
	// step of /init.
	Verbose bool `json:"verbose,omitempty"`
}

// NetConfig configures one interface.
type NetConfig struct {
	// Name is the interface name, e.g. eth0.
	Name string `json:"name"`
	// DHCP asks a DHCP server for the address.
	DHCP bool `json:"dhcp,omitempty"`
	// Addr is a static address in CIDR form, e.g. 169.254.77.2/24.
	Addr string `json:"addr,omitempty"`
	// MTU sets the interface MTU when non-zero.
	MTU int `json:"mtu,omitempty"`
	// Wait is how long to wait for the interface to appear after the
	// modules are loaded; default 20s (TCG guests are slow).
	Wait Duration `json:"wait,omitempty"`
}

// Duration is a time.Duration that encodes as a Go duration string.
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

// KernelArg returns "veloce.cfg=<base64url JSON>" for the kernel command line.
func (c *Config) KernelArg() (string, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	arg := KernelParam + "=" + base64.RawURLEncoding.EncodeToString(b)
	if len(arg) > 1800 {
		return "", fmt.Errorf("guest config is %d bytes on the kernel command line; keep it under 1800", len(arg))
	}
	return arg, nil
}

// ErrNoConfig means the kernel command line carries no Config.
var ErrNoConfig = errors.New("no " + KernelParam + " on the kernel command line")

// ParseCmdline finds and decodes the Config in a kernel command line.
func ParseCmdline(cmdline string) (*Config, error) {
	for _, f := range strings.Fields(cmdline) {
		v, ok := strings.CutPrefix(f, KernelParam+"=")
		if !ok {
			continue
		}
		raw, err := base64.RawURLEncoding.DecodeString(v)
		if err != nil {
			return nil, fmt.Errorf("decode %s: %w", KernelParam, err)
		}
		var c Config
		if err := json.Unmarshal(raw, &c); err != nil {
			return nil, fmt.Errorf("decode %s: %w", KernelParam, err)
		}
		return &c, nil
	}
	return nil, ErrNoConfig
}

// Result is how the program ended, as /init reports it.
type Result struct {
	// Status is the exit status; -1 when the program did not run or was
	// killed by a signal.
	Status int `json:"status"`
	// Signal names the signal that killed the program, if one did.
	Signal string `json:"signal,omitempty"`
	// Error says why the program did not run or did not finish (set-up
	// failure, timeout).
	Error string `json:"error,omitempty"`
	// Output is what the program printed (host side only: the console
	// lines between the markers).
	Output string `json:"-"`
}

// Err returns nil for a zero exit status, else an error describing the end.
func (r *Result) Err() error {
	switch {
	case r.Error != "":
		return fmt.Errorf("guest: %s", r.Error)
	case r.Signal != "":
		return fmt.Errorf("guest program killed by %s", r.Signal)
	case r.Status != 0:
		return fmt.Errorf("guest program exited with status %d", r.Status)
	}
	return nil
}

// ExitLine formats the result line /init prints.
func (r *Result) ExitLine() string {
	b, _ := json.Marshal(r)
	return ExitMarker + string(b)
}

// ErrNoResult means the console log has no result line (yet).
var ErrNoResult = errors.New("no result line on the guest console")

// ParseResult extracts the program's output and result from a console log:
// the lines between the last begin marker and the result line, or every
// line before the result line when there is no begin marker. Carriage
// returns (the serial line discipline adds them) are removed.
func ParseResult(log []byte) (*Result, error) {
	log = bytes.ReplaceAll(log, []byte("\r"), nil)
	end := bytes.LastIndex(log, []byte(ExitMarker))
	if end < 0 || (end > 0 && log[end-1] != '\n') {
		return nil, ErrNoResult
	}
	line := log[end+len(ExitMarker):]
	nl := bytes.IndexByte(line, '\n')
	if nl < 0 {
		return nil, ErrNoResult // the line is not complete yet
	}
	var r Result
	if err := json.Unmarshal(line[:nl], &r); err != nil {
		return nil, fmt.Errorf("parse guest result %q: %w", line[:nl], err)
	}
	if begin := bytes.LastIndex(log[:end], []byte(BeginMarker+"\n")); begin >= 0 {
		r.Output = string(log[begin+len(BeginMarker)+1 : end])
	} else {
		// No begin marker: the program failed to start, or this console
		// belongs to the destination of a live migration, which joined
		// the program halfway. Everything shown belongs to the output.
		r.Output = string(log[:end])
	}
	return &r, nil
}
