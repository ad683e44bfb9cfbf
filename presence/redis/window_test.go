package redis

import (
	"testing"
	"time"
)

// A topic's batch is due Coalesce after its first change, or one window
// after the topic's last diff if later; the window follows the room
// (presence.DiffWindow, with the room as last listed) and adapts to the
// diffs (presence.AdaptWindow); a topic without entries forgets its
// pacing; the flush queue stays in deadline order although windows
// differ per topic.
func TestCoalescingWindowAdapts(t *testing.T) {
	tr := &Tracker{
		opt:     Options{Coalesce: 30 * time.Millisecond, MaxCoalesce: 500 * time.Millisecond},
		table:   map[string]map[owned]*entry{"busy": {{owner: "o", key: "k"}: {}}, "calm": {{owner: "o", key: "k"}: {}}},
		pending: map[string]*batch{},
		paces:   map[string]*pace{},
		wake:    make(chan struct{}, 1),
	}
	joins := func(n int) *batch {
		b := &batch{joinIdx: map[string]int{}}
		for range n {
			b.joins = append(b.joins, &change{})
		}
		return b
	}
	// A room of 40 (as listed): the floor is 400ms; a diff of one change
	// reaches 40 members, more than DeliveriesPerChange each: doubling,
	// up to MaxCoalesce.
	tr.adapt("busy", joins(1))
	p := tr.paces["busy"]
	if p == nil {
		t.Fatal("a flushed topic with entries has no pacing")
	}
	p.room = 40
	tr.adapt("busy", joins(1))
	if got := tr.windowOf("busy", p); got != 500*time.Millisecond {
		t.Fatalf("window of a busy room of 40: %v, want 500ms", got)
	}
	// Its next batch is due a window after that diff, not Coalesce after
	// the change.
	tr.batchFor("busy")
	tr.batchFor("calm")
	if len(tr.fifo) != 2 || tr.fifo[0].topic != "calm" || tr.fifo[1].topic != "busy" {
		t.Fatalf("flush queue %+v, want calm before busy", tr.fifo)
	}
	if d := tr.fifo[1].deadline.Sub(p.last); d != 500*time.Millisecond {
		t.Fatalf("busy due %v after its last diff, want 500ms", d)
	}
	if d := time.Until(tr.fifo[0].deadline); d > 30*time.Millisecond {
		t.Fatalf("calm due in %v, want Coalesce", d)
	}
	// Diffs that carry a change per DeliveriesPerChange members or more:
	// the window halves back to the room's floor.
	p.room = 4
	for range 4 { // 500 → 250 → 125 → 62.5 → the floor
		tr.adapt("busy", joins(4))
	}
	if p.w != 0 || tr.windowOf("busy", p) != 40*time.Millisecond {
		t.Fatalf("window of a room of 4 whose diffs carried 4 changes: %v (%v), want its floor 40ms", tr.windowOf("busy", p), p.w)
	}
	// A topic without entries forgets its pacing.
	delete(tr.table, "busy")
	tr.adapt("busy", joins(1))
	if _, ok := tr.paces["busy"]; ok {
		t.Fatal("a topic without entries keeps its pacing")
	}
}
