package pubsub

import (
	"sync"
	"sync/atomic"
	"time"
)

// Registry is the table of this node's subscribers by topic, shared by the
// PubSub implementations. It reports the first subscription and the last
// unsubscription of a topic so that a clustered implementation can listen
// on the topic only while somebody on this node cares.
//
// Delivery walks a copy-on-write snapshot of the topic's subscribers, so a
// broadcast never holds the registry lock while it calls Deliver.
type Registry struct {
	mu     sync.RWMutex
	topics map[string]*topicSubs

	// observe, when set, is told how long each Dispatch that had at least
	// one subscriber took (SetDispatchObserver).
	observe atomic.Pointer[func(time.Duration)]
}

type topicSubs struct {
	// subs is replaced, never modified in place, so Dispatch can walk it
	// after dropping the lock.
	subs []Subscriber
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
	for _, x := range t.subs {
		if x == s {
			return false
		}
	}
	subs := make([]Subscriber, len(t.subs), len(t.subs)+1)
	copy(subs, t.subs)
	t.subs = append(subs, s)
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
	for i, x := range t.subs {
		if x != s {
			continue
		}
		if len(t.subs) == 1 {
			delete(r.topics, topic)
			return true
		}
		subs := make([]Subscriber, 0, len(t.subs)-1)
		subs = append(subs, t.subs[:i]...)
		t.subs = append(subs, t.subs[i+1:]...)
		return false
	}
	return false
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
	}
	r.mu.RUnlock()
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
