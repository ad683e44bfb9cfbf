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
		table:   map[string]*topicTable{"busy": oneEntry(), "calm": oneEntry()},
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

// A batch of a topic whose window is a second or more goes out once it
// has been quiet for half of it, before its deadline: the last changes of
// a burst do not wait for the whole window. Until then it waits, and
// flushLoop is told when to look again.
func TestQuietBatchGoesOutEarly(t *testing.T) {
	tr := &Tracker{
		opt:     Options{Coalesce: 30 * time.Millisecond, MaxCoalesce: 2 * time.Second},
		table:   map[string]*topicTable{"big": oneEntry(), "small": oneEntry()},
		pending: map[string]*batch{},
		paces:   map[string]*pace{"big": {last: time.Now(), w: 2 * time.Second}, "small": {last: time.Now()}},
		wake:    make(chan struct{}, 1),
	}
	if quietAfter(999*time.Millisecond) != 0 || quietAfter(2*time.Second) != time.Second {
		t.Fatalf("quietAfter: %v, %v", quietAfter(999*time.Millisecond), quietAfter(2*time.Second))
	}
	big := tr.batchFor("big")
	tr.batchFor("small")
	if big.quiet != time.Second {
		t.Fatalf("quiet time of a 2s window: %v", big.quiet)
	}
	start := big.last
	due, scan := tr.takeQuiet(start.Add(900*time.Millisecond), nil)
	if len(due) != 0 || scan.IsZero() {
		t.Fatalf("a batch quiet for 0.9s of its 1s: due %v, next look %v", due, scan)
	}
	due, _ = tr.takeQuiet(scan, nil) // looked at too soon: nothing
	if len(due) != 0 {
		t.Fatalf("due %v before its quiet time", due)
	}
	// A change (at 0.8s) restarts the quiet time: not due at 1.5s.
	if tr.batchFor("big") != big {
		t.Fatal("a second change opened another batch")
	}
	big.last = start.Add(800 * time.Millisecond)
	due, _ = tr.takeQuiet(start.Add(1500*time.Millisecond), nil)
	if len(due) != 0 {
		t.Fatalf("due %v 0.7s after a change", due)
	}
	due, scan = tr.takeQuiet(start.Add(1800*time.Millisecond+quietScanEvery), nil)
	if len(due) != 1 || due[0] != "big" {
		t.Fatalf("a quiet batch: due %v, want big", due)
	}
	if len(tr.fifo) != 1 || tr.fifo[0].topic != "small" {
		t.Fatalf("queue %+v, want small only", tr.fifo)
	}
	if !scan.IsZero() {
		t.Fatalf("no batch waits for quiet, yet the next look is %v", scan)
	}
}
