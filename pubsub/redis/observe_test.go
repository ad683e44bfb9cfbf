package redis

import (
	"context"
	"sync"
	"testing"
	"time"
)

// durations collects what an observer is told.
type durations struct {
	mu sync.Mutex
	ds []time.Duration
}

func (d *durations) observe(x time.Duration) {
	d.mu.Lock()
	d.ds = append(d.ds, x)
	d.mu.Unlock()
}

func (d *durations) get() []time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]time.Duration(nil), d.ds...)
}

func TestObserversSeeDispatchAndCrossNodeLatency(t *testing.T) {
	srv := startRedis(t)
	a, b := node(t, srv, "a"), node(t, srv, "b")
	var fanA, fanB, crossA, crossB durations
	a.ObserveDispatch(fanA.observe)
	b.ObserveDispatch(fanB.observe)
	a.ObserveCrossNode(crossA.observe)
	b.ObserveCrossNode(crossB.observe)
	ra, rb := &recorder{id: "ra"}, &recorder{id: "rb"}
	mustSubscribe(t, a, "room:1", ra)
	mustSubscribe(t, b, "room:1", rb)
	syncAll(t, a, b)

	before := time.Now()
	publish(t, a, "room:1", "one")
	publish(t, a, "room:1", "two")
	rb.waitCount(t, 2)
	elapsed := time.Since(before)
	ra.waitCount(t, 2)

	if got := crossB.get(); len(got) != 2 {
		t.Fatalf("b observed %d cross-node latencies, want 2", len(got))
	} else {
		for _, d := range got {
			if d < 0 || d > elapsed {
				t.Fatalf("cross-node latency %v outside [0, %v]", d, elapsed)
			}
		}
	}
	if got := crossA.get(); len(got) != 0 {
		t.Fatalf("the origin observed its own broadcasts as cross-node: %v", got)
	}
	// a dispatched its own two broadcasts, b the two it received.
	if n := len(fanA.get()); n != 2 {
		t.Fatalf("a observed %d dispatches, want 2", n)
	}
	if n := len(fanB.get()); n != 2 {
		t.Fatalf("b observed %d dispatches, want 2", n)
	}

	// A version 1 envelope (a node of the previous release) is still
	// delivered, without a latency; a send time from a clock ahead of
	// ours is clamped to 0.
	c := inspector(t, srv)
	ctx := context.Background()
	if err := c.Publish(ctx, "test:t:room:1", appendEnvelopeV1(nil, "old", 1, "", "v1", false, []byte(`{}`))).Err(); err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(time.Hour).UnixNano()
	if err := c.Publish(ctx, "test:t:room:1", appendEnvelope(nil, "ahead", future, 1, "", "ahead", false, []byte(`{}`))).Err(); err != nil {
		t.Fatal(err)
	}
	rb.waitCount(t, 4)
	if got := rb.events()[2:4]; got[0] != "v1" || got[1] != "ahead" {
		t.Fatalf("b received %v, want [v1 ahead]", got)
	}
	got := crossB.get()
	if len(got) != 3 || got[2] != 0 {
		t.Fatalf("cross-node latencies after a v1 and a future envelope: %v, want 3 values, the last 0", got)
	}

	a.ObserveCrossNode(nil)
	b.ObserveCrossNode(nil)
	publish(t, a, "room:1", "three")
	rb.waitCount(t, 5)
	if n := len(crossB.get()); n != 3 {
		t.Fatalf("observed %d after removing the observer, want still 3", n)
	}
}
