package control

// DefaultSocket is where veloced listens for velocectl.
const DefaultSocket = "/run/veloce/control.sock"

// Prefix is the version prefix of every path.
const Prefix = "/v1/"

// The API's paths. Each is served for GET.
const (
	// PathPorts lists the VM ports: []PortInfo.
	PathPorts = Prefix + "ports"
	// PathStreams lists the streams: []StreamInfo.
	PathStreams = Prefix + "streams"
	// PathApps describes the host applications: HostAppsInfo.
	PathApps = Prefix + "apps"
	// PathRemote describes the datapaths to other hosts and the peers:
	// RemoteInfo.
	PathRemote = Prefix + "remote"
)

// ErrorBody is the body of every response that is not 2xx.
type ErrorBody struct {
	// Error says what went wrong, for a human.
	Error string `json:"error"`
}

// PortInfo is what velocectl ports shows for a port. Field names are a
// contract (DESIGN.md): keep them.
type PortInfo struct {
	Name             string `json:"name"`
	Socket           string `json:"socket"`
	Mode             string `json:"mode"`  // "server" (daemon listens) or "client"
	State            string `json:"state"` // "waiting", "connected" or "running"
	Features         string `json:"features"`
	ProtocolFeatures string `json:"protocol_features"`
	Queues           int    `json:"queues"`
	MaxQueues        int    `json:"max_queues"`
	MTU              int    `json:"mtu,omitempty"`
	GuestIP          string `json:"guest_ip"`
	GuestMAC         string `json:"guest_mac,omitempty"`
	ServiceIP        string `json:"service_ip"`
	GuestTXPackets   uint64 `json:"guest_tx_packets"`
	GuestTXBytes     uint64 `json:"guest_tx_bytes"`
	GuestRXPackets   uint64 `json:"guest_rx_packets"`
	GuestRXBytes     uint64 `json:"guest_rx_bytes"`
	Drops            uint64 `json:"drops"`
	Errors           uint64 `json:"errors"`
	ARPReplies       uint64 `json:"arp_replies"`
	EchoReplies      uint64 `json:"echo_replies"`
	DHCPReplies      uint64 `json:"dhcp_replies"`
	LinkDrops        uint64 `json:"link_drops"`
	ServiceDatagrams uint64 `json:"service_datagrams"`
	Malformed        uint64 `json:"malformed_datagrams"`
	Sessions         int    `json:"sessions"`
	OutboxQueued     int    `json:"outbox_queued"`
	Logging          bool   `json:"dirty_logging"`
	LastError        string `json:"last_error,omitempty"`
	// Tenant is the tenant the port's guest belongs to: its channels are
	// the tenant's, but for the daemon's shared channels.
	Tenant string `json:"tenant,omitempty"`
	// LimitRefusals counts the guest's requests refused by the port's
	// limits, by limit: "sessions", "streams", "sources", "sinks",
	// "control-rate" (only those above zero).
	LimitRefusals map[string]uint64 `json:"limit_refusals,omitempty"`
	// Large messages on the guest's link (larger than one frame, sent as
	// fragments): LargeReceived from the guest reassembled whole;
	// LargeDropped from the guest dropped incomplete (a fragment lost,
	// evicted for room, inconsistent or over the limit); LargeSent to the
	// guest's sinks as DeliverFrag frames.
	LargeReceived uint64 `json:"large_received,omitempty"`
	LargeDropped  uint64 `json:"large_dropped,omitempty"`
	LargeSent     uint64 `json:"large_sent,omitempty"`
}

// StreamOptions are a stream's QoS options, as the application asked.
type StreamOptions struct {
	// Acceleration asks for a kernel-bypass datapath.
	Acceleration bool `json:"acceleration"`
	// Frugal says resource use matters (no core spinning on DPDK).
	Frugal bool `json:"frugal"`
	// TimeSensitive schedules the stream by the 802.1Qbv gate schedule
	// instead of FIFO.
	TimeSensitive bool `json:"time_sensitive"`
	// Reliable asks for reliable, in-order delivery.
	Reliable bool `json:"reliable"`
	// Poll is INSANE's consumption=poll: the session that holds the
	// stream spins on its shared-memory rings at both ends (the
	// application's guestlib and a daemon polling thread), with no
	// wake-ups. Host transport only; fixed at
	// the stream's creation.
	Poll bool `json:"poll,omitempty"`
}

// StreamInfo is what velocectl streams shows for a stream. Field names
// are a contract, as PortInfo's.
type StreamInfo struct {
	Session  uint32        `json:"session"`
	Stream   uint32        `json:"stream"`
	Endpoint string        `json:"endpoint"`
	Options  StreamOptions `json:"options"`
	Datapath string        `json:"datapath"`
	// TrafficClass is the class its messages take through the gate
	// schedule: 0 bulk, 1 time-sensitive (0 for every stream without a
	// schedule).
	TrafficClass  int          `json:"traffic_class"`
	Warning       string       `json:"warning,omitempty"`
	Sources       []SourceInfo `json:"sources"`
	Sinks         []SinkInfo   `json:"sinks"`
	SessionRemote string       `json:"session_addr,omitempty"`
	// Tenant is the tenant of the stream's session.
	Tenant string `json:"tenant,omitempty"`
}

// SourceInfo describes a source.
type SourceInfo struct {
	ID      uint32 `json:"id"`
	Channel uint32 `json:"channel"`
	Emitted uint64 `json:"emitted"`
	// Full counts messages that found a pool empty (back-pressure).
	Full uint64 `json:"full"`
	// State is "peer-unreachable" for a reliable source that failed (its
	// peer stopped acknowledging), empty otherwise.
	State string `json:"state,omitempty"`
}

// SinkInfo describes a sink.
type SinkInfo struct {
	ID        uint32 `json:"id"`
	Channel   uint32 `json:"channel"`
	Delivered uint64 `json:"delivered"`
	Dropped   uint64 `json:"dropped"`
	// CreditWaits counts the deliveries a VM sink's credit held back: its
	// application had not read what was already on the way (guestlib's
	// flow control on the virtio link). A reliable stream delivers them
	// later; a best-effort one counts them in Dropped as well.
	CreditWaits uint64 `json:"credit_waits,omitempty"`
}

// HostAppsInfo describes the host transport: the applications on the
// daemon's app socket.
type HostAppsInfo struct {
	// Socket is the app socket's path; empty without one.
	Socket string `json:"socket"`
	// Clients are the connected applications.
	Clients []HostClientInfo `json:"clients"`
	// Sessions counts the clients' open sessions.
	Sessions int `json:"sessions"`
	// MappedBytes is the shared memory mapped for the clients.
	MappedBytes int64 `json:"mapped_bytes"`
	// Malformed counts bad ring entries and requests, over every client
	// since the daemon started.
	Malformed uint64 `json:"malformed"`
	// Wakeups counts eventfd signals to applications, likewise.
	Wakeups uint64 `json:"wakeups"`
	// Tenants are the host tenants' accounts: what their applications
	// hold and how many of their requests the limits refused.
	Tenants []TenantInfo `json:"tenants,omitempty"`
}

// TenantInfo is one host tenant's account.
type TenantInfo struct {
	Name     string `json:"name"`
	Sessions int64  `json:"sessions"`
	Streams  int64  `json:"streams"`
	Sources  int64  `json:"sources"`
	Sinks    int64  `json:"sinks"`
	// LimitRefusals counts refused requests by limit, as PortInfo's.
	LimitRefusals map[string]uint64 `json:"limit_refusals,omitempty"`
}

// HostClientInfo describes one connected application.
type HostClientInfo struct {
	Name    string `json:"name"`
	Session uint32 `json:"session,omitempty"`
	// RegionBytes is the size of its shared region (0 before it opened a
	// session).
	RegionBytes int `json:"region_bytes"`
	TXSlots     int `json:"tx_slots"`
	RXSlots     int `json:"rx_slots"`
	// RXWithApp is how many RX slots the application holds (on the RX
	// ring or in its hands), approximately.
	RXWithApp int    `json:"rx_with_app"`
	Malformed uint64 `json:"malformed"`
	Wakeups   uint64 `json:"wakeups"`
	Unsent    uint64 `json:"unsent_replies"`
	// Tenant is the tenant the application's peer credentials map to.
	Tenant string `json:"tenant,omitempty"`
	// UID is the application's user id (SO_PEERCRED).
	UID uint32 `json:"uid"`
	// Polling: the session has a polling stream (StreamOptions.Poll or
	// TimeSensitive): a daemon thread spins on its rings.
	Polling bool `json:"polling"`
}

// RemoteInfo is the daemon's view of other hosts: its datapaths and peers.
type RemoteInfo struct {
	Datapaths []DatapathInfo `json:"datapaths"`
	Peers     []PeerInfo     `json:"peers"`
	Sent      uint64         `json:"sent"`
	Received  uint64         `json:"received"`
	Dropped   uint64         `json:"dropped"`
	Malformed uint64         `json:"malformed"`
	// Authenticated says whether the daemon has a fleet key
	// (veloced --peer-key).
	Authenticated bool `json:"authenticated"`
	// Boot is the daemon's boot id (hex), random per start.
	Boot string `json:"boot_id"`
	// Datagrams from other hosts dropped on receipt, by reason (besides
	// Malformed): UnknownPeer, from an address that is not a peer;
	// BadAuth, without a valid MAC (or with one, on a daemon without a
	// key); Stale, replayed or older than what the peer sent before;
	// BadVersion, a directory layout the daemon does not speak.
	UnknownPeer uint64 `json:"unknown_peer"`
	BadAuth     uint64 `json:"bad_auth"`
	Stale       uint64 `json:"stale"`
	BadVersion  uint64 `json:"bad_version"`
	// Expired counts peers' directories dropped for age.
	Expired uint64 `json:"expired"`
	// Reliable counts reliable streams' work.
	Reliable ReliableInfo `json:"reliable"`
	// Directory says where the peers come from, and etcd's health.
	Directory DirectoryInfo `json:"directory"`
	// Large counts messages sent as fragments.
	Large LargeInfo `json:"large"`
}

// DirectoryInfo says where a daemon's peers and their channels come from.
type DirectoryInfo struct {
	// Sources are "static" (--peer) and "etcd" (--etcd), those in use.
	Sources []string `json:"sources"`
	// Etcd is the fleet directory's health; absent without --etcd.
	Etcd *EtcdInfo `json:"etcd,omitempty"`
}

// EtcdInfo is the health of a daemon's fleet directory in etcd.
type EtcdInfo struct {
	Endpoints []string `json:"endpoints"`
	Prefix    string   `json:"prefix"`
	// Key is the daemon's own key (PREFIX/nodes/NODEID).
	Key string `json:"key"`
	// Connected: the last request to etcd succeeded and the watch runs.
	Connected bool `json:"connected"`
	// LastError is the last failure talking to etcd, empty before one.
	LastError string `json:"last_error,omitempty"`
	// Revision is the store revision the daemon's directory is current to.
	Revision int64 `json:"revision"`
	// Nodes is how many other daemons the directory holds.
	Nodes int `json:"nodes"`
	// Puts counts the daemon's writes of its key; Events, the watch
	// events it received.
	Puts   uint64 `json:"puts"`
	Events uint64 `json:"events"`
	// PutBytes and ReadBytes are the values' bytes written and read
	// (lists and watch events): the directory's etcd traffic, framing
	// aside.
	PutBytes  uint64 `json:"put_bytes"`
	ReadBytes uint64 `json:"read_bytes"`
}

// LargeInfo counts messages sent as fragments, as velocectl remote shows
// them.
type LargeInfo struct {
	// MaxMessage is the largest message to other hosts (bytes).
	MaxMessage int `json:"max_message"`
	// Sent counts fragmented messages sent (per peer), Fragments their
	// datagrams; TooLarge emits over MaxMessage (not sent).
	Sent      uint64 `json:"sent"`
	Fragments uint64 `json:"fragments"`
	TooLarge  uint64 `json:"too_large"`
	// Received counts best-effort messages reassembled; Lost those
	// dropped with a fragment missing at their timeout; Overflow those
	// evicted incomplete for room; Inconsistent fragments that disagree
	// with their message; Duplicates fragments received twice;
	// RefusedTooLarge fragments of messages over this daemon's
	// MaxMessage. Pending is what is being reassembled now.
	Received        uint64 `json:"received"`
	Lost            uint64 `json:"lost"`
	Overflow        uint64 `json:"overflow"`
	Inconsistent    uint64 `json:"inconsistent"`
	Duplicates      uint64 `json:"duplicates"`
	RefusedTooLarge uint64 `json:"refused_too_large"`
	Pending         int    `json:"pending"`
	// ReliableReceived counts reliable fragmented messages delivered;
	// Undeliverable reliable messages dropped for a sink whose transport
	// cannot carry their size (a host application's or a VM's: one slot,
	// one frame; not yet larger).
	ReliableReceived uint64 `json:"reliable_received"`
	Undeliverable    uint64 `json:"undeliverable"`
}

// ReliableInfo counts the work of reliable streams (acks,
// retransmissions) on datagram datapaths.
type ReliableInfo struct {
	// Windows and Receivers are the reliable sources' windows toward
	// peers and the receivers of peers' reliable sources.
	Windows   int `json:"windows"`
	Receivers int `json:"receivers"`
	// Retransmits counts messages sent again; Duplicates, messages
	// received again (or past the credit) and dropped.
	Retransmits uint64 `json:"retransmits"`
	Duplicates  uint64 `json:"duplicates"`
	// WindowFull counts emits refused for a full window or no credit
	// (back-pressure from the peer's sinks).
	WindowFull uint64 `json:"window_full"`
	// Unreachable counts windows failed for a silent peer.
	Unreachable uint64 `json:"unreachable"`
	// Overflow counts messages from peers' sources beyond the receivers
	// one peer may have.
	Overflow uint64 `json:"overflow"`
	// Malformed counts reliable data too short to hold its source's
	// sequence number (dropped, never acknowledged).
	Malformed uint64 `json:"malformed,omitempty"`
}

// DatapathInfo describes a datapath to other hosts.
type DatapathInfo struct {
	Name    string `json:"name"`
	Addr    string `json:"addr"`
	Default bool   `json:"default"`
	// Peers are the peers the datapath reaches.
	Peers  []string `json:"peers"`
	Queued int      `json:"queued"`
	// Polled: the daemon's polling thread drives the datapath now, as it
	// does while any of the daemon's sessions polls (StreamOptions.Poll);
	// only datapaths without a polling thread of their own (udp) are.
	Polled bool `json:"polled"`
	// Wakeups counts the batches the datapath's own receiver and sender
	// goroutines moved, each after a wake-up (the network poller's or an
	// emit's); PolledBatches those the polling thread moved, with none.
	// Both are 0 for datapaths with a polling thread of their own.
	Wakeups       uint64 `json:"wakeups"`
	PolledBatches uint64 `json:"polled_batches"`
	// InlineBatches counts the batches an application's drain sent
	// itself at the end of a batch of emits, without waking the
	// datapath's sender.
	InlineBatches uint64 `json:"inline_batches"`
	// Stats are the datapath's own counters (a JSON object whose fields
	// depend on the datapath); a Client decodes them as a map.
	Stats any `json:"stats,omitempty"`
	// TSN is the gate scheduler's state; absent without a gate schedule.
	TSN *TSNInfo `json:"tsn,omitempty"`
}

// TSNInfo is a datapath's gate scheduler in velocectl remote.
type TSNInfo struct {
	// Schedule is the gate schedule (tsn text form).
	Schedule string `json:"schedule"`
	// Gates are the gates open now (hex mask, bit i is class i's).
	Gates string `json:"gates"`
	// Classes are the traffic classes' queues.
	Classes []TSNClassInfo `json:"classes"`
	// Overruns counts batches whose send ended after their window.
	Overruns uint64 `json:"overruns"`
}

// TSNClassInfo is one traffic class of a datapath.
type TSNClassInfo struct {
	Class int    `json:"class"`
	Name  string `json:"name"`
	// Held is how many of its messages are queued now.
	Held int `json:"held"`
	// Sent counts its messages let through the gate.
	Sent uint64 `json:"sent"`
	// Waits counts the times the sender slept until its gate opened.
	Waits uint64 `json:"waits"`
}

// PeerInfo describes a peer daemon.
type PeerInfo struct {
	Addr     string   `json:"addr"`
	Node     uint32   `json:"node"`
	Channels []uint32 `json:"channels"`
	LastSeen string   `json:"last_directory,omitempty"`
	// State is "waiting" (no directory yet), "up" or "stale" (no
	// directory within the expiry: its channels are dropped).
	State string `json:"state"`
	// Boot is the boot id of its last directory (hex), empty before.
	Boot string `json:"boot_id,omitempty"`
	// Restarts counts directories that came with a new boot id.
	Restarts uint64 `json:"restarts"`
	// Source is where the peer and its channels come from: "static"
	// (a --peer address and its directory datagrams) or "etcd" (the
	// fleet directory, which wins for an address in both).
	Source string `json:"source"`
	// BadAuth, Stale, Malformed and BadVersion count its datagrams
	// dropped for those reasons (see RemoteInfo).
	BadAuth    uint64 `json:"bad_auth"`
	Stale      uint64 `json:"stale"`
	Malformed  uint64 `json:"malformed"`
	BadVersion uint64 `json:"bad_version"`
}

// ReadyLine is the line veloced writes to its standard error, alone on a
// line, once it is ready: the control socket, the app socket and every
// vhost-user socket listen. A supervisor or test that starts veloced as a
// process waits for it instead of polling for socket files.
const ReadyLine = "veloced: ready"
