package local_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/local"
)

type countSub struct {
	id string
	n  int
}

func (s *countSub) SubscriberID() string      { return s.id }
func (s *countSub) Deliver(m *pubsub.Message) { s.n++ }

// benchPublish publishes to topic "t" with 10 subscribers: the cost a
// channel's broadcast pays in pubsub/local, delivery included.
func benchPublish(b *testing.B, policy pubsub.HistoryPolicy) {
	ps := local.New()
	ps.SetHistoryPolicy(policy)
	for i := 0; i < 10; i++ {
		_ = ps.Subscribe("t", &countSub{id: fmt.Sprint(i)})
	}
	payload := []byte(`{"body":"hello"}`)
	b.ReportAllocs()
	for b.Loop() {
		_ = ps.Publish(context.Background(), &pubsub.Message{Topic: "t", Event: "new_msg", Payload: payload})
	}
}

// BenchmarkPublishNoHistory is the path of every topic while no policy is
// set: one atomic load more than a bare dispatch.
func BenchmarkPublishNoHistory(b *testing.B) { benchPublish(b, nil) }

// BenchmarkPublishNoHistoryWithPolicy adds the policy's call for a topic
// it gives no history.
func BenchmarkPublishNoHistoryWithPolicy(b *testing.B) {
	rules, err := pubsub.ParseHistoryRules("room:*=100,5m")
	if err != nil {
		b.Fatal(err)
	}
	benchPublish(b, pubsub.RulesPolicy(rules))
}

// BenchmarkPublishHistory is a topic that keeps history: lookup, topic
// lock, ring store and dispatch under the lock.
func BenchmarkPublishHistory(b *testing.B) {
	benchPublish(b, func(string) pubsub.HistoryOptions { return pubsub.HistoryOptions{Size: 100, TTL: time.Minute} })
}
