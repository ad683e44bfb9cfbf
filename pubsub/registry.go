package pubsub

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Registry is the table of this node's subscribers by topic, shared by the
// PubSub implementations. It reports the first subscription and the last
// unsubscription of a topic so that a clustered implementation can listen
// on the topic only while somebody on this node cares.
//
// Delivery walks a snapshot of the topic's subscribers, so a broadcast
// never holds the registry lock while it calls Deliver. Subscribing and
// unsubscribing cost O(1) however many subscribers the topic has (see
// topicSubs), so that a storm of joins into one big topic is linear, not
// quadratic.
type Registry struct {
	mu     sync.RWMutex
	topics map[string]*topicSubs // guarded by mu
	// prefixes are the routes of AddPrefix. Guarded by mu, and replaced,
	// never changed in place, so that a Dispatch walks its snapshot
	// after releasing mu.
	prefixes []prefixRoute

	// observe, when set, is told how long each Dispatch that had at least
	// one subscriber took (SetDispatchObserver).
	observe atomic.Pointer[func(time.Duration)]
}

// prefixRoute hands every message whose topic begins with prefix to s.
type prefixRoute struct {
	prefix string
	s      Subscriber
}

// indexFrom is the number of subscribers from which a topic keeps an
// index from subscriber to place (some 40 bytes per subscriber): below
// it a scan of the slice takes well under a microsecond per join or
// leave, and most topics (a room, a user's own topic) never get one.
const indexFrom = 256

// topicSubs is one topic's subscribers.
//
// A Dispatch takes subs[:len(subs)] under the read lock and walks it
// after releasing it, marking the array shared. Add appends: it writes
// only beyond every snapshot's length, so it never disturbs a walk, and a
// full array moves to a bigger one (amortised O(1)). Remove moves the
// last subscriber into the removed one's place, in place while the array
// is not shared, and into a new array (one O(n) copy) when a walk may
// hold it: so a storm of leaves copies at most once per broadcast, and
// a storm of joins never. Delivery order among subscribers is not kept,
// and nothing depends on it (the order per subscriber is the publish
// order).
type topicSubs struct {
	subs []Subscriber // guarded by Registry.mu
	// index is each subscriber's place in subs, kept from indexFrom
	// subscribers on; nil below. Guarded by Registry.mu.
	index map[Subscriber]int
	// shared: a Dispatch took a snapshot of subs's array, which must
	// then not change below len(subs). Set under the read lock (hence
	// atomic), cleared under the write lock with a new array.
	shared atomic.Bool
}

// find returns s's place in t.subs, or -1.
func (t *topicSubs) find(s Subscriber) int {
	if t.index != nil {
		if i, ok := t.index[s]; ok {
			return i
		}
		return -1
	}
	for i, x := range t.subs {
		if x == s {
			return i
		}
	}
	return -1
}

// Add subscribes s to topic and reports whether it is the topic's first
// subscriber on this node.
func (r *Registry) Add(topic string, s Subscriber) (first bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.topics == nil {
		r.topics = make(map[string]*topicSubs)
	}
	t := r.topics[topic]
	if t == nil {
		t = &topicSubs{}
		r.topics[topic] = t
		first = true
	}
	if t.find(s) >= 0 {
		return false
	}
	if len(t.subs) == cap(t.subs) {
		// A new array: walks in progress keep the old one.
		t.subs = append(t.subs, s)
		t.shared.Store(false)
	} else {
		t.subs = append(t.subs, s)
	}
	if t.index != nil {
		t.index[s] = len(t.subs) - 1
	} else if len(t.subs) >= indexFrom {
		t.index = make(map[Subscriber]int, 2*len(t.subs))
		for i, x := range t.subs {
			t.index[x] = i
		}
	}
	return first
}

// Remove unsubscribes s from topic and reports whether the topic has no
// subscriber left on this node (false if s was not subscribed).
func (r *Registry) Remove(topic string, s Subscriber) (last bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.topics[topic]
	if t == nil {
		return false
	}
	i := t.find(s)
	if i < 0 {
		return false
	}
	n := len(t.subs) - 1
	if n == 0 {
		delete(r.topics, topic)
		return true
	}
	moved := t.subs[n]
	if t.shared.Load() || n < cap(t.subs)/4 {
		// A walk may be reading the array (or it is mostly empty):
		// the rest goes to a new one, exactly sized plus room to grow.
		subs := make([]Subscriber, n, n+n/4+1)
		copy(subs, t.subs[:n])
		t.subs = subs
		t.shared.Store(false)
	} else {
		t.subs[n] = nil
		t.subs = t.subs[:n]
	}
	if i < n {
		t.subs[i] = moved
	}
	if t.index != nil {
		delete(t.index, s)
		if i < n {
			t.index[moved] = i
		}
		if n < indexFrom/2 {
			t.index = nil
		}
	}
	return false
}

// AddPrefix makes s receive every message whose topic begins with
// prefix, besides the topic's own subscribers (PrefixSubscriber). Adding
// the same route twice adds it once.
func (r *Registry) AddPrefix(prefix string, s Subscriber) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.prefixes {
		if p.prefix == prefix && p.s == s {
			return
		}
	}
	r.prefixes = append(r.prefixes[:len(r.prefixes):len(r.prefixes)], prefixRoute{prefix, s})
}

// RemovePrefix removes a route of AddPrefix.
func (r *Registry) RemovePrefix(prefix string, s Subscriber) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, p := range r.prefixes {
		if p.prefix == prefix && p.s == s {
			rest := make([]prefixRoute, 0, len(r.prefixes)-1)
			rest = append(rest, r.prefixes[:i]...)
			r.prefixes = append(rest, r.prefixes[i+1:]...)
			return
		}
	}
}

// Topics returns the topics that have at least one subscriber.
func (r *Registry) Topics() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.topics))
	for t := range r.topics {
		out = append(out, t)
	}
	return out
}

// Count returns the number of local subscribers of topic.
func (r *Registry) Count(topic string) int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if t := r.topics[topic]; t != nil {
		return len(t.subs)
	}
	return 0
}

// SetDispatchObserver makes every later Dispatch that finds at least one
// subscriber call f with the time it took to hand the message to all of
// them (one clock reading before the walk and one after it, not one per
// delivery). f runs on the dispatching goroutine, so it must be cheap and
// must not block: a histogram's Observe is the intended use. nil removes
// the observer; a new one replaces the previous one.
func (r *Registry) SetDispatchObserver(f func(time.Duration)) {
	if f == nil {
		r.observe.Store(nil)
		return
	}
	r.observe.Store(&f)
}

// Dispatch delivers m to every local subscriber of its topic except the
// one named by m.From, and returns how many received it.
func (r *Registry) Dispatch(m *Message) int {
	r.mu.RLock()
	var subs []Subscriber
	if t := r.topics[m.Topic]; t != nil {
		subs = t.subs
		if !t.shared.Load() {
			t.shared.Store(true)
		}
	}
	prefixes := r.prefixes
	r.mu.RUnlock()
	if len(prefixes) > 0 {
		return r.dispatchPrefixed(subs, prefixes, m)
	}
	if len(subs) == 0 {
		return 0
	}
	observe := r.observe.Load()
	if observe == nil {
		return deliver(subs, m)
	}
	start := time.Now()
	n := deliver(subs, m)
	(*observe)(time.Since(start))
	return n
}

// dispatchPrefixed is Dispatch on a registry with prefix routes: the
// topic's subscribers, then the routes whose prefix the topic begins
// with.
func (r *Registry) dispatchPrefixed(subs []Subscriber, prefixes []prefixRoute, m *Message) int {
	var start time.Time
	observe := r.observe.Load()
	if observe != nil {
		start = time.Now()
	}
	n := deliver(subs, m)
	routed := n > 0 || len(subs) > 0
	for _, p := range prefixes {
		if strings.HasPrefix(m.Topic, p.prefix) {
			routed = true
			if deliverOne(p.s, m) {
				n++
			}
		}
	}
	if observe != nil && routed {
		(*observe)(time.Since(start))
	}
	return n
}

// deliver hands m to subs, skipping the one named by m.From (which is
// told, when m has a position and it follows positions).
func deliver(subs []Subscriber, m *Message) int {
	n := 0
	for _, s := range subs {
		if m.From != "" && s.SubscriberID() == m.From {
			if o, ok := s.(ExcludedObserver); ok {
				o.Excluded(m)
			}
			continue
		}
		s.Deliver(m)
		n++
	}
	return n
}

// deliverOne is deliver for one subscriber (a prefix route), reporting
// whether m went to it.
func deliverOne(s Subscriber, m *Message) bool {
	if m.From != "" && s.SubscriberID() == m.From {
		if o, ok := s.(ExcludedObserver); ok {
			o.Excluded(m)
		}
		return false
	}
	s.Deliver(m)
	return true
}
