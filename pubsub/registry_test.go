package pubsub

import (
	"fmt"
	"sync"
	"sync/atomic"
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

// TestRegistryAddRemove follows a topic through joins and leaves on both
// sides of the size where it starts an index, checking after each step
// that exactly its subscribers receive a broadcast, once each.
func TestRegistryAddRemove(t *testing.T) {
	var r Registry
	const n = 3 * indexFrom
	subs := make([]*nopSub, n)
	for i := range subs {
		subs[i] = &nopSub{id: fmt.Sprint(i)}
	}
	in := map[*nopSub]bool{}
	check := func(step string) {
		t.Helper()
		before := make(map[*nopSub]int, n)
		for _, s := range subs {
			before[s] = s.n
		}
		got := r.Dispatch(&Message{Topic: "t"})
		if got != len(in) || r.Count("t") != len(in) {
			t.Fatalf("%s: delivered %d, Count %d; want %d", step, got, r.Count("t"), len(in))
		}
		for _, s := range subs {
			want := 0
			if in[s] {
				want = 1
			}
			if d := s.n - before[s]; d != want {
				t.Fatalf("%s: subscriber %s received %d; want %d", step, s.id, d, want)
			}
		}
	}
	for i, s := range subs {
		if first := r.Add("t", s); first != (i == 0) {
			t.Fatalf("Add %d reported first=%v", i, first)
		}
		if r.Add("t", s) {
			t.Fatalf("a second Add of %d reported first", i)
		}
		in[s] = true
		check(fmt.Sprintf("after adding %d", i))
	}
	// Leave from the middle, the ends and the start, down to none.
	order := []int{n / 2, n - 1, 0}
	for i := 1; i < n; i++ {
		if i != n/2 && i != n-1 {
			order = append(order, (i*7)%n)
		}
	}
	seen := map[int]bool{}
	for k, i := range order {
		if seen[i] {
			continue
		}
		seen[i] = true
		s := subs[i]
		delete(in, s)
		if last := r.Remove("t", s); last != (len(in) == 0) {
			t.Fatalf("Remove %d (%d left) reported last=%v", i, len(in), last)
		}
		if r.Remove("t", s) {
			t.Fatalf("a second Remove of %d reported last", i)
		}
		check(fmt.Sprintf("after removing %d (step %d)", i, k))
	}
	for i, s := range subs {
		if !seen[i] {
			delete(in, s)
			if last := r.Remove("t", s); last != (len(in) == 0) {
				t.Fatalf("Remove %d reported last=%v", i, last)
			}
		}
	}
	if len(r.Topics()) != 0 {
		t.Fatalf("topics left: %v", r.Topics())
	}
}

// churnSub joins and leaves other subscribers from inside Deliver, as a
// socket whose delivery makes another socket join or close would.
type churnSub struct {
	nopSub
	do func()
}

func (s *churnSub) Deliver(m *Message) {
	s.n++
	if s.do != nil {
		s.do()
	}
}

// TestRegistryDispatchSnapshot: a broadcast reaches exactly the
// subscribers the topic had when its Dispatch began, whatever joins and
// leaves happen while it is handed out.
func TestRegistryDispatchSnapshot(t *testing.T) {
	for _, size := range []int{4, 4 * indexFrom} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			var r Registry
			subs := make([]*churnSub, size)
			for i := range subs {
				subs[i] = &churnSub{nopSub: nopSub{id: fmt.Sprint(i)}}
				r.Add("t", subs[i])
			}
			late := make([]*churnSub, size)
			for i := range late {
				late[i] = &churnSub{nopSub: nopSub{id: fmt.Sprint("late", i)}}
			}
			// Whichever subscriber receives first removes every
			// other one and adds the late ones, filling the array's
			// spare room and growing it.
			done := false
			for _, s := range subs {
				s.do = func() {
					if done {
						return
					}
					done = true
					for _, x := range subs {
						if x != s {
							r.Remove("t", x)
						}
					}
					for _, x := range late {
						r.Add("t", x)
					}
				}
			}
			if got := r.Dispatch(&Message{Topic: "t"}); got != size {
				t.Fatalf("delivered %d; want the %d subscribed when it began", got, size)
			}
			for _, s := range subs {
				if s.n != 1 {
					t.Fatalf("subscriber %s received %d; want 1", s.id, s.n)
				}
			}
			for _, s := range late {
				if s.n != 0 {
					t.Fatalf("late subscriber %s received a broadcast older than its Add", s.id)
				}
			}
			// The next one goes to the topic as it now is.
			if got := r.Dispatch(&Message{Topic: "t"}); got != size+1 {
				t.Fatalf("second dispatch delivered %d; want %d", got, size+1)
			}
			for _, s := range late {
				if s.n != 1 {
					t.Fatalf("late subscriber %s received %d; want 1", s.id, s.n)
				}
			}
		})
	}
}

// countSub counts deliveries from concurrent dispatches.
type countSub struct {
	id string
	n  atomic.Int64
}

func (s *countSub) SubscriberID() string { return s.id }
func (s *countSub) Deliver(*Message)     { s.n.Add(1) }

// TestRegistryConcurrentChurn runs dispatches while other goroutines join
// and leave the same topic (run it with -race): the subscribers that stay
// throughout receive every broadcast exactly once.
func TestRegistryConcurrentChurn(t *testing.T) {
	var r Registry
	stay := make([]*countSub, 2*indexFrom)
	for i := range stay {
		stay[i] = &countSub{id: fmt.Sprint("stay", i)}
		r.Add("t", stay[i])
	}
	const rounds, churners, dispatchers, broadcasts = 200, 2, 2, 300
	var wg sync.WaitGroup
	for c := range churners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]*countSub, 3*indexFrom)
			for i := range mine {
				mine[i] = &countSub{id: fmt.Sprint("churn", c, "-", i)}
			}
			for range rounds {
				for _, s := range mine {
					r.Add("t", s)
				}
				for i := len(mine) - 1; i >= 0; i -= 2 {
					r.Remove("t", mine[i])
				}
				for _, s := range mine {
					r.Remove("t", s)
				}
			}
		}()
	}
	for range dispatchers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range broadcasts {
				r.Dispatch(&Message{Topic: "t"})
			}
		}()
	}
	wg.Wait()
	for _, s := range stay {
		if got := s.n.Load(); got != dispatchers*broadcasts {
			t.Fatalf("subscriber %s received %d; want %d", s.id, got, dispatchers*broadcasts)
		}
	}
	if r.Count("t") != len(stay) {
		t.Fatalf("Count %d after the churn; want %d", r.Count("t"), len(stay))
	}
}

// TestRegistryPrefixRoute checks that a prefix route receives every
// message of the topics it covers, beside their own subscribers, and no
// other, honours broadcast_from, and stops when removed.
func TestRegistryPrefixRoute(t *testing.T) {
	var r Registry
	var observed int
	r.SetDispatchObserver(func(time.Duration) { observed++ })
	route, own := &nopSub{id: "route"}, &nopSub{id: "own"}
	r.AddPrefix("id:", route)
	r.AddPrefix("id:", route) // idempotent
	r.Add("id:a", own)
	if n := r.Dispatch(&Message{Topic: "id:a"}); n != 2 || route.n != 1 || own.n != 1 {
		t.Fatalf("topic with a subscriber of its own: %d delivered (route %d, own %d), want 2 (1, 1)", n, route.n, own.n)
	}
	if n := r.Dispatch(&Message{Topic: "id:b"}); n != 1 || route.n != 2 {
		t.Fatalf("topic of the route only: %d delivered (route %d), want 1 (2)", n, route.n)
	}
	if n := r.Dispatch(&Message{Topic: "other"}); n != 0 || route.n != 2 {
		t.Fatalf("topic outside the prefix: %d delivered (route %d), want 0 (2)", n, route.n)
	}
	if n := r.Dispatch(&Message{Topic: "id:c", From: "route"}); n != 0 || route.n != 2 {
		t.Fatalf("broadcast_from of the route: %d delivered (route %d), want 0 (2)", n, route.n)
	}
	if observed != 3 {
		t.Fatalf("%d dispatches observed, want 3 (those that found a subscriber, as for topics)", observed)
	}
	r.RemovePrefix("id:", route)
	if n := r.Dispatch(&Message{Topic: "id:b"}); n != 0 || route.n != 2 {
		t.Fatalf("after RemovePrefix: %d delivered (route %d), want 0 (2)", n, route.n)
	}
}
