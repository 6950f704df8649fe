package backend

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/veloce-io/veloce/control"
	"github.com/veloce-io/veloce/internal/ring"
	"github.com/veloce-io/veloce/internal/tsn"
	"github.com/veloce-io/veloce/internal/wire"
)

// The TX scheduler: with a gate schedule (RemoteOptions.Schedule, an
// 802.1Qbv schedule as taprio takes it), each datapath to other hosts
// keeps one queue per traffic class and lets a class's messages leave only
// while its gate is open. The host kernel here has no taprio or etf qdisc,
// so the runtime gates transmission itself: the sender sleeps until the
// next window that opens a class with messages waiting (a timer, no busy
// spin); a polling datapath's flusher just finds nothing to send until
// then. Within an open window, time-sensitive messages go before bulk
// ones (strict priority, as taprio's queues map onto classes).
//
// Traffic classes (gate bit i is class i's):
//
//	0  bulk: every stream that is not time-sensitive
//	1  time-sensitive streams (StreamOptions.TimeSensitive)
//
// Directory messages are control traffic and are not gated; reliable
// streams' acknowledgements travel as bulk. Without a schedule there is one FIFO queue and a time-sensitive
// stream carries a warning.
const (
	TrafficClassBulk          = 0
	TrafficClassTimeSensitive = 1
	numTrafficClasses         = 2
)

// trafficClassNames are the classes' names, by class.
var trafficClassNames = [numTrafficClasses]string{"bulk", "time-sensitive"}

// ErrSchedule is returned (wrapped) by CheckSchedule for a schedule the
// runtime cannot use.
var ErrSchedule = errors.New("gate schedule unusable")

// CheckSchedule reports whether s opens the gate of every traffic class
// the runtime uses at some time: a class whose gate never opens would
// never send.
func CheckSchedule(s *tsn.Schedule) error {
	for c, name := range trafficClassNames {
		if !s.Opens(1 << c) {
			return fmt.Errorf("%w: no entry opens gate %d (%s traffic); set bit %d of some entry's mask (e.g. \"S %02x ...\")", ErrSchedule, c, name, c, 1<<c)
		}
	}
	return nil
}

// trafficClass is the class of a stream's messages on a scheduled link.
func trafficClass(c wire.Class) int {
	if c&wire.ClassTimeSensitive != 0 {
		return TrafficClassTimeSensitive
	}
	return TrafficClassBulk
}

// txSched is one datapath's gate scheduler. The class queues are filled
// by emit (any goroutine) and drained by the datapath's one sender or
// flusher, which alone touches the rest.
type txSched struct {
	sched *tsn.Schedule
	// queues[c] holds class c's slots; queues[TrafficClassBulk] is the
	// datapath's ready queue.
	queues [numTrafficClasses]*ring.Queue
	// sent counts messages taken to send, by class; waits counts the
	// times the sender slept until a gate opened for messages it held.
	sent, waits [numTrafficClasses]atomic.Uint64
	// overruns counts batches whose send ended after their window did.
	overruns atomic.Uint64
	// trace, when a test sets it before the runtime runs, records when
	// each message was let through.
	trace *txTrace
}

// txTrace records, per message let through, the time of the gate
// decision (unix ns) and its class. Written by the sender only; read once
// the runtime stopped.
type txTrace struct {
	n     int
	at    []int64
	class []uint8
}

func newTxSched(s *tsn.Schedule, ready *ring.Queue) *txSched {
	tx := &txSched{sched: s}
	tx.queues[TrafficClassBulk] = ready
	tx.queues[TrafficClassTimeSensitive], _ = ring.New(remoteSlots)
	return tx
}

// queueFor returns the queue for a message of class c on st.
func (st *datapathState) queueFor(c wire.Class) *ring.Queue {
	if st.tx == nil {
		return st.ready
	}
	return st.tx.queues[trafficClass(c)]
}

// take pops up to len(ids) messages st may send now, fills pkts with them
// (sealed), and returns how many. With a gate schedule it also returns
// the end of the window they go in (unix ns; 0 without a schedule) and,
// when it took nothing but messages wait behind closed gates, how long
// until the next gate of theirs opens. It does not allocate.
func (rm *remote) take(st *datapathState, ids []uint32, pkts []wire.Packet, seal *wire.Sealer) (n int, end int64, wait time.Duration) {
	tx := st.tx
	if tx == nil {
		return rm.pop(st.ready, ids, pkts, seal, 0), 0, 0
	}
	now := time.Now().UnixNano()
	gates, end := tx.sched.At(now)
	for _, c := range [...]int{TrafficClassTimeSensitive, TrafficClassBulk} { // strict priority
		if gates&(1<<c) == 0 {
			continue
		}
		k := n
		n = rm.pop(tx.queues[c], ids, pkts, seal, n)
		tx.sent[c].Add(uint64(n - k))
		if t := tx.trace; t != nil {
			for ; k < n && t.n < len(t.at); k++ {
				t.at[t.n], t.class[t.n] = now, uint8(c)
				t.n++
			}
		}
	}
	if n > 0 {
		return n, end, 0
	}
	var held uint8
	for c, q := range tx.queues {
		if q.Len() > 0 {
			held |= 1 << c
		}
	}
	if held == 0 {
		return 0, end, 0
	}
	start, _, ok := tx.sched.NextOpen(now, held)
	if !ok {
		return 0, end, time.Second // CheckSchedule keeps this from happening
	}
	for c := range tx.queues {
		if held&(1<<c) != 0 {
			tx.waits[c].Add(1)
		}
	}
	return 0, end, max(time.Duration(start-now), time.Microsecond)
}

// pop takes messages from q into ids[n:] and pkts[n:] (sealed) and
// returns the new count.
func (rm *remote) pop(q *ring.Queue, ids []uint32, pkts []wire.Packet, seal *wire.Sealer, n int) int {
	for n < len(ids) {
		id, ok := q.Pop()
		if !ok {
			break
		}
		ids[n], pkts[n] = id, rm.packet(id)
		rm.seal(seal, &pkts[n])
		n++
	}
	return n
}

// sentBatch notes the end of a batch's send: past its window's end it is
// an overrun (the window was too short for the batch, or the sender was
// descheduled).
func (tx *txSched) sentBatch(end int64) {
	if tx != nil && end != 0 && time.Now().UnixNano() > end {
		tx.overruns.Add(1)
	}
}

// TSNInfo is a datapath's gate scheduler in velocectl remote (control's
// type, as ReliableInfo).
type TSNInfo = control.TSNInfo

// TSNClassInfo is one traffic class of a datapath.
type TSNClassInfo = control.TSNClassInfo

func (tx *txSched) info() *TSNInfo {
	if tx == nil {
		return nil
	}
	g, _ := tx.sched.At(time.Now().UnixNano())
	in := &TSNInfo{Schedule: tx.sched.String(), Gates: fmt.Sprintf("%02x", g), Overruns: tx.overruns.Load()}
	for c, name := range trafficClassNames {
		in.Classes = append(in.Classes, TSNClassInfo{Class: c, Name: name, Held: tx.queues[c].Len(), Sent: tx.sent[c].Load(), Waits: tx.waits[c].Load()})
	}
	return in
}

// scheduled reports whether the runtime's links have a gate schedule.
func (r *Runtime) scheduled() bool { return r.remote != nil && r.remote.opts.Schedule != nil }
