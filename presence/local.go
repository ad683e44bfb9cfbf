package presence

import (
	"cmp"
	"context"
	"encoding/json"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/channelsd/channelsd/pubsub"
)

// Local is the in-memory Tracker of a single node, the default when no
// Redis is configured. Diffs go out through the node's PubSub as soon as a
// change is made; List reads the same table, so they agree by
// construction.
//
// Each topic has its own lock, under which its diffs are published: in a
// join storm over many rooms, joins of different rooms do not queue
// behind one another (with one lock for all, thousands of sockets waited
// for it, each holding a goroutine and its stack).
type Local struct {
	ps    pubsub.PubSub
	check *Checker

	seq     atomic.Uint64 // insertion order of entries
	entries atomic.Int64  // over all topics

	mu     sync.Mutex // guards topics and closed; taken after a localTopic.mu
	topics map[string]*localTopic
	closed bool
}

// localTopic is one topic's table.
type localTopic struct {
	mu      sync.Mutex
	entries map[owned]localEntry
	owners  map[string]int // owner -> its entries (Limits.MaxPerOwner)
	// gone: the table left Local.topics (it became empty, or the tracker
	// closed); whoever finds it so takes the topic's table afresh.
	gone bool
}

type owned struct{ owner, key string }

// localEntry is held by value in its topic's map, and its phx_ref only
// inside meta: one entry per joined socket, so no allocation of its own.
type localEntry struct {
	seq  uint64          // insertion order, so List is stable
	meta json.RawMessage // with phx_ref (WithRefs)
}

// NewLocal returns a Tracker that broadcasts its diffs through ps, with
// the default Limits.
func NewLocal(ps pubsub.PubSub) *Local { return NewLocalLimited(ps, Limits{}) }

// NewLocalLimited returns a Tracker that broadcasts its diffs through ps
// and refuses entries outside lim.
func NewLocalLimited(ps pubsub.PubSub, lim Limits) *Local {
	return &Local{ps: ps, check: NewChecker(lim), topics: make(map[string]*localTopic)}
}

var (
	_ Tracker             = (*Local)(nil)
	_ EntryCounter        = (*Local)(nil)
	_ pubsub.LimitCounter = (*Local)(nil)
)

// LimitHits implements pubsub.LimitCounter: refusals by Limits.
func (l *Local) LimitHits() map[string]func() uint64 { return l.check.LimitHits() }

// Entries implements EntryCounter.
func (l *Local) Entries() int { return int(l.entries.Load()) }

// lockTopic returns topic's table with its lock held, creating the table
// if create. Without create it returns nil when the topic has no entries
// (or the tracker is closed); with create, ErrClosed once closed.
func (l *Local) lockTopic(topic string, create bool) (*localTopic, error) {
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			if create {
				return nil, ErrClosed
			}
			return nil, nil
		}
		t := l.topics[topic]
		if t == nil {
			if !create {
				l.mu.Unlock()
				return nil, nil
			}
			t = &localTopic{entries: make(map[owned]localEntry), owners: make(map[string]int)}
			l.topics[topic] = t
		}
		l.mu.Unlock()
		t.mu.Lock()
		if !t.gone {
			return t, nil
		}
		t.mu.Unlock()
	}
}

// forget counts one entry less for owner. Called with t.mu held.
func (t *localTopic) forget(owner string) {
	if t.owners[owner]--; t.owners[owner] <= 0 {
		delete(t.owners, owner)
	}
}

// dropIfEmptyLocked forgets topic's table once it holds no entry, so that
// topics come and go without a trace. Called with t.mu held.
func (l *Local) dropIfEmptyLocked(topic string, t *localTopic) {
	if len(t.entries) > 0 {
		return
	}
	l.mu.Lock()
	if l.topics[topic] == t {
		delete(l.topics, topic)
	}
	l.mu.Unlock()
	t.gone = true
}

// Track implements Tracker.
func (l *Local) Track(ctx context.Context, topic, owner, key string, meta json.RawMessage) (string, error) {
	if err := l.check.Entry(key, meta); err != nil {
		return "", err
	}
	ref := NewRef()
	full, err := WithRefs(meta, ref, "")
	if err != nil {
		return "", err
	}
	t, err := l.lockTopic(topic, true)
	if err != nil {
		return "", err
	}
	defer t.mu.Unlock()
	k := owned{owner, key}
	if _, ok := t.entries[k]; ok {
		return "", ErrAlreadyTracked
	}
	if err := l.check.Room(len(t.entries)); err != nil {
		return "", err
	}
	if err := l.check.Owner(t.owners[owner]); err != nil {
		return "", err
	}
	t.owners[owner]++
	t.entries[k] = localEntry{seq: l.seq.Add(1), meta: full}
	l.entries.Add(1)
	// Publishing under the topic's lock keeps its diffs in the order of
	// the changes.
	err = l.publish(ctx, topic, State{key: {Metas: []json.RawMessage{full}}}, nil)
	return ref, err
}

// Update implements Tracker.
func (l *Local) Update(ctx context.Context, topic, owner, key string, meta json.RawMessage) (string, error) {
	if err := l.check.Entry(key, meta); err != nil {
		return "", err
	}
	t, _ := l.lockTopic(topic, false)
	if t == nil {
		return "", ErrNotTracked
	}
	defer t.mu.Unlock()
	k := owned{owner, key}
	e, ok := t.entries[k]
	if !ok {
		return "", ErrNotTracked
	}
	ref := NewRef()
	full, err := WithRefs(meta, ref, metaRef(e.meta))
	if err != nil {
		return "", err
	}
	old := e.meta
	e.meta = full
	t.entries[k] = e
	return ref, l.publish(ctx, topic, State{key: {Metas: []json.RawMessage{full}}}, State{key: {Metas: []json.RawMessage{old}}})
}

// Untrack implements Tracker.
func (l *Local) Untrack(ctx context.Context, topic, owner, key string) error {
	t, _ := l.lockTopic(topic, false)
	if t == nil {
		return nil
	}
	defer t.mu.Unlock()
	k := owned{owner, key}
	e, ok := t.entries[k]
	if !ok {
		return nil
	}
	delete(t.entries, k)
	t.forget(owner)
	l.entries.Add(-1)
	l.dropIfEmptyLocked(topic, t)
	return l.publish(ctx, topic, nil, State{key: {Metas: []json.RawMessage{e.meta}}})
}

// UntrackAll implements Tracker.
func (l *Local) UntrackAll(ctx context.Context, topic, owner string) error {
	t, _ := l.lockTopic(topic, false)
	if t == nil {
		return nil
	}
	defer t.mu.Unlock()
	leaves := State{}
	for k, e := range t.entries {
		if k.owner == owner {
			leaves.Add(k.key, e.meta)
			delete(t.entries, k)
			l.entries.Add(-1)
		}
	}
	delete(t.owners, owner)
	l.dropIfEmptyLocked(topic, t)
	if len(leaves) == 0 {
		return nil
	}
	return l.publish(ctx, topic, nil, leaves)
}

// List implements Tracker.
func (l *Local) List(_ context.Context, topic string) (State, error) {
	type keyed struct {
		key string
		localEntry
	}
	var entries []keyed
	if t, _ := l.lockTopic(topic, false); t != nil {
		entries = make([]keyed, 0, len(t.entries))
		for k, e := range t.entries {
			entries = append(entries, keyed{k.key, e})
		}
		t.mu.Unlock()
	}
	slices.SortFunc(entries, func(a, b keyed) int { return cmp.Compare(a.seq, b.seq) })
	state := make(State, len(entries))
	for _, e := range entries {
		state.Add(e.key, e.meta)
	}
	return state, nil
}

// Close implements Tracker.
func (l *Local) Close() error {
	l.mu.Lock()
	l.closed = true
	topics := l.topics
	l.topics = map[string]*localTopic{}
	l.mu.Unlock()
	for _, t := range topics {
		t.mu.Lock()
		l.entries.Add(-int64(len(t.entries)))
		t.entries = nil
		t.owners = nil
		t.gone = true
		t.mu.Unlock()
	}
	return nil
}

// metaRef returns the phx_ref inside a meta made by WithRefs.
func metaRef(meta json.RawMessage) string {
	var refs struct {
		Ref string `json:"phx_ref"`
	}
	_ = json.Unmarshal(meta, &refs)
	return refs.Ref
}

func (l *Local) publish(ctx context.Context, topic string, joins, leaves State) error {
	payload, err := DiffPayload(joins, leaves)
	if err != nil {
		return err
	}
	return l.ps.Publish(ctx, &pubsub.Message{Topic: topic, Event: "presence_diff", Payload: payload})
}
