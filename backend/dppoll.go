package backend

// Polling the datapath to other hosts (issue 14, item 1). While a
// runtime has polling sessions, the datapaths it drives itself — kernel
// UDP, whose receive waits in the Go netpoller and whose sends a sender
// goroutine makes when kicked — are driven by the process's polling
// thread instead (pollThread, poll.go): each round it takes what the
// socket holds with one non-blocking recvmmsg(2) and delivers it, and
// sends what the runtime queued, on the thread that drained the
// applications' rings. A message from a polling application to a peer
// and back then meets no goroutine wake-up in either daemon: the only
// waits are the kernel's. When the last polling session stops, the
// datapath's own goroutines take over again. Datapaths that run their
// own polling loop (Poller: DPDK, AF_XDP, RDMA) are not affected.
//
// Each side has one driver at a time: the receiver goroutine holds
// dpLoop.rxMu around each RecvBatch and the handling of its batch, the
// sender goroutine holds txMu around each batch it sends, and the
// polling thread only ever TryLocks them, so it never waits for a
// goroutine that is inside a 100 ms receive (it gets the socket on a
// later round, once that goroutine has seen the hand-over and parked).
// Both drivers share the same receive state (directory fragments,
// reassembly, reliable acks) and the same batch in hand, so nothing is
// lost or sent twice at a hand-over.

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/internal/wire"
)

// dpLoop is the state of a datapath the runtime drives itself.
type dpLoop struct {
	st *datapathState

	rxMu sync.Mutex
	rx   *receiveState // +checklocks:rxMu
	pkts []wire.Packet // +checklocks:rxMu

	txMu sync.Mutex
	fl   *flusher // +checklocks:txMu

	// woken counts the batches the receiver and sender goroutines moved,
	// polledBatches those the polling thread did (DatapathInfo).
	woken, polledBatches atomic.Uint64
	// inlineBatches counts the batches emitters sent themselves
	// (flushInline).
	inlineBatches atomic.Uint64

	// stopped is set when the remote's run ends: the polling thread
	// leaves the datapath alone from then on.
	stopped atomic.Bool
}

// newLoop makes st's dpLoop, with its receive buffers.
func (rm *remote) newLoop(st *datapathState) *dpLoop {
	l := &dpLoop{st: st, rx: rm.newReceiveState(st.index), pkts: make([]wire.Packet, remoteBatch),
		fl: &flusher{rm: rm, st: st, pkts: make([]wire.Packet, remoteBatch), ids: make([]uint32, remoteBatch), seal: rm.newSealer()}}
	for i := range l.pkts {
		l.pkts[i].Buf = make([]byte, 65536)
	}
	return l
}

// pollOnce is one round of the polling thread on l: a non-blocking
// receive and one batch sent, each only if the side's goroutine is not
// in it. It returns how much it did (0: nothing).
//
// +checklocksignore: TryLock, which checklocks does not follow.
func (l *dpLoop) pollOnce() int {
	work := 0
	if l.rxMu.TryLock() {
		work += l.pollRXLocked()
		l.rxMu.Unlock()
	}
	if l.txMu.TryLock() {
		work += l.pollTXLocked()
		l.txMu.Unlock()
	}
	return work
}

// pollRXLocked is pollOnce's receive.
//
// +checklocks:l.rxMu
func (l *dpLoop) pollRXLocked() int {
	n, err := l.st.dp.RecvBatch(l.pkts, 0)
	if err != nil || n == 0 {
		return 0
	}
	l.rx.handle(l.pkts[:n])
	l.polledBatches.Add(1)
	return n
}

// pollTXLocked is pollOnce's send.
//
// +checklocks:l.txMu
func (l *dpLoop) pollTXLocked() int {
	if had, _ := l.fl.step(); !had {
		return 0
	}
	l.polledBatches.Add(1)
	return 1
}

// receive is one RecvBatch by the datapath's receiver goroutine, waiting
// up to timeout, and the handling of what came.
func (l *dpLoop) receive(timeout time.Duration) error {
	l.rxMu.Lock()
	defer l.rxMu.Unlock()
	n, err := l.st.dp.RecvBatch(l.pkts, timeout)
	if err != nil {
		return err
	}
	if n > 0 {
		l.woken.Add(1)
		l.rx.handle(l.pkts[:n])
	}
	return nil
}

// send is one batch by the datapath's sender goroutine: it reports
// whether there was one, whether some of it is still in hand (the send
// queue was full), and else how long the gate keeps held messages.
func (l *dpLoop) send() (had, full bool, wait time.Duration) {
	l.txMu.Lock()
	defer l.txMu.Unlock()
	had, wait = l.fl.step()
	if had {
		l.woken.Add(1)
	}
	return had, l.fl.done < l.fl.n, wait
}

// sendBatch is SendBatch on the datapath for one who is not its driver
// (the directory sender).
func (l *dpLoop) sendBatch(pkts []wire.Packet) (int, error) {
	l.txMu.Lock()
	defer l.txMu.Unlock()
	return l.st.dp.SendBatch(pkts)
}

// recvInterrupter is a Datapath whose RecvBatch wait can be cut short
// from another goroutine (plugins/udp).
type recvInterrupter interface {
	// InterruptRecv makes a RecvBatch waiting now return at once, as if
	// its time ran out.
	InterruptRecv()
}

// Sending on the emitter's goroutine. An application's drain goroutine
// that emits a short batch of messages to peers (inlineBatch) sends them
// itself, at the batch's end, when the datapath's sender goroutine is not
// sending
// (batchEmits, flushInline): the message then goes out without the
// sender's wake-up, and a batch still goes in one sendmmsg(2). While a
// batch is being emitted, queue does not kick the sender; what the batch
// end cannot send (the sender holds the datapath, the send queue is
// full, a gate is closed) is left to the sender, kicked then.

// batchEmits says the caller is about to emit a batch and will call
// flushInline after it.
func (rm *remote) batchEmits() { rm.inline.Add(1) }

// flushInline ends a batch of batchEmits: it sends what the runtime
// queued on the datapaths it drives itself, on the caller's goroutine,
// a few batches at most, and kicks the sender of any datapath it left
// messages on.
//
// +checklocksignore: TryLock, which checklocks does not follow.
func (rm *remote) flushInline() {
	rm.inline.Add(-1)
	for _, st := range rm.dps {
		l := st.loop.Load()
		if l == nil || st.polled.Load() {
			continue // a Poller's thread, or the polling thread, sends
		}
		if st.pushed.Load() == st.done.Load() {
			continue // nothing queued
		}
		if l.txMu.TryLock() {
			for range 4 {
				if l.sendInlineLocked() == 0 {
					break
				}
			}
			l.txMu.Unlock()
		}
		if st.pushed.Load() != st.done.Load() {
			select {
			case st.kick <- struct{}{}:
			default:
			}
		}
	}
}

// sendInlineLocked is one batch sent by flushInline: 0 when there was
// none or the datapath took only part of it (the sender goes on).
//
// +checklocks:l.txMu
func (l *dpLoop) sendInlineLocked() int {
	had, _ := l.fl.step()
	if !had || l.fl.done < l.fl.n {
		return 0
	}
	l.inlineBatches.Add(1)
	return 1
}

// setPolled hands the datapaths the runtime drives to the polling thread
// (on) or back to their goroutines. It does not block (it runs under the
// runtime's lock).
func (rm *remote) setPolled(on bool) {
	for _, st := range rm.dps {
		if st.poller != nil {
			continue
		}
		st.polled.Store(on)
		if on {
			pollThread.addLoop(st)
			if i, ok := st.dp.(recvInterrupter); ok {
				i.InterruptRecv() // the receiver goroutine sees the hand-over now, not in 100 ms
			}
			continue
		}
		pollThread.removeLoop(st)
		for _, c := range [...]chan struct{}{st.rxResume, st.txResume} {
			select {
			case c <- struct{}{}:
			default:
			}
		}
	}
}

// waitPolled parks a datapath goroutine while the polling thread drives
// its datapath; resume is its side's wake-up. It returns false when ctx
// ends.
func (st *datapathState) waitPolled(done <-chan struct{}, resume <-chan struct{}) bool {
	for st.polled.Load() {
		select {
		case <-done:
			return false
		case <-resume:
		}
	}
	return true
}
