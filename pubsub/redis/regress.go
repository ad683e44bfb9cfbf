package redis

import (
	"context"
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/pubsub"
)

// A history that goes back. Redis replicates asynchronously: a master
// that dies before its replica received its last writes is replaced by a
// replica whose history, in the same epoch, ends a few offsets earlier
// (so does a Redis restored from an older snapshot). The next broadcasts
// then get offsets that subscribers already hold, each naming another
// message: a channel would drop them as duplicates, and a client
// recovering since such a position would be served the new messages in
// place of the ones it saw.
//
// The node delivers a history topic's broadcasts from Redis, in offset
// order per channel, so it sees the regression: a position of the epoch
// it follows, at or before the newest one it delivered, naming a message
// other than the one it delivered there. It then
//   - moves the history to a new epoch in Redis (historyBump): every later
//     join or recovery since a position of the lost epoch is told
//     "epoch changed"; all nodes that see the regression run it, and the
//     first one wins;
//   - delivers the regressed broadcast, and every later one of that epoch
//     that reaches it, with a position in an epoch of its own that no
//     history has (a marker), so that each subscriber sees a new epoch
//     (a channel fails, its client rejoins and is told the epoch changed)
//     instead of a duplicate.
//
// Two deliveries that legitimately go back are told apart from a
// regression. On a Redis Cluster, while some node's Gate still has a
// topic on classic pub/sub and others' on sharded, broadcasts arrive on
// two connections and overtake each other, by any number of offsets: a
// node whose own Gate is not through the switch does not follow
// positions at all (a regression meanwhile goes undetected), and one
// whose Gate is through may still meet the last stragglers of the other
// connection: an offset at or before the newest one that this node never
// delivered fills in and is accepted, if it is within trackWindow of the
// newest (further back is taken for a regression). And a
// redelivered broadcast (the classic connection moving to another node
// of a cluster while the cluster bus still carries it) names the same
// message at the same offset, and goes on as the duplicate it is.

// trackWindow is how many recent offsets of a topic the node remembers
// the message of.
const trackWindow = 32

// historyTracks follows the positions the node delivers, per history
// topic with local subscribers.
type historyTracks struct {
	mu     sync.Mutex
	topics map[string]*topicTrack // guarded by mu

	regressions atomic.Uint64
}

// topicTrack is where a topic's deliveries stand.
type topicTrack struct {
	epoch  string
	top    uint64                   // newest offset delivered in epoch
	recent [trackWindow]trackedSlot // by offset modulo trackWindow
	// lost is an epoch found gone back, and marker the epoch its
	// broadcasts are delivered in from then on; bumping is set while a
	// historyBump for it runs or once one has run.
	lost, marker string
	bumping      bool
}

// trackLocked is topic's track, made if it has none: a track lives until
// the topic's last subscriber goes (sweepTracks). h.mu is held.
func (h *historyTracks) trackLocked(topic string) *topicTrack {
	t := h.topics[topic]
	if t == nil {
		if h.topics == nil {
			h.topics = make(map[string]*topicTrack)
		}
		t = &topicTrack{}
		h.topics[topic] = t
	}
	return t
}

type trackedSlot struct {
	off uint64
	id  uint64 // hash of the message id (origin node and sequence)
}

var idSeed = maphash.MakeSeed()

func messageID(env *envelope) uint64 {
	return maphash.String(idSeed, env.origin) ^ env.seq*0x9e3779b97f4a7c15
}

// track checks the position of a broadcast about to be delivered on
// topic and returns the position to deliver it with: env.pos, or a
// marker's when the history went back.
func (p *PubSub) track(topic string, env *envelope) pubsub.Position {
	pos, id := env.pos, messageID(env)
	h := &p.regress
	if p.shards != nil && !p.mayShard.mayWrite(p.Gate(), time.Now) {
		// Some node may still PUBLISH the topic while others SPUBLISH it:
		// its broadcasts reach this node on two connections, in no set
		// order, and going back proves nothing. Following starts afresh
		// once this node's Gate has seen the switch through.
		h.mu.Lock()
		delete(h.topics, topic)
		h.mu.Unlock()
		return pos
	}
	h.mu.Lock()
	t := h.trackLocked(topic)
	if t.lost != "" && pos.Epoch == t.lost {
		marked, bump := t.markedLocked(pos)
		h.mu.Unlock()
		if bump {
			p.bump(topic, pos.Epoch)
		}
		return marked
	}
	if pos.Epoch != t.epoch {
		lost, marker := t.lost, t.marker
		*t = topicTrack{epoch: pos.Epoch, top: pos.Offset, lost: lost, marker: marker}
		t.recent[pos.Offset%trackWindow] = trackedSlot{pos.Offset, id}
		h.mu.Unlock()
		return pos
	}
	slot := &t.recent[pos.Offset%trackWindow]
	switch {
	case pos.Offset > t.top:
		t.top = pos.Offset
		*slot = trackedSlot{pos.Offset, id}
		h.mu.Unlock()
		return pos
	case t.top-pos.Offset < trackWindow && slot.off == pos.Offset && slot.id == id:
		h.mu.Unlock()
		return pos // the same message again: a duplicate
	case t.top-pos.Offset < trackWindow && slot.off != pos.Offset:
		*slot = trackedSlot{pos.Offset, id}
		h.mu.Unlock()
		return pos // never delivered here: one that was overtaken
	}
	last := pubsub.Position{Epoch: t.epoch, Offset: t.top}
	t.lost, t.marker = pos.Epoch, newEpoch()
	h.regressions.Add(1)
	marked, _ := t.markedLocked(pos)
	h.mu.Unlock()
	p.warnWentBack(topic, last, pos, "delivered_as", marked.String())
	p.bump(topic, pos.Epoch)
	return marked
}

// Seen at publish. A node that only publishes to a topic (none of its
// clients joined it) delivers nothing of it, so track never sees its
// history go back; if no node has subscribers of the topic then, no node
// would. The history script's reply gives each broadcast's position, and
// the writers note them in the order Redis ran them (historyState.note):
// a position that is not past the last one this node was given in the
// same epoch is the history gone back, as sure as a delivery's. It takes
// a node that had published one of the lost broadcasts (within the
// history's TTL: what note keeps); a regression met only by nodes that
// published none of them, with no subscriber anywhere, goes unnoticed.
// The epoch found lost is marked on the topic's track as a delivery
// would mark it, so this node counts it once whichever path sees it
// first, and its subscribers (if any) get the lost epoch's broadcasts in
// a marker epoch.

// notePublished records pos, the position Redis gave one of this node's
// broadcasts on topic, and moves the history to a new epoch if it went
// back. The writers call it, in the order Redis ran the scripts.
func (p *PubSub) notePublished(topic string, pos pubsub.Position, o pubsub.HistoryOptions, now time.Time) {
	prev, ok := p.hist.note(topic, pos, o, now)
	switch {
	case !ok:
	case prev.epoch == pos.Epoch && pos.Offset <= prev.top:
		p.wentBack(topic, pubsub.Position{Epoch: prev.epoch, Offset: prev.top}, pos, true)
	case prev.lost == pos.Epoch:
		// Still in the lost epoch: the move has not run yet, or failed
		// (then this runs it again, as track does).
		p.wentBack(topic, pubsub.Position{}, pos, false)
	}
}

// wentBack records that topic's history went back in got's epoch, seen
// at publish: counted when fresh (last is then the newest position this
// node had been given) unless a delivery saw it first, and moved to a
// new epoch unless a move runs or has run.
func (p *PubSub) wentBack(topic string, last, got pubsub.Position, fresh bool) {
	h := &p.regress
	h.mu.Lock()
	t := h.trackLocked(topic)
	count := false
	if t.lost != got.Epoch {
		t.lost, t.marker, t.bumping = got.Epoch, newEpoch(), false
		count = fresh
	}
	bump := !t.bumping
	t.bumping = true
	if count {
		h.regressions.Add(1)
	}
	h.mu.Unlock()
	if count {
		p.warnWentBack(topic, last, got, "seen", "at publish")
	}
	if bump {
		p.bump(topic, got.Epoch)
	}
}

func (p *PubSub) warnWentBack(topic string, last, got pubsub.Position, attrs ...any) {
	p.log.Warn("redis: a topic's history went back: Redis lost broadcasts it had published (a failover to a replica that had not received them, or a restore); moving the history to a new epoch",
		append([]any{"topic", topic, "last", last.String(), "got", got.String()}, attrs...)...)
}

// markedLocked returns pos in t's marker epoch, and whether a historyBump
// should run (none is running or has run). Called with the tracks' mu.
func (t *topicTrack) markedLocked(pos pubsub.Position) (pubsub.Position, bool) {
	bump := !t.bumping
	t.bumping = true
	return pubsub.Position{Epoch: t.marker, Offset: pos.Offset}, bump
}

// bump runs historyBump for topic's lost epoch on its own goroutine (the
// caller is a connection's reader or a writer, neither of which may wait
// on Redis for it). A bump that fails is run again by the next broadcast
// of the lost epoch, delivered or published.
func (p *PubSub) bump(topic, lost string) {
	o, ok := p.historyOptions(topic)
	if !ok {
		return
	}
	// The caller is a reader, or a writer, which Close waits for before
	// the readers: either way this is counted before Close's wait for
	// the readers begins.
	p.reader.Add(1)
	go func() {
		defer p.reader.Done()
		ctx, cancel := context.WithTimeout(p.ctx, p.opt.PublishTimeout)
		defer cancel()
		keys := p.historyKeys(topic)
		next := newEpoch()
		args := []any{lost, next, ttlMillis(o)}
		cmd := historyBump.EvalSha(ctx, p.client, keys, args...)
		if isNoScript(cmd.Err()) {
			p.hist.reloads.Add(1)
			cmd = historyBump.Eval(ctx, p.client, keys, args...)
		}
		moved, err := cmd.Int()
		if err != nil {
			p.regress.mu.Lock()
			if t := p.regress.topics[topic]; t != nil && t.lost == lost {
				t.bumping = false
			}
			p.regress.mu.Unlock()
			if p.ctx.Err() == nil {
				p.log.Warn("redis: could not move a history that went back to a new epoch; retrying with its next broadcast",
					"topic", topic, "lost_epoch", lost, "err", err)
			}
			return
		}
		if moved == 1 {
			p.log.Info("redis: history moved to a new epoch after going back", "topic", topic, "lost_epoch", lost, "epoch", next)
		}
	}()
}

// sweepTracks forgets the topics that have no local subscriber left, so
// the tracks stay proportional to the topics the node follows. The
// reconciler calls it on its tick.
func (p *PubSub) sweepTracks() {
	h := &p.regress
	h.mu.Lock()
	topics := make([]string, 0, len(h.topics))
	for topic := range h.topics {
		topics = append(topics, topic)
	}
	h.mu.Unlock()
	// The registry's lock is not taken under the tracks' (a leaf).
	topics = slices.DeleteFunc(topics, func(t string) bool { return p.reg.Count(t) > 0 })
	if len(topics) == 0 {
		return
	}
	h.mu.Lock()
	for _, topic := range topics {
		delete(h.topics, topic)
	}
	h.mu.Unlock()
}

// historyBump moves a history that went back to a new epoch, unless
// another node has already (or it expired): the stream is dropped with
// it, so that nothing of the lost epoch is served under the new one.
//
//	KEYS[1] stream, KEYS[2] meta
//	ARGV[1] the epoch that went back
//	ARGV[2] the new epoch
//	ARGV[3] TTL in milliseconds
//
// Returns 1 when it moved the history, 0 when the meta named another
// epoch or none.
var historyBump = goredis.NewScript(`
if redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'epoch', ARGV[2], 'top', 0)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
`)
