package vhostuser

import (
	"runtime"
)

// Faults on frontend memory.
//
// A frontend can shrink (ftruncate) a file it handed over after the device
// mapped it; touching the cut part raises SIGBUS, which would kill the
// daemon. The device checks sizes at map time, and the goroutines that
// touch frontend memory (every queue-pair poller, and the control
// goroutine in Serve) run with debug.SetPanicOnFault(true): a fault there
// becomes a runtime.Error panic carrying the address, which the poller
// loop and the message handler boundary recover, turning it into a
// *FaultError when the address lies in a mapping the frontend handed over.
// Any other panic (a bug) is re-raised.

// addrError is the runtime's fault panic (runtime.Error with Addr).
type addrError interface {
	runtime.Error
	Addr() uintptr
}

// mappings is the frontend memory a goroutine may touch.
type mappings struct {
	mem      *Memory
	dirty    *DirtyLog
	inflight *inflightRegion
}

// where names the mapping holding addr, or "" when none does.
func (m mappings) where(addr uintptr) string {
	switch {
	case m.mem != nil && m.mem.spans(addr):
		return "guest memory"
	case m.dirty != nil && spans(m.dirty.mapping, addr):
		return "dirty log"
	case m.inflight != nil && spans(m.inflight.mapping, addr):
		return "inflight region"
	}
	return ""
}

// faultFrom turns a recovered panic value into a *FaultError when it is a
// fault on one of ms's mappings, and re-panics otherwise. path names the
// code that faulted.
func faultFrom(v any, path string, ms ...mappings) *FaultError {
	if ae, ok := v.(addrError); ok {
		for _, m := range ms {
			if w := m.where(ae.Addr()); w != "" {
				return &FaultError{Addr: ae.Addr(), Where: w + " (" + path + ")"}
			}
		}
	}
	panic(v)
}

// spans reports whether addr lies in one of m's mappings, including
// regions removed from the table but not yet unmapped (there are none:
// RemoveRegion unmaps at once, after the caller quiesced the rings).
func (m *Memory) spans(addr uintptr) bool {
	for _, r := range m.table.Load().byGuest {
		if spans(r.mapping, addr) {
			return true
		}
	}
	return false
}
