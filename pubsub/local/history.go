package local

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

var (
	_ pubsub.History        = (*PubSub)(nil)
	_ pubsub.HistoryCounter = (*PubSub)(nil)
)

// sweepEvery bounds how often a publish walks the whole table of
// histories to drop the idle ones: often enough that memory follows the
// live topics, rarely enough that the walk's cost, O(histories), vanishes
// when spread over the publishes of a second.
const sweepEvery = time.Second

// histories is the table of topic histories of a PubSub.
//
// Lock order: mu, then a topicHistory's mu, never the reverse (the
// repository's locksordering.txt). A publisher finds its topicHistory
// under mu and releases mu before it locks the topicHistory, so a slow
// dispatch under one topic's lock never holds up another topic.
type histories struct {
	policy pubsub.PolicyHolder

	mu sync.RWMutex
	m  map[string]*topicHistory // guarded by mu

	// lastSweep is the UnixNano of the last sweep; a publish claims the
	// next one by swapping it.
	lastSweep atomic.Int64
	// sweepEvery overrides the package's sweepEvery when set (tests).
	sweepEvery time.Duration
}

// topicHistory is one topic's retained broadcasts: the offsets
// (top-n, top] of epoch, the broadcast at offset o in ring[o%len(ring)].
type topicHistory struct {
	mu    sync.Mutex
	epoch string        // guarded by mu
	top   uint64        // guarded by mu
	n     int           // guarded by mu
	ring  []entry       // guarded by mu
	ttl   time.Duration // guarded by mu
	last  time.Time     // guarded by mu; the last broadcast, or creation
	dead  bool          // guarded by mu; dropped from the table

	// out is the broadcasts waiting for dispatch, in offset order; spare
	// is the previous batch's slice, reused. dispatching is set while a
	// publisher drains out. All guarded by mu.
	out, spare  []*pubsub.Message
	dispatching bool
}

// entry is what a history keeps of a broadcast: the message's fields, not
// the *Message, so the encodings the subscribers cached in it are not
// retained with it, and keeping a broadcast costs no allocation.
type entry struct {
	event   string
	payload []byte
	binary  bool
}

// SetHistoryPolicy implements pubsub.History.
func (p *PubSub) SetHistoryPolicy(f pubsub.HistoryPolicy) {
	p.hist.policy.Set(f)
}

// HistoryOptions implements pubsub.History.
func (p *PubSub) HistoryOptions(topic string) pubsub.HistoryOptions {
	o, _ := p.hist.policy.Options(topic)
	return o
}

// PublishAt implements pubsub.History.
func (p *PubSub) PublishAt(_ context.Context, m *pubsub.Message) (pubsub.Position, error) {
	if p.closed.Load() {
		return pubsub.Position{}, pubsub.ErrClosed
	}
	if o, ok := p.hist.policy.Options(m.Topic); ok {
		return p.publishHistory(m, o), nil
	}
	p.reg.Dispatch(m)
	return pubsub.Position{}, nil
}

// publishHistory gives m the next position of its topic and retains it
// under the topic's lock, and queues it for dispatch in offset order. The
// first publisher to find the queue idle dispatches it, outside the lock,
// until it is empty; concurrent publishers only queue. So every subscriber
// sees the topic's broadcasts in offset order, and a Deliver that
// publishes to its own topic (a HandleOut that broadcasts, presence
// leaving on a channel error) queues behind the current broadcast instead
// of deadlocking. The price, allowed by pubsub.History: a publisher that
// found another dispatching returns before its broadcast is delivered.
func (p *PubSub) publishHistory(m *pubsub.Message, o pubsub.HistoryOptions) pubsub.Position {
	for {
		h := p.hist.get(m.Topic)
		h.mu.Lock()
		if h.dead {
			h.mu.Unlock()
			continue
		}
		now := time.Now()
		h.refresh(now, o)
		h.top++
		h.ring[h.top%uint64(len(h.ring))] = entry{m.Event, m.Payload, m.Binary}
		if h.n < len(h.ring) {
			h.n++
		}
		h.last = now
		m.Pos = pubsub.Position{Epoch: h.epoch, Offset: h.top}
		pos := m.Pos
		h.out = append(h.out, m)
		if h.dispatching {
			// The goroutine dispatching this topic delivers m after the
			// broadcasts before it.
			h.mu.Unlock()
			return pos
		}
		h.dispatching = true
		for len(h.out) > 0 {
			batch := h.out
			h.out = h.spare[:0]
			h.mu.Unlock()
			for i, x := range batch {
				p.reg.Dispatch(x)
				batch[i] = nil
			}
			h.mu.Lock()
			h.spare = batch[:0]
		}
		h.dispatching = false
		h.mu.Unlock()
		return pos
	}
}

// ReadHistory implements pubsub.History. A history topic without a live
// history gets one here, empty: the Top returned names its epoch, and the
// broadcasts that follow continue it, so a reader told Top finds the next
// broadcast right after it.
func (p *PubSub) ReadHistory(_ context.Context, topic string, q pubsub.HistoryQuery) (pubsub.HistoryResult, error) {
	if p.closed.Load() {
		return pubsub.HistoryResult{}, pubsub.ErrClosed
	}
	o := p.HistoryOptions(topic)
	if !o.Enabled() {
		return pubsub.HistoryResult{}, fmt.Errorf("local: topic %q: %w", topic, pubsub.ErrNoHistory)
	}
	for {
		h := p.hist.get(topic)
		h.mu.Lock()
		if h.dead {
			h.mu.Unlock()
			continue
		}
		res, err := h.read(topic, time.Now(), o, q)
		h.mu.Unlock()
		return res, err
	}
}

// read serves q. Called with h.mu held.
func (h *topicHistory) read(topic string, now time.Time, o pubsub.HistoryOptions, q pubsub.HistoryQuery) (pubsub.HistoryResult, error) {
	h.refresh(now, o)
	res := pubsub.HistoryResult{Top: pubsub.Position{Epoch: h.epoch, Offset: h.top}}
	var from uint64 // the first offset returned
	count := 0
	if q.Since.IsZero() {
		count = min(max(q.Last, 0), h.n)
		from = h.top - uint64(count) + 1
	} else {
		switch s := q.Since; {
		case s.Epoch != h.epoch:
			return res, fmt.Errorf("local: topic %q at %s: %w", topic, s, pubsub.ErrEpochChanged)
		case s.Offset > h.top:
			return res, fmt.Errorf("local: topic %q at %s: %w", topic, s, pubsub.ErrPositionAhead)
		case s.Offset < h.top-uint64(h.n):
			return res, fmt.Errorf("local: topic %q at %s: %w", topic, s, pubsub.ErrPositionTooOld)
		}
		from = q.Since.Offset + 1
		count = int(h.top - q.Since.Offset)
		if q.Limit > 0 {
			count = min(count, q.Limit)
		}
	}
	if count == 0 {
		return res, nil
	}
	msgs := make([]pubsub.Message, count)
	res.Messages = make([]*pubsub.Message, count)
	for i := range msgs {
		off := from + uint64(i)
		e := &h.ring[off%uint64(len(h.ring))]
		msgs[i] = pubsub.Message{Topic: topic, Event: e.event, Payload: e.payload, Binary: e.binary,
			Pos: pubsub.Position{Epoch: h.epoch, Offset: off}}
		res.Messages[i] = &msgs[i]
	}
	return res, nil
}

// refresh makes h a live history of options o at now: a new, empty epoch
// if h never had one or was idle for its TTL, and a ring of o.Size
// keeping the newest broadcasts if the policy changed the size. Called
// with h.mu held.
func (h *topicHistory) refresh(now time.Time, o pubsub.HistoryOptions) {
	if h.epoch == "" || now.Sub(h.last) > h.ttl {
		h.epoch = newEpoch()
		h.top, h.n = 0, 0
		h.last = now
		clear(h.ring)
	}
	h.ttl = o.EffectiveTTL()
	if len(h.ring) != o.Size {
		ring := make([]entry, o.Size)
		h.n = min(h.n, o.Size)
		for off := h.top - uint64(h.n) + 1; off <= h.top; off++ {
			ring[off%uint64(o.Size)] = h.ring[off%uint64(len(h.ring))]
		}
		h.ring = ring
	}
}

// expired reports whether h has been idle for its TTL. Called with h.mu
// held.
func (h *topicHistory) expired(now time.Time) bool {
	return h.epoch != "" && now.Sub(h.last) > h.ttl
}

// get returns topic's history, creating an empty one if there is none,
// and now and then sweeps the idle ones away.
func (t *histories) get(topic string) *topicHistory {
	t.maybeSweep()
	t.mu.RLock()
	h := t.m[topic]
	t.mu.RUnlock()
	if h != nil {
		return h
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if h = t.m[topic]; h == nil {
		if t.m == nil {
			t.m = make(map[string]*topicHistory)
		}
		h = &topicHistory{}
		t.m[topic] = h
	}
	return h
}

// maybeSweep sweeps if no sweep ran for sweepEvery; of concurrent callers,
// one sweeps.
func (t *histories) maybeSweep() {
	every := sweepEvery
	if t.sweepEvery > 0 {
		every = t.sweepEvery
	}
	now := time.Now()
	last := t.lastSweep.Load()
	if now.UnixNano()-last < int64(every) || !t.lastSweep.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	t.mu.Lock()
	t.sweep(now)
	t.mu.Unlock()
}

// sweep drops the histories idle for their TTL. A history whose lock is
// held is in use, hence not idle: sweep skips it rather than wait for a
// dispatch. Called with t.mu held.
func (t *histories) sweep(now time.Time) {
	for topic, h := range t.m {
		if !h.mu.TryLock() {
			continue
		}
		if h.epoch == "" || h.expired(now) {
			h.dead = true
			h.ring = nil
			delete(t.m, topic)
		}
		h.mu.Unlock()
	}
}

// HistoryStats implements pubsub.HistoryCounter. It sweeps first, so
// histories that expired count for nothing even when no publish came to
// drop them.
func (p *PubSub) HistoryStats() pubsub.HistoryStats {
	t := &p.hist
	t.mu.Lock()
	t.sweep(time.Now())
	live := make([]*topicHistory, 0, len(t.m))
	for _, h := range t.m {
		live = append(live, h)
	}
	t.mu.Unlock()
	var st pubsub.HistoryStats
	for _, h := range live {
		h.mu.Lock()
		if !h.dead {
			st.Topics++
			st.Retained += h.n
		}
		h.mu.Unlock()
	}
	return st
}

// epochAlphabet is base64url's: every character is valid in an epoch.
const epochAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// newEpoch returns 12 random characters (72 bits) from math/rand/v2's
// generator, which is seeded from the OS per process: epochs need to
// differ from any other a client could hold, not to be secret.
func newEpoch() string {
	var b [12]byte
	r := rand.Uint64()
	for i := range b {
		if i == 10 {
			r = rand.Uint64()
		}
		b[i] = epochAlphabet[r&63]
		r >>= 6
	}
	return string(b[:])
}
