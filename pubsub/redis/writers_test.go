package redis

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

// topicOn returns a topic whose shard channel's slot master i owns.
func topicOn(t testing.TB, c *testCluster, p *PubSub, i int, prefix string) string {
	t.Helper()
	for n := range 1000 {
		topic := fmt.Sprint(prefix, n)
		if c.owner(t, keySlot(p.shardChannel(topic))) == i {
			return topic
		}
	}
	t.Fatalf("no topic on master %d", i)
	return ""
}

// writerAt returns p's writer for the master at addr, nil if none runs.
func writerAt(p *PubSub, addr string) *writer {
	p.writers.mu.Lock()
	defer p.writers.mu.Unlock()
	return p.writers.byAddr[addr]
}

// pause stops master i of c from serving any client for d (CLIENT
// PAUSE ALL): it stalls as a master that stopped answering does.
func pause(t testing.TB, c *testCluster, i int, d time.Duration) {
	t.Helper()
	if err := c.masters[i].Do(context.Background(), "client", "pause", d.Milliseconds(), "all").Err(); err != nil {
		t.Fatal(err)
	}
}

// setMaster replaces p's slot map lookup.
func setMaster(p *PubSub, f func(ctx context.Context, key string) string) {
	p.slots.lookup.Store(&f)
}

// publishAsync publishes in the background; the result comes on the
// returned channel.
func publishAsync(p *PubSub, topic, event string) <-chan error {
	done := make(chan error, 1)
	go func() {
		done <- p.Publish(context.Background(), &pubsub.Message{Topic: topic, Event: event, Payload: []byte(`{}`)})
	}()
	return done
}

// TestStalledMasterDelaysOnlyItsTopics: while one master answers
// nothing, a node's publishes to topics of the other masters go through
// at once, and the stalled master's topics keep their order once it
// answers again.
func TestStalledMasterDelaysOnlyItsTopics(t *testing.T) {
	c := startCluster(t)
	a := node(t, c.servers[0], "a", func(o *Options) { o.URL = c.url(); o.PublishTimeout = 5 * time.Second })
	a.SetGate(openGate("a"))
	// b's shard connection to the stalled master outlives the stall: its
	// health check would otherwise drop it and lose the broadcasts.
	b := node(t, c.servers[0], "b", func(o *Options) {
		o.URL = c.url()
		o.PublishTimeout = 5 * time.Second
		o.HealthCheckInterval = time.Second
	})
	b.SetGate(openGate("b"))
	stalled := topicOn(t, c, a, 0, "stalled:")
	others := []string{topicOn(t, c, a, 1, "one:"), topicOn(t, c, a, 2, "two:")}
	recS := &recorder{id: "s"}
	mustSubscribe(t, b, stalled, recS)
	recO := make([]*recorder, len(others))
	for i, topic := range others {
		recO[i] = &recorder{id: topic}
		mustSubscribe(t, b, topic, recO[i])
	}
	syncAll(t, b)
	// Every writer started, so that none is started during the stall.
	publish(t, a, stalled, "warm")
	recS.waitCount(t, 1)
	for i, topic := range others {
		publish(t, a, topic, "warm")
		recO[i].waitCount(t, 1)
	}

	const stall = 1500 * time.Millisecond
	w0 := writerAt(a, c.servers[0].Addr())
	before := w0.completed.Load()
	pause(t, c, 0, stall)
	pausedAt := time.Now()
	s1 := publishAsync(a, stalled, "s1")
	// s1 is on the wire (taken by the writer, not answered) before s2 is
	// queued behind it.
	eventually(t, time.Second, "s1 taken by its writer", func() bool {
		return w0.enqueued.Load() == before+1 && a.writers.pending.Load() == 0
	})
	s2 := publishAsync(a, stalled, "s2")
	eventually(t, time.Second, "s2 queued", func() bool { return w0.enqueued.Load() == before+2 })
	st := a.Stats()
	wantQueues := map[string]int{c.servers[0].Addr(): 1, c.servers[1].Addr(): 0, c.servers[2].Addr(): 0}
	if st.PublishWriters != 3 || !maps.Equal(st.PublishQueues, wantQueues) {
		t.Fatalf("%d writers, queues %v; want 3, %v (s2 behind s1)", st.PublishWriters, st.PublishQueues, wantQueues)
	}

	var longest time.Duration
	for k := range 5 {
		for i, topic := range others {
			start := time.Now()
			publish(t, a, topic, fmt.Sprint("o", k))
			longest = max(longest, time.Since(start))
			recO[i].waitCount(t, k+2)
		}
	}
	delivered := time.Since(pausedAt)
	t.Logf("other masters' topics: longest publish %v; all delivered %v into a stall of %v", longest, delivered, stall)
	if delivered >= stall/2 {
		t.Errorf("other masters' topics delivered %v into the stall of %v: they waited for it", delivered, stall)
	}
	select {
	case err := <-s1:
		t.Fatalf("the stalled master's publish returned (%v) during the stall", err)
	default:
	}
	for _, done := range []<-chan error{s1, s2} {
		if err := <-done; err != nil {
			t.Fatalf("stalled topic's publish: %v", err)
		}
	}
	recS.waitCount(t, 3)
	if got := recS.events(); !slices.Equal(got, []string{"warm", "s1", "s2"}) {
		t.Errorf("stalled topic delivered %v, want warm s1 s2", got)
	}
}

// TestMovedSlotKeepsOrder: when a topic's slot moves to another master's
// writer, its next publish waits for what the old writer had queued of
// it, though the old writer is stalled and the new one is free.
func TestMovedSlotKeepsOrder(t *testing.T) {
	c := startCluster(t)
	a := node(t, c.servers[0], "a", func(o *Options) { o.URL = c.url(); o.PublishTimeout = 5 * time.Second })
	a.SetGate(openGate("a"))
	b := clusterNode(t, c, "b", openGate("b"))
	stalled := topicOn(t, c, a, 0, "stalled:")
	moved := topicOn(t, c, a, 1, "moved:")
	rec := &recorder{id: "m"}
	mustSubscribe(t, b, moved, rec)
	syncAll(t, b)

	// The topic's slot is first routed to master 0's writer, as a node
	// whose slot map still had it there would.
	addr0 := c.servers[0].Addr()
	real := *a.slots.lookup.Load()
	movedKey := a.shardChannel(moved)
	setMaster(a, func(ctx context.Context, key string) string {
		if key == movedKey {
			return addr0
		}
		return real(ctx, key)
	})
	publish(t, a, moved, "m0")
	rec.waitCount(t, 1)
	w0 := writerAt(a, addr0)
	before := w0.enqueued.Load()

	pause(t, c, 0, time.Second)
	s := publishAsync(a, stalled, "s")
	eventually(t, time.Second, "s taken by master 0's writer", func() bool {
		return w0.enqueued.Load() == before+1 && a.writers.pending.Load() == 0
	})
	// m1 waits behind s, in master 0's writer.
	m1 := publishAsync(a, moved, "m1")
	eventually(t, time.Second, "m1 queued", func() bool { return w0.enqueued.Load() == before+2 })
	// The slot map is right again: m2 goes to master 1's writer, which
	// is free; m1 has not left master 0's.
	a.slots.lookup.Store(&real)
	m2 := publishAsync(a, moved, "m2")
	for _, done := range []<-chan error{s, m1, m2} {
		if err := <-done; err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
	rec.waitCount(t, 3)
	if got := rec.events(); !slices.Equal(got, []string{"m0", "m1", "m2"}) {
		t.Errorf("moved topic delivered %v, want m0 m1 m2", got)
	}
	// Master 0's writer still has the stalled topic's slot; master 1's
	// has the moved one.
	if writerAt(a, addr0) == nil || writerAt(a, c.servers[1].Addr()) == nil {
		t.Errorf("writers: %d, want master 0's and master 1's", a.writers.count())
	}
}

// TestWriterStopsWithItsLastSlot: a writer whose slots all moved away
// stops once it has answered what it had queued, whether a publish or
// the sweep finds the move.
func TestWriterStopsWithItsLastSlot(t *testing.T) {
	c := startCluster(t)
	a := clusterNode(t, c, "a", openGate("a"))
	topic := topicOn(t, c, a, 1, "room:")
	key := a.shardChannel(topic)
	real := *a.slots.lookup.Load()
	setMaster(a, func(ctx context.Context, k string) string {
		if k == key {
			return "elsewhere:1"
		}
		return real(ctx, k)
	})
	publish(t, a, topic, "e1")
	old := writerAt(a, "elsewhere:1")
	if old == nil {
		t.Fatal("no writer for the slot's first master")
	}
	a.slots.lookup.Store(&real)
	publish(t, a, topic, "e2")
	if w := writerAt(a, "elsewhere:1"); w != nil {
		t.Fatal("the writer of a master without slots still runs")
	}
	if _, open := <-old.queue; open {
		t.Fatal("the stopped writer's queue is open")
	}

	// Without a publish after the move, the sweep (each health check)
	// finds it.
	setMaster(a, func(ctx context.Context, k string) string {
		if k == key {
			return "elsewhere:2"
		}
		return real(ctx, k)
	})
	publish(t, a, topic, "e3")
	if writerAt(a, "elsewhere:2") == nil {
		t.Fatal("no writer for the slot's master")
	}
	a.slots.lookup.Store(&real)
	a.writers.sweep(context.Background())
	if w := writerAt(a, "elsewhere:2"); w != nil {
		t.Fatal("the sweep left the writer of a master that owns no slot")
	}
	publish(t, a, topic, "e4")
}
