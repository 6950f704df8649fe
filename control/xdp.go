package control

import (
	"encoding/json"
	"fmt"
)

// DatapathXDP is the AF_XDP datapath's name in DatapathInfo.Name.
const DatapathXDP = "xdp"

// XDPStats are the AF_XDP datapath's mode and counters: DatapathInfo.Stats
// of a datapath named "xdp" (plugins/xdp's Stats is this type). Decode
// them with DecodeXDPStats.
type XDPStats struct {
	// Interface and Queue are where the socket is bound.
	Interface string `json:"interface"`
	Queue     int    `json:"queue"`
	// Mode is the socket's: "copy" (the kernel copies each frame between
	// its buffers and the UMEM) or "zero-copy" (the NIC uses the UMEM).
	// Attach is where the XDP program runs: "native" (in the driver) or
	// "generic" (on the socket buffer). BusyPoll says whether busy
	// polling (SO_PREFER_BUSY_POLL, SO_BUSY_POLL) is on.
	Mode     string `json:"mode"`
	Attach   string `json:"attach"`
	BusyPoll bool   `json:"busy_poll"`
	// Wire datagrams and their bytes, received and sent.
	RxPackets uint64 `json:"rx_packets"`
	RxBytes   uint64 `json:"rx_bytes"`
	TxPackets uint64 `json:"tx_packets"`
	TxBytes   uint64 `json:"tx_bytes"`
	// Dropped are frames the socket got that were not wire datagrams, by
	// reason; RxTruncated datagrams cut to a receiver's buffer.
	Dropped     map[string]uint64 `json:"dropped,omitempty"`
	RxTruncated uint64            `json:"rx_truncated"`
	// The kernel's counters (XDP_STATISTICS).
	KernelDropped uint64 `json:"kernel_dropped"`
	RxRingFull    uint64 `json:"rx_ring_full"`
	FillRingEmpty uint64 `json:"fill_ring_empty"`
	RxInvalid     uint64 `json:"rx_invalid"`
	TxInvalid     uint64 `json:"tx_invalid"`
	// TxFull counts sends put off for want of a transmit frame or TX ring
	// room; TooLong and Unresolved datagrams refused (too long for the
	// MTU, no neighbour entry); Solicits neighbour resolutions asked of
	// the kernel; Neighbours the entries mirrored from the kernel.
	TxFull     uint64 `json:"tx_full"`
	TooLong    uint64 `json:"too_long"`
	Unresolved uint64 `json:"unresolved"`
	Solicits   uint64 `json:"solicits"`
	Neighbours int    `json:"neighbours"`
	// Sleeps counts the polling thread's sleeps in poll(2), Kicks the
	// sendto(2) calls that made the kernel transmit.
	Sleeps uint64 `json:"sleeps"`
	Kicks  uint64 `json:"kicks"`
}

// DecodeXDPStats turns a datapath's Stats (as a Client decodes them: a
// map) into XDPStats. It returns an error for a datapath that is not
// AF_XDP or stats of another shape.
func DecodeXDPStats(d DatapathInfo) (XDPStats, error) {
	var s XDPStats
	if d.Name != DatapathXDP {
		return s, fmt.Errorf("datapath %s is not %s", d.Name, DatapathXDP)
	}
	b, err := json.Marshal(d.Stats)
	if err != nil {
		return s, fmt.Errorf("decode xdp stats: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("decode xdp stats: %w", err)
	}
	return s, nil
}
