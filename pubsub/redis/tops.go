package redis

import (
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

// Noted tops (pubsub.TopNotes): a join that asks for no broadcasts is told
// the position this node's dispatches stand at instead of reading the
// history, a round trip per join. The registry keeps the notes; this
// node withholds them whenever its dispatches may not follow the topic's
// offsets one by one: while the pub/sub connection is down (it forgets
// them when it goes down and when it comes back, as a shard connection's
// loss does: broadcasts published meanwhile never reach this node), while
// the topic's first SUBSCRIBE is not confirmed, and while a Redis
// Cluster's nodes may deliver a topic on two connections in no set order
// (as track does).

var _ pubsub.TopNotes = (*PubSub)(nil)

// NotedTop implements pubsub.TopNotes.
func (p *PubSub) NotedTop(topic string, maxAge time.Duration) (pubsub.Position, uint64, bool) {
	top, stamp, ok := p.reg.NotedTop(topic, maxAge)
	if ok && !p.notesHold(topic) {
		return pubsub.Position{}, stamp, false
	}
	return top, stamp, ok
}

// NoteTop implements pubsub.TopNotes.
func (p *PubSub) NoteTop(topic string, top pubsub.Position, stamp uint64) {
	if p.notesHold(topic) {
		p.reg.NoteTop(topic, top, stamp)
	}
}

// notesHold reports whether this node's dispatches of topic follow its
// offsets, so that its noted top may stand for a read.
func (p *PubSub) notesHold(topic string) bool {
	if p.lost.Load() || p.closed.Load() {
		return false
	}
	if p.shards != nil && !p.mayShard.mayWrite(p.Gate(), time.Now) {
		return false
	}
	p.confirmMu.Lock()
	confirming := p.confirming[topic] > 0
	p.confirmMu.Unlock()
	return !confirming
}
