package redis

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub"
)

// Tracker is the clustered presence.Tracker. See the package
// documentation for the data model.
type Tracker struct {
	opt       Options
	log       *slog.Logger
	client    goredis.UniversalClient
	ownClient bool
	ps        pubsub.PubSub
	me        string // node id
	src       string // node id + "#" + incarnation, stamped on diffs
	diffBase  int    // emptyDiffSize(src)
	watcher   *watcher
	reads     *listReads
	check     *presence.Checker

	// live caches the set of live nodes a List read, for liveFor, so
	// that Lists do not all read the nodes hash: on a Redis Cluster that
	// one key's shard would take every List of every topic.
	liveMu sync.Mutex
	live   map[string]bool // guarded by liveMu; nil: none read yet
	liveAt time.Time       // guarded by liveMu: when live was read

	// invalid counts the entries read from Redis that were not fit for
	// clients (presence.ValidEntry) and were skipped; invalidLog rate-
	// limits their warnings.
	invalid    atomic.Uint64
	invalidLog pubsub.RateLog

	// Keys.
	nodesKey  string // hash: node -> last heartbeat (Redis server time, ms)
	topicsKey string // set: topics this node has entries on
	aliveKey  string // marker: present while Redis holds our entries

	stop     chan struct{}
	wake     chan struct{} // cap 1: pending changed or resync wanted
	repairCh chan struct{} // cap 1
	wg       sync.WaitGroup

	repairsSent atomic.Uint64

	// mu guards the local table, the pending diffs and the clocks. It is
	// never held across a Redis command or a Publish.
	mu         sync.Mutex
	closed     bool
	seq        uint64
	table      map[string]map[owned]*entry // topic -> entries of this node
	order      map[string][]*entry         // topic -> its table's entries in compareEntries order (list.go)
	entries    int                         // in table, over all topics
	perOwner   map[topicOwner]int          // entries of each owner (Limits.MaxPerOwner)
	pending    map[string]*batch
	fifo       []queued         // topics with a pending batch, by deadline
	quietScan  time.Time        // when flushLoop next looks for quiet batches
	paces      map[string]*pace // pacing of the topics with entries here (pace.go)
	clocks     map[string]uint64
	needResync bool
	resyncAt   time.Time // after a failed resync: not before then
	// resyncWait is how long after the last failed resync the next one
	// waits (resyncBackoff); zero after a success.
	resyncWait time.Duration
	repairs    map[string]struct{}

	// Owned by the flusher goroutine (and Close after it stopped).
	watched map[string]bool

	// Owned by the heartbeat goroutine.
	down bool
	// seenReconnects is the PubSub's reconnect count at the last
	// heartbeat; refreshRounds counts the heartbeats that still send local
	// clients a fresh presence_state after an outage. Heartbeat goroutine
	// only.
	seenReconnects uint64
	refreshRounds  int
	announce       bool // tell peers to refresh once our PubSub is back

	control       *controlSub
	peerRefreshed atomic.Bool // a peer asked for a refresh
}

type owned struct{ owner, key string }

type topicOwner struct{ topic, owner string }

// forget counts one entry less for owner on topic. Called with mu held.
func (t *Tracker) forget(topic, owner string) {
	k := topicOwner{topic, owner}
	if t.perOwner[k]--; t.perOwner[k] <= 0 {
		delete(t.perOwner, k)
	}
}

// entry is one of this node's presences. Its hash value is built when it
// is written (value), not kept: the table holds one entry per joined
// socket, and the value would repeat key and meta in every one.
type entry struct {
	key  string
	ref  string
	meta json.RawMessage
	t    int64 // unix ns of the track/update (stored.T)
}

// value is the entry's hash value, {"key","meta","t"}.
func (e *entry) value() ([]byte, error) {
	return json.Marshal(stored{Key: e.key, Meta: e.meta, T: e.t})
}

// stored is a hash value.
type stored struct {
	Key  string          `json:"key"`
	Meta json.RawMessage `json:"meta"`
	T    int64           `json:"t"` // unix ns of the track/update, for a stable order
}

// change is one join or leave waiting in a batch. field is the hash field
// to write (join) or delete (leave); empty when nothing is to be written
// (a dead node's leave, already deleted by the reaper).
type change struct {
	ref   string
	key   string
	meta  json.RawMessage
	field string
	value []byte
}

// batch gathers the changes of one topic during a coalescing window.
type batch struct {
	joins, leaves []*change
	joinIdx       map[string]int // ref -> index in joins (nil slot when cancelled)
	// last is when the newest change joined the batch; quiet, when not
	// zero, how long after it the batch goes out even before its
	// deadline (pace.go, quietAfter).
	last  time.Time
	quiet time.Duration
}

type queued struct {
	topic    string
	deadline time.Time
}

var (
	_ presence.Tracker       = (*Tracker)(nil)
	_ presence.StateAppender = (*Tracker)(nil)
	_ presence.EntryCounter  = (*Tracker)(nil)
	_ pubsub.LimitCounter    = (*Tracker)(nil)
)

// LimitHits implements pubsub.LimitCounter: Track and Update refused by
// Options.Limits.
func (t *Tracker) LimitHits() map[string]func() uint64 { return t.check.LimitHits() }

// Invalid is how many entries read from Redis were skipped because a
// client could not be sent them (not UTF-8, a meta that is not a JSON
// object, an undecodable value): written by a node of another release,
// or by anything else with access to Redis.
func (t *Tracker) Invalid() uint64 { return t.invalid.Load() }

// decodeStored decodes a hash value read from Redis and checks that its
// key and meta may reach clients; a value that may not is counted and
// logged (at most once per pubsub.LogEvery), and ok is false.
func (t *Tracker) decodeStored(topic, field, v string) (s stored, ok bool) {
	err := json.Unmarshal([]byte(v), &s)
	if err == nil {
		err = presence.ValidEntry(s.Key, s.Meta)
	}
	if err == nil {
		return s, true
	}
	t.invalid.Add(1)
	if ok, n := t.invalidLog.Allow(); ok {
		t.log.Warn("presence/redis: skipping an entry in Redis that clients cannot be sent", "topic", topic, "field", field, "err", err, "suppressed", n)
	}
	return s, false
}

// Entries implements presence.EntryCounter: the entries this node tracks
// (its own table), not those of the other nodes.
func (t *Tracker) Entries() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.entries
}

// newSrc is a node's src for one incarnation: its id, '#', and a random
// part, so that a restarted node's clocks start afresh (srcNode undoes it).
func newSrc(nodeID string) string {
	return nodeID + "#" + strconv.FormatUint(rand.Uint64()>>16, 36)
}

// srcNode is the node id of a src from newSrc, or "" for one not so made.
func srcNode(src string) string {
	if i := strings.LastIndexByte(src, '#'); i > 0 {
		return src[:i]
	}
	return ""
}

// New builds the tracker, writes its first heartbeat and cleans entries a
// previous incarnation with the same NodeID may have left, and starts its
// goroutines. ctx bounds that first round of Redis work only.
func New(ctx context.Context, opt Options) (*Tracker, error) {
	opt, err := opt.withDefaults()
	if err != nil {
		return nil, err
	}
	t := &Tracker{
		opt:       opt,
		log:       opt.Logger,
		client:    opt.Client,
		ps:        opt.PubSub,
		me:        opt.NodeID,
		src:       newSrc(opt.NodeID),
		nodesKey:  opt.Prefix + ":nodes",
		topicsKey: opt.Prefix + ":n:" + opt.NodeID + ":topics",
		aliveKey:  opt.Prefix + ":n:" + opt.NodeID + ":alive",
		stop:      make(chan struct{}),
		wake:      make(chan struct{}, 1),
		repairCh:  make(chan struct{}, 1),
		table:     make(map[string]map[owned]*entry),
		order:     make(map[string][]*entry),
		perOwner:  make(map[topicOwner]int),
		pending:   make(map[string]*batch),
		paces:     make(map[string]*pace),
		clocks:    make(map[string]uint64),
		repairs:   make(map[string]struct{}),
		watched:   make(map[string]bool),
		check:     presence.NewChecker(opt.Limits),
	}
	t.diffBase = emptyDiffSize(t.src)
	t.reads = newListReads(opt.Timeout, t.readRemote)
	t.watcher = &watcher{t: t, id: "presence-tracker:" + t.src, topics: make(map[string]map[string]uint64)}
	if t.client == nil {
		if t.client, err = newClient(opt.Address, opt.NodeID); err != nil {
			return nil, err
		}
		t.ownClient = true
	}
	if err := t.resync(ctx, false); err != nil {
		if t.ownClient {
			_ = t.client.Close()
		}
		return nil, fmt.Errorf("presence/redis: initial sync: %w", err)
	}
	t.control = &controlSub{t: t, id: "presence-control:" + t.src}
	if err := t.opt.PubSub.Subscribe(ControlTopic, t.control); err != nil {
		t.log.Warn("presence/redis: control topic subscription failed; peers' outages will not trigger refreshes here", "err", err)
	}
	t.wg.Add(3)
	go t.flushLoop()
	go t.heartbeatLoop()
	go t.repairLoop()
	return t, nil
}

func (t *Tracker) topicKey(topic string) string { return t.opt.Prefix + ":p:" + topic }
func (t *Tracker) field(ref string) string      { return t.me + "/" + ref }

// newEntry returns the entry and its hash value, which its join writes.
func newEntry(key, ref string, meta json.RawMessage) (*entry, []byte, error) {
	e := &entry{key: key, ref: ref, meta: meta, t: time.Now().UnixNano()}
	v, err := e.value()
	if err != nil {
		return nil, nil, err
	}
	return e, v, nil
}

// Track implements presence.Tracker.
func (t *Tracker) Track(_ context.Context, topic, owner, key string, meta json.RawMessage) (string, error) {
	if err := t.check.Entry(key, meta); err != nil {
		return "", err
	}
	ref := presence.NewRef()
	full, err := presence.WithRefs(meta, ref, "")
	if err != nil {
		return "", err
	}
	e, v, err := newEntry(key, ref, full)
	if err != nil {
		return "", err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return "", presence.ErrClosed
	}
	entries := t.table[topic]
	k := owned{owner, key}
	if entries[k] != nil {
		return "", presence.ErrAlreadyTracked
	}
	if err := t.check.Room(len(entries)); err != nil {
		return "", err
	}
	if err := t.check.Owner(t.perOwner[topicOwner{topic, owner}]); err != nil {
		return "", err
	}
	t.perOwner[topicOwner{topic, owner}]++
	if entries == nil {
		entries = make(map[owned]*entry)
		t.table[topic] = entries
	}
	entries[k] = e
	t.placeLocked(topic, e)
	t.entries++
	t.addJoin(topic, e, v)
	return ref, nil
}

// Update implements presence.Tracker.
func (t *Tracker) Update(_ context.Context, topic, owner, key string, meta json.RawMessage) (string, error) {
	if err := t.check.Entry(key, meta); err != nil {
		return "", err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return "", presence.ErrClosed
	}
	k := owned{owner, key}
	old := t.table[topic][k]
	if old == nil {
		return "", presence.ErrNotTracked
	}
	ref := presence.NewRef()
	full, err := presence.WithRefs(meta, ref, old.ref)
	if err != nil {
		return "", err
	}
	e, v, err := newEntry(key, ref, full)
	if err != nil {
		return "", err
	}
	t.table[topic][k] = e
	t.unplaceLocked(topic, old)
	t.placeLocked(topic, e)
	t.addLeave(topic, &change{ref: old.ref, key: key, meta: old.meta, field: t.field(old.ref)})
	t.addJoin(topic, e, v)
	return ref, nil
}

// Untrack implements presence.Tracker.
func (t *Tracker) Untrack(_ context.Context, topic, owner, key string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	entries := t.table[topic]
	k := owned{owner, key}
	e := entries[k]
	if e == nil {
		return nil
	}
	delete(entries, k)
	t.unplaceLocked(topic, e)
	t.forget(topic, owner)
	t.entries--
	if len(entries) == 0 {
		delete(t.table, topic)
	}
	t.addLeave(topic, &change{ref: e.ref, key: e.key, meta: e.meta, field: t.field(e.ref)})
	return nil
}

// UntrackAll implements presence.Tracker.
func (t *Tracker) UntrackAll(_ context.Context, topic, owner string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	entries := t.table[topic]
	for k, e := range entries {
		if k.owner == owner {
			delete(entries, k)
			t.unplaceLocked(topic, e)
			t.forget(topic, owner)
			t.entries--
			t.addLeave(topic, &change{ref: e.ref, key: e.key, meta: e.meta, field: t.field(e.ref)})
		}
	}
	if entries != nil && len(entries) == 0 {
		delete(t.table, topic)
	}
	return nil
}

// Close implements presence.Tracker: it stops the background work, removes
// this node's entries and heartbeat from Redis and publishes their
// leaves, so users on a draining node leave at once everywhere. Close the
// tracker before the PubSub it publishes through.
func (t *Tracker) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	for topic, entries := range t.table {
		for _, e := range entries {
			t.addLeave(topic, &change{ref: e.ref, key: e.key, meta: e.meta, field: t.field(e.ref)})
		}
	}
	clear(t.table)
	clear(t.order)
	clear(t.perOwner)
	t.entries = 0
	t.mu.Unlock()
	close(t.stop)
	t.wg.Wait()
	t.reads.close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*t.opt.Timeout)
	err := t.resync(ctx, true)
	cancel()
	t.unwatchAll()
	t.opt.PubSub.Unsubscribe(ControlTopic, t.control)
	if t.ownClient {
		_ = t.client.Close()
	}
	if err != nil {
		return fmt.Errorf("presence/redis: close: %w", err)
	}
	return nil
}

// kill stops the tracker as a crash would: no Redis cleanup, no leaves.
// Tests use it to simulate a node that died.
func (t *Tracker) kill() {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	t.closed = true
	clear(t.table)
	clear(t.order)
	clear(t.perOwner)
	t.entries = 0
	clear(t.pending)
	t.fifo = nil
	t.mu.Unlock()
	close(t.stop)
	t.wg.Wait()
	t.reads.close()
	t.unwatchAll()
	if t.ownClient {
		_ = t.client.Close()
	}
}
