package redis

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/pubsub"
)

// BenchmarkPublishRoundTrip measures cross-node delivery through a
// loopback Redis: node a publishes, node b's subscriber receives. It
// reports throughput (msgs/s, from the first publish to the last
// delivery) and the publish-to-delivery latency percentiles. ns/op is
// the same throughput, inverted.
//
//	go test -run '^$' -bench PublishRoundTrip -benchtime 200000x ./pubsub/redis/
func BenchmarkPublishRoundTrip(b *testing.B) {
	for _, publishers := range []int{1, 16, 128} {
		b.Run(fmt.Sprintf("publishers=%d", publishers), func(b *testing.B) {
			benchRoundTrip(b, publishers)
		})
	}
}

func benchRoundTrip(b *testing.B, publishers int) {
	srv := startRedis(b)
	quiet := func(o *Options) { o.Logger = slog.New(slog.DiscardHandler) }
	pub, sub := node(b, srv, "a", quiet), node(b, srv, "b", quiet)
	epoch := time.Now()
	rec := &latencyRecorder{epoch: epoch, samples: make([]time.Duration, b.N)}
	if err := sub.Subscribe("bench", rec); err != nil {
		b.Fatal(err)
	}
	syncAll(b, sub)

	const payloadSize = 128
	b.SetBytes(payloadSize)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := range publishers {
		n := b.N / publishers
		if w < b.N%publishers {
			n++
		}
		wg.Go(func() {
			for range n {
				payload := make([]byte, payloadSize)
				binary.LittleEndian.PutUint64(payload, uint64(time.Since(epoch)))
				err := pub.Publish(context.Background(), &pubsub.Message{Topic: "bench", Event: "tick", Payload: payload, Binary: true})
				if err != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d publishes failed", f)
	}
	deadline := time.Now().Add(time.Minute)
	for rec.n.Load() < int64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("received %d of %d", rec.n.Load(), b.N)
		}
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()

	lat := slices.Clone(rec.samples)
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
}

// latencyRecorder is a Subscriber that reads the send time out of the
// payload. Deliver runs on b's reader goroutine only.
type latencyRecorder struct {
	epoch   time.Time
	samples []time.Duration
	n       atomic.Int64
}

func (r *latencyRecorder) SubscriberID() string { return "latency" }

func (r *latencyRecorder) Deliver(m *pubsub.Message) {
	sent := time.Duration(binary.LittleEndian.Uint64(m.Payload))
	i := r.n.Load()
	if int(i) < len(r.samples) {
		r.samples[i] = time.Since(r.epoch) - sent
	}
	r.n.Add(1)
}

// BenchmarkPublish measures one node's Publish, acknowledged by a
// loopback Redis, with 16 publishers: a topic without history (with no
// policy, and with a policy that gives the topic none, which must cost
// the same), and a topic with history (the script instead of PUBLISH).
// redis-µs/op is the time Redis itself spent per broadcast in commands
// (INFO commandstats), which the wall time on shared cores hides;
// redis-cpu-µs/op Redis's process CPU per broadcast, its I/O included.
//
//	go test -run '^$' -bench 'Publish$' -benchtime 20000x ./pubsub/redis/
func BenchmarkPublish(b *testing.B) {
	srv := startRedis(b)
	rc := inspector(b, srv)
	quiet := func(o *Options) { o.Logger = slog.New(slog.DiscardHandler) }
	for _, c := range []struct {
		name   string
		policy pubsub.HistoryPolicy
	}{
		{"plain", nil},
		{"plain-policy", roomHistory(100, time.Minute)},
		{"history", func(string) pubsub.HistoryOptions { return pubsub.HistoryOptions{Size: 100, TTL: time.Minute} }},
	} {
		b.Run(c.name, func(b *testing.B) {
			p := node(b, srv, c.name, quiet)
			p.SetHistoryPolicy(c.policy)
			p.SetGate(openGate(c.name))
			payload := make([]byte, 128)
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			b.SetParallelism(8) // 16 publishers on 2 cores
			if err := rc.ConfigResetStat(context.Background()).Err(); err != nil {
				b.Fatal(err)
			}
			cpu := redisCPU(b, rc)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := p.Publish(context.Background(), &pubsub.Message{Topic: "lobby:1", Event: "tick", Payload: payload, Binary: true}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			cpu = redisCPU(b, rc) - cpu
			b.ReportMetric(redisMicros(b, rc)/float64(b.N), "redis-µs/op")
			b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(b.N), "redis-cpu-µs/op")
		})
	}
}

// redisMicros is the time Redis spent in the commands its clients sent
// since the last CONFIG RESETSTAT, in microseconds, from INFO
// commandstats' usec. A script's usec includes the commands it ran,
// which commandstats lists again under their own names: when a script
// ran, only the scripts are counted (every benchmark here sends either
// scripts or plain commands, never both), else those would count twice.
func redisMicros(b *testing.B, rc *goredis.Client) float64 {
	info, err := rc.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	var all, scripts float64
	for line := range strings.Lines(info) {
		name, rest, ok := strings.Cut(line, ":calls=")
		if !ok || name == "cmdstat_info" || strings.HasPrefix(name, "cmdstat_config|") {
			continue
		}
		_, rest, _ = strings.Cut(rest, "usec=")
		v, _, _ := strings.Cut(rest, ",")
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			b.Fatalf("INFO commandstats: %q", line)
		}
		all += n
		switch strings.TrimPrefix(name, "cmdstat_") {
		case "eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro":
			scripts += n
		}
	}
	if scripts > 0 {
		return scripts
	}
	return all
}

// redisCPU is the Redis process's CPU time so far (INFO cpu: user and
// system), which, unlike the time in commands, includes reading the
// requests and writing the replies.
func redisCPU(b *testing.B, rc *goredis.Client) time.Duration {
	info, err := rc.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var sum float64
	for line := range strings.Lines(info) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || (k != "used_cpu_user" && k != "used_cpu_sys") {
			continue
		}
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			b.Fatalf("INFO cpu: %q", line)
		}
		sum += n
	}
	return time.Duration(sum * float64(time.Second))
}

// BenchmarkReadHistory reads the broadcasts a client missed from a
// loopback Redis: one script, an XRANGE of the missed entries. A read is
// O(missed), not O(retained) (pubsub.History's contract): 100 missed cost
// the same from a history of 100 as from one of 10,000. msgs/s is the
// replay throughput of one reader; redis-µs/op Redis's own time per read.
//
//	go test -run '^$' -bench ReadHistory -benchmem ./pubsub/redis/
func BenchmarkReadHistory(b *testing.B) {
	srv := startRedis(b)
	rc := inspector(b, srv)
	quiet := func(o *Options) { o.Logger = slog.New(slog.DiscardHandler) }
	p := node(b, srv, "r", quiet)
	sizes := map[string]int{"room:100": 100, "room:10000": 10000}
	p.SetHistoryPolicy(func(topic string) pubsub.HistoryOptions {
		return pubsub.HistoryOptions{Size: sizes[topic], TTL: time.Hour}
	})
	p.SetGate(openGate("r"))
	ctx := context.Background()
	payload := []byte(`{"body":"a message of about a hundred bytes, as a chat room would carry it","user":"u42"}`)
	tops := map[string]pubsub.Position{}
	for topic, size := range sizes {
		for range size {
			pos, err := p.PublishAt(ctx, &pubsub.Message{Topic: topic, Event: "new_msg", Payload: payload})
			if err != nil {
				b.Fatal(err)
			}
			tops[topic] = pos
		}
	}
	for _, c := range []struct{ retained, missed int }{{100, 100}, {10000, 100}, {10000, 1000}} {
		b.Run(fmt.Sprintf("retained=%d/missed=%d", c.retained, c.missed), func(b *testing.B) {
			topic := fmt.Sprintf("room:%d", c.retained)
			top := tops[topic]
			since := pubsub.Position{Epoch: top.Epoch, Offset: top.Offset - uint64(c.missed)}
			if err := rc.ConfigResetStat(ctx).Err(); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				res, err := p.ReadHistory(ctx, topic, pubsub.HistoryQuery{Since: since})
				if err != nil || len(res.Messages) != c.missed {
					b.Fatalf("%d messages, %v", len(res.Messages), err)
				}
			}
			b.ReportMetric(float64(c.missed*b.N)/b.Elapsed().Seconds(), "msgs/s")
			b.ReportMetric(redisMicros(b, rc)/float64(b.N), "redis-µs/op")
		})
	}
}
