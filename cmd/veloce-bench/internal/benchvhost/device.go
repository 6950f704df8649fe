package benchvhost

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/veloce-io/veloce/internal/pkt"
)

// Frame addresses: those testpmd's txonly uses (198.18.0.1 -> 198.18.0.2,
// the RFC 2544 benchmarking range, peer MAC 02:00:00:00:00:00).
var (
	frameDst   = pkt.MAC{0x02, 0, 0, 0, 0, 0}
	frameSrc   = pkt.MAC{0x02, 0x56, 0x4c, 0x4f, 0x43, 0x01}
	frameSrcIP = [4]byte{198, 18, 0, 1}
	frameDstIP = [4]byte{198, 18, 0, 2}
)

// frameHeaderLen is what BuildUDPFrame writes in front of the payload.
const frameHeaderLen = pkt.EthernetHeaderLen + pkt.IPv4MinHeaderLen + pkt.UDPHeaderLen

// BuildUDPFrame returns an Ethernet/IPv4/UDP frame of exactly size bytes
// (without FCS, as testpmd's --txpkts counts), checksums filled in.
func BuildUDPFrame(size int) ([]byte, error) {
	if size < frameHeaderLen || size > pkt.EthernetHeaderLen+pkt.IPv4MaxLen {
		return nil, fmt.Errorf("frame size %d out of range %d-%d", size, frameHeaderLen, pkt.EthernetHeaderLen+pkt.IPv4MaxLen)
	}
	b := make([]byte, size)
	for i := frameHeaderLen; i < size; i++ {
		b[i] = byte(i)
	}
	off, err := pkt.PutEthernetHeader(b, frameDst, frameSrc, pkt.EtherTypeIPv4)
	if err != nil {
		return nil, err
	}
	udpLen := size - off - pkt.IPv4MinHeaderLen
	if _, err := pkt.PutIPv4Header(b[off:], &pkt.IPv4Header{Protocol: pkt.ProtocolUDP, Src: frameSrcIP, Dst: frameDstIP, DontFragment: true}, udpLen); err != nil {
		return nil, err
	}
	u := b[off+pkt.IPv4MinHeaderLen:]
	if _, err := pkt.PutUDPv4(u, &pkt.UDPv4Header{Src: frameSrcIP, Dst: frameDstIP, SrcPort: 9, DstPort: 9}, u[pkt.UDPHeaderLen:]); err != nil {
		return nil, err
	}
	return b, nil
}

// sinkHandler is the device's FrameHandler for the guest-TX direction:
// the counterpart of testpmd's rxonly. It looks at each frame's EtherType
// (so the frame's first cache line is read, as any real handler would)
// and replies nothing; the device's own counters count the frames.
type sinkHandler struct {
	pin  pinner
	ipv4 uint64 // written by the poller only; read after it stopped
}

func (h *sinkHandler) HandleFrame(qp int, frame, reply []byte) int {
	h.pin.maybePin()
	if len(frame) >= pkt.EthernetHeaderLen && frame[12] == 0x08 && frame[13] == 0x00 {
		h.ipv4++
	}
	return 0
}

// sourceHandler is the device's handler for the guest-RX direction: the
// counterpart of testpmd's txonly, an RXSource that never runs dry.
//
// Like txonly, it writes only the headers of each frame: txonly builds
// each mbuf's 42 bytes of headers and leaves its payload as it is. The
// poller hands FillRX the same buffer every time, so the payload written
// on the first call stays there; a different buffer gets the whole
// frame. Either way the device copies the whole frame into the guest's
// buffers, as net_vhost does.
type sourceHandler struct {
	pin   pinner
	frame []byte
	last  *byte // the buffer the payload was last written to
	seen  uint64
}

func (h *sourceHandler) HandleFrame(qp int, frame, reply []byte) int {
	h.seen++
	return 0
}

func (h *sourceHandler) FillRX(qp int, buf []byte) int {
	if len(buf) < len(h.frame) {
		return 0
	}
	h.pin.maybePin()
	if h.last == &buf[0] {
		copy(buf[:frameHeaderLen], h.frame)
	} else {
		copy(buf, h.frame)
		h.last = &buf[0]
	}
	return len(h.frame)
}

// pinner moves the thread it is called on to one CPU. The handlers call
// it from the device's poller, which runs on a locked OS thread, and it
// acts on the first frame only: the device restarts its poller only on
// control messages, which come before traffic. Afterwards it costs one
// predictable branch per frame.
type pinner struct {
	cpu    int // -1: do not pin
	pinned bool
	err    error
}

func (p *pinner) maybePin() {
	if p.pinned {
		return
	}
	p.pinned = true
	if p.cpu < 0 {
		return
	}
	var set unix.CPUSet
	set.Set(p.cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		p.err = fmt.Errorf("pin poller to CPU %d: %w", p.cpu, err)
	}
}

// processAffinity returns the CPU set of the calling thread, which the
// process's threads are given back after a device's poller was pinned.
func processAffinity() (unix.CPUSet, error) {
	var set unix.CPUSet
	err := unix.SchedGetaffinity(0, &set)
	return set, err
}

// PendingRX implements vhostuser.RXSource: the generator never runs dry.
func (h *sourceHandler) PendingRX(int) bool { return true }
