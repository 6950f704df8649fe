package vhostuser

// Virtio device feature bits (virtio 1.1 section 6 and 5.1.3), as bit
// numbers. Use Features.Has / Bit to test them in a negotiated mask.
const (
	// VIRTIO_NET_F_* (virtio 1.1, 5.1.3 "Feature bits").
	NetFCsum              = 0  // device handles packets with partial checksum
	NetFGuestCsum         = 1  // driver handles packets with partial checksum
	NetFCtrlGuestOffloads = 2  // control channel offloads reconfiguration
	NetFMTU               = 3  // device reports its maximum MTU in config space
	NetFMAC               = 5  // device has a MAC address in config space
	NetFGuestTSO4         = 7  // driver can receive TSOv4
	NetFGuestTSO6         = 8  // driver can receive TSOv6
	NetFGuestECN          = 9  // driver can receive TSO with ECN
	NetFGuestUFO          = 10 // driver can receive UFO
	NetFHostTSO4          = 11 // device can receive TSOv4
	NetFHostTSO6          = 12 // device can receive TSOv6
	NetFHostECN           = 13 // device can receive TSO with ECN
	NetFHostUFO           = 14 // device can receive UFO
	NetFMrgRxbuf          = 15 // driver can merge receive buffers
	NetFStatus            = 16 // configuration status field is available
	NetFCtrlVQ            = 17 // control channel is available
	NetFCtrlRx            = 18 // control channel RX mode support
	NetFCtrlVLAN          = 19 // control channel VLAN filtering
	NetFCtrlRxExtra       = 20 // control channel extra RX modes
	NetFGuestAnnounce     = 21 // driver can send gratuitous packets
	NetFMQ                = 22 // device supports multiqueue with automatic receive steering
	NetFCtrlMACAddr       = 23 // set MAC address through control channel
	NetFHashReport        = 57 // device can report per-packet hash
	NetFRSS               = 60 // device supports RSS
	NetFRSCExt            = 61 // device can process duplicated ACKs and report coalesced segments
	NetFStandby           = 62 // device may act as a standby for a primary device
	NetFSpeedDuplex       = 63 // device reports speed and duplex

	// Transport-independent bits (virtio 1.1, 6 "Reserved Feature Bits").
	FNotifyOnEmpty    = 24 // legacy: notify when the available ring empties
	FAnyLayout        = 27 // legacy: device accepts arbitrary descriptor layouts
	FRingIndirectDesc = 28 // VIRTIO_F_RING_INDIRECT_DESC / VIRTIO_F_INDIRECT_DESC
	FRingEventIdx     = 29 // VIRTIO_F_RING_EVENT_IDX / VIRTIO_F_EVENT_IDX
	FVersion1         = 32 // VIRTIO_F_VERSION_1
	FAccessPlatform   = 33 // VIRTIO_F_ACCESS_PLATFORM (formerly IOMMU_PLATFORM)
	FRingPacked       = 34 // VIRTIO_F_RING_PACKED
	FInOrder          = 35 // VIRTIO_F_IN_ORDER
	FOrderPlatform    = 36 // VIRTIO_F_ORDER_PLATFORM
	FSRIOV            = 37 // VIRTIO_F_SR_IOV
	FNotificationData = 38 // VIRTIO_F_NOTIFICATION_DATA
	FRingReset        = 40 // VIRTIO_F_RING_RESET

	// Vhost bits carried in the same mask.
	FLogAll           = 26 // VHOST_F_LOG_ALL: the backend logs writes to the dirty log
	FProtocolFeatures = 30 // VHOST_USER_F_PROTOCOL_FEATURES
)

// Vhost-user protocol feature bits (vhost-user.rst, "Protocol features").
const (
	ProtocolFMQ                  = 0
	ProtocolFLogShmfd            = 1
	ProtocolFRARP                = 2
	ProtocolFReplyAck            = 3
	ProtocolFNetMTU              = 4
	ProtocolFBackendReq          = 5 // formerly SLAVE_REQ
	ProtocolFCrossEndian         = 6
	ProtocolFCryptoSession       = 7
	ProtocolFPagefault           = 8
	ProtocolFConfig              = 9
	ProtocolFBackendSendFD       = 10 // formerly SLAVE_SEND_FD
	ProtocolFHostNotifier        = 11
	ProtocolFInflightShmfd       = 12
	ProtocolFResetDevice         = 13
	ProtocolFInbandNotifications = 14
	ProtocolFConfigureMemSlots   = 15
	ProtocolFStatus              = 16
	ProtocolFXenMmap             = 17
	ProtocolFSharedObject        = 18
	ProtocolFDeviceState         = 19
)

// Features is a 64-bit feature mask as carried by GET/SET_FEATURES and
// GET/SET_PROTOCOL_FEATURES.
type Features uint64

// Bit returns the mask with only bit n set.
func Bit(n uint) Features { return Features(1) << (n & 63) }

// Has reports whether bit n is set in f.
func (f Features) Has(n uint) bool { return f&Bit(n) != 0 }

// Vring address flags (SET_VRING_ADDR flags field).
const (
	// VringFLog (VHOST_VRING_F_LOG) asks the backend to log writes to the
	// used ring at VringAddr.Log.
	VringFLog = 1 << 0
)

// VringIndexMask and VringNoFD decode the u64 payload of SET_VRING_KICK,
// SET_VRING_CALL and SET_VRING_ERR: bits 0-7 are the ring index, bit 8 says
// that no file descriptor accompanies the message (poll instead).
const (
	VringIndexMask = 0xff
	VringNoFD      = 1 << 8
)

// Memory slot limits.
const (
	// MaxSetMemTableRegions is the most regions one SET_MEM_TABLE may
	// carry: QEMU sends at most 8 (VHOST_MEMORY_BASELINE_NREGIONS), rust-vmm
	// frontends up to 32 (their limit of attached file descriptors).
	MaxSetMemTableRegions = 32
	// MaxMemSlots is the most regions a Memory holds, and the answer this
	// package suggests for GET_MAX_MEM_SLOTS (the KVM limit QEMU uses).
	MaxMemSlots = 509
)

// LogPageSize is VHOST_LOG_PAGE: one bit of the dirty log covers this many
// bytes of guest physical memory.
const LogPageSize = 0x1000
