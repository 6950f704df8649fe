package backend

import (
	"encoding/binary"
	"net"
	"strings"
	"testing"
	"time"
)

// TestMalformedFrontendIsDroppedAloneAndPortRecovers: a frontend that
// sends garbage on one port is disconnected with a clear error; the port
// serves the next frontend, and the other port never notices.
func TestMalformedFrontendIsDroppedAloneAndPortRecovers(t *testing.T) {
	d, socks := startDaemon(t, "bad", "good")
	for _, tc := range []struct {
		name string
		msg  []byte
		want string
	}{
		{"unknown request", header(999, 0x1, 0), "unknown request"},
		{"absurd payload size", header(1, 0x1, 1<<30), "payload"},
		{"wrong version", header(1, 0x2, 0), "version"},
		{"SET_VRING_NUM with a short payload", append(header(8, 0x1, 4), 0, 0, 0, 0), "VHOST_USER_SET_VRING_NUM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prev := d.Ports()[0].LastError
			c, err := net.Dial("unix", socks[0])
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write(tc.msg); err != nil {
				t.Fatal(err)
			}
			// The daemon hangs up on this frontend.
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := c.Read(make([]byte, 64)); err == nil {
				t.Fatalf("daemon answered %d bytes instead of disconnecting", n)
			}
			var p PortInfo
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				if p = d.Ports()[0]; p.LastError != prev && p.State == "waiting" {
					break
				}
			}
			if !strings.Contains(strings.ToLower(p.LastError), strings.ToLower(tc.want)) {
				t.Errorf("last_error %q does not mention %q", p.LastError, tc.want)
			}
		})
	}
	// The bad port accepts a well-behaved frontend afterwards, and the
	// good one is untouched.
	for _, i := range []int{0, 1} {
		c, err := net.Dial("unix", socks[i])
		if err != nil {
			t.Fatal(err)
		}
		c.Write(header(1, 0x1, 0)) // GET_FEATURES
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		reply := make([]byte, 20)
		if _, err := c.Read(reply); err != nil {
			t.Fatalf("port %d after the bad frontends: %v", i, err)
		}
		if binary.LittleEndian.Uint32(reply[4:]) != 0x5 || binary.LittleEndian.Uint64(reply[12:])&(1<<32) == 0 {
			t.Errorf("port %d: GET_FEATURES reply %x", i, reply)
		}
		c.Close()
	}
	if p := d.Ports()[1]; p.LastError != "" {
		t.Errorf("good port saw an error: %s", p.LastError)
	}
}

// header is a vhost-user message header.
func header(req, flags, size uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, req)
	b = binary.LittleEndian.AppendUint32(b, flags)
	return binary.LittleEndian.AppendUint32(b, size)
}
