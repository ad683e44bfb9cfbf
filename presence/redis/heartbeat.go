package redis

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

// heartbeatScript stamps the node with Redis's own clock (so liveness
// never depends on the nodes' clocks agreeing) and returns that time.
const heartbeatScript = `
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ms)
return ms`

// clockScript returns Redis's clock in milliseconds, run with the nodes
// hash as its key: the heartbeats are judged by the clock that stamped
// them, that of the shard holding the hash, and not by another shard's
// (TIME, having no key, goes to any shard of a Redis Cluster).
const clockScript = `
local t = redis.call('TIME')
return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`

func (t *Tracker) heartbeatLoop() {
	defer t.wg.Done()
	tick := time.NewTicker(t.opt.Heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
		}
		t.heartbeat()
	}
}

// heartbeat writes our heartbeat, checks that Redis still holds our
// entries (the alive marker; a Redis restart or FLUSHALL removes it, as
// does a peer that reaped us) and reaps the nodes that went silent.
func (t *Tracker) heartbeat() {
	ctx, cancel := context.WithTimeout(context.Background(), t.opt.Timeout)
	defer cancel()
	pipe := t.client.Pipeline()
	now := pipe.Eval(ctx, heartbeatScript, []string{t.nodesKey}, t.me)
	alive := pipe.Exists(ctx, t.aliveKey)
	nodes := pipe.HGetAll(ctx, t.nodesKey)
	if _, err := pipe.Exec(ctx); err != nil {
		if !t.down {
			t.down = true
			t.log.Warn("presence/redis: heartbeat failed; Redis unreachable", "err", err)
		}
		return
	}
	if t.down {
		// Back from an outage: Redis may have lost our entries and we may
		// have missed diffs. Re-assert, and refresh local clients.
		t.down = false
		t.log.Info("presence/redis: Redis reachable again; re-asserting entries")
		t.requestResync()
		t.refreshRounds = t.refreshRoundsAfterOutage()
		// Reaped while cut off: the reaper's leaves race our joins, as
		// below.
		t.announce = t.announce || alive.Val() == 0
	} else if alive.Val() == 0 {
		t.log.Info("presence/redis: entries missing from Redis (restart, flush or reaped); re-asserting")
		t.requestResync()
		t.refreshRounds = t.refreshRoundsAfterOutage()
		// A peer that reaped us publishes its leaves for our entries
		// after our re-assertion's joins, or before: two nodes' diffs
		// come in no set order, and every client that applies the leave
		// last shows our live entries gone. Peers refresh their clients
		// from Redis, as after our own reconnect.
		t.announce = true
	}
	t.refreshAfterPubSubOutage(ctx)
	ms, _ := now.Int64()
	for n, v := range nodes.Val() {
		if n == t.me {
			continue
		}
		hb, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms-hb > t.opt.DeadAfter.Milliseconds() {
			t.reap(ctx, n)
		}
	}
}

// LiveNodes returns the ids of the nodes whose heartbeat in the nodes
// hash is within DeadAfter of Redis's clock, this node's among them: the
// nodes List counts as live and the reaper leaves alone. Every release
// since b847059 heartbeats there under its PubSub's node id, so a node
// starting reads in it every node that may be live, whether or not it
// has reported yet: package node seeds its pubsub/redis Gate with it
// (Gate.SeedRoster). Sorted; one round trip.
func (t *Tracker) LiveNodes(ctx context.Context) ([]string, error) {
	pipe := t.client.Pipeline()
	ncmd := pipe.HGetAll(ctx, t.nodesKey)
	tcmd := pipe.Eval(ctx, clockScript, []string{t.nodesKey})
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("presence/redis: live nodes: %w", err)
	}
	now, _ := tcmd.Int64()
	live := t.liveNodes(ncmd.Val(), now)
	return slices.Sorted(maps.Keys(live)), nil
}

// refreshAfterOutage is how many heartbeats send local clients a fresh
// presence_state after an outage. Diffs published while any node's pub/sub
// connection was down are lost for that node (at-most-once), and every
// node re-asserts within one heartbeat of Redis answering again, so
// refreshing on the heartbeats that follow the last reconnect covers the
// re-assertions of every other node, whichever reconnected first.
const refreshAfterOutage = 3

// refreshRoundsAfterOutage is refreshAfterOutage and, beyond it, as many
// heartbeats as a topic's widest coalescing window: a reaper's leaves
// wait in that window before they go out, and a refresh must come after
// them.
func (t *Tracker) refreshRoundsAfterOutage() int {
	w := max(t.opt.Coalesce, t.opt.MaxCoalesce)
	return refreshAfterOutage + int((w+t.opt.Heartbeat-1)/t.opt.Heartbeat)
}

// refreshAfterPubSubOutage counts the PubSub's reconnects and, while
// refresh rounds remain and the PubSub is connected, sends local clients
// a fresh presence_state for the topics this node tracks.
//
// A node whose own pub/sub connection dropped also asks every peer, on
// ControlTopic, to refresh its clients: what this node published while it
// was cut off (its users' joins and leaves, its re-assertion) reached none
// of them.
func (t *Tracker) refreshAfterPubSubOutage(ctx context.Context) {
	if rc, ok := t.opt.PubSub.(interface{ Reconnects() uint64 }); ok {
		if n := rc.Reconnects(); n != t.seenReconnects {
			t.seenReconnects = n
			t.refreshRounds = t.refreshRoundsAfterOutage()
			t.announce = true
		}
	}
	if t.peerRefreshed.Swap(false) {
		t.refreshRounds = t.refreshRoundsAfterOutage()
	}
	if t.refreshRounds == 0 {
		return
	}
	if p, ok := t.opt.PubSub.(interface{ Ping(context.Context) error }); ok && p.Ping(ctx) != nil {
		return // not connected yet: a refresh now could be missed again
	}
	if t.announce {
		err := t.opt.PubSub.Publish(ctx, &pubsub.Message{Topic: ControlTopic, Event: "refresh", Payload: []byte(`{}`), From: t.control.id})
		if err != nil {
			t.log.Warn("presence/redis: asking peers to refresh failed; retried next heartbeat", "err", err)
		} else {
			t.announce = false
		}
	}
	t.refreshRounds--
	t.requestRepairAll()
}

// ControlTopic carries requests between the nodes' trackers. Topics that
// begin with "phx:" are internal: clients cannot publish to them through
// the HTTP API.
const ControlTopic = "phx:presence"

// controlSub receives peers' refresh requests.
type controlSub struct {
	t  *Tracker
	id string
}

func (c *controlSub) SubscriberID() string { return c.id }

func (c *controlSub) Deliver(m *pubsub.Message) {
	if m.Event == "refresh" {
		c.t.peerRefreshed.Store(true)
	}
}

func (t *Tracker) requestResync() {
	t.mu.Lock()
	t.needResync = true
	t.resyncAt = time.Time{}
	t.mu.Unlock()
	t.poke()
}

// reap removes a dead node's entries, if this node wins the claim, and
// queues their leaves: one presence_diff per topic reaches every node's
// subscribers through the PubSub, once.
func (t *Tracker) reap(ctx context.Context, dead string) {
	lock := t.opt.Prefix + ":reap:" + dead
	// The claim must outlive the whole reap (its reads and transaction,
	// each bounded by Timeout): a claim that expired mid-reap would let a
	// second node read the same fields and send the leaves twice. Once the
	// reap commits, the dead node is gone from the nodes hash and nobody
	// looks at the claim again.
	won, err := t.client.SetNX(ctx, lock, t.me, t.opt.DeadAfter+4*t.opt.Timeout).Result()
	if err != nil || !won {
		return
	}
	deadTopics := t.opt.Prefix + ":n:" + dead + ":topics"
	topics, err := t.client.SMembers(ctx, deadTopics).Result()
	if err != nil {
		return
	}
	prefix := dead + "/"
	read := t.client.Pipeline()
	cmds := make([]interface{ Val() map[string]string }, len(topics))
	for i, s := range topics {
		cmds[i] = read.HGetAll(ctx, t.topicKey(s))
	}
	if len(topics) > 0 {
		if _, err := read.Exec(ctx); err != nil {
			return
		}
	}
	// The fields first, the bookkeeping once they are all gone: on a Redis
	// Cluster the topics lie on different slots, where no transaction
	// spans them. A topic's leaves go out only when its fields were
	// removed; after a partial failure the claim runs out, and the next
	// reaper finds the dead node's topics set still there and only the
	// fields left to remove.
	del := t.client.Pipeline()
	leaves := make(map[string][]*change)
	hdels := make(map[string]interface{ Err() error })
	for i, topic := range topics {
		var fields []string
		for f, v := range cmds[i].Val() {
			if !strings.HasPrefix(f, prefix) {
				continue
			}
			fields = append(fields, f)
			if s, ok := t.decodeStored(topic, f, v); ok {
				leaves[topic] = append(leaves[topic], &change{ref: f[len(prefix):], key: s.Key, meta: s.Meta})
			}
		}
		if len(fields) > 0 {
			hdels[topic] = del.HDel(ctx, t.topicKey(topic), fields...)
		}
	}
	var failed error
	if del.Len() > 0 {
		_, failed = del.Exec(ctx)
		for topic, cmd := range hdels {
			if cmd.Err() != nil {
				delete(leaves, topic)
			}
		}
	}
	if failed == nil {
		book := t.client.Pipeline()
		book.Del(ctx, deadTopics)
		book.Del(ctx, t.opt.Prefix+":n:"+dead+":alive")
		book.HDel(ctx, t.nodesKey, dead)
		_, failed = book.Exec(ctx)
	}
	if failed != nil {
		t.log.Warn("presence/redis: removing a dead node's entries failed; retried later", "node", dead, "err", failed)
	}
	n := 0
	t.mu.Lock()
	for topic, cs := range leaves {
		for _, c := range cs {
			t.addLeave(topic, c)
			n++
		}
	}
	t.mu.Unlock()
	t.log.Info("presence/redis: removed a dead node's entries", "node", dead, "entries", n, "topics", len(leaves))
}

// watcher is the tracker's own subscriber on the topics where this node
// has entries: it reads the src/clock of every presence_diff and asks for
// a repair of the topic when a peer's clock skips.
type watcher struct {
	t  *Tracker
	id string

	mu     sync.Mutex
	topics map[string]map[string]uint64 // watched topic -> src -> last clock
}

// maxSrcsPerTopic bounds the peers whose clocks the watcher keeps per
// topic. Legitimate sources are the nodes' incarnations, a handful; but
// anything that can publish a presence_diff on the topic (a node of
// another release, an application broadcasting that event) can name any
// src, and each would otherwise stay in the map while we have entries
// there. Sources beyond it are not checked for gaps.
const maxSrcsPerTopic = 256

func (w *watcher) SubscriberID() string { return w.id }

func (w *watcher) Deliver(m *pubsub.Message) {
	if m.Event != "presence_diff" {
		return
	}
	var d struct {
		Src   string `json:"src"`
		Clock uint64 `json:"clock"`
		Last  bool   `json:"last"`
	}
	if json.Unmarshal(m.Payload, &d) != nil || d.Src == "" || d.Src == w.t.src {
		return
	}
	w.mu.Lock()
	clocks := w.topics[m.Topic]
	gap := false
	if clocks != nil {
		last, seen := clocks[d.Src]
		gap = seen && d.Clock != last+1
		switch {
		case d.Last:
			delete(clocks, d.Src)
		case seen || len(clocks) < maxSrcsPerTopic:
			clocks[d.Src] = d.Clock
		}
	}
	w.mu.Unlock()
	if live := w.t.cachedLive(); live != nil {
		if n := srcNode(d.Src); n != "" && !live[n] {
			w.t.forgetLive()
		}
	}
	if gap {
		w.t.log.Debug("presence/redis: gap in a peer's diffs; re-reading the topic", "topic", m.Topic, "src", d.Src)
		w.t.requestRepair(m.Topic)
	}
}

// reconcileWatches subscribes the watcher to the given topics where we
// have entries and unsubscribes it where we have none. Flusher only.
func (t *Tracker) reconcileWatches(topics []string) {
	for _, topic := range topics {
		t.mu.Lock()
		has := len(t.table[topic]) > 0 && !t.closed
		t.mu.Unlock()
		switch {
		case has && !t.watched[topic]:
			t.watched[topic] = true
			t.watcher.mu.Lock()
			t.watcher.topics[topic] = make(map[string]uint64)
			t.watcher.mu.Unlock()
			if err := t.ps.Subscribe(topic, t.watcher); err != nil {
				t.log.Debug("presence/redis: watching topic", "topic", topic, "err", err)
			}
		case !has && t.watched[topic]:
			t.unwatch(topic)
		}
	}
}

func (t *Tracker) unwatch(topic string) {
	delete(t.watched, topic)
	t.ps.Unsubscribe(topic, t.watcher)
	t.watcher.mu.Lock()
	delete(t.watcher.topics, topic)
	t.watcher.mu.Unlock()
}

func (t *Tracker) unwatchAll() {
	for topic := range t.watched {
		t.unwatch(topic)
	}
}

func (t *Tracker) requestRepair(topic string) {
	if t.opt.LocalDispatch == nil {
		return
	}
	t.mu.Lock()
	t.repairs[topic] = struct{}{}
	t.mu.Unlock()
	select {
	case t.repairCh <- struct{}{}:
	default:
	}
}

func (t *Tracker) requestRepairAll() {
	t.watcher.mu.Lock()
	topics := make([]string, 0, len(t.watcher.topics))
	for s := range t.watcher.topics {
		topics = append(topics, s)
	}
	t.watcher.mu.Unlock()
	for _, s := range topics {
		t.requestRepair(s)
	}
}

// repairLoop sends a fresh presence_state to this node's subscribers of
// each topic that needs it (anti-entropy for clients: the JS Presence
// class replaces its view by a state, emitting the joins and leaves it
// missed).
//
// A topic is repaired at most once per repairInterval: a repair costs the
// whole room to every local subscriber, and the gaps that ask for it come
// in bursts when Redis is overloaded (publishes time out, so peers see
// gaps), where a repair per gap would feed the overload. A gap found
// meanwhile is repaired when the interval has passed; the state sent then
// covers it.
func (t *Tracker) repairLoop() {
	defer t.wg.Done()
	last := make(map[string]time.Time) // topic -> its latest repair
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-t.repairCh:
		case <-timer.C:
		}
		now := time.Now()
		for s, at := range last {
			if now.Sub(at) >= repairInterval {
				delete(last, s)
			}
		}
		var due []string
		var wait time.Duration
		t.mu.Lock()
		for s := range t.repairs {
			if at, ok := last[s]; ok {
				if d := repairInterval - now.Sub(at); wait == 0 || d < wait {
					wait = d
				}
				continue
			}
			due = append(due, s)
			delete(t.repairs, s)
		}
		t.mu.Unlock()
		if wait > 0 {
			timer.Reset(wait)
		}
		if len(due) > 0 {
			t.forgetLive()
		}
		for _, topic := range due {
			last[topic] = now
			ctx, cancel := context.WithTimeout(context.Background(), t.opt.Timeout)
			state, err := t.List(ctx, topic)
			cancel()
			if err != nil {
				t.log.Warn("presence/redis: anti-entropy list failed", "topic", topic, "err", err)
				continue
			}
			payload, err := json.Marshal(state)
			if err != nil {
				continue
			}
			t.opt.LocalDispatch(&pubsub.Message{Topic: topic, Event: "presence_state", Payload: payload, Local: true})
			t.repairsSent.Add(1)
		}
	}
}

// repairInterval is the least time between two repairs of a topic.
const repairInterval = time.Second

// Repairs is how many presence_state repairs (anti-entropy after a gap or
// an outage) this node has sent to its local subscribers, one per topic
// repaired.
func (t *Tracker) Repairs() uint64 { return t.repairsSent.Load() }
