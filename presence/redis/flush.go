package redis

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub"
)

// flushLoop is the only goroutine that writes this node's entries to
// Redis and publishes its diffs (Close takes over after it stopped), so
// the writes and diffs of one topic go out in order.
func (t *Tracker) flushLoop() {
	defer t.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	failing := false // the last resync failed
	for {
		t.mu.Lock()
		resync := t.needResync
		var due []string
		var next time.Duration = -1
		now := time.Now()
		if resync && now.Before(t.resyncAt) {
			// A resync failed a moment ago. The next one takes every
			// pending batch; flushing them meanwhile would fail alike.
			resync, next = false, t.resyncAt.Sub(now)
		} else if !resync {
			for len(t.fifo) > 0 && !t.fifo[0].deadline.After(now) {
				due = append(due, t.fifo[0].topic)
				t.fifo = t.fifo[1:]
			}
			var scan time.Time
			due, scan = t.takeQuiet(now, due)
			if len(t.fifo) > 0 {
				next = time.Until(t.fifo[0].deadline)
			}
			if !scan.IsZero() && (next < 0 || scan.Sub(now) < next) {
				next = scan.Sub(now)
			}
		}
		t.mu.Unlock()

		if resync {
			ctx, cancel := context.WithTimeout(context.Background(), 2*t.opt.Timeout)
			err := t.resync(ctx, false)
			cancel()
			switch {
			case err != nil && !failing:
				t.log.Warn("presence/redis: re-asserting entries failed; retrying every heartbeat until it succeeds", "retry", t.opt.Heartbeat, "err", err)
			case err != nil:
				t.log.Debug("presence/redis: re-asserting entries failed again", "err", err)
			case failing:
				t.log.Info("presence/redis: entries re-asserted")
			}
			failing = err != nil
			continue
		}
		if len(due) > 0 {
			t.flush(due)
			continue
		}
		if next >= 0 {
			timer.Reset(next)
		}
		select {
		case <-t.stop:
			return
		case <-t.wake:
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// outgoing is one diff ready to publish.
type outgoing struct {
	topic string
	diff  wireDiff
}

// wireDiff is the presence_diff payload: Phoenix's {joins, leaves} plus
// src (node#incarnation) and the per-(src, topic) clock, which phoenix.js
// ignores (it reads joins and leaves only). last says src has no entries
// left on the topic and forgets its clock: its next diff there is clock 1.
type wireDiff struct {
	Joins  presence.State `json:"joins"`
	Leaves presence.State `json:"leaves"`
	Src    string         `json:"src"`
	Clock  uint64         `json:"clock"`
	Last   bool           `json:"last,omitempty"`
}

// stamp builds topic's diffs from joins and leaves and gives each the
// next clock. Changes are deduplicated by ref (a resync merges a batch
// with its repairs). Returns nothing when there is nothing to send.
// Called with mu held.
//
// It is one diff unless that would be larger than the topic's diff budget
// (diffBudget): one Redis message too large makes Redis drop the
// connection of every node it is sent to, losing whatever was queued.
// Then the changes go out as several diffs, each under the budget, with
// consecutive clocks, joins before leaves. Clients apply a diff's joins
// before its leaves, and every join is in a diff no later than any leave,
// so applying the parts in order ends where the one diff would have.
func (t *Tracker) stamp(topic string, joins, leaves []*change) []outgoing {
	budget := t.diffBudget(topic)
	var out []outgoing
	var cur wireDiff
	size, n := 0, 0
	add := func(c *change, leave bool) {
		sz := changeSize(c)
		if n > 0 && size+sz > budget {
			out = append(out, outgoing{topic: topic, diff: cur})
			n = 0
		}
		if n == 0 {
			cur = wireDiff{Joins: presence.State{}, Leaves: presence.State{}, Src: t.src}
			size = t.diffBase
		}
		if leave {
			cur.Leaves.Add(c.key, c.meta)
		} else {
			cur.Joins.Add(c.key, c.meta)
		}
		size += sz
		n++
	}
	// A ref may be both joined and left in one diff (a listed join that
	// left within its window): clients apply joins, then leaves, as
	// Phoenix's Presence does, and end without it.
	joined := make(map[string]bool, len(joins))
	left := make(map[string]bool, len(leaves))
	for _, c := range joins {
		if c != nil && !joined[c.ref] {
			joined[c.ref] = true
			add(c, false)
		}
	}
	for _, c := range leaves {
		if c != nil && !left[c.ref] {
			left[c.ref] = true
			add(c, true)
		}
	}
	if n > 0 {
		out = append(out, outgoing{topic: topic, diff: cur})
	}
	if len(out) == 0 {
		return nil
	}
	clock := t.clocks[topic]
	for i := range out {
		clock++
		out[i].diff.Clock = clock
	}
	if t.topicLen(topic) == 0 {
		out[len(out)-1].diff.Last = true
		delete(t.clocks, topic)
	} else {
		t.clocks[topic] = clock
	}
	return out
}

// messageSizer is implemented by the PubSubs that bound one message
// (pubsub/redis).
type messageSizer interface {
	MaxMessageSize() int
	MessageOverhead(topic, event string) int
}

// diffBudget is the largest presence_diff payload of topic: Options.
// MaxDiffSize, else what the PubSub carries in one message on topic.
func (t *Tracker) diffBudget(topic string) int {
	if t.opt.MaxDiffSize > 0 {
		return t.opt.MaxDiffSize
	}
	if ms, ok := t.ps.(messageSizer); ok {
		return ms.MaxMessageSize() - ms.MessageOverhead(topic, "presence_diff")
	}
	return DefaultMaxDiffSize
}

// changeSize bounds what c adds to a diff's JSON: its quoted key, its
// meta and the punctuation around them (a key met twice in one diff is
// written once, so the sum of the changes is an upper bound).
func changeSize(c *change) int {
	q, _ := json.Marshal(c.key)
	return len(q) + len(c.meta) + len(`,:{"metas":[,]}`)
}

// emptyDiffSize is the size of a diff of src without changes, with the
// largest clock and the last flag: the base that changeSize adds to.
func emptyDiffSize(src string) int {
	d := wireDiff{Src: src, Clock: math.MaxUint64, Last: true}
	return len(d.appendJSON(nil))
}

// appendJSON appends the diff's payload. Not json.Marshal: it re-compacts
// what State.MarshalJSON returns and escapes every <, > and & in the
// metas into six bytes, so a diff's size would not be the sum of its
// changes that stamp counts.
func (d *wireDiff) appendJSON(b []byte) []byte {
	b = append(b, `{"joins":`...)
	b = d.Joins.AppendJSON(b)
	b = append(b, `,"leaves":`...)
	b = d.Leaves.AppendJSON(b)
	b = append(b, `,"src":`...)
	src, _ := json.Marshal(d.Src)
	b = append(b, src...)
	b = append(b, `,"clock":`...)
	b = strconv.AppendUint(b, d.Clock, 10)
	if d.Last {
		b = append(b, `,"last":true`...)
	}
	return append(b, '}')
}

// flush writes the due topics' changes to Redis in one pipeline, then
// publishes one diff per topic. Redis is written first, so a node that
// lists the topic after subscribing either sees the change or receives
// its diff.
func (t *Tracker) flush(topics []string) {
	ctx, cancel := context.WithTimeout(context.Background(), t.opt.Timeout)
	defer cancel()
	pipe := t.client.Pipeline()
	var out []outgoing
	t.mu.Lock()
	for _, topic := range topics {
		b := t.pending[topic]
		delete(t.pending, topic)
		if b == nil {
			continue
		}
		t.adapt(topic, b)
		key := t.topicKey(topic)
		for _, c := range b.joins {
			if c != nil && c.field != "" {
				pipe.HSet(ctx, key, c.field, c.value)
			}
		}
		for _, c := range b.leaves {
			if c.field != "" {
				pipe.HDel(ctx, key, c.field)
			}
		}
		if t.topicLen(topic) > 0 {
			pipe.SAdd(ctx, t.topicsKey, topic)
		} else {
			pipe.SRem(ctx, t.topicsKey, topic)
		}
		out = append(out, t.stamp(topic, b.joins, b.leaves)...)
	}
	t.mu.Unlock()
	if pipe.Len() > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			t.log.Warn("presence/redis: writing entries failed; they are re-asserted at the next heartbeat", "err", err)
			t.mu.Lock()
			t.needResync = true
			t.mu.Unlock()
		}
	}
	t.publish(ctx, out)
	t.reconcileWatches(topics)
}

// publish sends the diffs through the PubSub: local subscribers at once,
// other nodes through Redis. A failed relay shows as a gap in our clock
// on the other nodes, which then re-read the topic.
//
// The topics go out together, a goroutine each: the Redis PubSub sends
// whatever is queued in one pipeline, so a flush of many topics costs one
// round trip. One at a time, a flush of a hundred topics made a hundred
// round trips under one deadline, which a busy Redis let expire: the later
// diffs were lost, and every peer repaired those topics. The diffs of one
// topic (stamp puts them next to each other) go one after another in one
// goroutine, and the next flush waits for this one, so each topic's diffs
// stay in order.
func (t *Tracker) publish(ctx context.Context, out []outgoing) {
	var wg sync.WaitGroup
	for len(out) > 0 {
		n := 1
		for n < len(out) && out[n].topic == out[0].topic {
			n++
		}
		group := out[:n]
		out = out[n:]
		wg.Go(func() {
			for _, o := range group {
				payload := o.diff.appendJSON(nil)
				err := t.ps.Publish(ctx, &pubsub.Message{Topic: o.topic, Event: "presence_diff", Payload: payload})
				// Debug: the PubSub logs its own failures, at most one
				// line per interval; here they were one warning per
				// topic, so a node draining through a Redis outage logged
				// its every room. Peers see the lost diff as a gap and
				// repair the topic.
				if err != nil && !errors.Is(err, pubsub.ErrClosed) {
					t.log.Debug("presence/redis: publishing presence_diff", "topic", o.topic, "err", err)
				}
			}
		})
	}
	wg.Wait()
}

// resync makes Redis hold exactly this node's table (drain: nothing, and
// no heartbeat): for every topic we have or had entries on, it deletes
// our fields that are not in the table and writes the missing ones, and
// writes the heartbeat, the topics set and the alive marker. The pending batches are taken and published together with the
// joins and leaves the repair implies (deduplicated by ref), so clients
// converge on what Redis now holds.
func (t *Tracker) resync(ctx context.Context, drain bool) error {
	t.mu.Lock()
	t.needResync = false
	snapshot := make(map[string]map[string]*entry, len(t.table)) // topic -> field -> entry
	for topic, tt := range t.table {
		m := make(map[string]*entry, tt.n)
		tt.each(func(e *entry) { m[t.field(e.ref)] = e })
		snapshot[topic] = m
	}
	taken := t.pending
	t.pending = make(map[string]*batch)
	t.fifo = nil
	t.mu.Unlock()

	failed := func(err error) error {
		t.mu.Lock()
		t.needResync = !drain
		// A dead Redis refuses connections at once: retrying at once
		// would spin. The heartbeat that finds Redis back calls sooner.
		t.resyncWait = resyncBackoff(t.resyncWait, t.opt.Heartbeat)
		t.resyncAt = time.Now().Add(t.resyncWait)
		out := make([]outgoing, 0, len(taken))
		for topic, b := range taken {
			out = append(out, t.stamp(topic, b.joins, b.leaves)...)
		}
		t.mu.Unlock()
		t.publish(ctx, out)
		return err
	}

	registered, err := t.client.SMembers(ctx, t.topicsKey).Result()
	if err != nil {
		return failed(err)
	}
	topics := make(map[string]bool)
	for _, s := range registered {
		topics[s] = true
	}
	for s := range snapshot {
		topics[s] = true
	}
	for s := range taken {
		topics[s] = true
	}
	list := make([]string, 0, len(topics))
	for s := range topics {
		list = append(list, s)
	}
	read := t.client.Pipeline()
	cmds := make([]interface{ Val() map[string]string }, len(list))
	for i, s := range list {
		cmds[i] = read.HGetAll(ctx, t.topicKey(s))
	}
	if len(list) > 0 {
		if _, err := read.Exec(ctx); err != nil {
			return failed(err)
		}
	}

	// The fields, the topics set, the alive marker and the heartbeat lie
	// on different slots of a Redis Cluster, where no transaction spans
	// them, so they are written in steps, each a pipeline, in the order
	// that keeps every interruption harmless. Entering: topics and marker
	// before the fields, so that a reaper that removes the fields after
	// they are written (it read them before) also removes the marker after
	// this wrote it (it removes fields, then the marker), and the next
	// heartbeat re-asserts. Leaving (drain, or topics no longer held): the
	// fields before the topics set, which is how a later resync or reaper
	// finds fields left by a failed step.
	fields := t.client.Pipeline()
	joins := make(map[string][]*change)
	leaves := make(map[string][]*change)
	var gone []any // topics in the set where no entry is left
	for i, topic := range list {
		key := t.topicKey(topic)
		have := make(map[string]bool)
		for f, v := range cmds[i].Val() {
			node, ref, ok := splitField(f)
			if !ok || node != t.me {
				continue
			}
			have[f] = true
			if e := snapshot[topic][f]; e != nil {
				if want, err := e.value(); err == nil && string(want) != v {
					fields.HSet(ctx, key, f, want)
				}
				continue
			}
			fields.HDel(ctx, key, f)
			if s, ok := t.decodeStored(topic, f, v); ok {
				leaves[topic] = append(leaves[topic], &change{ref: ref, key: s.Key, meta: s.Meta})
			}
		}
		for f, e := range snapshot[topic] {
			if !have[f] {
				if v, err := e.value(); err == nil {
					fields.HSet(ctx, key, f, v)
				}
				joins[topic] = append(joins[topic], &change{ref: e.ref, key: e.key, meta: e.meta})
			}
		}
		if len(snapshot[topic]) == 0 {
			gone = append(gone, topic)
		}
	}
	if !drain {
		enter := t.client.Pipeline()
		enter.Eval(ctx, heartbeatScript, []string{t.nodesKey}, t.me)
		if len(snapshot) > 0 {
			members := make([]any, 0, len(snapshot))
			for s := range snapshot {
				members = append(members, s)
			}
			enter.SAdd(ctx, t.topicsKey, members...)
		}
		enter.Set(ctx, t.aliveKey, t.src, 0)
		if _, err := enter.Exec(ctx); err != nil {
			return failed(err)
		}
	}
	if fields.Len() > 0 {
		if _, err := fields.Exec(ctx); err != nil {
			return failed(err)
		}
	}
	leave := t.client.Pipeline()
	if drain {
		leave.Del(ctx, t.topicsKey)
		leave.Del(ctx, t.aliveKey)
		leave.HDel(ctx, t.nodesKey, t.me)
	} else if len(gone) > 0 {
		leave.SRem(ctx, t.topicsKey, gone...)
	}
	if leave.Len() > 0 {
		if _, err := leave.Exec(ctx); err != nil {
			return failed(err)
		}
	}

	t.mu.Lock()
	var out []outgoing
	for _, topic := range list {
		var js, ls []*change
		if b := taken[topic]; b != nil {
			js, ls = b.joins, b.leaves
		}
		js = append(js, joins[topic]...)
		ls = append(ls, leaves[topic]...)
		out = append(out, t.stamp(topic, js, ls)...)
	}
	t.resyncWait = 0
	t.mu.Unlock()
	t.publish(ctx, out)
	if !drain {
		t.reconcileWatches(list)
	}
	return nil
}

// firstResyncRetry is how soon a failed resync is first tried again.
const firstResyncRetry = 250 * time.Millisecond

// resyncBackoff is the wait before the next resync after one failed,
// given the last wait (zero after a success): firstResyncRetry, then
// twice as long each time, up to a heartbeat. A Redis that is down for
// long is asked once a heartbeat; one that comes back within seconds, a
// Redis Cluster whose replica takes over from a dead master, is found
// again within a fraction of it, and so the joins that waited for the
// resync reach Redis then, not a heartbeat later.
func resyncBackoff(last, heartbeat time.Duration) time.Duration {
	return min(max(2*last, firstResyncRetry), heartbeat)
}
