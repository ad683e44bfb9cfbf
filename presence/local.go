package presence

import (
	"context"
	"encoding/json"
	"sort"
	"sync"

	"github.com/channelsd/channelsd/pubsub"
)

// Local is the in-memory Tracker of a single node, the default when no
// Redis is configured. Diffs go out through the node's PubSub as soon as a
// change is made; List reads the same table, so they agree by
// construction.
type Local struct {
	ps pubsub.PubSub

	mu      sync.Mutex
	seq     uint64
	topics  map[string]map[owned]*localEntry
	entries int // over all topics
	closed  bool
}

type owned struct{ owner, key string }

type localEntry struct {
	seq  uint64 // insertion order, so List is stable
	ref  string
	meta json.RawMessage
}

// NewLocal returns a Tracker that broadcasts its diffs through ps.
func NewLocal(ps pubsub.PubSub) *Local {
	return &Local{ps: ps, topics: make(map[string]map[owned]*localEntry)}
}

var (
	_ Tracker      = (*Local)(nil)
	_ EntryCounter = (*Local)(nil)
)

// Entries implements EntryCounter.
func (l *Local) Entries() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.entries
}

// Track implements Tracker.
func (l *Local) Track(ctx context.Context, topic, owner, key string, meta json.RawMessage) (string, error) {
	ref := NewRef()
	full, err := WithRefs(meta, ref, "")
	if err != nil {
		return "", err
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return "", ErrClosed
	}
	entries := l.topics[topic]
	if entries == nil {
		entries = make(map[owned]*localEntry)
		l.topics[topic] = entries
	}
	k := owned{owner, key}
	if entries[k] != nil {
		l.mu.Unlock()
		return "", ErrAlreadyTracked
	}
	l.seq++
	entries[k] = &localEntry{seq: l.seq, ref: ref, meta: full}
	l.entries++
	// Publishing under the lock keeps diffs in the order of the changes.
	err = l.publish(ctx, topic, State{key: {Metas: []json.RawMessage{full}}}, nil)
	l.mu.Unlock()
	return ref, err
}

// Update implements Tracker.
func (l *Local) Update(ctx context.Context, topic, owner, key string, meta json.RawMessage) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.topics[topic][owned{owner, key}]
	if e == nil {
		return "", ErrNotTracked
	}
	ref := NewRef()
	full, err := WithRefs(meta, ref, e.ref)
	if err != nil {
		return "", err
	}
	old := e.meta
	e.ref, e.meta = ref, full
	return ref, l.publish(ctx, topic, State{key: {Metas: []json.RawMessage{full}}}, State{key: {Metas: []json.RawMessage{old}}})
}

// Untrack implements Tracker.
func (l *Local) Untrack(ctx context.Context, topic, owner, key string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	entries := l.topics[topic]
	k := owned{owner, key}
	e := entries[k]
	if e == nil {
		return nil
	}
	delete(entries, k)
	l.entries--
	if len(entries) == 0 {
		delete(l.topics, topic)
	}
	return l.publish(ctx, topic, nil, State{key: {Metas: []json.RawMessage{e.meta}}})
}

// UntrackAll implements Tracker.
func (l *Local) UntrackAll(ctx context.Context, topic, owner string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	entries := l.topics[topic]
	leaves := State{}
	for k, e := range entries {
		if k.owner == owner {
			leaves.Add(k.key, e.meta)
			delete(entries, k)
			l.entries--
		}
	}
	if len(entries) == 0 {
		delete(l.topics, topic)
	}
	if len(leaves) == 0 {
		return nil
	}
	return l.publish(ctx, topic, nil, leaves)
}

// List implements Tracker.
func (l *Local) List(_ context.Context, topic string) (State, error) {
	l.mu.Lock()
	entries := make([]*localEntry, 0, len(l.topics[topic]))
	keys := make(map[*localEntry]string, len(l.topics[topic]))
	for k, e := range l.topics[topic] {
		entries = append(entries, e)
		keys[e] = k.key
	}
	l.mu.Unlock()
	sort.Slice(entries, func(i, j int) bool { return entries[i].seq < entries[j].seq })
	state := State{}
	for _, e := range entries {
		state.Add(keys[e], e.meta)
	}
	return state, nil
}

// Close implements Tracker.
func (l *Local) Close() error {
	l.mu.Lock()
	l.closed = true
	l.topics = map[string]map[owned]*localEntry{}
	l.entries = 0
	l.mu.Unlock()
	return nil
}

func (l *Local) publish(ctx context.Context, topic string, joins, leaves State) error {
	payload, err := DiffPayload(joins, leaves)
	if err != nil {
		return err
	}
	return l.ps.Publish(ctx, &pubsub.Message{Topic: topic, Event: "presence_diff", Payload: payload})
}
