package presence

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"
	"unsafe"

	"github.com/channelsd/channelsd/pubsub"
)

// The pacing of Local's diffs (pacing.go says why).
//
// What a subscriber must be able to rely on (Tracker): the diffs it
// receives, applied in order on top of a List taken after it subscribed,
// yield the table. Every diff goes out under the topic's lock, in the
// order of the changes, and holds every change since the previous one, so
// a List taken at any moment sees the changes of the diffs sent before it
// and the diffs after it carry all the changes it did not see, and maybe
// some it saw: a join it already listed (the JavaScript Presence class
// keeps one meta per phx_ref) or the leave of an entry it never listed
// (ignored). No change is lost, and none arrives out of order: a join
// and a leave of the same phx_ref in one diff are applied joins first, as
// Phoenix's Presence applies a diff.

// localChange is one join or leave of a meta (which carries its phx_ref).
type localChange struct {
	key  string
	meta json.RawMessage
}

// localBatch is the changes of a topic waiting for the window's end.
type localBatch struct {
	joins  []localChange // a cancelled join has a nil meta
	leaves []localChange
	// joinAt finds a pending join by its meta's first byte (each entry's
	// meta is its own slice), so that the entry's leave can cancel it.
	joinAt map[*byte]int
	// listed: joins[:listed] were returned by a List. A subscriber may
	// show them, so their leaves must be sent rather than cancel them.
	listed int
}

// clock is what pacing reads the time from and schedules with; tests
// give Local a fake one.
type clock interface {
	Now() time.Time
	AfterFunc(d time.Duration, f func()) stopper
}

type stopper interface{ Stop() bool }

type realClock struct{}

func (realClock) Now() time.Time                              { return time.Now() }
func (realClock) AfterFunc(d time.Duration, f func()) stopper { return time.AfterFunc(d, f) }

// flushTimeout bounds the publish of a paced diff, which has no caller's
// context.
const flushTimeout = 5 * time.Second

// changed sends topic's joins and leaves now, as one diff, when the
// topic's last diff is a window old (or pacing is off), or else adds them
// to the batch that goes out at the window's end. Called with t.mu held,
// after the table changed.
func (l *Local) changed(ctx context.Context, topic string, t *localTopic, joins, leaves []localChange) error {
	now := l.clock.Now()
	if l.maxCoalesce < 0 {
		return l.publish(ctx, topic, joins, leaves)
	}
	w := max(t.w, DiffWindow(t.n, 0, l.maxCoalesce))
	if t.pend == nil && now.Sub(t.last) >= w {
		if now.Sub(t.last) >= 2*w {
			t.w = 0 // quiet for two windows: the topic starts over
		}
		t.last = now
		return l.publish(ctx, topic, joins, leaves)
	}
	b := t.pend
	if b == nil {
		b = &localBatch{}
		t.pend = b
		topicName := topic
		l.flushes.Add(1)
		t.timer = l.clock.AfterFunc(t.last.Add(w).Sub(now), func() { l.flushTopic(topicName, t) })
	}
	for _, c := range joins {
		if b.joinAt == nil {
			b.joinAt = make(map[*byte]int)
		}
		b.joinAt[unsafe.SliceData(c.meta)] = len(b.joins)
		b.joins = append(b.joins, c)
	}
	for _, c := range leaves {
		if i, ok := b.joinAt[unsafe.SliceData(c.meta)]; ok && i >= b.listed {
			// Joined and left within the window, unseen: neither goes out.
			b.joins[i].meta = nil
			delete(b.joinAt, unsafe.SliceData(c.meta))
			continue
		}
		b.leaves = append(b.leaves, c)
	}
	return nil
}

// listedLocked notes that a List read the table: the joins waiting now
// may be shown by a subscriber. Called with t.mu held.
func (t *localTopic) listedLocked() {
	if t.pend != nil {
		t.pend.listed = len(t.pend.joins)
	}
}

// flushTopic sends the batch of t at its window's end (the timer's
// goroutine).
func (l *Local) flushTopic(topic string, t *localTopic) {
	defer l.flushes.Done()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.timer = nil
	if !t.gone {
		l.sendPendingLocked(topic, t)
	}
}

// sendPendingLocked sends t's batch as one diff. Called with t.mu held.
func (l *Local) sendPendingLocked(topic string, t *localTopic) {
	b := t.pend
	t.pend = nil
	if b == nil {
		return
	}
	t.last = l.clock.Now()
	joins := b.joins[:0]
	for _, c := range b.joins {
		if c.meta != nil {
			joins = append(joins, c)
		}
	}
	t.w = AdaptWindow(t.w, len(joins)+len(b.leaves), t.n, 0, l.maxCoalesce)
	if len(joins) > 0 || len(b.leaves) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
		err := l.publish(ctx, topic, joins, b.leaves)
		cancel()
		if err != nil {
			slog.Debug("presence: publishing a paced presence_diff", "topic", topic, "err", err)
		}
	}
	l.dropIfEmptyLocked(topic, t)
}

// dropPendingLocked forgets t's batch and stops its timer (Close). A
// timer that already fired finds the table gone. Called with t.mu held.
func (l *Local) dropPendingLocked(t *localTopic) {
	if t.timer != nil && t.timer.Stop() {
		l.flushes.Done()
	}
	t.pend, t.timer = nil, nil
}

// publish sends one presence_diff of joins and leaves on topic. Called
// with the topic's lock held: the diffs leave in the order of the
// changes.
func (l *Local) publish(ctx context.Context, topic string, joins, leaves []localChange) error {
	var js, ls State
	if len(joins) > 0 {
		js = make(State, len(joins))
		for _, c := range joins {
			js.Add(c.key, c.meta)
		}
	}
	if len(leaves) > 0 {
		ls = make(State, len(leaves))
		for _, c := range leaves {
			ls.Add(c.key, c.meta)
		}
	}
	return l.ps.Publish(ctx, &pubsub.Message{Topic: topic, Event: "presence_diff", Payload: appendDiff(nil, js, ls)})
}

// appendDiff appends the presence_diff payload {"joins":..,"leaves":..}
// (State.AppendJSON says why not encoding/json).
func appendDiff(b []byte, joins, leaves State) []byte {
	b = append(b, `{"joins":`...)
	b = joins.AppendJSON(b)
	b = append(b, `,"leaves":`...)
	b = leaves.AppendJSON(b)
	return append(b, '}')
}
