package fleet

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParseNode(t *testing.T) {
	good := Node{ID: 7, Boot: "1a2b", Addrs: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:7078")}, Channels: []uint32{1, 5, 9}}
	b, err := good.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	n, err := ParseNode(b)
	if err != nil {
		t.Fatal(err)
	}
	if n.ID != 7 || n.BootID() != 0x1a2b || !slices.Equal(n.Addrs, good.Addrs) || !slices.Equal(n.Channels, good.Channels) {
		t.Errorf("round trip: %+v, want %+v", n, good)
	}
	for _, tc := range []struct{ name, val, want string }{
		{"not json", `{`, "unexpected end"},
		{"no node", `{"boot":"1","addrs":[],"channels":[]}`, "no node id"},
		{"no boot", `{"node":1,"addrs":[],"channels":[]}`, "boot id"},
		{"zero boot", `{"node":1,"boot":"0"}`, "boot id"},
		{"upper-case boot", `{"node":1,"boot":"AB"}`, "boot id"},
		{"long boot", `{"node":1,"boot":"11111111111111111"}`, "boot id"},
		{"bad address", `{"node":1,"boot":"1","addrs":["10.0.0.1"]}`, "address"},
		{"port 0", `{"node":1,"boot":"1","addrs":["10.0.0.1:0"]}`, "address"},
		{"unspecified", `{"node":1,"boot":"1","addrs":["0.0.0.0:7"]}`, "address"},
		{"address not a string", `{"node":1,"boot":"1","addrs":[5]}`, "address"},
		{"unsorted", `{"node":1,"boot":"1","channels":[3,2]}`, "ascending"},
		{"duplicate", `{"node":1,"boot":"1","channels":[3,3]}`, "ascending"},
		{"negative channel", `{"node":1,"boot":"1","channels":[-1]}`, "cannot unmarshal"},
		{"too many addresses", `{"node":1,"boot":"1","addrs":["1.1.1.1:1"` + strings.Repeat(`,"1.1.1.1:1"`, MaxAddrs) + `]}`, "addresses"},
		{"too long", `{"node":1,"boot":"1","x":"` + strings.Repeat("a", MaxNodeLen) + `"}`, "bytes"},
		{"too many elements", `{"node":1,"boot":"1","channels":[0` + strings.Repeat(",0", MaxChannels+MaxAddrs+10) + `]}`, "list elements"},
	} {
		_, err := ParseNode([]byte(tc.val))
		if !errors.Is(err, ErrBadNode) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrBadNode saying %q", tc.name, err, tc.want)
		}
	}
}

func TestParseKey(t *testing.T) {
	for _, tc := range []struct {
		prefix, key string
		id          uint32
		ok          bool
	}{
		{"/veloce", "/veloce/nodes/12", 12, true},
		{"/veloce/", "/veloce/nodes/12", 12, true},
		{"/veloce", "/veloce/nodes/012", 0, false},
		{"/veloce", "/veloce/nodes/4294967296", 0, false},
		{"/veloce", "/veloce/other/1", 0, false},
		{"/veloce", "/veloce/nodes/", 0, false},
	} {
		id, ok := parseKey(tc.prefix, tc.key)
		if id != tc.id || ok != tc.ok {
			t.Errorf("parseKey(%q, %q) = %d, %v; want %d, %v", tc.prefix, tc.key, id, ok, tc.id, tc.ok)
		}
	}
	if k := nodeKey("/veloce/", 3); k != "/veloce/nodes/3" {
		t.Errorf("nodeKey: %q", k)
	}
}

// FuzzNode: ParseNode never panics, stays in its bounds, and what it
// accepts round-trips through Marshal.
func FuzzNode(f *testing.F) {
	f.Add([]byte(`{"node":7,"boot":"1a2b","addrs":["10.0.0.1:7078","[fd00::1]:7000"],"channels":[1,5,9]}`))
	f.Add([]byte(`{"node":0,"boot":"1","addrs":[],"channels":[]}`))
	f.Add([]byte(`{"node":1,"boot":"1","channels":[3,2]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := ParseNode(b)
		if err != nil {
			if !errors.Is(err, ErrBadNode) {
				t.Fatalf("error %v is not ErrBadNode", err)
			}
			return
		}
		if len(n.Channels) > MaxChannels || len(n.Addrs) > MaxAddrs || n.BootID() == 0 {
			t.Fatalf("out of bounds: %+v", n)
		}
		out, err := n.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		m, err := ParseNode(out)
		if err != nil {
			t.Fatalf("re-parse %s: %v", out, err)
		}
		if m.ID != n.ID || m.Boot != n.Boot || !slices.Equal(m.Addrs, n.Addrs) || !slices.Equal(m.Channels, n.Channels) {
			t.Fatalf("round trip %+v != %+v", m, n)
		}
	})
}
