package pubsub

import (
	"fmt"
	"testing"
	"time"
)

func TestDispatchObserver(t *testing.T) {
	var r Registry
	var got []time.Duration
	r.SetDispatchObserver(func(d time.Duration) { got = append(got, d) })

	m := &Message{Topic: "t", Event: "e"}
	if n := r.Dispatch(m); n != 0 || len(got) != 0 {
		t.Fatalf("dispatch without subscribers: %d delivered, %d observations; want none", n, len(got))
	}
	a, b := &nopSub{id: "a"}, &nopSub{id: "b"}
	r.Add("t", a)
	r.Add("t", b)
	if n := r.Dispatch(m); n != 2 || len(got) != 1 {
		t.Fatalf("dispatch to 2 subscribers: %d delivered, %d observations; want 2 and 1 (one per dispatch)", n, len(got))
	}
	if got[0] < 0 {
		t.Fatalf("observed %v", got[0])
	}
	r.Dispatch(&Message{Topic: "other"})
	if len(got) != 1 {
		t.Fatalf("a topic without subscribers was observed")
	}

	r.SetDispatchObserver(nil)
	r.Dispatch(m)
	if len(got) != 1 || a.n != 2 || b.n != 2 {
		t.Fatalf("after removing the observer: %d observations, deliveries %d/%d", len(got), a.n, b.n)
	}
}

// BenchmarkRegistryDispatchObserved is BenchmarkRegistryDispatch with an
// observer set, as a node sets it: the difference is the price of the
// fan-out histogram's clock readings per dispatch.
func BenchmarkRegistryDispatchObserved(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("subs=%d", n), func(b *testing.B) {
			r := &Registry{}
			var sum time.Duration
			r.SetDispatchObserver(func(d time.Duration) { sum += d })
			benchDispatch(b, r, n)
		})
	}
}
