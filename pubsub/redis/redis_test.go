package redis

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

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

// A prefix route within Options.PatternTopics receives every topic of the
// prefix published on any node, through the pattern subscription; a
// prefix outside it is refused, since nothing would feed it.
func TestPrefixRouteWithinPatternTopics(t *testing.T) {
	srv := startRedis(t)
	opts := func(o *Options) { o.PatternTopics = "sock:" }
	a, b := node(t, srv, "a", opts), node(t, srv, "b", opts)
	r := &recorder{id: "r"}
	if err := b.SubscribePrefix("room:", r); err == nil {
		t.Fatal("a prefix route outside PatternTopics was accepted")
	}
	if err := b.SubscribePrefix("sock:", r); err != nil {
		t.Fatal(err)
	}
	syncAll(t, a, b)
	publish(t, a, "sock:u1", "kick-u1")
	r.waitCount(t, 1)
	publish(t, a, "sock:u2", "kick-u2")
	r.waitCount(t, 2)
	if got := r.events(); !slices.Equal(got, []string{"kick-u1", "kick-u2"}) {
		t.Fatalf("route got %v", got)
	}
	b.UnsubscribePrefix("sock:", r)
	publish(t, a, "sock:u1", "after-leave")
	mustSubscribe(t, b, "room:1", r)
	syncAll(t, b)
	publish(t, a, "room:1", "room")
	r.waitCount(t, 3)
	if got := r.events(); got[2] != "room" {
		t.Fatalf("after UnsubscribePrefix got %v", got)
	}
}
