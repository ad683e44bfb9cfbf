//go:build unix

package channels_test

import (
	"context"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/pubsub"
)

// countConn is a connection that only counts what it is sent: the
// benchmark below measures the node's work per delivery without the
// kernel's.
type countConn struct{ n atomic.Int64 }

func (c *countConn) Send(channels.Frame) error { c.n.Add(1); return nil }
func (c *countConn) Close(int, string)         {}

// processCPU is the process's user and system CPU time so far: on a
// machine shared with other work, CPU time per delivery moves less than
// wall time, which counts the time the benchmark waited for a core.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkDeliverHistory is the channels side of one broadcast reaching
// every joined V2 socket of its topic, through pubsub/local, for a topic
// with history ("room:a": each delivery checks and moves its join's
// position, the frame carries the position as its ref) and one without
// ("plain:a"), in one process so that the two compare within one run. An
// op is one broadcast; ns/delivery is what one subscriber costs (the
// broadcast's own work, its encoding once per serializer and, for
// history, its retention, spread over the subscribers); cpu-ns/delivery
// is the same in the process's CPU time, garbage collection included.
func BenchmarkDeliverHistory(b *testing.B) {
	const subs = 1000
	for _, tc := range []struct{ name, topic string }{{"plain", "plain:a"}, {"history", "room:a"}} {
		b.Run(tc.name, func(b *testing.B) {
			e := newHistEnv(b, 100, relay, nil)
			conns := make([]*countConn, subs)
			for i := range conns {
				conns[i] = &countConn{}
				s := openSocket(e.ep, conns[i], channels.V2)
				b.Cleanup(s.HandleClose)
				join(s, channels.V2, tc.topic, "1", "{}")
				if got := conns[i].n.Load(); got != 1 {
					b.Fatalf("socket %d: %d frames after the join, want the reply", i, got)
				}
			}
			payload := []byte(`{"body":"hello, this is a message of about a hundred bytes as a chat would send it"}`)
			ctx := context.Background()
			b.ReportAllocs()
			n := 0
			cpu := processCPU(b)
			for b.Loop() {
				n++
				p, err := e.ps.PublishAt(ctx, &pubsub.Message{Topic: tc.topic, Event: "new_msg", Payload: payload})
				if err != nil {
					b.Fatal(err)
				}
				if tc.name == "history" && p.Offset != uint64(n) {
					b.Fatalf("position %v, want offset %d", p, n)
				}
			}
			cpu = processCPU(b) - cpu
			for i, c := range conns {
				if got := c.n.Load(); got != int64(n+1) {
					b.Fatalf("socket %d: %d frames, want the reply and %d broadcasts", i, got, n)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n*subs), "ns/delivery")
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(n*subs), "cpu-ns/delivery")
		})
	}
}
