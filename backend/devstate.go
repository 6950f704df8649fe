package backend

// Device state in the hypervisor's migration stream.
//
// When a frontend negotiates vhost-user DEVICE_STATE (Cloud Hypervisor;
// QEMU 10 and later for virtio-net), the port's stream state can travel
// inside the hypervisor's own migration stream instead of over a
// daemon-to-daemon channel: the source's device hands it to the frontend
// once the guest is stopped, the destination's device receives it before
// its rings start (vhostuser/devstate.go has the protocol side: bounds,
// deadlines, refusals).
//
// The port offers DEVICE_STATE only when PortOptions.SaveState and
// PortOptions.LoadState are both set; what they move is the migration
// work's business (the port snapshot, signed with the daemons' key so a
// frontend cannot inject sessions, exported on save and imported whole on
// load). Both are called on a transfer goroutine, one at a time per port,
// while the port's rings are stopped; the bytes are bounded by
// vhostuser.MaxStateSize either way.

import (
	"errors"
	"io"

	"github.com/veloce-io/veloce/vhostuser"
)

// portState is a port's vhostuser.StateTransferer: PortOptions.SaveState
// and LoadState, given the port.
type portState struct{ p *Port }

var _ vhostuser.StateTransferer = portState{}

// SaveState implements vhostuser.StateTransferer.
func (s portState) SaveState(w io.Writer) error {
	if s.p.opts.SaveState == nil {
		return errors.New("port " + s.p.opts.Name + ": no SaveState hook")
	}
	return s.p.opts.SaveState(s.p, w)
}

// LoadState implements vhostuser.StateTransferer.
func (s portState) LoadState(r io.Reader) error {
	if s.p.opts.LoadState == nil {
		return errors.New("port " + s.p.opts.Name + ": no LoadState hook")
	}
	return s.p.opts.LoadState(s.p, r)
}

// deviceState is what the port's device moves through DEVICE_STATE: nil
// (the feature is not offered) unless both hooks are set.
func (p *Port) deviceState() vhostuser.StateTransferer {
	if p.opts.SaveState == nil || p.opts.LoadState == nil {
		return nil
	}
	return portState{p}
}
