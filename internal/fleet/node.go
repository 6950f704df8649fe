package fleet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Bounds of a Node value read from the store.
const (
	// MaxNodeLen is the largest value ParseNode reads (a node with
	// MaxChannels channels of 10 digits fits).
	MaxNodeLen = 1 << 20
	// MaxChannels is the most channels one node may list (the datagram
	// directory's bound, backend's maxDirectoryChannels).
	MaxChannels = 1 << 16
	// MaxAddrs is the most datapath addresses one node may list.
	MaxAddrs = 16
)

// ErrBadNode is returned (wrapped) by ParseNode for a value that is not a
// valid Node.
var ErrBadNode = errors.New("bad fleet node value")

// Node is one daemon's entry in the directory, its key's value.
type Node struct {
	// ID is the daemon's node id (backend.RuntimeOptions.NodeID), also
	// the last element of its key.
	ID uint32 `json:"node"`
	// Boot is the daemon's boot id, in hex: new at every start.
	Boot string `json:"boot"`
	// Addrs are its datapaths' addresses (ip:port), the default
	// datapath's first.
	Addrs []netip.AddrPort `json:"addrs"`
	// Channels it has sinks for that peers may reach, sorted, each once.
	Channels []uint32 `json:"channels"`
}

// BootID returns n.Boot as a number (ParseNode checked it).
func (n Node) BootID() uint64 {
	b, _ := strconv.ParseUint(n.Boot, 16, 64)
	return b
}

// Marshal encodes n as its key's value.
func (n Node) Marshal() ([]byte, error) {
	if n.Channels == nil {
		n.Channels = []uint32{}
	}
	if n.Addrs == nil {
		n.Addrs = []netip.AddrPort{}
	}
	return json.Marshal(n)
}

// ParseNode decodes a key's value: at most MaxNodeLen bytes, one JSON
// object with a non-zero boot id in hex, at most MaxAddrs valid addresses
// and at most MaxChannels channels in strictly ascending order. It
// returns ErrBadNode (wrapped, saying why) for anything else.
func ParseNode(b []byte) (Node, error) {
	var n Node
	if len(b) > MaxNodeLen {
		return n, fmt.Errorf("%w: %d bytes, more than %d", ErrBadNode, len(b), MaxNodeLen)
	}
	// Count before decoding, so a value cannot make the decoder allocate
	// more than the bounds allow (commas bound both lists).
	if c := bytes.Count(b, []byte{','}); c > MaxChannels+MaxAddrs+8 {
		return n, fmt.Errorf("%w: %d list elements", ErrBadNode, c)
	}
	var raw struct {
		ID       *uint32           `json:"node"`
		Boot     string            `json:"boot"`
		Addrs    []json.RawMessage `json:"addrs"`
		Channels []uint32          `json:"channels"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return n, fmt.Errorf("%w: %v", ErrBadNode, err)
	}
	if raw.ID == nil {
		return n, fmt.Errorf("%w: no node id", ErrBadNode)
	}
	n.ID = *raw.ID
	if len(raw.Boot) == 0 || len(raw.Boot) > 16 {
		return n, fmt.Errorf("%w: boot id %q", ErrBadNode, raw.Boot)
	}
	if boot, err := strconv.ParseUint(raw.Boot, 16, 64); err != nil || boot == 0 || strconv.FormatUint(boot, 16) != raw.Boot {
		return n, fmt.Errorf("%w: boot id %q is not lower-case hex without leading zeros", ErrBadNode, raw.Boot)
	}
	n.Boot = raw.Boot
	if len(raw.Addrs) > MaxAddrs {
		return n, fmt.Errorf("%w: %d addresses, more than %d", ErrBadNode, len(raw.Addrs), MaxAddrs)
	}
	n.Addrs = make([]netip.AddrPort, 0, len(raw.Addrs))
	for _, r := range raw.Addrs {
		var s string
		if err := json.Unmarshal(r, &s); err != nil {
			return n, fmt.Errorf("%w: address %s: %v", ErrBadNode, r, err)
		}
		a, err := netip.ParseAddrPort(s)
		if err != nil || !a.IsValid() || a.Port() == 0 || a.Addr().IsUnspecified() {
			return n, fmt.Errorf("%w: address %q", ErrBadNode, s)
		}
		n.Addrs = append(n.Addrs, a)
	}
	if len(raw.Channels) > MaxChannels {
		return n, fmt.Errorf("%w: %d channels, more than %d", ErrBadNode, len(raw.Channels), MaxChannels)
	}
	for i := 1; i < len(raw.Channels); i++ {
		if raw.Channels[i] <= raw.Channels[i-1] {
			return n, fmt.Errorf("%w: channels not in ascending order at %d", ErrBadNode, i)
		}
	}
	n.Channels = raw.Channels
	if n.Channels == nil {
		n.Channels = []uint32{}
	}
	return n, nil
}

// nodeKey returns the key of node id under prefix.
func nodeKey(prefix string, id uint32) string {
	return nodesPrefix(prefix) + strconv.FormatUint(uint64(id), 10)
}

// nodesPrefix returns the prefix all node keys share.
func nodesPrefix(prefix string) string { return strings.TrimRight(prefix, "/") + "/nodes/" }

// parseKey returns the node id a key under prefix names.
func parseKey(prefix, key string) (uint32, bool) {
	rest, ok := strings.CutPrefix(key, nodesPrefix(prefix))
	if !ok {
		return 0, false
	}
	id, err := strconv.ParseUint(rest, 10, 32)
	if err != nil || strconv.FormatUint(id, 10) != rest {
		return 0, false
	}
	return uint32(id), true
}
