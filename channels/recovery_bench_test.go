package channels_test

import (
	"fmt"
	"testing"

	"github.com/channelsd/channelsd/channels"
)

// BenchmarkRecoverSince is the node's side of a recovery: a V2 join with
// "since" that reads what it missed from pubsub/local's history, encodes
// it and queues it for the client (the reply, then every missed
// broadcast). msgs/s is the replay rate of one core.
func BenchmarkRecoverSince(b *testing.B) {
	for _, missed := range []int{100, 1000} {
		b.Run(fmt.Sprint(missed), func(b *testing.B) {
			e := newHistEnv(b, missed+1, relay, nil)
			since := e.publish(b, "room:a", 0, 1)
			e.publish(b, "room:a", 1, missed)
			params := `{"since":"` + since.String() + `"}`
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				c := &frameConn{}
				s := openSocket(e.ep, c, channels.V2)
				join(s, channels.V2, "room:a", "1", params)
				if n := len(c.take()); n != missed+1 {
					b.Fatalf("%d frames, want the reply and %d broadcasts", n, missed)
				}
				s.HandleClose()
			}
			b.ReportMetric(float64(missed)*float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
