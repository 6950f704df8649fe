package vhostuser

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/veloce-io/veloce/internal/fd"
	"golang.org/x/sys/unix"
)

// Poll groups: the pollers pinned to one CPU share one thread.
//
// Two busy-polling threads on one core do not share it round by round:
// the scheduler gives each a time slice of milliseconds, and a ring of a
// thousand entries fills (or drains) in a fraction of that. A VM-to-VM
// message then waits for the slice of the receiving port's poller, and
// a Credit the receiver sent for the slice of its own (veloce-bench v2v:
// 0.02 Mpps against testpmd's 3.6). So, as DPDK's PMD threads do (a
// testpmd forwarding lcore, an OVS-DPDK PMD thread serving several
// ports' queues), the queue pairs NetOptions.PollCPUs pins to one CPU,
// of every device in the process, are served by one pollGroup: one
// locked, pinned thread that runs a round of each member in turn, and
// sleeps, when every member has been idle for spinRounds rounds, on all
// the members' eventfds at once. Unpinned pollers keep a thread each.
//
// Fault isolation is per member: each member's round runs under its own
// recover, so a fault on one frontend's memory, or a ring its driver
// broke, drops that frontend (as on a poller of its own) and the others
// are served on. A member cannot hold the thread: a round is bounded
// (txBurst chains, the RX ring's buffers), whatever the driver wrote.
//
// Membership: a poller joins when it starts (joinPollGroup); it leaves
// when it is stopping, at the top of the group's next pass, which closes
// its done channel: its stop() (and the device's quiesce, which also
// counts its rounds and sees it parked) work as for a poller of its own.
// The group's goroutine ends with its last member.

// pollGroup serves the pinned pollers of one CPU.
type pollGroup struct {
	cpu  int
	wake *fd.EventFD // owned: a member joined
	// members is replaced whole under pollGroups.mu; the loop reads it
	// with one atomic load a pass.
	members atomic.Pointer[[]*poller]
	// fds and evs are sleep's poll set (wake, then each member's),
	// rebuilt at each sleep in place; only the loop touches them.
	fds []unix.PollFd
	evs []*fd.EventFD
}

// pollGroups is the process's groups by CPU.
var pollGroups struct {
	mu sync.Mutex
	m  map[int]*pollGroup // +checklocks:mu
}

// joinPollGroup adds p to cpu's group, starting the group when it has
// none.
func joinPollGroup(cpu int, p *poller) error {
	pollGroups.mu.Lock()
	defer pollGroups.mu.Unlock()
	if g := pollGroups.m[cpu]; g != nil {
		ms := append(append([]*poller(nil), *g.members.Load()...), p)
		g.members.Store(&ms)
		g.wake.Signal()
		return nil
	}
	wake, err := fd.NewEventFD()
	if err != nil {
		return fmt.Errorf("poll group on CPU %d: %w", cpu, err)
	}
	g := &pollGroup{cpu: cpu, wake: wake}
	ms := []*poller{p}
	g.members.Store(&ms)
	if pollGroups.m == nil {
		pollGroups.m = map[int]*pollGroup{}
	}
	pollGroups.m[cpu] = g
	go g.run()
	return nil
}

// reap removes the stopping members and closes their done channels. It
// reports whether the group has no members left, in which case it is
// gone from pollGroups and must end.
func (g *pollGroup) reap() (empty bool) {
	ms := *g.members.Load()
	stopping := false
	for _, p := range ms {
		if p.stopping.Load() {
			stopping = true
			break
		}
	}
	if !stopping {
		return false
	}
	pollGroups.mu.Lock()
	defer pollGroups.mu.Unlock()
	ms = *g.members.Load() // joins may have happened meanwhile
	var keep []*poller
	var gone []*poller
	for _, p := range ms {
		if p.stopping.Load() {
			gone = append(gone, p)
		} else {
			keep = append(keep, p)
		}
	}
	g.members.Store(&keep)
	for _, p := range gone {
		p.addStats()
		close(p.done)
	}
	if len(keep) == 0 {
		delete(pollGroups.m, g.cpu)
		return true
	}
	return false
}

func (g *pollGroup) run() {
	runtime.LockOSThread()
	// The thread's affinity is changed for good: it dies with the
	// goroutine instead of returning to the runtime's pool. A fault on a
	// frontend's memory becomes a panic serve recovers (per member).
	debug.SetPanicOnFault(true)
	var set unix.CPUSet
	set.Set(g.cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		if ms := *g.members.Load(); len(ms) > 0 {
			ms[0].dev.log.Warn("cannot pin polling thread", "cpu", g.cpu, "err", err)
		}
	}
	defer g.wake.Close()
	idle := 0
	for {
		if g.reap() {
			return
		}
		ms := *g.members.Load()
		n := 0
		for _, p := range ms {
			if !p.stopping.Load() {
				n += g.serve(p)
			}
		}
		if n > 0 {
			idle = 0
			continue
		}
		idle++
		if idle < spinRounds {
			continue
		}
		// Going to sleep, every member at once, as a poller of its own
		// does (see poller.run): ask for kicks, then look once more.
		pending := false
		for _, p := range ms {
			p.sleeping.Store(true)
			if g.enable(p) {
				pending = true
			}
		}
		woken := true
		if !pending {
			woken = g.sleep(ms)
		}
		for _, p := range ms {
			p.sleeping.Store(false)
			g.disable(p)
		}
		idle = 0
		if !woken {
			idle = spinRounds - 1 // a timeout: look once, then sleep again
		}
	}
}

// serve runs one round of p; a fault on p's frontend's memory drops that
// frontend and ends p's membership, the group goes on.
func (g *pollGroup) serve(p *poller) (n int) {
	defer g.recoverMember(p)
	if !p.started {
		p.started = true
		p.disableNotifications()
	}
	return p.round()
}

// recoverMember is serve's and the notification toggles' recovery.
func (g *pollGroup) recoverMember(p *poller) {
	if p.rxLocked {
		p.unlockRX()
	}
	if v := recover(); v != nil {
		p.faulted(v) // re-panics what is not a fault on p's mappings
		p.stopping.Store(true)
	}
}

func (g *pollGroup) enable(p *poller) (pending bool) {
	defer g.recoverMember(p)
	if p.stopping.Load() {
		return true // reaped at the next pass
	}
	return p.enableNotifications()
}

func (g *pollGroup) disable(p *poller) {
	defer g.recoverMember(p)
	if !p.stopping.Load() {
		p.disableNotifications()
	}
}

// sleep waits on the group's and every member's eventfds (a member's RX
// kick only when it waits for RX buffers) and reports whether one fired
// before the timeout.
func (g *pollGroup) sleep(ms []*poller) bool {
	g.fds = append(g.fds[:0], unix.PollFd{Fd: int32(g.wake.Int()), Events: unix.POLLIN})
	g.evs = append(g.evs[:0], g.wake)
	for _, p := range ms {
		fds := p.pollFDs
		if p.rxPoll >= 0 && !p.rxNotify {
			fds = fds[:p.rxPoll]
		}
		g.fds = append(g.fds, fds...)
		g.evs = append(g.evs, p.pollEvs[:len(fds)]...)
	}
	for i := range g.fds {
		g.fds[i].Revents = 0
	}
	for _, p := range ms {
		p.sleeps.Add(1)
		p.parked.Store(true)
	}
	n, err := unix.Poll(g.fds, sleepTimeoutM)
	for _, p := range ms {
		p.parked.Store(false)
	}
	if err != nil {
		return errors.Is(err, unix.EINTR)
	}
	for i, pfd := range g.fds {
		if pfd.Revents&unix.POLLIN != 0 {
			g.evs[i].Drain()
		}
	}
	return n > 0
}
