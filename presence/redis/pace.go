package redis

import (
	"slices"
	"time"

	"github.com/channelsd/channelsd/presence"
)

// The pending batches and their pacing: when each topic's next diff is
// due (presence's pacing.go says why it waits).

// batchFor returns topic's pending batch, opening one if there is none,
// due Coalesce from now, or one window after the topic's last diff if
// that is later (presence's pacing.go: a busy topic sends a diff per
// window, whose width adapt keeps). Called with mu held.
func (t *Tracker) batchFor(topic string) *batch {
	now := time.Now()
	b := t.pending[topic]
	if b == nil {
		b = &batch{joinIdx: make(map[string]int)}
		t.pending[topic] = b
		due := now.Add(t.opt.Coalesce)
		if p := t.paces[topic]; p != nil {
			w := t.windowOf(topic, p)
			if next := p.last.Add(w); next.After(due) {
				due = next
			}
			b.quiet = quietAfter(w)
		}
		// Windows differ per topic: keep the queue in deadline order.
		q := queued{topic: topic, deadline: due}
		i, _ := slices.BinarySearchFunc(t.fifo, q, func(a, b queued) int { return a.deadline.Compare(b.deadline) })
		t.fifo = slices.Insert(t.fifo, i, q)
		if i == 0 || b.quiet > 0 {
			t.poke()
		}
	}
	b.last = now
	return b
}

// quietAfter is how long a batch of a topic whose window is w waits
// after its newest change before it goes out anyway: half the window, for
// windows of a second or more (0: none). A wide window saves diffs while
// the topic stays busy, but the last changes of a burst would wait for
// the whole of it; so every node's lists agree within about half of
// MaxCoalesce after a storm's last join. A topic busy enough to need a
// wide window is seldom quiet that long mid-storm: joins into a room of
// 100 at ten a second leave such a gap once in 20,000.
func quietAfter(w time.Duration) time.Duration {
	if w < time.Second {
		return 0
	}
	return w / 2
}

// quietScanEvery is how often flushLoop looks for quiet batches while
// batches wait.
const quietScanEvery = 50 * time.Millisecond

// takeQuiet appends to due the topics whose batch has been quiet for its
// quiet time and takes them off the queue. It looks at most once per
// quietScanEvery and returns when to look next (zero: no batch is
// waiting for quiet). Called with mu held.
func (t *Tracker) takeQuiet(now time.Time, due []string) ([]string, time.Time) {
	if now.Before(t.quietScan) {
		return due, t.quietScan
	}
	waiting := false
	for topic, b := range t.pending {
		if b.quiet == 0 || slices.Contains(due, topic) {
			continue
		}
		if now.Sub(b.last) < b.quiet {
			waiting = true
			continue
		}
		due = append(due, topic)
		if i := slices.IndexFunc(t.fifo, func(q queued) bool { return q.topic == topic }); i >= 0 {
			t.fifo = slices.Delete(t.fifo, i, i+1)
		}
	}
	if !waiting {
		t.quietScan = time.Time{}
		return due, time.Time{}
	}
	t.quietScan = now.Add(quietScanEvery)
	return due, t.quietScan
}

// pace is a topic's pacing: when its last diff went out, the window
// presence.AdaptWindow left (0: the room's floor), and how many entries
// the room held at its last List, over all nodes (this node alone sees
// only its own between Lists).
type pace struct {
	last time.Time
	w    time.Duration
	room int
}

// roomOf is what a diff of topic reaches: the room as last listed, or
// this node's entries if more. Called with mu held.
func (t *Tracker) roomOf(topic string, p *pace) int {
	return max(p.room, t.topicLen(topic))
}

// windowOf is the least time between two diffs of topic. Called with mu
// held.
func (t *Tracker) windowOf(topic string, p *pace) time.Duration {
	return max(p.w, presence.DiffWindow(t.roomOf(topic, p), t.opt.Coalesce, t.opt.MaxCoalesce))
}

// adapt notes that topic's batch b goes out now and sets its next window
// (presence.AdaptWindow). A topic without entries here forgets its
// pacing: its next change, if any, starts afresh. Called with mu held.
func (t *Tracker) adapt(topic string, b *batch) {
	if t.topicLen(topic) == 0 {
		delete(t.paces, topic)
		return
	}
	n := len(b.leaves)
	for _, c := range b.joins {
		if c != nil {
			n++
		}
	}
	p := t.paces[topic]
	if p == nil {
		p = &pace{}
		t.paces[topic] = p
	}
	p.last = time.Now()
	p.w = presence.AdaptWindow(p.w, n, t.roomOf(topic, p), t.opt.Coalesce, t.opt.MaxCoalesce)
}

func (t *Tracker) poke() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// addJoin queues the join of e, whose hash value is v. Called with mu
// held.
func (t *Tracker) addJoin(topic string, e *entry, v []byte) {
	b := t.batchFor(topic)
	b.joinIdx[e.ref] = len(b.joins)
	b.joins = append(b.joins, &change{ref: e.ref, key: e.key, meta: e.meta, field: t.field(e.ref), value: v})
}

// addLeave queues a leave. A leave of a ref whose join is still pending
// cancels the join instead, when nothing saw it: not Redis, not a client
// (List forgets the pending joins it returned, so their leaves are sent,
// in the same diff as the joins). Called with mu held.
func (t *Tracker) addLeave(topic string, c *change) {
	b := t.batchFor(topic)
	if i, ok := b.joinIdx[c.ref]; ok {
		b.joins[i] = nil
		delete(b.joinIdx, c.ref)
		return
	}
	b.leaves = append(b.leaves, c)
}
