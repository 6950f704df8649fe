package backend

import "net/netip"

// LocalDeliver receives a message for one of a local session's sinks. It
// runs synchronously on the goroutine that delivers the message: a
// datapath's receive loop (for a Poller such as plugins/dpdk, its pinned
// polling thread) for messages from peers, the emitter's for local ones.
// It must not block, and must not keep payload after it returns (copy
// it; Emit from inside LocalDeliver copies too). It returns whether the
// message was taken; false counts as a drop for the sink.
type LocalDeliver func(sinkID uint32, source, seq uint64, payload []byte) bool

// OpenLocalSession attaches an application living in this process and
// reached by a plain function call: no host socket, no queue, no copy
// beyond the runtime's own. It exists for benchmarks and tests that
// measure the runtime and its datapaths alone (internal/benchdpdk);
// applications attach over the host transport (guestlib).
func (r *Runtime) OpenLocalSession(deliver LocalDeliver) *Session {
	return r.OpenSession(&localEndpoint{fn: deliver}, netip.AddrPort{})
}

// localEndpoint is OpenLocalSession's endpoint (a pointer, so endpoints
// stay comparable).
type localEndpoint struct{ fn LocalDeliver }

func (e *localEndpoint) deliver(sk *Sink, source, seq uint64, payload []byte) bool {
	return e.fn(sk.ID, source, seq, payload)
}
func (e *localEndpoint) String() string         { return "local" }
func (e *localEndpoint) sessionClosed(*Session) {}
