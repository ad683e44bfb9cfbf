package pubsub

import (
	"sync"
	"sync/atomic"
	"time"
)

// TopNotes is implemented by the Histories that can tell a join where its
// topic's positions stand without reading the store: pubsub/redis, whose
// read is a round trip per join (a storm of joins into rooms with
// history spent a tenth of the node's CPU on them, BENCHMARKS.md). A
// join that asks for no broadcasts reads only Top, and this node already
// knows it, or a position that serves as well, from what it dispatches.
//
// A noted top is the position of the last broadcast with a position
// dispatched on the topic, or a Top read from the store (NoteTop) with
// no dispatch in between. A caller subscribed to the topic before
// NotedTop, and until NoteTop, may take it for Top: every broadcast after
// it reaches the caller live, in order, since dispatches follow offset
// order and each moves the note under the same lock that a subscription
// takes (Registry.Dispatch): a broadcast dispatched before the
// subscription is at or before the note, one dispatched after it reaches
// the subscriber, and one in between is both, a duplicate its position
// tells apart. What it cannot see is a history lost without a broadcast
// since (expired, or the store restarted empty): then the members that
// joined before hold the lost epoch too, and the next broadcast, in a new
// epoch, fails them all alike (their clients rejoin); maxAge keeps that
// to the joins of a short while.
//
// The note is kept per topic only while the topic has subscribers on
// this node, and is forgotten (NotedTop reports false) when the
// implementation knows that it may have missed broadcasts (a lost
// connection), after a broadcast without a position (which may have taken
// an offset unseen), and after maxAge.
type TopNotes interface {
	// NotedTop returns topic's noted top, if one was noted less than
	// maxAge ago, and in any case a stamp for NoteTop. The caller must
	// be subscribed to topic.
	NotedTop(topic string, maxAge time.Duration) (top Position, stamp uint64, ok bool)
	// NoteTop notes top, the Top of a ReadHistory made after NotedTop
	// returned stamp, unless a broadcast was dispatched on topic since.
	NoteTop(topic string, top Position, stamp uint64)
}

// topNote is where a topic's positions stand, as Registry's TopNotes
// methods keep it for a PubSub that offers them (Registry.NotedTop).
type topNote struct {
	mu    sync.Mutex
	pos   Position // guarded by mu
	at    int64    // guarded by mu; when pos was noted, ns since noteEpoch
	known bool     // guarded by mu; pos holds
	// stamp changes whenever a dispatch or a forget may make a read
	// begun earlier stale; drawn from noteStamps, so that no two notes,
	// even of one topic, ever share a value. Guarded by mu.
	stamp uint64
}

var (
	noteEpoch  = time.Now()
	noteStamps atomic.Uint64
)

// dispatched moves the note past m, which is about to be delivered to
// the topic's subscribers. Called under the registry's read lock.
func (n *topNote) dispatched(m *Message) {
	if m.Local {
		return // never published: it took no offset
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.stamp = noteStamps.Add(1)
	switch {
	case m.Pos.IsZero():
		// It may have taken an offset that the next position skips.
		n.known = false
	case n.known && m.Pos.Epoch == n.pos.Epoch && m.Pos.Offset <= n.pos.Offset:
		// At or before the note: a broadcast a read had counted already,
		// delivered now. Going back would show its successor as a hole.
	default:
		n.pos, n.known, n.at = m.Pos, true, int64(time.Since(noteEpoch))
	}
}

// NotedTop implements TopNotes for the PubSub that owns the registry;
// it reports false for a topic without subscribers.
func (r *Registry) NotedTop(topic string, maxAge time.Duration) (Position, uint64, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	t := r.topics[topic]
	if t == nil {
		return Position{}, 0, false
	}
	n := t.note.Load()
	if n == nil {
		// The first ask starts the note; only from then on do the
		// topic's dispatches pay for it (one lock each).
		fresh := &topNote{stamp: noteStamps.Add(1)}
		if !t.note.CompareAndSwap(nil, fresh) {
			n = t.note.Load()
		} else {
			n = fresh
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.known && time.Duration(int64(time.Since(noteEpoch))-n.at) < maxAge {
		return n.pos, n.stamp, true
	}
	return Position{}, n.stamp, false
}

// NoteTop implements TopNotes for the PubSub that owns the registry.
func (r *Registry) NoteTop(topic string, top Position, stamp uint64) {
	if top.IsZero() {
		return
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	t := r.topics[topic]
	if t == nil {
		return
	}
	n := t.note.Load()
	if n == nil {
		return
	}
	n.mu.Lock()
	if n.stamp == stamp {
		n.pos, n.known, n.at = top, true, int64(time.Since(noteEpoch))
	}
	n.mu.Unlock()
}

// ForgetTops forgets every topic's noted top, and makes the reads begun
// before the call unable to note theirs: for a PubSub that may have
// missed broadcasts (a lost connection).
func (r *Registry) ForgetTops() {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, t := range r.topics {
		if n := t.note.Load(); n != nil {
			n.mu.Lock()
			n.known, n.stamp = false, noteStamps.Add(1)
			n.mu.Unlock()
		}
	}
}
