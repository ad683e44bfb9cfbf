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
