package redis

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/channelsd/channelsd/test/redistest"

	"go.uber.org/goleak"

	"github.com/channelsd/channelsd/pubsub"
)

func TestBroadcastReachesEveryNodeOnceInOrder(t *testing.T) {
	srv := startRedis(t)
	a, b := node(t, srv, "a"), node(t, srv, "b")
	ra := &recorder{id: "ra"}
	rb1, rb2 := &recorder{id: "rb1"}, &recorder{id: "rb2"}
	mustSubscribe(t, a, "room:1", ra)
	mustSubscribe(t, b, "room:1", rb1)
	mustSubscribe(t, b, "room:1", rb2)
	syncAll(t, a, b)
	if n := numsub(t, inspector(t, srv), "test:t:room:1"); n != 2 {
		t.Fatalf("NUMSUB test:t:room:1 = %d, want 2 (one connection per node)", n)
	}

	const n = 1000
	for i := range n {
		publish(t, a, "room:1", strconv.Itoa(i))
	}
	rb1.waitCount(t, n)
	rb2.waitCount(t, n)
	// Barrier: b's message reaches a after every echo of a's own
	// messages, because Redis delivers on a's one connection in the order
	// it applied the PUBLISHes. So once a has it, a duplicate would show.
	publish(t, b, "room:1", "barrier")
	ra.waitCount(t, n+1)

	want := make([]string, n)
	for i := range want {
		want[i] = strconv.Itoa(i)
	}
	for _, r := range []*recorder{rb1, rb2} {
		if got := r.events()[:n]; !slices.Equal(got, want) {
			t.Fatalf("%s: messages missing, duplicated or out of order: first %v", r.id, got[:10])
		}
	}
	if got := ra.events(); !slices.Equal(got, append(want, "barrier")) {
		t.Fatalf("origin node's subscriber got %d messages (want %d once each, in order, then the barrier)", len(got), n)
	}
	if m := rb1.messages()[0]; m.Topic != "room:1" || string(m.Payload) != `{}` || m.Binary || m.From != "" {
		t.Fatalf("relayed message = %+v", m)
	}
	sa, sb := a.Stats(), b.Stats()
	if sa.Published != n || sa.Received != 1 || sb.Received != n || sb.Published != 1 {
		t.Fatalf("stats: a=%+v b=%+v", sa, sb)
	}
}

func TestBroadcastFromExcludesSenderOnOriginOnly(t *testing.T) {
	srv := startRedis(t)
	a, b := node(t, srv, "a"), node(t, srv, "b")
	// Subscriber ids are unique per node only: b has a "sender" too.
	sender, other := &recorder{id: "sender"}, &recorder{id: "other"}
	remoteSameID := &recorder{id: "sender"}
	mustSubscribe(t, a, "room:1", sender)
	mustSubscribe(t, a, "room:1", other)
	mustSubscribe(t, b, "room:1", remoteSameID)
	syncAll(t, a, b)

	err := a.Publish(context.Background(), &pubsub.Message{Topic: "room:1", Event: "from", Payload: []byte(`{}`), From: "sender"})
	if err != nil {
		t.Fatal(err)
	}
	remoteSameID.waitCount(t, 1)
	if other.count() != 1 {
		t.Fatalf("other local subscriber got %d messages, want 1", other.count())
	}
	if m := remoteSameID.messages()[0]; m.From != "" {
		t.Fatalf("relayed message keeps From=%q; nobody is excluded on other nodes", m.From)
	}
	// Barrier through a (see the ordering test), then check the sender.
	publish(t, b, "room:1", "barrier")
	eventually(t, 5*time.Second, "barrier on a", func() bool { return other.count() == 2 })
	if got := sender.events(); !slices.Equal(got, []string{"barrier"}) {
		t.Fatalf("sender got %v, want only the barrier", got)
	}
}

func TestSubscribesOnlyWhileLocalSubscribersExist(t *testing.T) {
	srv := startRedis(t)
	a := node(t, srv, "a")
	rc := inspector(t, srv)
	s1, s2 := &recorder{id: "s1"}, &recorder{id: "s2"}

	check := func(step string, want ...string) {
		t.Helper()
		syncAll(t, a)
		if got := channels(t, rc, "test"); !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Fatalf("%s: PUBSUB CHANNELS = %v, want %v", step, got, want)
		}
		if got := a.Stats().Subscriptions; got != len(want) {
			t.Fatalf("%s: Stats.Subscriptions = %d, want %d", step, got, len(want))
		}
	}
	check("initially")
	mustSubscribe(t, a, "room:1", s1)
	check("first subscriber", "test:t:room:1")
	mustSubscribe(t, a, "room:1", s1) // idempotent
	mustSubscribe(t, a, "room:1", s2)
	check("second subscriber", "test:t:room:1")
	a.Unsubscribe("room:1", s1)
	a.Unsubscribe("room:1", s1) // idempotent
	check("one left", "test:t:room:1")
	a.Unsubscribe("room:2", s2) // never subscribed
	a.Unsubscribe("room:1", s2)
	check("last left")
	if n := numsub(t, rc, "test:t:room:1"); n != 0 {
		t.Fatalf("NUMSUB after the last leave = %d", n)
	}
}

// Joins and leaves of the same topics from many goroutines must leave
// the node subscribed exactly to the topics that still have local
// subscribers.
func TestConcurrentSubscribeUnsubscribeConverges(t *testing.T) {
	srv := startRedis(t)
	a := node(t, srv, "a")
	rc := inspector(t, srv)
	topics := make([]string, 8)
	for i := range topics {
		topics[i] = "churn:" + strconv.Itoa(i)
	}
	const goroutines = 32
	subsOf := make([][]*recorder, goroutines)
	for g := range subsOf {
		subsOf[g] = []*recorder{{id: fmt.Sprintf("g%d-0", g)}, {id: fmt.Sprintf("g%d-1", g)}}
	}
	for round := range 6 {
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(round), uint64(g)))
				subs := subsOf[g]
				for range 400 {
					topic := topics[rng.IntN(len(topics))]
					s := subs[rng.IntN(len(subs))]
					if rng.IntN(2) == 0 {
						mustSubscribe(t, a, topic, s)
					} else {
						a.Unsubscribe(topic, s)
					}
				}
				// Every other round ends with all of them gone.
				if round%2 == 1 {
					for _, topic := range topics {
						for _, s := range subs {
							a.Unsubscribe(topic, s)
						}
					}
				}
			})
		}
		wg.Wait()
		syncAll(t, a)
		var want []string
		for _, topic := range topics {
			if a.Subscribers(topic) > 0 {
				want = append(want, "test:t:"+topic)
			}
		}
		slices.Sort(want)
		got := channels(t, rc, "test")
		if !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Fatalf("round %d: subscribed to %v, local subscribers on %v", round, got, want)
		}
		if round%2 == 1 && len(got) != 0 {
			t.Fatalf("round %d: everyone left but the node holds %v", round, got)
		}
	}
}

func TestPayloadTravelsVerbatim(t *testing.T) {
	srv := startRedis(t)
	a, b := node(t, srv, "a"), node(t, srv, "b")
	r := &recorder{id: "r"}
	mustSubscribe(t, b, "bin:1", r)
	syncAll(t, b)

	all := make([]byte, 512)
	for i := range all {
		all[i] = byte(i)
	}
	sent := []*pubsub.Message{
		{Topic: "bin:1", Event: "bytes", Payload: all, Binary: true},
		{Topic: "bin:1", Event: "empty", Payload: nil, Binary: true},
		{Topic: "bin:1", Event: "json", Payload: []byte(`{"text":"héllo \u2603 \"q\"","n":[1,2]}`)},
		{Topic: "bin:1", Event: "événement ☃", Payload: []byte{0xff, 0xfe, 0x00, '\r', '\n'}, Binary: true},
	}
	for _, m := range sent {
		if err := a.Publish(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	r.waitCount(t, len(sent))
	for i, got := range r.messages() {
		want := sent[i]
		if got.Topic != want.Topic || got.Event != want.Event || got.Binary != want.Binary || !bytes.Equal(got.Payload, want.Payload) {
			t.Fatalf("message %d: got {%q %q binary=%v % x}, want {%q %q binary=%v % x}",
				i, got.Topic, got.Event, got.Binary, got.Payload, want.Topic, want.Event, want.Binary, want.Payload)
		}
	}
}

func TestPrefixesIsolateClusters(t *testing.T) {
	srv := startRedis(t)
	prefixed := func(p string) func(*Options) { return func(o *Options) { o.Prefix = p } }
	x1, x2 := node(t, srv, "x1", prefixed("x")), node(t, srv, "x2", prefixed("x"))
	y1, y2 := node(t, srv, "y1", prefixed("y")), node(t, srv, "y2", prefixed("y"))
	rx, ry := &recorder{id: "r"}, &recorder{id: "r"}
	mustSubscribe(t, x1, "room:1", rx)
	mustSubscribe(t, y1, "room:1", ry)
	syncAll(t, x1, y1)

	// y's message goes first: were it to leak into x, Redis would deliver
	// it to x1 before x's own message.
	publish(t, y2, "room:1", "from-y")
	publish(t, x2, "room:1", "from-x")
	rx.waitCount(t, 1)
	ry.waitCount(t, 1)
	publish(t, x2, "room:1", "x-again")
	rx.waitCount(t, 2)
	if got := rx.events(); !slices.Equal(got, []string{"from-x", "x-again"}) {
		t.Fatalf("prefix x got %v", got)
	}
	if got := ry.events(); !slices.Equal(got, []string{"from-y"}) {
		t.Fatalf("prefix y got %v", got)
	}
}

func TestUndecodableMessagesAreCountedAndSkipped(t *testing.T) {
	srv := startRedis(t)
	a, b := node(t, srv, "a"), node(t, srv, "b")
	r := &recorder{id: "r"}
	mustSubscribe(t, a, "room:1", r)
	syncAll(t, a)
	rc := inspector(t, srv)
	bad := []string{"", "x", "\x02\x00future version", string([]byte{1, 0, 200})}
	for _, payload := range bad {
		if err := rc.Publish(context.Background(), "test:t:room:1", payload).Err(); err != nil {
			t.Fatal(err)
		}
	}
	publish(t, b, "room:1", "good")
	r.waitCount(t, 1)
	if got := r.events(); !slices.Equal(got, []string{"good"}) {
		t.Fatalf("got %v", got)
	}
	if s := a.Stats(); s.DecodeErrors != uint64(len(bad)) || s.Received != 1 {
		t.Fatalf("stats %+v, want %d decode errors and 1 received", s, len(bad))
	}
}

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

func TestCloseStopsEverything(t *testing.T) {
	srv := startRedis(t)
	ignore := goleak.IgnoreCurrent()
	opt := Options{URL: srv.URL(), NodeID: "a", Prefix: "test", Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))}
	a, err := New(context.Background(), opt)
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{id: "r"}
	mustSubscribe(t, a, "room:1", r)
	syncAll(t, a)
	publish(t, a, "room:1", "x")
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := a.Publish(context.Background(), &pubsub.Message{Topic: "room:1", Event: "y"}); !errors.Is(err, pubsub.ErrClosed) {
		t.Fatalf("Publish after Close = %v", err)
	}
	if err := a.Subscribe("room:2", r); !errors.Is(err, pubsub.ErrClosed) {
		t.Fatalf("Subscribe after Close = %v", err)
	}
	if err := a.Ping(context.Background()); !errors.Is(err, pubsub.ErrClosed) {
		t.Fatalf("Ping after Close = %v", err)
	}
	if err := a.Sync(context.Background()); !errors.Is(err, pubsub.ErrClosed) {
		t.Fatalf("Sync after Close = %v", err)
	}
	eventually(t, 5*time.Second, "the node's connections to close", func() bool {
		return len(channels(t, inspector(t, srv), "test")) == 0
	})
	verifyNoLeaks(t, ignore)
}

func TestCloseWhileDisconnected(t *testing.T) {
	srv := startRedis(t)
	ignore := goleak.IgnoreCurrent()
	opt := Options{URL: srv.URL(), NodeID: "a", HealthCheckInterval: 50 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))}
	a, err := New(context.Background(), opt)
	if err != nil {
		t.Fatal(err)
	}
	mustSubscribe(t, a, "room:1", &recorder{id: "r"})
	srv.Stop()
	eventually(t, 5*time.Second, "the outage to be noticed", func() bool { return !a.Stats().Connected })
	start := time.Now()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Close took %s while Redis was down", d)
	}
	verifyNoLeaks(t, ignore)
}

func TestNewFailsWithoutRedis(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := New(ctx, Options{URL: "redis://127.0.0.1:" + strconv.Itoa(freePort(t))})
	if err == nil {
		t.Fatal("New succeeded with no Redis listening")
	}
	verifyNoLeaks(t, ignore)
}

func mustSubscribe(t testing.TB, p *PubSub, topic string, s pubsub.Subscriber) {
	t.Helper()
	if err := p.Subscribe(topic, s); err != nil {
		t.Errorf("Subscribe(%s): %v", topic, err)
	}
}

// A subscriber whose Subscribe has returned receives everything published
// afterwards on any node: a client whose join was acknowledged must not
// miss a broadcast because its node's SUBSCRIBE was still in flight.
func TestSubscribeReturnsOnceTheSubscriptionIsLive(t *testing.T) {
	srv := startRedis(t)
	a, b := node(t, srv, "a"), node(t, srv, "b")
	for i := 0; i < 50; i++ {
		topic := fmt.Sprintf("fresh:%d", i)
		r := &recorder{id: "r"}
		mustSubscribe(t, b, topic, r)
		publish(t, a, topic, "first")
		r.waitCount(t, 1)
		b.Unsubscribe(topic, r)
	}
}

// Topics under Options.PatternTopics come through the one pattern
// subscription: no SUBSCRIBE per topic, yet a publish on any node reaches
// the subscriber. The prefix is matched literally, glob characters and
// all: a cluster whose prefix the unescaped pattern would match hears
// nothing.
func TestPatternTopicsShareOneSubscription(t *testing.T) {
	srv := startRedis(t)
	rc := inspector(t, srv)
	opts := func(prefix string) func(*Options) {
		return func(o *Options) { o.Prefix, o.PatternTopics = prefix, "sock:" }
	}
	a, b := node(t, srv, "a", opts("g*")), node(t, srv, "b", opts("g*"))
	other := node(t, srv, "other", opts("gX"))
	r := &recorder{id: "r"}
	mustSubscribe(t, b, "sock:u1", r)
	syncAll(t, a, b)
	if got, err := rc.PubSubChannels(context.Background(), "*").Result(); err != nil || len(got) != 0 {
		t.Fatalf("PUBSUB CHANNELS = %v (%v), want none: pattern topics take no channel", got, err)
	}
	// NUMPAT counts distinct patterns: one per cluster prefix.
	if n, err := rc.PubSubNumPat(context.Background()).Result(); err != nil || n != 2 {
		t.Fatalf("PUBSUB NUMPAT = %d (%v), want 2", n, err)
	}

	// other's message goes first: were it to match b's pattern, b would
	// get it before a's.
	publish(t, other, "sock:u1", "from-other-cluster")
	publish(t, a, "sock:u2", "no-subscriber")
	publish(t, a, "sock:u1", "kick")
	r.waitCount(t, 1)
	publish(t, a, "sock:u1", "kick-again")
	r.waitCount(t, 2)
	if got := r.events(); !slices.Equal(got, []string{"kick", "kick-again"}) {
		t.Fatalf("subscriber got %v", got)
	}

	b.Unsubscribe("sock:u1", r)
	publish(t, a, "sock:u1", "after-leave")
	mustSubscribe(t, b, "room:1", r) // an ordinary topic still subscribes
	syncAll(t, b)
	publish(t, a, "room:1", "room")
	r.waitCount(t, 3)
	if got := r.events(); got[2] != "room" {
		t.Fatalf("after the leave got %v", got)
	}
	if got := channels(t, rc, "g*"); !slices.Equal(got, []string{"g*:t:room:1"}) {
		t.Fatalf("PUBSUB CHANNELS = %v, want only the ordinary topic", got)
	}
}
