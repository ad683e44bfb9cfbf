package presence

import (
	"context"
	"encoding/json"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/local"
)

// countingSub counts the presence_diffs delivered to it.
type countingSub struct {
	id string
	n  *atomic.Int64
}

func (c countingSub) SubscriberID() string      { return c.id }
func (c countingSub) Deliver(m *pubsub.Message) { c.n.Add(1) }

// BenchmarkLocalJoinStorm is the tracker's share of a join storm (the
// node's is cmd/channels-bench joincost): 10,000 joins into 100 rooms,
// each subscribing, tracking its user with the default application's
// meta and encoding the presence_state it would push, as a room's
// AfterJoin does. It reports the tracker's time per join and the diffs
// delivered per join (each one a socket write in a node).
func BenchmarkLocalJoinStorm(b *testing.B) {
	const joins, rooms = 10000, 100
	ctx := context.Background()
	meta := json.RawMessage(`{"online_at":1765000000000}`)
	var delivered atomic.Int64
	for b.Loop() {
		ps := local.New()
		l := NewLocal(ps)
		var buf []byte
		for i := range joins {
			topic := "room:bench-" + strconv.Itoa(i%rooms)
			id := "socket-" + strconv.Itoa(i)
			if err := ps.Subscribe(topic, countingSub{id, &delivered}); err != nil {
				b.Fatal(err)
			}
			if _, err := l.Track(ctx, topic, id, "u"+strconv.Itoa(i), meta); err != nil {
				b.Fatal(err)
			}
			var err error
			if buf, err = l.AppendState(ctx, buf[:0], topic); err != nil {
				b.Fatal(err)
			}
		}
		_ = l.Close()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*joins), "ns/join")
	b.ReportMetric(float64(delivered.Load())/float64(b.N*joins), "diffs/join")
}
