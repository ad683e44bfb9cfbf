package redis

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

// The spread benchmark's shape: 300 topics, every one subscribed on
// each of three nodes, which all publish.
const (
	spreadTopics  = 300
	spreadNodes   = 3
	spreadWorkers = 4 // publishing goroutines per node
)

// BenchmarkShardSpread shows where the work of topic broadcasts lands
// on a Redis Cluster of 1, 3 and 6 masters, with classic pub/sub (the
// Gate closed: PUBLISH, which the cluster bus relays to every master)
// and with sharded pub/sub (SPUBLISH, which stays on the master of the
// topic's slot). b.N broadcasts go round-robin over 300 topics from
// three nodes, each subscribed to every topic; each master's INFO is
// read before and after. It logs a row per master: the topics whose
// slot it owns, its SSUBSCRIBE commands, the publishes it took from
// clients, the publishes it received over the cluster bus, the share of
// all broadcasts it handled (taken or received), the bytes it sent to
// clients (the deliveries: messages are of one size, so a master's share
// of the delivered messages is its share of these bytes; a reply to a
// publish is 4 bytes against ~200 for a delivery) and its CPU time,
// with shares of the cluster's total. The metrics: the largest master's
// share of publishes, of broadcasts handled and of bytes out, cluster
// bus messages per broadcast over all masters, and the busiest master's
// CPU time per broadcast.
//
//	go test -run '^$' -bench ShardSpread -benchtime 30000x ./pubsub/redis/
func BenchmarkShardSpread(b *testing.B) {
	for _, masters := range []int{1, 3, 6} {
		b.Run(fmt.Sprintf("masters=%d", masters), func(b *testing.B) {
			c := startClusterOf(b, masters)
			for _, mode := range []string{"classic", "sharded"} {
				b.Run(mode, func(b *testing.B) { benchSpread(b, c, mode == "sharded") })
			}
		})
	}
}

// spreadRuns makes each run's prefix and node ids its own, so that a
// run's nodes never see the subscriptions of the one before.
var spreadRuns atomic.Int64

func benchSpread(b *testing.B, c *testCluster, sharded bool) {
	prefix := fmt.Sprintf("spread%d", spreadRuns.Add(1))
	opts := func(o *Options) {
		o.URL = c.url()
		o.Prefix = prefix
		o.Logger = slog.New(slog.DiscardHandler)
	}
	topics := make([]string, spreadTopics)
	for i := range topics {
		topics[i] = fmt.Sprintf("room:%d", i)
	}
	var delivered atomic.Int64
	nodes := make([]*PubSub, spreadNodes)
	for i := range nodes {
		p := node(b, c.servers[i%len(c.servers)], fmt.Sprintf("%s-%d", prefix, i), opts)
		if sharded {
			p.SetGate(openGate(p.NodeID()))
		}
		nodes[i] = p
	}
	ownerOf := c.slotOwners(b)
	owned := make([]int, len(c.masters))
	for _, topic := range topics {
		owned[ownerOf[keySlot(nodes[0].shardChannel(topic))]]++
	}
	start := c.readMasters(b)
	for _, p := range nodes {
		s := &countingSubscriber{id: "count", n: &delivered}
		for _, topic := range topics {
			mustSubscribe(b, p, topic, s)
		}
	}
	syncAll(b, nodes...)
	before := c.readMasters(b)

	payload := make([]byte, 128)
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	var wg sync.WaitGroup
	var failed atomic.Int64
	lanes := spreadNodes * spreadWorkers
	for lane := range lanes {
		p := nodes[lane/spreadWorkers]
		wg.Go(func() {
			for k := lane; k < b.N; k += lanes {
				m := &pubsub.Message{Topic: topics[k%spreadTopics], Event: "tick", Payload: payload, Binary: true}
				if err := p.Publish(context.Background(), m); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d publishes failed", f)
	}
	want := int64(spreadNodes * b.N)
	deadline := time.Now().Add(time.Minute)
	for delivered.Load() < want {
		if time.Now().After(deadline) {
			b.Fatalf("delivered %d of %d", delivered.Load(), want)
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	after := c.readMasters(b)

	subs := make([]float64, len(c.masters))
	load := make([]masterLoad, len(c.masters))
	var total masterLoad
	for i := range c.masters {
		subs[i] = before[i].ssubscribes - start[i].ssubscribes
		load[i] = after[i].minus(before[i])
		total = total.plus(load[i])
	}
	pct := func(x, sum float64) float64 {
		if sum == 0 {
			return 0
		}
		return 100 * x / sum
	}
	var maxPub, maxHandled, maxOut, maxCPU float64
	for i, l := range load {
		maxPub = max(maxPub, pct(l.publishes, total.publishes))
		maxHandled = max(maxHandled, pct(l.publishes+l.busIn, float64(b.N)))
		maxOut = max(maxOut, pct(l.bytesOut, total.bytesOut))
		maxCPU = max(maxCPU, l.cpu)
		if b.N < spreadTopics {
			continue // the framework's first run, of one broadcast
		}
		b.Logf("master %d: %3d topics, %4.0f SSUBSCRIBE, publishes %6.0f (%5.1f%%), bus in %6.0f, handles %5.1f%% of broadcasts, bytes out %9.0f (%5.1f%%), CPU %5.0f ms (%5.1f%%)",
			i, owned[i], subs[i], l.publishes, pct(l.publishes, total.publishes), l.busIn, pct(l.publishes+l.busIn, float64(b.N)),
			l.bytesOut, pct(l.bytesOut, total.bytesOut), l.cpu*1e3, pct(l.cpu, total.cpu))
	}
	b.ReportMetric(maxPub, "max-publish-%")
	b.ReportMetric(maxHandled, "max-handled-%")
	b.ReportMetric(maxOut, "max-bytes-out-%")
	b.ReportMetric(total.busIn/float64(b.N), "bus-msgs/op")
	b.ReportMetric(maxCPU*1e6/float64(b.N), "max-master-cpu-µs/op")

	// Sharded pub/sub must leave no master idle nor make one hot: each
	// within half of its fair share either way, once every topic has
	// been published often enough for shares to mean anything.
	if sharded && b.N >= 10*spreadTopics {
		fair := 100 / float64(len(c.masters))
		for i, l := range load {
			for what, share := range map[string]float64{
				"publishes": pct(l.publishes, total.publishes),
				"bytes out": pct(l.bytesOut, total.bytesOut),
			} {
				if share < fair/2 || share > fair*1.5 {
					b.Errorf("master %d: %.1f%% of the %s, fair share %.1f%%", i, share, what, fair)
				}
			}
		}
		if total.busIn != 0 {
			b.Errorf("%.0f publishes crossed the cluster bus with sharded pub/sub and no replicas", total.busIn)
		}
	}
}

// countingSubscriber counts what it is given, on any number of topics.
type countingSubscriber struct {
	id string
	n  *atomic.Int64
}

func (s *countingSubscriber) SubscriberID() string    { return s.id }
func (s *countingSubscriber) Deliver(*pubsub.Message) { s.n.Add(1) }

// slotOwners maps each slot to the index of its master.
func (c *testCluster) slotOwners(t testing.TB) []int {
	t.Helper()
	slots, err := c.masters[0].ClusterSlots(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	owners := make([]int, clusterSlots)
	for i := range owners {
		owners[i] = -1
	}
	// A master that has met no other node does not know its own address
	// and reports an empty host: ports tell the masters apart.
	port := func(addr string) string { return addr[strings.LastIndexByte(addr, ':')+1:] }
	for _, r := range slots {
		for i, s := range c.servers {
			if port(r.Nodes[0].Addr) == port(s.Addr()) {
				for slot := r.Start; slot <= r.End; slot++ {
					owners[slot] = i
				}
			}
		}
	}
	for slot, o := range owners {
		if o < 0 {
			t.Fatalf("no master owns slot %d", slot)
		}
	}
	return owners
}

// masterLoad is what one master's counters say it did: publishes taken
// from clients (PUBLISH and SPUBLISH), publishes received over the
// cluster bus, bytes sent to clients, CPU seconds; and, as a running
// total, SSUBSCRIBE commands.
type masterLoad struct {
	publishes, busIn, bytesOut, cpu, ssubscribes float64
}

func (a masterLoad) minus(b masterLoad) masterLoad {
	return masterLoad{a.publishes - b.publishes, a.busIn - b.busIn, a.bytesOut - b.bytesOut, a.cpu - b.cpu, a.ssubscribes - b.ssubscribes}
}

func (a masterLoad) plus(b masterLoad) masterLoad {
	return masterLoad{a.publishes + b.publishes, a.busIn + b.busIn, a.bytesOut + b.bytesOut, a.cpu + b.cpu, a.ssubscribes + b.ssubscribes}
}

// readMasters reads each master's counters: INFO commandstats, stats and
// cpu, and CLUSTER INFO.
func (c *testCluster) readMasters(t testing.TB) []masterLoad {
	t.Helper()
	ctx := context.Background()
	out := make([]masterLoad, len(c.masters))
	for i, m := range c.masters {
		info, err := m.Info(ctx, "commandstats", "stats", "cpu").Result()
		if err != nil {
			t.Fatal(err)
		}
		cinfo, err := m.ClusterInfo(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		num := func(text, field string) float64 {
			v := infoField(text, field)
			if v == "" {
				return 0 // a counter Redis has not started yet
			}
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("master %d: %s: %q", i, field, v)
			}
			return n
		}
		calls := func(cmd string) float64 {
			v := infoField(info, "cmdstat_"+cmd)
			n, _ := strconv.ParseFloat(strings.TrimPrefix(strings.Split(v, ",")[0], "calls="), 64)
			return n
		}
		out[i] = masterLoad{
			publishes:   calls("publish") + calls("spublish"),
			busIn:       num(cinfo, "cluster_stats_messages_publish_received") + num(cinfo, "cluster_stats_messages_publishshard_received"),
			bytesOut:    num(info, "total_net_output_bytes"),
			cpu:         num(info, "used_cpu_user") + num(info, "used_cpu_sys"),
			ssubscribes: calls("ssubscribe"),
		}
	}
	return out
}
