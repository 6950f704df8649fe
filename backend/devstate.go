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
	"fmt"
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

// withDeviceState gives a port of a daemon with a migration key the
// default DEVICE_STATE hooks, unless it has its own: on save the port's
// stream snapshot signed with key (the port frozen for the export, then
// thawed: if the migration fails the rings restart on this daemon and the
// streams go on; if it completes the frontend disconnects and the port's
// sessions are dropped here), on load the snapshot verified under key and
// imported whole. A frontend thus carries the state but cannot forge it:
// without the fleet's key an import is refused. Unlike the daemon-to-daemon
// hand-off, nothing forwards messages that reach the source after the
// save; they are counted as the source port's drops.
func withDeviceState(o *PortOptions, key []byte) {
	if key == nil || o.SaveState != nil || o.LoadState != nil {
		return
	}
	o.SaveState = func(p *Port, w io.Writer) error {
		if p.rt == nil {
			return fmt.Errorf("port %s: %w", p.opts.Name, ErrNoRuntime)
		}
		p.freeze(nil)
		b, err := p.ExportSnapshot(key)
		p.thaw()
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		if err == nil {
			p.logInfo("stream state saved into the hypervisor's migration stream", "bytes", len(b))
		}
		return err
	}
	o.LoadState = func(p *Port, r io.Reader) error {
		b, err := io.ReadAll(io.LimitReader(r, vhostuser.MaxStateSize+1))
		if err != nil {
			return fmt.Errorf("port %s: read device state: %w", p.opts.Name, err)
		}
		if len(b) > vhostuser.MaxStateSize {
			return fmt.Errorf("port %s: device state over %d bytes", p.opts.Name, vhostuser.MaxStateSize)
		}
		if err := p.ImportSnapshot(b, key); err != nil {
			return err
		}
		p.logInfo("stream state loaded from the hypervisor's migration stream", "bytes", len(b))
		return nil
	}
}

// logInfo logs on the port's logger, if it has one.
func (p *Port) logInfo(msg string, args ...any) {
	if p.log != nil {
		p.log.Info(msg, args...)
	}
}
