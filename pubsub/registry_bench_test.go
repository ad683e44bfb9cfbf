package pubsub

import (
	"fmt"
	"testing"
)

// nopSub is a subscriber whose delivery costs nothing, so the benchmarks
// below measure the registry's own work per dispatch.
type nopSub struct {
	id string
	n  int
}

func (s *nopSub) SubscriberID() string { return s.id }
func (s *nopSub) Deliver(*Message)     { s.n++ }

func benchDispatch(b *testing.B, r *Registry, subs int) {
	for i := range subs {
		r.Add("t", &nopSub{id: fmt.Sprint(i)})
	}
	m := &Message{Topic: "t", Event: "e", Payload: []byte(`{}`)}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		r.Dispatch(m)
	}
}

// BenchmarkRegistryDispatch is the registry's cost per broadcast without
// an observer (the default of a PubSub not wired to a node).
func BenchmarkRegistryDispatch(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("subs=%d", n), func(b *testing.B) { benchDispatch(b, &Registry{}, n) })
	}
}

// BenchmarkRegistryJoinStorm is a join storm into one topic and the
// leaves after it: an op subscribes n subscribers, then unsubscribes them
// all with a broadcast after every thousandth leave (each makes the next
// leave copy the array a broadcast may still be walking: one copy per
// broadcast, which walks as many). Per join and leave it must not grow
// with n.
func BenchmarkRegistryJoinStorm(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("subs=%d", n), func(b *testing.B) {
			subs := make([]*nopSub, n)
			for i := range subs {
				subs[i] = &nopSub{id: fmt.Sprint(i)}
			}
			m := &Message{Topic: "t", Event: "e"}
			b.ReportAllocs()
			for b.Loop() {
				var r Registry
				for _, s := range subs {
					r.Add("t", s)
				}
				for i, s := range subs {
					if i%1000 == 0 {
						r.Dispatch(m)
					}
					r.Remove("t", s)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*2*n), "ns/sub")
		})
	}
}
