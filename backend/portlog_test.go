package backend

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/veloce-io/veloce/internal/pkt"
	vt "github.com/veloce-io/veloce/vhostuser/vhostusertest"
)

// logRecord is a captured slog record with its attributes (With's
// included) as strings.
type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

// captureLog is a slog.Handler that keeps every record.
type captureLog struct {
	mu      *sync.Mutex
	records *[]logRecord
	attrs   []slog.Attr
}

func newCaptureLog() *captureLog {
	return &captureLog{mu: new(sync.Mutex), records: new([]logRecord)}
}

func (c *captureLog) Enabled(context.Context, slog.Level) bool { return true }
func (c *captureLog) Handle(_ context.Context, r slog.Record) error {
	rec := logRecord{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	for _, a := range c.attrs {
		rec.attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool { rec.attrs[a.Key] = a.Value.String(); return true })
	c.mu.Lock()
	*c.records = append(*c.records, rec)
	c.mu.Unlock()
	return nil
}
func (c *captureLog) WithAttrs(as []slog.Attr) slog.Handler {
	return &captureLog{mu: c.mu, records: c.records, attrs: append(append([]slog.Attr(nil), c.attrs...), as...)}
}
func (c *captureLog) WithGroup(string) slog.Handler { return c }

// find returns the records with message msg.
func (c *captureLog) find(msg string) []logRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []logRecord
	for _, r := range *c.records {
		if r.msg == msg {
			out = append(out, r)
		}
	}
	return out
}

// wait waits (up to a minute: slow machines) for a record with message
// msg and returns the first.
func (c *captureLog) wait(t *testing.T, msg string) logRecord {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if rs := c.find(msg); len(rs) > 0 {
			return rs[0]
		}
	}
	t.Fatalf("no %q logged; records:\n%s", msg, c.dump())
	return logRecord{}
}

func (c *captureLog) dump() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	for _, r := range *c.records {
		fmt.Fprintf(&b, "  %v %q %v\n", r.level, r.msg, r.attrs)
	}
	return b.String()
}

// sendFrame puts an Ethernet frame on the peer's TX ring and kicks it.
func sendFrame(t *testing.T, p *vt.NetPeer, frame []byte) {
	t.Helper()
	p.TX.AddChain(vt.Buf{Data: append(make([]byte, vt.NetHeaderLen), frame...)})
	if err := p.KickTX(); err != nil {
		t.Fatal(err)
	}
}

// TestPortLogsWhatAnOperatorRunsBy: a frontend connects, negotiates,
// brings its driver up, takes a DHCP lease, renews it, and goes away;
// each event is logged once at info (renewals at debug), with the port's
// name and the guest's address in the fields.
func TestPortLogsWhatAnOperatorRunsBy(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "vm0.sock")
	logs := newCaptureLog()
	d, err := NewDaemon(DaemonOptions{ControlSocket: filepath.Join(dir, "control.sock"), Logger: slog.New(logs),
		Ports: []PortOptions{{Name: "vm0", Socket: sock}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if r := logs.wait(t, "port up"); r.attrs["port"] != "vm0" || r.attrs["socket"] != sock {
		t.Errorf("port up: %v", r.attrs)
	}

	peer, err := vt.NewNetPeer(t, sock, vt.NetPeerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r := logs.wait(t, "frontend connected"); r.attrs["port"] != "vm0" || r.attrs["mode"] != "server" {
		t.Errorf("frontend connected: %v", r.attrs)
	}
	if err := peer.PostRX(16); err != nil {
		t.Fatal(err)
	}
	up := logs.wait(t, "guest link up")
	if up.level != slog.LevelInfo || up.attrs["port"] != "vm0" || up.attrs["guest_ip"] != "169.254.77.2" {
		t.Errorf("guest link up: %v %v", up.level, up.attrs)
	}
	// NetPeer acks VERSION_1, PROTOCOL_FEATURES, INDIRECT_DESC and
	// REPLY_ACK, LOG_SHMFD, CONFIGURE_MEM_SLOTS, INFLIGHT_SHMFD.
	for _, f := range []string{"VERSION_1", "PROTOCOL_FEATURES", "RING_INDIRECT_DESC"} {
		if !strings.Contains(","+up.attrs["features"]+",", ","+f+",") {
			t.Errorf("features %q lack %s", up.attrs["features"], f)
		}
	}
	for _, f := range []string{"REPLY_ACK", "LOG_SHMFD", "CONFIGURE_MEM_SLOTS", "INFLIGHT_SHMFD"} {
		if !strings.Contains(","+up.attrs["protocol_features"]+",", ","+f+",") {
			t.Errorf("protocol features %q lack %s", up.attrs["protocol_features"], f)
		}
	}

	// SELECTING, then RENEWING (udhcpc's messages, linkpeer_test.go).
	sendFrame(t, peer, udpFrame(pkt.BroadcastMAC, [4]byte{}, tBcastIP, 68, 67, udhcpcMessage(dhcpv4.MessageTypeRequest, 1, [4]byte{}, true,
		optIP(50, tGuestIP), optIP(54, tServiceIP))))
	lease := logs.wait(t, "DHCP lease")
	if lease.level != slog.LevelInfo || lease.attrs["port"] != "vm0" || lease.attrs["guest_mac"] != tGuestMAC.HardwareAddr().String() || lease.attrs["guest_ip"] != "169.254.77.2" {
		t.Errorf("DHCP lease: %v %v", lease.level, lease.attrs)
	}
	sendFrame(t, peer, udpFrame(tServiceMAC, tGuestIP, tServiceIP, 68, 67, udhcpcMessage(dhcpv4.MessageTypeRequest, 2, tGuestIP, false)))
	if r := logs.wait(t, "DHCP lease renewed"); r.level != slog.LevelDebug {
		t.Errorf("renewal logged at %v, want debug", r.level)
	}
	// A request for another address is refused, with a hint.
	sendFrame(t, peer, udpFrame(pkt.BroadcastMAC, [4]byte{}, tBcastIP, 68, 67, udhcpcMessage(dhcpv4.MessageTypeRequest, 3, [4]byte{}, true,
		optIP(50, [4]byte{169, 254, 77, 9}))))
	if r := logs.wait(t, "DHCP request refused"); r.level != slog.LevelWarn || r.attrs["requested_ip"] != "169.254.77.9" || r.attrs["hint"] == "" {
		t.Errorf("refusal: %v %v", r.level, r.attrs)
	}

	peer.C.Close()
	if r := logs.wait(t, "frontend disconnected"); r.attrs["port"] != "vm0" {
		t.Errorf("frontend disconnected: %v", r.attrs)
	}
	for msg, want := range map[string]int{"port up": 1, "frontend connected": 1, "guest link up": 1, "DHCP lease": 1, "frontend disconnected": 1} {
		if n := len(logs.find(msg)); n != want {
			t.Errorf("%q logged %d times, want %d:\n%s", msg, n, want, logs.dump())
		}
	}
	if testing.Verbose() {
		t.Logf("records:\n%s", logs.dump())
	}
}

// TestPortUpOnlyAfterBind: a port whose socket cannot be created fails
// the daemon's start and is never logged as up.
func TestPortUpOnlyAfterBind(t *testing.T) {
	dir := t.TempDir()
	logs := newCaptureLog()
	d, err := NewDaemon(DaemonOptions{ControlSocket: filepath.Join(dir, "control.sock"), Logger: slog.New(logs),
		Ports: []PortOptions{{Name: "vm0", Socket: filepath.Join(dir, "missing", "vm0.sock")}}})
	if err != nil {
		t.Fatal(err)
	}
	err = d.Start(context.Background())
	if err == nil {
		d.Close()
		t.Fatal("Start succeeded with a socket in a missing directory")
	}
	if !strings.Contains(err.Error(), "vm0") {
		t.Errorf("error %q does not name the port", err)
	}
	if rs := logs.find("port up"); len(rs) != 0 {
		t.Errorf("port up logged for a port that never listened: %v", rs)
	}
}

// TestClientPortLogsWaitingAndBrokenFrontend: a client-mode port waits
// for its frontend (logged once, with what to do), connects when the
// frontend listens, and a frontend that breaks the protocol is logged as
// a warning with the error and a hint.
func TestClientPortLogsWaitingAndBrokenFrontend(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "vm0.sock")
	logs := newCaptureLog()
	d, err := NewDaemon(DaemonOptions{ControlSocket: filepath.Join(dir, "control.sock"), Logger: slog.New(logs),
		Ports: []PortOptions{{Name: "vm0", Socket: sock, Client: true}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if r := logs.wait(t, "waiting for the frontend to listen"); r.attrs["port"] != "vm0" || !strings.Contains(r.attrs["hint"], "server=on") {
		t.Errorf("waiting: %v", r.attrs)
	}
	// The frontend listens (QEMU server=on); the daemon connects.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ln.SetDeadline(time.Now().Add(time.Minute))
	c, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	if r := logs.wait(t, "frontend connected"); r.attrs["mode"] != "client" || r.attrs["port"] != "vm0" {
		t.Errorf("connected: %v", r.attrs)
	}
	// A message header claiming a payload larger than vhost-user allows.
	if _, err := c.Write([]byte{1, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f}); err != nil {
		t.Fatal(err)
	}
	r := logs.wait(t, "frontend disconnected")
	if r.level != slog.LevelWarn || r.attrs["err"] == "" || !strings.Contains(r.attrs["hint"], "reconnect") {
		t.Errorf("broken frontend: %v %v", r.level, r.attrs)
	}
	c.Close()
	if n := len(logs.find("waiting for the frontend to listen")); n != 1 {
		t.Errorf("waiting logged %d times before the first connection, want 1:\n%s", n, logs.dump())
	}
}
