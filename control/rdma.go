package control

import (
	"encoding/json"
	"fmt"
)

// DatapathRDMA is the RDMA datapath's name in DatapathInfo.Name.
const DatapathRDMA = "rdma"

// RDMAStats are the RDMA datapath's counters, device and queue pairs:
// DatapathInfo.Stats of a datapath named "rdma" (plugins/rdma's Stats is
// this type). Decode them with DecodeRDMAStats.
type RDMAStats struct {
	// Device is the RDMA device (rxe0, mlx5_0); Netdev its network
	// interface, DevicePort its port, GIDIndex and GID the RoCE v2 GID
	// table entry of the datapath's address, MTU the port's active MTU
	// in bytes.
	Device     string `json:"device"`
	Netdev     string `json:"netdev"`
	DevicePort uint8  `json:"device_port"`
	GIDIndex   int    `json:"gid_index"`
	GID        string `json:"gid"`
	MTU        int    `json:"mtu"`
	// Peers counts the peers the datapath knows, Connected those with a
	// queue pair up.
	Peers     int `json:"peers"`
	Connected int `json:"connected"`
	// Messages sent (posted) and received; TxFull counts sends put off
	// for want of send slots or queue room, TxErrors failed posts,
	// RxErrors failed receive completions, RxUnknownQP receives on a
	// queue pair no longer known.
	TxMessages  uint64 `json:"tx_messages"`
	TxFull      uint64 `json:"tx_full"`
	TxErrors    uint64 `json:"tx_errors"`
	RxMessages  uint64 `json:"rx_messages"`
	RxErrors    uint64 `json:"rx_errors"`
	RxUnknownQP uint64 `json:"rx_unknown_qp"`
	// Connects and Accepts count queue pairs set up by this side's
	// request and by the peer's; ConnectFailed failed attempts;
	// QPFailures queue pairs that failed (peer gone, stalled).
	Connects      uint64 `json:"connects"`
	Accepts       uint64 `json:"accepts"`
	ConnectFailed uint64 `json:"connect_failed"`
	QPFailures    uint64 `json:"qp_failures"`
	// Sleeps counts the polling thread's pauses on the completion
	// channel.
	Sleeps     uint64          `json:"sleeps"`
	QueuePairs []RDMAQueuePair `json:"queue_pairs"`
}

// RDMAQueuePair is the queue pair to one peer.
type RDMAQueuePair struct {
	Peer string `json:"peer"`
	// QPN and PeerQPN are the two ends' queue pair numbers, PSN and
	// PeerPSN their first packet sequence numbers; zero without a queue
	// pair.
	QPN     uint32 `json:"qpn"`
	PeerQPN uint32 `json:"peer_qpn"`
	PSN     uint32 `json:"psn"`
	PeerPSN uint32 `json:"peer_psn"`
	// State is the queue pair's state (RTS when up; RESET, INIT, RTR,
	// SQD, SQE, ERR), or "connecting", "down" (was up, reconnecting),
	// "no-rdma" (never connected: the peer has no RDMA datapath, other
	// datapaths carry its messages) or "failed".
	State string `json:"state"`
}

// DecodeRDMAStats turns a datapath's Stats (as a Client decodes them: a
// map) into RDMAStats. It returns an error for a datapath that is not
// RDMA or stats of another shape.
func DecodeRDMAStats(d DatapathInfo) (RDMAStats, error) {
	var s RDMAStats
	if d.Name != DatapathRDMA {
		return s, fmt.Errorf("datapath %s is not %s", d.Name, DatapathRDMA)
	}
	b, err := json.Marshal(d.Stats)
	if err != nil {
		return s, fmt.Errorf("decode rdma stats: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("decode rdma stats: %w", err)
	}
	return s, nil
}
