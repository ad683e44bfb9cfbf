package redis

import (
	"testing"
	"time"
)

// A topic whose window gathers several changes gets twice the window next
// time, up to MaxCoalesce; a calm one halves back to Coalesce; the flush
// queue stays in deadline order although windows differ per topic.
func TestCoalescingWindowAdapts(t *testing.T) {
	tr := &Tracker{
		opt:     Options{Coalesce: 30 * time.Millisecond, MaxCoalesce: 500 * time.Millisecond},
		table:   map[string]map[owned]*entry{"busy": {{owner: "o", key: "k"}: {}}, "calm": {{owner: "o", key: "k"}: {}}},
		pending: map[string]*batch{},
		windows: map[string]time.Duration{},
		wake:    make(chan struct{}, 1),
	}
	busy := func() *batch {
		b := &batch{joinIdx: map[string]int{}}
		for range busyChanges {
			b.joins = append(b.joins, &change{})
		}
		return b
	}
	want := []time.Duration{60, 120, 240, 480, 500, 500}
	for i, w := range want {
		tr.adapt("busy", busy())
		if got := tr.windows["busy"]; got != w*time.Millisecond {
			t.Fatalf("after %d busy windows: %v, want %v", i+1, got, w*time.Millisecond)
		}
	}
	// Cancelled joins do not count.
	b := busy()
	b.joins[0], b.joins[1], b.joins[2] = nil, nil, nil
	tr.adapt("busy", b)
	if got := tr.windows["busy"]; got != 250*time.Millisecond {
		t.Fatalf("after a window of one change: %v, want 250ms", got)
	}
	for range 4 {
		tr.adapt("busy", &batch{})
	}
	if _, ok := tr.windows["busy"]; ok {
		t.Fatalf("a calm topic keeps a window of its own: %v", tr.windows["busy"])
	}
	// A topic without entries forgets its window.
	tr.windows["gone"] = 480 * time.Millisecond
	tr.adapt("gone", busy())
	if _, ok := tr.windows["gone"]; ok {
		t.Fatal("a topic without entries keeps a window")
	}

	// The queue: a busy topic's batch opened first is due after a calm
	// topic's opened later.
	tr.windows["busy"] = 500 * time.Millisecond
	tr.batchFor("busy")
	tr.batchFor("calm")
	if len(tr.fifo) != 2 || tr.fifo[0].topic != "calm" || tr.fifo[1].topic != "busy" {
		t.Fatalf("flush queue %+v, want calm before busy", tr.fifo)
	}
	if d := tr.fifo[1].deadline.Sub(tr.fifo[0].deadline); d < 400*time.Millisecond {
		t.Fatalf("busy due %v after calm, want about 470ms", d)
	}
}
