package guestlib

import (
	"context"
	"time"

	"golang.org/x/sys/unix"
)

// Polling sessions (StreamOptions.Poll, INSANE's consumption=poll). On the host transport, a session with a
// polling stream never sleeps on its eventfds: the daemon's polling
// thread spins on the session's TX ring, so Emit signals nothing, and
// guestlib spins on the RX ring, so the daemon signals nothing either. A
// Consume on such a session takes messages off the ring itself, on the
// caller's goroutine, with no hand-off from the receive goroutine (which
// stays off the CPU while Consumes keep coming, consumeGrace); Callbacks
// then run on that goroutine as well. With no Consume under way the
// receive goroutine spins. The cost is a core kept busy on each side
// while the session polls; closing the last polling stream ends it. The
// virtio transport has no rings shared with the daemon: there Poll only
// earns the stream a warning.

// startPolling counts a polling stream of the session in.
func (h *hostShm) startPolling() {
	if h.polling.Add(1) == 1 {
		h.rxNote.Signal() // the receive goroutine may sleep on it
	}
}

// stopPolling counts a polling stream out.
func (h *hostShm) stopPolling() { h.polling.Add(-1) }

// consumeGrace is how long after a polling Consume returned the receive
// goroutine still leaves the ring to the application's next Consume (it
// checks every quarter of it), so a loop of Consumes keeps it off the
// CPU without waking it per message.
const consumeGrace = time.Millisecond

// consumeDrives reports whether polling Consumes are driving the ring.
func (h *hostShm) consumeDrives() bool {
	return h.consumers.Load() > 0 || time.Now().UnixNano()-h.lastConsume.Load() < int64(consumeGrace)
}

// pollIdle is one empty polling round: it gives the CPU to whatever else
// is runnable on it (sched_yield: one system call, returning at once
// when nothing is). Yielding on every empty round is what made polling
// pay on two cores shared by three spinners (two applications' Consumes
// and the daemon's polling thread): a ping-pong through one daemon took
// 2.0-3.4 µs against 6.6 µs sleeping; yielding one round in 16 it took
// 33.9 µs, and adding a runtime.Gosched to each round 16-17 µs. Other
// goroutines of this P are taken by the other Ps, or preempt it.
func pollIdle() {
	unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
}

// consumePoll is Consume on a polling host session: it spins, taking
// messages off the RX ring itself whenever its own queue is empty.
func (sk *Sink) consumePoll(ctx context.Context, h *hostShm) (*Message, error) {
	h.consumers.Add(1)
	defer func() {
		h.lastConsume.Store(time.Now().UnixNano())
		h.consumers.Add(-1)
	}()
	for {
		select {
		case m, ok := <-sk.queue:
			if !ok {
				return nil, ErrClosed
			}
			sk.took()
			return m, nil
		default:
		}
		if h.waiters.Load() > 0 {
			h.wakeTXWaiters()
		}
		if h.rxPoll.TryLock() {
			n := h.receiveOnce(sk.s) // +checklocksforce: TryLock succeeded
			h.rxPoll.Unlock()
			if n > 0 {
				continue
			}
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if h.stopped.Load() && len(sk.queue) == 0 {
			return nil, ErrClosed
		}
		pollIdle()
	}
}
