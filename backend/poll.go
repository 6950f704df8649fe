package backend

// Polling sessions (issue 14, item 1). A stream created with Poll
// (INSANE's consumption=poll) makes its session poll:
// on the host transport, the daemon's polling thread spins on the
// application's TX ring, never raising its waiting flag, so the
// application's Emit writes no eventfd; guestlib spins on the RX ring
// likewise, so the daemon's deliveries write none either. A message then crosses each hop with no
// system call and no scheduler wake-up. The session stops polling when
// its last polling stream closes. Each polling session costs one core
// on the application's side while it lives, and the daemon's one
// polling thread (hostPoller) serves every polling session; sessions
// that do not poll sleep on their eventfds and cost nothing when idle.
//
// The virtio transport has no rings the daemon and the guest application
// share (the guest kernel's socket sits between them): a polling stream
// there carries a warning, and the guest's guestlib spins on nothing.

import (
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// poller is an endpoint that can poll a session's rings.
type poller interface {
	// setPolling switches the endpoint's session to polling (true) or
	// back to wake-ups. It must not block: it runs under the runtime's
	// lock.
	setPolling(on bool)
}

// pollsFor reports whether opts make a session poll. TimeSensitive does
// not, though issue 14 asked for it: on this project's two-core machine
// the spinners it added to every time-sensitive application starved the
// datapath's own goroutines, and veloce-bench tsn's idle-link p50 went
// from 16.6 µs to 10.6 ms. A time-sensitive application that has the
// cores asks for Poll as well.
func pollsFor(opts StreamOptions) bool { return opts.Poll }

// startPollingLocked makes s poll for st if st's options ask for it, and
// returns a warning when s's endpoint cannot poll.
//
// +checklocks:s.rt.mu
func (s *Session) startPollingLocked(st *Stream) string {
	if !pollsFor(st.Options) {
		return ""
	}
	p, ok := s.ep.(poller)
	if !ok {
		return "poll: the virtio transport has no rings shared with the daemon to poll; the session is woken as usual"
	}
	st.polls = true
	s.polls++
	if s.polls == 1 {
		p.setPolling(true)
		s.rt.pollingSessionsLocked(+1)
	}
	return ""
}

// pollingSessionsLocked counts a session that starts (+1) or stops (-1)
// polling; the runtime's datapaths to other hosts are polled while any
// does (dppoll.go).
//
// +checklocks:r.mu
func (r *Runtime) pollingSessionsLocked(d int) {
	r.polling += d
	if r.remote != nil && (r.polling == 0 || r.polling == 1 && d > 0) {
		r.remote.setPolled(r.polling > 0)
	}
}

// stopPollingLocked undoes startPollingLocked for st, which is leaving s.
//
// +checklocks:s.rt.mu
func (s *Session) stopPollingLocked(st *Stream) {
	if !st.polls {
		return
	}
	st.polls = false
	s.polls--
	if s.polls == 0 {
		s.ep.(poller).setPolling(false)
		s.rt.pollingSessionsLocked(-1)
	}
}

// hostPoller is the polling thread for the host transport's polling
// sessions: one goroutine per process (every daemon in it shares it:
// pollThread) that drains every polling client's TX ring in turn. It
// runs while at least one client polls. It is not locked to an OS
// thread: a locked goroutine that spins holds its P, and two of them
// (two daemons in one test process, GOMAXPROCS 2) left no P for the
// rest of the process until preemption, 10 ms later; on an empty round
// it yields instead, so a P is shared with what else is runnable and
// the goroutine spins alone when nothing is. A client's drain goroutine
// hands its ring over (join) and waits until the poller hands it back
// (the client stopped polling or is closing), so each ring has one
// consumer at any time.
type hostPoller struct {
	mu sync.Mutex
	// clients is replaced whole under mu (copy on write), so the polling
	// round reads it with one atomic load and no lock.
	clients atomic.Pointer[[]*hostClient]
	// loops are the datapaths to other hosts of runtimes with polling
	// sessions (dppoll.go), likewise copy on write.
	loops   atomic.Pointer[[]*datapathState]
	running bool // +checklocks:mu
	// hosted: a datapath's polling thread runs the rounds
	// (hostedRound), not a goroutine of the poller's own; stopped, that
	// thread has ended.
	hosted  bool // +checklocksignore
	stopped bool // +checklocks:mu
	// wake ends a pause of the hosting thread (Poller.Wake).
	wake func()
}

// join hands c's TX ring to the poller and returns once it is handed
// back; the caller is c's drain goroutine.
func (p *hostPoller) join(c *hostClient) {
	back := make(chan struct{})
	c.pollBack = back
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		pollThread.join(c) // the hosting datapath's loop has ended
		return
	}
	p.setLocked(append(p.list(), c))
	p.startLocked()
	p.mu.Unlock()
	if p.wake != nil {
		p.wake() // a pausing datapath thread: no eventfd will wake it
	}
	<-back
}

// hostedRound is the polling round of a poller hosted by a datapath's
// own polling thread (a Poller: DPDK, AF_XDP, RDMA), which calls it on
// every turn of its loop (remote.receiver): the runtime's polling
// sessions are then drained by the thread that sends their messages, and
// no polling thread of the process's competes with it for the cores. It
// reports whether there is work or anyone to poll (the datapath's thread
// does not pause while a session polls: the session writes no eventfd to
// wake it). On an empty round with sessions to poll it yields the CPU,
// as the process's polling thread does: the applications' own spinners
// need it.
func (p *hostPoller) hostedRound() bool {
	work, idle := p.round()
	if work == 0 && !idle {
		spinIdle()
	}
	return work > 0 || !idle
}

// stop ends a hosted poller when its datapath's loop ends: every client
// is handed back, and later joins go to the process's polling thread.
func (p *hostPoller) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped = true
	for _, c := range p.list() {
		close(c.pollBack)
	}
	p.setLocked(nil)
}

// startLocked starts the polling thread unless it runs.
//
// +checklocks:p.mu
func (p *hostPoller) startLocked() {
	if !p.running && !p.hosted {
		p.running = true
		go p.run()
	}
}

// addLoop makes the poller drive st (dppoll.go); removeLoop stops it.
// Neither blocks.
func (p *hostPoller) addLoop(st *datapathState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := append(slices.Clone(p.loopList()), st)
	p.loops.Store(&l)
	p.startLocked()
}

func (p *hostPoller) removeLoop(st *datapathState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := slices.DeleteFunc(slices.Clone(p.loopList()), func(x *datapathState) bool { return x == st })
	p.loops.Store(&l)
}

// loopList returns the datapaths the poller drives (not to be changed).
func (p *hostPoller) loopList() []*datapathState {
	if l := p.loops.Load(); l != nil {
		return *l
	}
	return nil
}

// list returns the polling clients (not to be changed).
func (p *hostPoller) list() []*hostClient {
	if l := p.clients.Load(); l != nil {
		return *l
	}
	return nil
}

// setLocked publishes a new client list.
//
// +checklocks:p.mu
func (p *hostPoller) setLocked(cs []*hostClient) { p.clients.Store(&cs) }

// run is the polling thread.
func (p *hostPoller) run() {
	for {
		work, idle := p.round()
		if work > 0 {
			continue
		}
		if idle {
			p.mu.Lock()
			if len(p.list()) == 0 && len(p.loopList()) == 0 { // a join meanwhile finds running set
				p.running = false
				p.mu.Unlock()
				return
			}
			p.mu.Unlock()
		}
		spinIdle()
	}
}

// round is one polling round over every client and datapath: it reports
// how much it did, and whether it has nothing to poll.
func (p *hostPoller) round() (work int, idle bool) {
	cs := p.list()
	for _, c := range cs {
		if c.closed.Load() || !c.polling.Load() {
			p.leave(c)
			continue
		}
		work += c.drainOnce(true)
	}
	ls := p.loopList()
	for _, st := range ls {
		switch l := st.loop.Load(); {
		case l == nil: // its remote has not started yet
		case l.stopped.Load():
			p.removeLoop(st) // its remote has ended
		default:
			work += l.pollOnce()
		}
	}
	return work, len(cs) == 0 && len(ls) == 0
}

// leave takes c off the poller and hands its ring back.
func (p *hostPoller) leave(c *hostClient) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.list()
	if i := slices.Index(l, c); i >= 0 {
		p.setLocked(slices.Delete(slices.Clone(l), i, i+1))
		close(c.pollBack)
	}
}

// hostPoller returns the poller of r's polling sessions: the one its
// first Poller datapath hosts, or the process's polling thread.
func (r *Runtime) hostPoller() *hostPoller {
	if r.remote != nil && r.remote.host != nil {
		return r.remote.host
	}
	return &pollThread
}

// pollThread is the process's polling thread.
var pollThread hostPoller

// spinIdle is one empty polling round: it gives the CPU to whatever else
// is runnable on it (sched_yield: one system call, returning at once
// when nothing is). Yielding on every empty round is what made polling
// pay on two cores shared by three spinners (two applications' Consumes
// and the daemon's polling thread): a ping-pong through one daemon took
// 2.0-3.4 µs against 6.6 µs sleeping; yielding one round in 16 it took
// 33.9 µs, and adding a runtime.Gosched to each round 16-17 µs. Other
// goroutines of this P are taken by the other Ps, or preempt it.
func spinIdle() {
	unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
}
