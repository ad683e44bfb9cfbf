package presence

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

// Local is the in-memory Tracker of a single node, the default when no
// Redis is configured. Diffs go out through the node's PubSub; List reads
// the same table, so they agree by construction.
//
// A topic's diffs are paced (pacing.go): a change on a topic that sent
// no diff for a window goes out at once, as a diff of its own; the
// changes that follow within the window wait for its end and go out
// together, as one diff (local_pace.go).
//
// Each topic has its own lock, under which its diffs are published: in a
// join storm over many rooms, joins of different rooms do not queue
// behind one another (with one lock for all, thousands of sockets waited
// for it, each holding a goroutine and its stack).
type Local struct {
	ps          pubsub.PubSub
	check       *Checker
	maxCoalesce time.Duration // LocalOptions.MaxCoalesce, default applied; < 0: no pacing
	clock       clock

	entries atomic.Int64 // over all topics

	mu     sync.Mutex // guards topics and closed; taken after a localTopic.mu
	topics map[string]*localTopic
	closed bool

	flushes sync.WaitGroup // the paced diffs scheduled (Close waits for them)
}

// localTopic is one topic's table, grouped by key as presence_state
// shows it, so that AppendState writes it in one pass.
type localTopic struct {
	mu     sync.Mutex
	keys   map[string][]localMeta // guarded by mu: key -> its entries, in track order
	n      int                    // guarded by mu: entries, over all keys
	owners map[string]int         // guarded by mu: owner -> its entries (Limits.MaxPerOwner)
	// gone: the table left Local.topics (it became empty, or the tracker
	// closed); whoever finds it so takes the topic's table afresh.
	// Guarded by mu.
	gone bool

	// The topic's pacing (local_pace.go), guarded by mu: the changes
	// waiting for the window's end, nil when none wait; the timer that
	// sends them; when the topic's last diff went out; the window as
	// AdaptWindow left it (0: DiffWindow's).
	pend  *localBatch
	timer stopper
	last  time.Time
	w     time.Duration
}

// localMeta is one entry: its owner and its meta, which carries its
// phx_ref (WithRefs). One per joined socket, held by value.
type localMeta struct {
	owner string
	meta  json.RawMessage
}

// find returns the index of owner's entry among metas, or -1.
func find(metas []localMeta, owner string) int {
	return slices.IndexFunc(metas, func(m localMeta) bool { return m.owner == owner })
}

// LocalOptions configures a Local.
type LocalOptions struct {
	// Limits bounds the entries (zero fields: the defaults).
	Limits Limits
	// MaxCoalesce is the widest window between two diffs of a topic
	// (pacing.go). Default DefaultMaxCoalesce; negative: every change
	// goes out at once, as a diff of its own.
	MaxCoalesce time.Duration
}

// NewLocal returns a Tracker that broadcasts its diffs through ps, with
// the default Limits.
func NewLocal(ps pubsub.PubSub) *Local { return NewLocalWith(ps, LocalOptions{}) }

// NewLocalLimited returns a Tracker that broadcasts its diffs through ps
// and refuses entries outside lim.
func NewLocalLimited(ps pubsub.PubSub, lim Limits) *Local {
	return NewLocalWith(ps, LocalOptions{Limits: lim})
}

// NewLocalWith returns a Tracker that broadcasts its diffs through ps, as
// o says.
func NewLocalWith(ps pubsub.PubSub, o LocalOptions) *Local {
	if o.MaxCoalesce == 0 {
		o.MaxCoalesce = DefaultMaxCoalesce
	}
	return &Local{ps: ps, check: NewChecker(o.Limits), maxCoalesce: o.MaxCoalesce, clock: realClock{}, topics: make(map[string]*localTopic)}
}

var (
	_ Tracker             = (*Local)(nil)
	_ StateAppender       = (*Local)(nil)
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
			t = &localTopic{keys: make(map[string][]localMeta), owners: make(map[string]int)}
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

// remove drops the entry at index i of key. Called with t.mu held.
func (t *localTopic) remove(key string, metas []localMeta, i int) {
	owner := metas[i].owner
	if len(metas) == 1 {
		delete(t.keys, key)
	} else {
		t.keys[key] = slices.Delete(metas, i, i+1)
	}
	t.n--
	if t.owners[owner]--; t.owners[owner] <= 0 {
		delete(t.owners, owner)
	}
}

// dropIfEmptyLocked forgets topic's table once it holds no entry and no
// change waits to be sent, so that topics come and go without a trace.
// Called with t.mu held.
func (l *Local) dropIfEmptyLocked(topic string, t *localTopic) {
	if t.n > 0 || t.pend != nil {
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
	metas := t.keys[key]
	if find(metas, owner) >= 0 {
		return "", ErrAlreadyTracked
	}
	if err := l.check.Room(t.n); err != nil {
		return "", err
	}
	if err := l.check.Owner(t.owners[owner]); err != nil {
		return "", err
	}
	t.owners[owner]++
	t.keys[key] = append(metas, localMeta{owner, full})
	t.n++
	l.entries.Add(1)
	return ref, l.changed(ctx, topic, t, []localChange{{key, full}}, nil)
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
	metas := t.keys[key]
	i := find(metas, owner)
	if i < 0 {
		return "", ErrNotTracked
	}
	ref := NewRef()
	old := metas[i].meta
	full, err := WithRefs(meta, ref, metaRef(old))
	if err != nil {
		return "", err
	}
	metas[i].meta = full // in place: the entry keeps its rank among the key's
	return ref, l.changed(ctx, topic, t, []localChange{{key, full}}, []localChange{{key, old}})
}

// Untrack implements Tracker.
func (l *Local) Untrack(ctx context.Context, topic, owner, key string) error {
	t, _ := l.lockTopic(topic, false)
	if t == nil {
		return nil
	}
	defer t.mu.Unlock()
	metas := t.keys[key]
	i := find(metas, owner)
	if i < 0 {
		return nil
	}
	old := metas[i].meta
	t.remove(key, metas, i)
	l.entries.Add(-1)
	err := l.changed(ctx, topic, t, nil, []localChange{{key, old}})
	l.dropIfEmptyLocked(topic, t)
	return err
}

// UntrackAll implements Tracker.
func (l *Local) UntrackAll(ctx context.Context, topic, owner string) error {
	t, _ := l.lockTopic(topic, false)
	if t == nil {
		return nil
	}
	defer t.mu.Unlock()
	var leaves []localChange
	for key, metas := range t.keys {
		if i := find(metas, owner); i >= 0 {
			leaves = append(leaves, localChange{key, metas[i].meta})
			t.remove(key, metas, i)
			l.entries.Add(-1)
		}
	}
	var err error
	if len(leaves) > 0 {
		err = l.changed(ctx, topic, t, nil, leaves)
	}
	l.dropIfEmptyLocked(topic, t)
	return err
}

// List implements Tracker.
func (l *Local) List(_ context.Context, topic string) (State, error) {
	t, _ := l.lockTopic(topic, false)
	if t == nil {
		return State{}, nil
	}
	defer t.mu.Unlock()
	state := make(State, len(t.keys))
	for key, metas := range t.keys {
		e := Entry{Metas: make([]json.RawMessage, len(metas))}
		for i, m := range metas {
			e.Metas[i] = m.meta
		}
		state[key] = e
	}
	t.listedLocked()
	return state, nil
}

// AppendState implements StateAppender: the topic's presence_state,
// written from the table under its lock, with nothing built in between.
func (l *Local) AppendState(_ context.Context, b []byte, topic string) ([]byte, error) {
	t, _ := l.lockTopic(topic, false)
	if t == nil {
		return append(b, "{}"...), nil
	}
	defer t.mu.Unlock()
	w := StateWriter{B: b}
	for key, metas := range t.keys {
		for _, m := range metas {
			w.Add(key, m.meta)
		}
	}
	t.listedLocked()
	return w.Finish(), nil
}

// Close implements Tracker. Changes still waiting for their window are
// dropped with the entries, which leave without diffs, as before pacing.
func (l *Local) Close() error {
	l.mu.Lock()
	l.closed = true
	topics := l.topics
	l.topics = map[string]*localTopic{}
	l.mu.Unlock()
	for _, t := range topics {
		t.mu.Lock()
		l.entries.Add(-int64(t.n))
		t.keys, t.owners, t.n = nil, nil, 0
		t.gone = true
		l.dropPendingLocked(t)
		t.mu.Unlock()
	}
	l.flushes.Wait()
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
