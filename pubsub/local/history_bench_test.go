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
	benchPublish(b, pubsub.RulesPolicy(rules, nil))
}

// BenchmarkPublishHistory is a topic that keeps history: lookup, topic
// lock, ring store and dispatch under the lock.
func BenchmarkPublishHistory(b *testing.B) {
	benchPublish(b, func(string) pubsub.HistoryOptions { return pubsub.HistoryOptions{Size: 100, TTL: time.Minute} })
}

// BenchmarkReadHistory reads the broadcasts a client missed. A read is
// O(missed), not O(retained) (pubsub.History's contract): 100 missed cost
// the same from a history of 100 as from one of 10,000. msgs/s is the
// replay throughput of one reader.
func BenchmarkReadHistory(b *testing.B) {
	for _, c := range []struct{ retained, missed int }{{100, 100}, {10000, 100}, {10000, 1000}} {
		b.Run(fmt.Sprintf("retained=%d/missed=%d", c.retained, c.missed), func(b *testing.B) {
			ps := local.New()
			ps.SetHistoryPolicy(func(string) pubsub.HistoryOptions {
				return pubsub.HistoryOptions{Size: c.retained, TTL: time.Hour}
			})
			ctx := context.Background()
			payload := []byte(`{"body":"a message of about a hundred bytes, as a chat room would carry it","user":"u42"}`)
			var top pubsub.Position
			for range c.retained {
				pos, err := ps.PublishAt(ctx, &pubsub.Message{Topic: "t", Event: "new_msg", Payload: payload})
				if err != nil {
					b.Fatal(err)
				}
				top = pos
			}
			since := pubsub.Position{Epoch: top.Epoch, Offset: top.Offset - uint64(c.missed)}
			b.ReportAllocs()
			for b.Loop() {
				res, err := ps.ReadHistory(ctx, "t", pubsub.HistoryQuery{Since: since})
				if err != nil || len(res.Messages) != c.missed {
					b.Fatalf("%d messages, %v", len(res.Messages), err)
				}
			}
			b.ReportMetric(float64(c.missed*b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
