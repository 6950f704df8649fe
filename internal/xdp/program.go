package xdp

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// AttachMode says where on the receive path the program runs.
type AttachMode uint8

// Attach modes.
const (
	// AttachAuto tries native (driver) mode first and falls back to
	// generic mode.
	AttachAuto AttachMode = iota
	// AttachNative runs the program in the driver (XDP_FLAGS_DRV_MODE);
	// veth has it, and zero-copy needs it.
	AttachNative
	// AttachGeneric runs it on the socket buffer after the driver
	// (XDP_FLAGS_SKB_MODE): every interface, copy mode only.
	AttachGeneric
)

func (m AttachMode) String() string {
	switch m {
	case AttachNative:
		return "native"
	case AttachGeneric:
		return "generic"
	}
	return "auto"
}

// ProgramConfig describes what the program steers to the socket.
type ProgramConfig struct {
	// Ifindex is the interface to attach to.
	Ifindex int
	// Queues is the number of queue entries in the XSKMAP (the highest
	// queue a socket registers for, plus one).
	Queues int
	// IP and Port are the IPv4 address and UDP port (the wire's) whose
	// datagrams go to the socket.
	IP   [4]byte
	Port uint16
	// Mode is where to attach.
	Mode AttachMode
}

// Program is the loaded and attached XDP program with its XSKMAP. It owns
// the program, the map and the link; Close detaches the program (the link
// is the attachment: no program is left on the interface once it closes).
type Program struct {
	prog *ebpf.Program
	xsks *ebpf.Map
	lnk  link.Link
	mode AttachMode
	// queues are the XSKMAP entries Register made, which Close deletes.
	queues []uint32
}

// Stage is the step of LoadProgram that failed, for the caller's error.
type Stage string

// StageError is LoadProgram's error: the stage that failed and why.
type StageError struct {
	Stage Stage
	Err   error
}

func (e *StageError) Error() string { return string(e.Stage) + ": " + e.Err.Error() }
func (e *StageError) Unwrap() error { return e.Err }

// Stages.
const (
	StageMap    Stage = "create XSKMAP"
	StageLoad   Stage = "load XDP program"
	StageAttach Stage = "attach XDP program"
)

// LoadProgram creates the XSKMAP, loads the program and attaches it.
// Register a socket before traffic is expected: until then, and for any
// queue without a socket, the program passes every frame to the kernel.
// Errors are *StageError.
func LoadProgram(cfg ProgramConfig) (_ *Program, err error) {
	if cfg.Queues < 1 {
		cfg.Queues = 1
	}
	xsks, err := ebpf.NewMap(&ebpf.MapSpec{Name: "veloce_xsks", Type: ebpf.XSKMap, KeySize: 4, ValueSize: 4, MaxEntries: uint32(cfg.Queues)})
	if err != nil {
		return nil, &StageError{StageMap, err}
	}
	p := &Program{xsks: xsks}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	p.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{Name: "veloce_xdp", Type: ebpf.XDP, License: "Dual MIT/GPL",
		Instructions: Instructions(cfg.IP, cfg.Port, xsks.FD())})
	if err != nil {
		return nil, &StageError{StageLoad, err}
	}
	try := []AttachMode{cfg.Mode}
	if cfg.Mode == AttachAuto {
		try = []AttachMode{AttachNative, AttachGeneric}
	}
	var errs []error
	for _, m := range try {
		flags := link.XDPGenericMode
		if m == AttachNative {
			flags = link.XDPDriverMode
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: p.prog, Interface: cfg.Ifindex, Flags: flags})
		if err == nil {
			p.lnk, p.mode = l, m
			return p, nil
		}
		errs = append(errs, fmt.Errorf("%s mode: %w", m, err))
	}
	return nil, &StageError{StageAttach, errors.Join(errs...)}
}

// Mode returns the mode the program was attached in (native or generic).
func (p *Program) Mode() AttachMode { return p.mode }

// Register steers the queue's datagrams to the socket fd.
func (p *Program) Register(queue, fd int) error {
	if err := p.xsks.Put(uint32(queue), uint32(fd)); err != nil {
		return fmt.Errorf("register xsk for queue %d: %w", queue, err)
	}
	p.queues = append(p.queues, uint32(queue))
	return nil
}

// Close detaches the program and frees it and its map. It deletes the
// map's entries first: an XSKMAP entry holds its socket, and the kernel
// frees a closed map later (after an RCU grace period, on a work queue),
// so without that a socket closed right after would stay bound to its
// queue for a while and a new one would get EBUSY.
func (p *Program) Close() error {
	var errs []error
	if p.lnk != nil {
		errs = append(errs, p.lnk.Close())
	}
	for _, q := range p.queues {
		if err := p.xsks.Delete(q); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete XSKMAP entry %d: %w", q, err))
		}
	}
	p.queues = nil
	if p.prog != nil {
		errs = append(errs, p.prog.Close())
	}
	if p.xsks != nil {
		errs = append(errs, p.xsks.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close XDP program: %w", err)
	}
	return nil
}

// Frame offsets the program checks.
const (
	offEtherType = 12
	offVersion   = 14      // version and header length: 0x45, no options
	offFrag      = 14 + 6  // flags and fragment offset
	offProto     = 14 + 9  // protocol
	offDstIP     = 14 + 16 // destination address
	offDstPort   = 14 + 20 + 2
	minLen       = 14 + 20 + 8
	xdpPass      = 2 // XDP_PASS
)

// Instructions returns the XDP program. In C it would read:
//
//	if (data + 42 > data_end) return XDP_PASS;
//	if (eth->h_proto != htons(ETH_P_IP) || ip->ihl_version != 0x45 ||
//	    ip->protocol != IPPROTO_UDP || (ip->frag_off & htons(0x3fff)) ||
//	    ip->daddr != IP || udp->dest != htons(PORT)) return XDP_PASS;
//	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
//
// Frames with IP options or fragments go to the kernel; the plugin's peers
// send neither. A queue with no socket in the map falls back to XDP_PASS
// (the flags argument of bpf_redirect_map), so nothing is lost while the
// socket is being set up. Packet bytes are loaded in the machine's order,
// so the constants are the network-order bytes as the loads see them.
func Instructions(ip [4]byte, port uint16, mapFD int) asm.Instructions {
	le := binary.NativeEndian
	var p2 [2]byte
	binary.BigEndian.PutUint16(p2[:], port)
	etherIPv4 := int32(le.Uint16([]byte{0x08, 0x00}))
	fragMask := int32(le.Uint16([]byte{0x3f, 0xff}))
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),              // ctx
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word), // data
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word), // data_end
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, minLen),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.LoadMem(asm.R5, asm.R2, offEtherType, asm.Half),
		asm.JNE.Imm32(asm.R5, etherIPv4, "pass"),
		asm.LoadMem(asm.R5, asm.R2, offVersion, asm.Byte),
		asm.JNE.Imm32(asm.R5, 0x45, "pass"),
		asm.LoadMem(asm.R5, asm.R2, offProto, asm.Byte),
		asm.JNE.Imm32(asm.R5, 17, "pass"),
		asm.LoadMem(asm.R5, asm.R2, offFrag, asm.Half),
		asm.And.Imm32(asm.R5, fragMask),
		asm.JNE.Imm32(asm.R5, 0, "pass"),
		asm.LoadMem(asm.R5, asm.R2, offDstIP, asm.Word),
		asm.JNE.Imm32(asm.R5, int32(le.Uint32(ip[:])), "pass"),
		asm.LoadMem(asm.R5, asm.R2, offDstPort, asm.Half),
		asm.JNE.Imm32(asm.R5, int32(le.Uint16(p2[:])), "pass"),
		asm.LoadMem(asm.R2, asm.R6, 16, asm.Word), // rx_queue_index
		asm.LoadMapPtr(asm.R1, mapFD),
		asm.Mov.Imm(asm.R3, xdpPass),
		asm.FnRedirectMap.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R0, xdpPass).WithSymbol("pass"),
		asm.Return(),
	}
}
