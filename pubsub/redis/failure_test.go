package redis

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/channelsd/channelsd/test/redistest"

	"github.com/channelsd/channelsd/pubsub"
)

// Redis failing under a node: gone, stalled, frozen, dropping it.

// Redis dies and comes back on the same port: the node serves its own
// subscribers meanwhile, reports the outage, fails publishes fast, does
// not grow, and afterwards holds exactly the subscriptions it needs.
func TestRedisOutageAndRecovery(t *testing.T) {
	srv := startRedis(t)
	logs := &redistest.LockedBuffer{}
	const publishTimeout = 500 * time.Millisecond
	tweak := func(o *Options) {
		o.PublishTimeout = publishTimeout
		o.HealthCheckInterval = 100 * time.Millisecond
		o.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(logs, testWriter{t}), nil))
	}
	a, b := node(t, srv, "a", tweak), node(t, srv, "b", tweak)
	ra, rb := &recorder{id: "ra"}, &recorder{id: "rb"}
	rbGone, raNew, raLocal := &recorder{id: "rb-gone"}, &recorder{id: "ra-new"}, &recorder{id: "ra-local"}
	mustSubscribe(t, a, "room:keep", ra)
	mustSubscribe(t, b, "room:keep", rb)
	mustSubscribe(t, b, "room:gone", rbGone)
	syncAll(t, a, b)
	publish(t, a, "room:keep", "before")
	rb.waitCount(t, 1)

	srv.Stop()
	eventually(t, 5*time.Second, "both nodes to notice the outage", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return a.Ping(ctx) != nil && b.Ping(ctx) != nil && !a.Stats().Connected && !b.Stats().Connected
	})
	// Subscriptions change during the outage: one topic loses its last
	// subscriber, two gain their first.
	b.Unsubscribe("room:gone", rbGone)
	mustSubscribe(t, a, "room:new", raNew)
	mustSubscribe(t, a, "room:local", raLocal)
	if err := a.Sync(context.Background()); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("Sync while disconnected = %v, want ErrDisconnected", err)
	}

	runtime.GC()
	goroutinesBefore := runtime.NumGoroutine()
	const n = 500
	var slowest time.Duration
	for i := range n {
		start := time.Now()
		err := a.Publish(context.Background(), &pubsub.Message{Topic: "room:keep", Event: "during-" + strconv.Itoa(i), Payload: []byte(`{}`)})
		slowest = max(slowest, time.Since(start))
		if !errors.Is(err, ErrDisconnected) {
			t.Fatalf("Publish while Redis is down = %v, want ErrDisconnected", err)
		}
	}
	publish2 := a.Publish(context.Background(), &pubsub.Message{Topic: "room:local", Event: "local", Payload: []byte(`{}`)})
	if publish2 == nil {
		t.Fatal("Publish while Redis is down reported success")
	}
	if slowest > publishTimeout {
		t.Fatalf("slowest Publish during the outage took %s, timeout is %s", slowest, publishTimeout)
	}
	if got := ra.count(); got != 1+n {
		t.Fatalf("local subscriber got %d messages during the outage, want %d", got-1, n)
	}
	if got := raLocal.events(); !slices.Equal(got, []string{"local"}) {
		t.Fatalf("local-only topic got %v", got)
	}
	if g := runtime.NumGoroutine(); g > goroutinesBefore+2 {
		t.Fatalf("goroutines grew from %d to %d over %d publishes during the outage", goroutinesBefore, g, n)
	}
	if s := a.Stats(); s.PublishErrors != n+1 || s.Dropped != 0 {
		t.Fatalf("stats during the outage: %+v", s)
	}

	srv.Start()
	eventually(t, 10*time.Second, "both nodes to reconnect", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return a.Ping(ctx) == nil && b.Ping(ctx) == nil
	})
	syncAll(t, a, b)
	rc := inspector(t, srv)
	want := []string{"test:t:room:keep", "test:t:room:local", "test:t:room:new"}
	if got := channels(t, rc, "test"); !slices.Equal(got, want) {
		t.Fatalf("after the restart the nodes hold %v, want %v", got, want)
	}
	if got := numsub(t, rc, "test:t:room:keep"); got != 2 {
		t.Fatalf("NUMSUB room:keep = %d, want 2", got)
	}

	publish(t, a, "room:keep", "after")
	rb.waitCount(t, 2)
	publish(t, b, "room:new", "after")
	raNew.waitCount(t, 1)
	if got := rb.events(); !slices.Equal(got, []string{"before", "after"}) {
		t.Fatalf("b got %v", got)
	}
	if rbGone.count() != 0 {
		t.Fatal("unsubscribed subscriber got messages")
	}
	for _, p := range []*PubSub{a, b} {
		if s := p.Stats(); s.Reconnects < 1 || !s.Connected {
			t.Fatalf("%s stats after the restart: %+v", p.NodeID(), s)
		}
	}
	out := logs.String()
	for _, line := range []string{"redis: connection lost", "redis: reconnected after "} {
		if !bytes.Contains([]byte(out), []byte(line)) {
			t.Fatalf("log lacks %q:\n%s", line, out)
		}
	}
}

// A Redis that accepts but does not answer (here: PUBLISH paused) must
// not hold a publisher beyond the timeout, and the queue must stay
// bounded.
func TestPublishIsBoundedWhenRedisStalls(t *testing.T) {
	srv := startRedis(t)
	const publishTimeout = 300 * time.Millisecond
	a := node(t, srv, "a", func(o *Options) { o.PublishTimeout = publishTimeout; o.QueueSize = 8 })
	b := node(t, srv, "b")
	r := &recorder{id: "r"}
	mustSubscribe(t, b, "room:1", r)
	syncAll(t, b)
	rc := inspector(t, srv)
	// CLIENT PAUSE WRITE holds PUBLISH but not PING, so the pub/sub
	// connections stay healthy and only the publish path stalls.
	if err := rc.Do(context.Background(), "CLIENT", "PAUSE", "5000", "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rc.Do(context.Background(), "CLIENT", "UNPAUSE").Err() })

	runtime.GC()
	goroutinesBefore := runtime.NumGoroutine()
	const n = 64
	var wg sync.WaitGroup
	var queueFull, timedOut, other atomic.Int32
	var slowest atomic.Int64
	for i := range n {
		wg.Go(func() {
			start := time.Now()
			err := a.Publish(context.Background(), &pubsub.Message{Topic: "room:1", Event: strconv.Itoa(i), Payload: []byte(`{}`)})
			d := time.Since(start)
			for {
				s := slowest.Load()
				if int64(d) <= s || slowest.CompareAndSwap(s, int64(d)) {
					break
				}
			}
			switch {
			case errors.Is(err, ErrQueueFull):
				queueFull.Add(1)
			case errors.Is(err, ErrTimeout):
				timedOut.Add(1)
			default:
				other.Add(1)
				t.Errorf("Publish during the stall = %v", err)
			}
		})
	}
	wg.Wait()
	if d := time.Duration(slowest.Load()); d > publishTimeout+200*time.Millisecond {
		t.Fatalf("slowest Publish took %s with a %s timeout", d, publishTimeout)
	}
	if queueFull.Load() == 0 || timedOut.Load() == 0 {
		t.Fatalf("queue full %d, timed out %d: want both", queueFull.Load(), timedOut.Load())
	}
	s := a.Stats()
	if s.Dropped != uint64(queueFull.Load()) || s.PublishErrors != uint64(timedOut.Load()) || s.Published != 0 {
		t.Fatalf("stats %+v; queue full %d, timed out %d", s, queueFull.Load(), timedOut.Load())
	}
	if q, ok := s.PublishQueues[""]; s.PublishWriters != 1 || len(s.PublishQueues) != 1 || !ok || q > 8 {
		t.Fatalf("%d writers, queues %v: want one writer, its queue within 8", s.PublishWriters, s.PublishQueues)
	}
	if g := runtime.NumGoroutine(); g > goroutinesBefore+2 {
		t.Fatalf("goroutines grew from %d to %d", goroutinesBefore, g)
	}

	if err := rc.Do(context.Background(), "CLIENT", "UNPAUSE").Err(); err != nil {
		t.Fatal(err)
	}
	// The writer may still be skipping the abandoned requests that fill
	// its queue; publishing succeeds again once it has.
	eventually(t, 5*time.Second, "a publish to succeed after the stall", func() bool {
		return a.Publish(context.Background(), &pubsub.Message{Topic: "room:1", Event: "after", Payload: []byte(`{}`)}) == nil
	})
	eventually(t, 5*time.Second, "the message after the stall", func() bool {
		return slices.Contains(r.events(), "after")
	})
	// Timed-out publishes were not sent late: what b saw is at most what
	// was in flight when the stall began, and "after" is last.
	if got := r.events(); got[len(got)-1] != "after" {
		t.Fatalf("b got %v", got)
	}
}

// Redis frozen (SIGSTOP) keeps the TCP connections open but answers
// nothing: only the health check can tell. The node must notice within a
// few intervals, fail fast, and recover when Redis resumes.
func TestFrozenRedisIsDetectedBySilence(t *testing.T) {
	srv := startRedis(t)
	const interval = 50 * time.Millisecond
	tweak := func(o *Options) { o.HealthCheckInterval = interval; o.PublishTimeout = 200 * time.Millisecond }
	a, b := node(t, srv, "a", tweak), node(t, srv, "b", tweak)
	r := &recorder{id: "r"}
	mustSubscribe(t, b, "room:1", r)
	syncAll(t, b)

	srv.Signal(syscall.SIGSTOP)
	thawed := false
	thaw := func() {
		if !thawed {
			thawed = true
			srv.Signal(syscall.SIGCONT)
		}
	}
	t.Cleanup(thaw)
	frozenAt := time.Now()
	eventually(t, 5*time.Second, "the silence to be noticed", func() bool { return !a.Stats().Connected && !b.Stats().Connected })
	if d := time.Since(frozenAt); d > 20*interval {
		t.Fatalf("took %s to notice a frozen Redis, health-check interval %s", d, interval)
	}
	if err := a.Publish(context.Background(), &pubsub.Message{Topic: "room:1", Event: "lost"}); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("Publish to a frozen Redis = %v", err)
	}

	thaw()
	eventually(t, 10*time.Second, "reconnection", func() bool { return a.Stats().Connected && b.Stats().Connected })
	syncAll(t, a, b)
	publish(t, a, "room:1", "after")
	r.waitCount(t, 1)
	if got := r.events(); !slices.Equal(got, []string{"after"}) {
		t.Fatalf("got %v", got)
	}
}

// Redis drops a subscriber whose output buffer passes the pubsub limit.
// The node must treat that like any reconnect and resubscribe.
func TestDroppedByOutputBufferLimitResubscribes(t *testing.T) {
	srv := startRedis(t)
	a, b := node(t, srv, "a"), node(t, srv, "b")
	r := &recorder{id: "r"}
	mustSubscribe(t, b, "room:1", r)
	syncAll(t, b)
	rc := inspector(t, srv)
	if err := rc.ConfigSet(context.Background(), "client-output-buffer-limit", "pubsub 16kb 0 0").Err(); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 64<<10)
	if err := a.Publish(context.Background(), &pubsub.Message{Topic: "room:1", Event: "big", Payload: big, Binary: true}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "b to be dropped and to reconnect", func() bool { return b.Stats().Reconnects >= 1 && b.Stats().Connected })
	if err := rc.ConfigSet(context.Background(), "client-output-buffer-limit", "pubsub 32mb 8mb 60").Err(); err != nil {
		t.Fatal(err)
	}
	syncAll(t, b)
	if got := channels(t, rc, "test"); !slices.Equal(got, []string{"test:t:room:1"}) {
		t.Fatalf("after the drop: subscribed to %v", got)
	}
	publish(t, a, "room:1", "after")
	eventually(t, 5*time.Second, "delivery after the drop", func() bool { return slices.Contains(r.events(), "after") })
}
