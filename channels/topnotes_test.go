package channels_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/local"
)

// notedHistory is pubsub/local with TopNotes whose answer the test sets:
// it counts the reads and keeps what the joins note.
type notedHistory struct {
	*local.PubSub
	mu    sync.Mutex
	top   pubsub.Position
	ok    bool
	stamp uint64
	reads []pubsub.HistoryQuery
	noted []pubsub.Position
}

var _ pubsub.TopNotes = (*notedHistory)(nil)

func (h *notedHistory) ReadHistory(ctx context.Context, topic string, q pubsub.HistoryQuery) (pubsub.HistoryResult, error) {
	h.mu.Lock()
	h.reads = append(h.reads, q)
	h.mu.Unlock()
	return h.PubSub.ReadHistory(ctx, topic, q)
}

func (h *notedHistory) NotedTop(_ string, maxAge time.Duration) (pubsub.Position, uint64, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if maxAge <= 0 || maxAge > time.Second {
		return pubsub.Position{}, h.stamp, false
	}
	return h.top, h.stamp, h.ok
}

func (h *notedHistory) NoteTop(_ string, top pubsub.Position, stamp uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if stamp == h.stamp {
		h.noted = append(h.noted, top)
	}
}

func (h *notedHistory) set(top pubsub.Position, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.top, h.ok = top, ok
	h.stamp++
	h.reads, h.noted = nil, nil
}

func (h *notedHistory) counts() (reads int, noted []pubsub.Position) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.reads), h.noted
}

// TestJoinTakesNotedTop: a join that asks for no broadcasts is told the
// noted top, without a read, and goes on from it without a hole; a join
// that finds no note reads and notes what it read; a join that asks for
// broadcasts always reads.
func TestJoinTakesNotedTop(t *testing.T) {
	var nh *notedHistory
	e := newHistEnv(t, 10, relay, func(ps *local.PubSub) pubsub.PubSub {
		nh = &notedHistory{PubSub: ps}
		return nh
	})
	top := e.publish(t, "room:a", 1, 3)

	// No note: a read, which it notes.
	nh.set(pubsub.Position{}, false)
	s, c := e.open(t, channels.V2)
	join(s, channels.V2, "room:a", "1", `{}`)
	reads, noted := nh.counts()
	if reads != 1 || len(noted) != 1 || noted[0] != top {
		t.Fatalf("without a note: %d reads, noted %v; want one read, noting %v", reads, noted, top)
	}
	if got := joinReply(t, decode(t, channels.V2, c.take()))["position"]; got != top.String() {
		t.Fatalf("reply position %v, want %v", got, top)
	}

	// A note: no read, and the reply names it.
	nh.set(top, true)
	s2, c2 := e.open(t, channels.V2)
	join(s2, channels.V2, "room:a", "1", `{}`)
	if reads, _ := nh.counts(); reads != 0 {
		t.Fatalf("with a note: %d reads", reads)
	}
	if got := joinReply(t, decode(t, channels.V2, c2.take()))["position"]; got != top.String() {
		t.Fatalf("reply position %v, want the note %v", got, top)
	}
	next := e.publish(t, "room:a", 4, 1)
	ns, last := broadcastNs(t, decode(t, channels.V2, c2.take()))
	if !equalInts(ns, []int{4}) || last != next {
		t.Fatalf("after the note: broadcasts %v up to %v, want [4] at %v", ns, last, next)
	}
	if n := e.ep.Stats().HistoryGaps.Load(); n != 0 {
		t.Fatalf("HistoryGaps = %d", n)
	}

	// Asking for broadcasts reads, note or not.
	since := pubsub.Position{Epoch: top.Epoch, Offset: 2}
	for _, params := range []string{`{"since":` + strconv.Quote(since.String()) + `}`, `{"history":2}`} {
		nh.set(next, true)
		s3, _ := e.open(t, channels.V2)
		join(s3, channels.V2, "room:a", "1", params)
		if reads, noted := nh.counts(); reads != 1 || len(noted) != 0 {
			t.Fatalf("%s: %d reads, noted %v; want one read, nothing noted", params, reads, noted)
		}
	}
}
