package backend

import (
	"fmt"
	"math/bits"
	"strings"

	"github.com/veloce-io/veloce/vhostuser"
)

// Logs to run a port by. Each event is logged once, with the port's name
// (Port.log carries it) and the guest's MAC and IP where known:
//
//   - vhostuser.Server: "frontend connected", "frontend disconnected"
//     (warn with the error when it broke), "waiting for the frontend to
//     listen" (client mode, once until it connects);
//   - the device: "vhost-user frontend dropped" (a broken ring or a
//     memory fault: error);
//   - here: "guest link up" when the guest's driver is ready on queue
//     pair 0 (info, with the negotiated features by name), "queue pair
//     up" for the others (debug);
//   - the link peer: "DHCP lease" (info; renewals at debug), "DHCP
//     request refused" (warn).

// virtio feature bits by name (VIRTIO_NET_F_*, VIRTIO_F_*, VHOST_*), as
// the virtio spec spells them without the prefixes.
var featureNames = map[uint]string{
	vhostuser.NetFCsum: "CSUM", vhostuser.NetFGuestCsum: "GUEST_CSUM", vhostuser.NetFCtrlGuestOffloads: "CTRL_GUEST_OFFLOADS",
	vhostuser.NetFMTU: "MTU", vhostuser.NetFMAC: "MAC", vhostuser.NetFGuestTSO4: "GUEST_TSO4", vhostuser.NetFGuestTSO6: "GUEST_TSO6",
	vhostuser.NetFGuestECN: "GUEST_ECN", vhostuser.NetFGuestUFO: "GUEST_UFO", vhostuser.NetFHostTSO4: "HOST_TSO4",
	vhostuser.NetFHostTSO6: "HOST_TSO6", vhostuser.NetFHostECN: "HOST_ECN", vhostuser.NetFHostUFO: "HOST_UFO",
	vhostuser.NetFMrgRxbuf: "MRG_RXBUF", vhostuser.NetFStatus: "STATUS", vhostuser.NetFCtrlVQ: "CTRL_VQ",
	vhostuser.NetFCtrlRx: "CTRL_RX", vhostuser.NetFCtrlVLAN: "CTRL_VLAN", vhostuser.NetFCtrlRxExtra: "CTRL_RX_EXTRA",
	vhostuser.NetFGuestAnnounce: "GUEST_ANNOUNCE", vhostuser.NetFMQ: "MQ", vhostuser.NetFCtrlMACAddr: "CTRL_MAC_ADDR",
	vhostuser.NetFHashReport: "HASH_REPORT", vhostuser.NetFRSS: "RSS", vhostuser.NetFRSCExt: "RSC_EXT",
	vhostuser.NetFStandby: "STANDBY", vhostuser.NetFSpeedDuplex: "SPEED_DUPLEX",
	vhostuser.FNotifyOnEmpty: "NOTIFY_ON_EMPTY", vhostuser.FAnyLayout: "ANY_LAYOUT", vhostuser.FRingIndirectDesc: "RING_INDIRECT_DESC",
	vhostuser.FRingEventIdx: "RING_EVENT_IDX", vhostuser.FVersion1: "VERSION_1", vhostuser.FAccessPlatform: "ACCESS_PLATFORM",
	vhostuser.FRingPacked: "RING_PACKED", vhostuser.FInOrder: "IN_ORDER", vhostuser.FOrderPlatform: "ORDER_PLATFORM",
	vhostuser.FSRIOV: "SR_IOV", vhostuser.FNotificationData: "NOTIFICATION_DATA", vhostuser.FRingReset: "RING_RESET",
	vhostuser.FLogAll: "LOG_ALL", vhostuser.FProtocolFeatures: "PROTOCOL_FEATURES",
}

// vhost-user protocol feature bits by name (VHOST_USER_PROTOCOL_F_*).
var protocolFeatureNames = map[uint]string{
	vhostuser.ProtocolFMQ: "MQ", vhostuser.ProtocolFLogShmfd: "LOG_SHMFD", vhostuser.ProtocolFRARP: "RARP",
	vhostuser.ProtocolFReplyAck: "REPLY_ACK", vhostuser.ProtocolFNetMTU: "NET_MTU", vhostuser.ProtocolFBackendReq: "BACKEND_REQ",
	vhostuser.ProtocolFCrossEndian: "CROSS_ENDIAN", vhostuser.ProtocolFCryptoSession: "CRYPTO_SESSION",
	vhostuser.ProtocolFPagefault: "PAGEFAULT", vhostuser.ProtocolFConfig: "CONFIG", vhostuser.ProtocolFBackendSendFD: "BACKEND_SEND_FD",
	vhostuser.ProtocolFHostNotifier: "HOST_NOTIFIER", vhostuser.ProtocolFInflightShmfd: "INFLIGHT_SHMFD",
	vhostuser.ProtocolFResetDevice: "RESET_DEVICE", vhostuser.ProtocolFInbandNotifications: "INBAND_NOTIFICATIONS",
	vhostuser.ProtocolFConfigureMemSlots: "CONFIGURE_MEM_SLOTS", vhostuser.ProtocolFStatus: "STATUS",
	vhostuser.ProtocolFXenMmap: "XEN_MMAP", vhostuser.ProtocolFSharedObject: "SHARED_OBJECT", vhostuser.ProtocolFDeviceState: "DEVICE_STATE",
}

// featureList names the bits of f, lowest first, as "A,B,C"; a bit
// without a name is "bit N".
func featureList(f vhostuser.Features, names map[uint]string) string {
	var b strings.Builder
	for v := uint64(f); v != 0; v &= v - 1 {
		n := uint(bits.TrailingZeros64(v))
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		if name, ok := names[n]; ok {
			b.WriteString(name)
		} else {
			fmt.Fprintf(&b, "bit %d", n)
		}
	}
	return b.String()
}

// logLinkUp logs that queue pair qp started: the guest's driver has
// posted receive buffers (vhostuser calls Announce once per connection
// and queue pair).
func (p *Port) logLinkUp(qp int) {
	if p.log == nil {
		return
	}
	if qp != 0 {
		p.log.Debug("queue pair up", "queue_pair", qp)
		return
	}
	st := p.dev.State()
	attrs := []any{
		"features", featureList(st.Features, featureNames), "features_hex", fmt.Sprintf("%#x", uint64(st.Features)),
		"protocol_features", featureList(st.ProtocolFeatures, protocolFeatureNames),
		"max_queue_pairs", p.dev.MaxQueuePairs(),
		"guest_ip", p.peer.Options().GuestIP.Addr().String(), "memory_regions", st.MemoryRegions,
	}
	if st.MTU != 0 {
		attrs = append(attrs, "mtu", st.MTU)
	}
	if mac := p.peer.Learned(); mac != nil {
		attrs = append(attrs, "guest_mac", mac.String())
	}
	p.log.Info("guest link up", attrs...)
}
