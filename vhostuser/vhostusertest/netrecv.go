package vhostusertest

import (
	"errors"
	"time"
)

// ErrNoRXFrame: the device put nothing on the RX ring within the timeout.
var ErrNoRXFrame = errors.New("no frame on the RX ring within the timeout")

// RecvRX waits up to timeout for the next frame the device put on the RX
// ring (a buffer PostRX offered) and returns a copy of it, virtio-net
// header stripped. Used TX entries are taken on the way.
func (p *NetPeer) RecvRX(timeout time.Duration) ([]byte, error) {
	_, f, err := p.RecvRXHeader(timeout)
	return f, err
}

// RecvRXHeader is RecvRX, also returning a copy of the frame's
// virtio-net header (NetHeaderLen bytes).
func (p *NetPeer) RecvRXHeader(timeout time.Duration) (hdr, frame []byte, err error) {
	deadline := time.Now().Add(timeout)
	for {
		for p.usedTX() {
		}
		if id, n, ok := p.usedRX(); ok {
			gpa, known := p.rxBufs[id]
			delete(p.rxBufs, id)
			if !known || n < NetHeaderLen || n > NetHeaderLen+1514 {
				return nil, nil, errors.New("vhostusertest: used RX entry for no posted buffer, or of a bad length")
			}
			b := append([]byte(nil), p.G.Bytes(gpa, uint64(n))...)
			return b[:NetHeaderLen:NetHeaderLen], b[NetHeaderLen:], nil
		}
		if time.Now().After(deadline) {
			return nil, nil, ErrNoRXFrame
		}
		p.waitCall(10 * time.Millisecond)
	}
}

// RepostRX discards the frames the device put on the RX ring and posts n
// fresh buffers; once no posted buffer is outstanding it reuses the RX
// buffer space from its start (split rings), so a benchmark can run
// longer than the guest's RAM lasts. It does not kick.
func (p *NetPeer) RepostRX(n int) {
	for {
		id, _, ok := p.usedRX()
		if !ok {
			break
		}
		delete(p.rxBufs, id)
	}
	if len(p.rxBufs) == 0 && p.RX != nil {
		p.RX.ResetData(p.Opts.GuestAddr + 2*uint64(p.Opts.QueueSize)*32) // DialNetPeer's layout
	}
	for range n {
		p.addRX()
	}
}
