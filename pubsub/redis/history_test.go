package redis

import (
	"context"
	"errors"
	"fmt"
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

// roomHistory keeps history for "room:" topics only.
func roomHistory(size int, ttl time.Duration) pubsub.HistoryPolicy {
	return func(topic string) pubsub.HistoryOptions {
		if strings.HasPrefix(topic, "room:") {
			return pubsub.HistoryOptions{Size: size, TTL: ttl}
		}
		return pubsub.HistoryOptions{}
	}
}

// openGate is a Gate that has waited out its TTL and knows no node that
// reads less than this build: positions go on the wire.
func openGate(self string) *Gate {
	return NewGate(self, time.Millisecond, time.Now().Add(-time.Hour))
}

// historyNode is node with roomHistory and, when open, an open Gate.
func historyNode(t testing.TB, srv *redisServer, id string, size int, ttl time.Duration, open bool) *PubSub {
	t.Helper()
	p := node(t, srv, id)
	p.SetHistoryPolicy(roomHistory(size, ttl))
	if open {
		p.SetGate(openGate(id))
	}
	return p
}

func readHistory(t testing.TB, p *PubSub, topic string, q pubsub.HistoryQuery) pubsub.HistoryResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := p.ReadHistory(ctx, topic, q)
	if err != nil {
		t.Fatalf("ReadHistory(%s, %+v) on %s: %v", topic, q, p.NodeID(), err)
	}
	return res
}

func publishAt(t testing.TB, p *PubSub, topic, event string) pubsub.Position {
	t.Helper()
	pos, err := p.PublishAt(context.Background(), &pubsub.Message{Topic: topic, Event: event, Payload: []byte(`{}`)})
	if err != nil {
		t.Fatalf("PublishAt(%s, %s) on %s: %v", topic, event, p.NodeID(), err)
	}
	return pos
}

type posEvent struct {
	pos   pubsub.Position
	event string
}

func posEvents(ms []*pubsub.Message) []posEvent {
	out := make([]posEvent, len(ms))
	for i, m := range ms {
		out[i] = posEvent{m.Pos, m.Event}
	}
	return out
}

// TestHistoryPositionsAgreeAcrossNodes: concurrent publishers on two
// nodes; both nodes' subscribers, the publishers' own node included, see
// the same strictly consecutive offsets, each broadcast once, and
// ReadHistory returns exactly that sequence.
func TestHistoryPositionsAgreeAcrossNodes(t *testing.T) {
	srv := startRedis(t)
	a := historyNode(t, srv, "a", 1000, time.Minute, true)
	b := historyNode(t, srv, "b", 1000, time.Minute, true)
	ra, rb := &recorder{id: "ra"}, &recorder{id: "rb"}
	mustSubscribe(t, a, "room:1", ra)
	mustSubscribe(t, b, "room:1", rb)
	syncAll(t, a, b)

	const publishers, each = 4, 50
	got := make([][]posEvent, publishers)
	var wg sync.WaitGroup
	for w := range publishers {
		p := []*PubSub{a, b}[w%2]
		wg.Go(func() {
			for i := range each {
				ev := fmt.Sprintf("%s-%d-%d", p.NodeID(), w, i)
				pos, err := p.PublishAt(context.Background(), &pubsub.Message{Topic: "room:1", Event: ev, Payload: []byte(`{}`)})
				if err != nil {
					t.Errorf("PublishAt: %v", err)
					return
				}
				got[w] = append(got[w], posEvent{pos, ev})
			}
		})
	}
	wg.Wait()
	const n = publishers * each
	ra.waitCount(t, n)
	rb.waitCount(t, n)

	seqA, seqB := posEvents(ra.messages()), posEvents(rb.messages())
	if !slices.Equal(seqA, seqB) {
		t.Fatalf("the nodes saw different sequences:\na %v\nb %v", seqA[:5], seqB[:5])
	}
	epoch := seqA[0].pos.Epoch
	for i, pe := range seqA {
		if pe.pos.Epoch != epoch || pe.pos.Offset != uint64(i+1) {
			t.Fatalf("message %d has position %v, want %s:%d", i, pe.pos, epoch, i+1)
		}
	}
	// What each publisher was told is where its broadcast landed, and one
	// publisher's broadcasts keep its order.
	at := make(map[pubsub.Position]string, n)
	for _, pe := range seqA {
		at[pe.pos] = pe.event
	}
	for w, ps := range got {
		for i, pe := range ps {
			if at[pe.pos] != pe.event {
				t.Fatalf("publisher %d was told %v for %s, which delivered %q", w, pe.pos, pe.event, at[pe.pos])
			}
			if i > 0 && pe.pos.Offset <= ps[i-1].pos.Offset {
				t.Fatalf("publisher %d: %v after %v", w, pe.pos, ps[i-1].pos)
			}
		}
	}
	for _, q := range []pubsub.HistoryQuery{{Last: n}, {Since: pubsub.Position{Epoch: epoch}}} {
		res := readHistory(t, b, "room:1", q)
		if !slices.Equal(posEvents(res.Messages), seqA) || res.Top != seqA[n-1].pos {
			t.Fatalf("ReadHistory(%+v): %d messages, top %v; want the delivered sequence, top %v", q, len(res.Messages), res.Top, seqA[n-1].pos)
		}
	}
	// No echo is delivered twice: a barrier from b reaches a after all
	// of a's own.
	publish(t, b, "room:1", "barrier")
	ra.waitCount(t, n+1)
	if c := ra.count(); c != n+1 {
		t.Fatalf("a's subscriber got %d messages, want %d", c, n+1)
	}
	sa, sb := a.Stats(), b.Stats()
	if sa.HistoryPublished != n/2 || sb.HistoryPublished != n/2+1 || sb.HistoryReads != 2 || sb.HistoryMessagesRead != 2*n {
		t.Fatalf("stats: a=%+v b=%+v", sa, sb)
	}
	if st := b.HistoryStats(); st != (pubsub.HistoryStats{Topics: 1, Retained: n + 1}) {
		t.Fatalf("b's HistoryStats: %+v", st)
	}
	if sa.Received != n/2+1 || sa.Published != n/2 {
		t.Fatalf("a's Received %d, Published %d: own echoes are not received from other nodes", sa.Received, sa.Published)
	}
}

type excludedRecorder struct {
	recorder
	excluded atomic.Pointer[pubsub.Message]
}

func (r *excludedRecorder) Excluded(m *pubsub.Message) { r.excluded.Store(m) }

func TestHistoryBroadcastFromExcludesSenderOnOrigin(t *testing.T) {
	srv := startRedis(t)
	a := historyNode(t, srv, "a", 10, time.Minute, true)
	b := historyNode(t, srv, "b", 10, time.Minute, true)
	sender := &excludedRecorder{recorder: recorder{id: "sender"}}
	other, remote := &recorder{id: "other"}, &recorder{id: "sender"}
	mustSubscribe(t, a, "room:1", sender)
	mustSubscribe(t, a, "room:1", other)
	mustSubscribe(t, b, "room:1", remote)
	syncAll(t, a, b)

	pos, err := a.PublishAt(context.Background(), &pubsub.Message{Topic: "room:1", Event: "from", Payload: []byte(`{}`), From: "sender"})
	if err != nil {
		t.Fatal(err)
	}
	other.waitCount(t, 1)
	remote.waitCount(t, 1)
	if m := other.messages()[0]; m.Pos != pos || m.From != "sender" {
		t.Fatalf("origin's other subscriber got %+v, want position %v", m, pos)
	}
	if m := remote.messages()[0]; m.Pos != pos || m.From != "" {
		t.Fatalf("remote subscriber got %+v (nobody is excluded on other nodes)", m)
	}
	if sender.count() != 0 {
		t.Fatal("sender received its own broadcast_from")
	}
	if m := sender.excluded.Load(); m == nil || m.Pos != pos {
		t.Fatalf("sender was told of %+v, want the message at %v", m, pos)
	}
}

// rawTap subscribes a plain client to a channel, to see the bytes on it.
func rawTap(t *testing.T, srv *redisServer, channel string) <-chan *goredis.Message {
	t.Helper()
	c := inspector(t, srv)
	ps := c.Subscribe(context.Background(), channel)
	t.Cleanup(func() { _ = ps.Close() })
	if _, err := ps.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	return ps.Channel()
}

func receiveRaw(t *testing.T, ch <-chan *goredis.Message) envelope {
	t.Helper()
	select {
	case m := <-ch:
		e, err := decodeEnvelope(m.Payload)
		if err != nil {
			t.Fatalf("raw envelope: %v", err)
		}
		// The script's bytes are exactly what appendEnvelopeExt writes.
		var ext []byte
		if m.Payload[1]&flagExt != 0 {
			ext = []byte(e.ext)
		}
		if want := appendEnvelopeExt(nil, e.origin, e.sent, e.seq, e.from, e.event, e.binary, ext, []byte(e.payload)); string(want) != m.Payload {
			t.Fatalf("script wrote % x, Go writes % x", m.Payload, want)
		}
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("nothing on the channel")
	}
	return envelope{}
}

// TestHistoryGate: with the Gate open the PUBLISHed envelope carries the
// position in record tag 1; closed (a node that cannot read an extension
// area may be live) it is the floor's form, subscribers get no Pos, and
// the stream still has the broadcast at its position.
func TestHistoryGate(t *testing.T) {
	srv := startRedis(t)
	for _, open := range []bool{true, false} {
		t.Run(fmt.Sprintf("open=%v", open), func(t *testing.T) {
			topic := fmt.Sprintf("room:%v", open)
			a := historyNode(t, srv, "a", 10, time.Minute, open)
			b := historyNode(t, srv, "b", 10, time.Minute, open)
			ra, rb := &recorder{id: "ra"}, &recorder{id: "rb"}
			mustSubscribe(t, a, topic, ra)
			mustSubscribe(t, b, topic, rb)
			syncAll(t, a, b)
			tap := rawTap(t, srv, "test:t:"+topic)

			var pos pubsub.Position
			for i := range 2 {
				pos = publishAt(t, a, topic, "e"+strconv.Itoa(i))
				if pos.Offset != uint64(i+1) {
					t.Fatalf("position %v, want offset %d", pos, i+1)
				}
				env := receiveRaw(t, tap)
				if open != (env.pos == pos) || !open && env.ext != "" {
					t.Fatalf("on the wire: position %v, area %q", env.pos, env.ext)
				}
			}
			ra.waitCount(t, 2)
			rb.waitCount(t, 2)
			for _, r := range []*recorder{ra, rb} {
				for i, m := range r.messages() {
					want := pubsub.Position{}
					if open {
						want = pubsub.Position{Epoch: pos.Epoch, Offset: uint64(i + 1)}
					}
					if m.Pos != want || m.Event != "e"+strconv.Itoa(i) {
						t.Fatalf("%s got %s at %v, want e%d at %v", r.id, m.Event, m.Pos, i, want)
					}
				}
			}
			res := readHistory(t, b, topic, pubsub.HistoryQuery{Last: 5})
			want := []posEvent{{pubsub.Position{Epoch: pos.Epoch, Offset: 1}, "e0"}, {pos, "e1"}}
			if !slices.Equal(posEvents(res.Messages), want) || res.Top != pos {
				t.Fatalf("history %v top %v, want %v", posEvents(res.Messages), res.Top, want)
			}
		})
	}
}

func TestHistoryReadErrors(t *testing.T) {
	srv := startRedis(t)
	a := historyNode(t, srv, "a", 5, time.Minute, true)
	ctx := context.Background()

	// A topic nobody published to yet: reading creates its history, and
	// the next broadcast is the first of that epoch.
	res := readHistory(t, a, "room:new", pubsub.HistoryQuery{})
	if res.Top.Offset != 0 || !pubsub.ValidEpoch(res.Top.Epoch) || len(res.Messages) != 0 {
		t.Fatalf("fresh topic: %+v", res)
	}
	if pos := publishAt(t, a, "room:new", "first"); pos != (pubsub.Position{Epoch: res.Top.Epoch, Offset: 1}) {
		t.Fatalf("first broadcast at %v, want %s:1", pos, res.Top.Epoch)
	}
	if res := readHistory(t, a, "room:new", pubsub.HistoryQuery{Since: res.Top}); len(res.Messages) != 1 || res.Messages[0].Event != "first" {
		t.Fatalf("since %v: %v", res.Top, posEvents(res.Messages))
	}

	var last pubsub.Position
	for i := range 300 {
		last = publishAt(t, a, "room:1", strconv.Itoa(i))
	}
	e := last.Epoch
	check := func(q pubsub.HistoryQuery, want error, n int) []*pubsub.Message {
		t.Helper()
		res, err := a.ReadHistory(ctx, "room:1", q)
		if !errors.Is(err, want) || (want == nil) != (err == nil) {
			t.Fatalf("%+v: err %v, want %v", q, err, want)
		}
		if res.Top != last || len(res.Messages) != n {
			t.Fatalf("%+v: top %v, %d messages; want top %v, %d messages", q, res.Top, len(res.Messages), last, n)
		}
		return res.Messages
	}
	check(pubsub.HistoryQuery{Since: pubsub.Position{Epoch: "other", Offset: 299}}, pubsub.ErrEpochChanged, 0)
	check(pubsub.HistoryQuery{Since: pubsub.Position{Epoch: e, Offset: 301}}, pubsub.ErrPositionAhead, 0)
	check(pubsub.HistoryQuery{Since: pubsub.Position{Epoch: e, Offset: 1}}, pubsub.ErrPositionTooOld, 0)
	check(pubsub.HistoryQuery{Since: last}, nil, 0)
	ms := check(pubsub.HistoryQuery{Since: pubsub.Position{Epoch: e, Offset: 295}}, nil, 5)
	if ms[0].Pos.Offset != 296 || ms[4].Pos != last || ms[0].Event != "295" {
		t.Fatalf("since 295: %v", posEvents(ms))
	}
	ms = check(pubsub.HistoryQuery{Since: pubsub.Position{Epoch: e, Offset: 295}, Limit: 2}, nil, 2)
	if ms[1].Pos.Offset != 297 {
		t.Fatalf("since 295 limit 2: %v", posEvents(ms))
	}
	ms = check(pubsub.HistoryQuery{Last: 2}, nil, 2)
	if ms[0].Pos.Offset != 299 || ms[1].Pos != last {
		t.Fatalf("last 2: %v", posEvents(ms))
	}
	// Last shows what is retained, as a read since finds it: Size or a
	// few more (trimmed approximately), oldest first, without a hole.
	ms = readHistory(t, a, "room:1", pubsub.HistoryQuery{Last: 1000}).Messages
	first := ms[0].Pos.Offset
	if len(ms) < 5 || ms[len(ms)-1].Pos != last || uint64(len(ms)) != last.Offset-first+1 {
		t.Fatalf("last 1000 of size 5: %d messages from %d", len(ms), first)
	}
	check(pubsub.HistoryQuery{Since: pubsub.Position{Epoch: e, Offset: first - 1}}, nil, len(ms))
	check(pubsub.HistoryQuery{Since: pubsub.Position{Epoch: e, Offset: first - 2}}, pubsub.ErrPositionTooOld, 0)

	if _, err := a.ReadHistory(ctx, "lobby", pubsub.HistoryQuery{Last: 1}); !errors.Is(err, pubsub.ErrNoHistory) {
		t.Fatalf("topic without history: %v", err)
	}
	// Trimmed approximately, but trimmed: 300 broadcasts do not stay.
	if n := inspector(t, srv).XLen(ctx, "test:h:{room:1}:s").Val(); n < 5 || n >= 300 {
		t.Fatalf("stream length %d with Size 5", n)
	}
}

// TestHistoryLostWithRedis: a Redis that loses its data (FLUSHALL, a
// restart without persistence) starts a new epoch, and a position from
// the old one is refused as such.
func TestHistoryLostWithRedis(t *testing.T) {
	srv := startRedis(t)
	a := historyNode(t, srv, "a", 100, time.Minute, true)
	var old pubsub.Position
	for i := range 3 {
		old = publishAt(t, a, "room:1", strconv.Itoa(i))
	}
	if err := inspector(t, srv).FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	pos := publishAt(t, a, "room:1", "after")
	if pos.Epoch == old.Epoch || pos.Offset != 1 {
		t.Fatalf("after FLUSHALL: %v (before: %v)", pos, old)
	}
	res, err := a.ReadHistory(context.Background(), "room:1", pubsub.HistoryQuery{Since: old})
	if !errors.Is(err, pubsub.ErrEpochChanged) || res.Top != pos || len(res.Messages) != 0 {
		t.Fatalf("since %v: %+v, %v; want ErrEpochChanged with top %v", old, res, err, pos)
	}
}

func TestHistoryExpiresAfterTTL(t *testing.T) {
	srv := startRedis(t)
	a := historyNode(t, srv, "a", 100, time.Second, true)
	rc := inspector(t, srv)
	ctx := context.Background()
	first := publishAt(t, a, "room:1", "x")
	for _, k := range []string{"test:h:{room:1}:s", "test:h:{room:1}:m"} {
		if ttl := rc.PTTL(ctx, k).Val(); ttl <= 0 || ttl > time.Second {
			t.Fatalf("PTTL %s = %v, want within (0, 1s]", k, ttl)
		}
	}
	eventually(t, 10*time.Second, "the history to expire", func() bool {
		return rc.Exists(ctx, "test:h:{room:1}:s", "test:h:{room:1}:m").Val() == 0
	})
	if st := a.HistoryStats(); st != (pubsub.HistoryStats{}) {
		t.Fatalf("HistoryStats after the TTL: %+v", st)
	}
	if pos := publishAt(t, a, "room:1", "y"); pos.Epoch == first.Epoch || pos.Offset != 1 {
		t.Fatalf("after expiry: %v (before: %v)", pos, first)
	}
	if st := a.HistoryStats(); st != (pubsub.HistoryStats{Topics: 1, Retained: 1}) {
		t.Fatalf("HistoryStats: %+v", st)
	}
}

// TestHistoryAfterScriptFlush: Redis forgets its scripts (SCRIPT FLUSH, a
// restart, a failover); the next publish and read still work.
func TestHistoryAfterScriptFlush(t *testing.T) {
	srv := startRedis(t)
	a := historyNode(t, srv, "a", 100, time.Minute, true)
	r := &recorder{id: "r"}
	mustSubscribe(t, a, "room:1", r)
	syncAll(t, a)
	rc := inspector(t, srv)
	publishAt(t, a, "room:1", "0")
	readHistory(t, a, "room:1", pubsub.HistoryQuery{Last: 1})
	// Each script's first use finds Redis without it.
	if n := a.Stats().ScriptReloads; n != 2 {
		t.Fatalf("ScriptReloads after first use = %d, want 2", n)
	}
	if err := rc.ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	if pos := publishAt(t, a, "room:1", "1"); pos.Offset != 2 {
		t.Fatalf("after SCRIPT FLUSH: %v", pos)
	}
	if err := rc.ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	if res := readHistory(t, a, "room:1", pubsub.HistoryQuery{Last: 5}); len(res.Messages) != 2 {
		t.Fatalf("after SCRIPT FLUSH: read %v", posEvents(res.Messages))
	}
	r.waitCount(t, 2)
	if got := r.events(); !slices.Equal(got, []string{"0", "1"}) {
		t.Fatalf("delivered %v", got)
	}
	if n := a.Stats().ScriptReloads; n != 4 {
		t.Fatalf("ScriptReloads = %d, want 4", n)
	}
}

// TestHistoryLeavesOtherTopicsAlone: with a policy set, a topic it gives
// no history is delivered locally before Publish returns, without a
// position, and writes no history keys.
func TestHistoryLeavesOtherTopicsAlone(t *testing.T) {
	srv := startRedis(t)
	a := historyNode(t, srv, "a", 100, time.Minute, true)
	r := &recorder{id: "r"}
	mustSubscribe(t, a, "lobby", r)
	syncAll(t, a)
	pos, err := a.PublishAt(context.Background(), &pubsub.Message{Topic: "lobby", Event: "x", Payload: []byte(`{}`)})
	if err != nil || !pos.IsZero() {
		t.Fatalf("PublishAt: %v, %v", pos, err)
	}
	if r.count() != 1 || !r.messages()[0].Pos.IsZero() {
		t.Fatalf("local delivery before Publish returned: %d messages", r.count())
	}
	keys := inspector(t, srv).Keys(context.Background(), "test:h:*").Val()
	if len(keys) != 0 {
		t.Fatalf("history keys for a topic without history: %v", keys)
	}
	// The echo is still dropped: one delivery.
	publish(t, a, "room:1", "barrier") // not subscribed: nothing to wait for
	if err := a.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r.count() != 1 || a.Stats().HistoryPublished != 1 {
		t.Fatalf("lobby got %d messages; history published %d", r.count(), a.Stats().HistoryPublished)
	}
}

// TestHistoryPublishWhileDisconnected: as for any topic, a publish fails
// fast while the connection is down; and nothing is delivered locally
// (delivery is Redis's echo).
func TestHistoryPublishWhileDisconnected(t *testing.T) {
	srv := startRedis(t)
	a := historyNode(t, srv, "a", 10, time.Minute, true)
	r := &recorder{id: "r"}
	mustSubscribe(t, a, "room:1", r)
	syncAll(t, a)
	srv.Stop()
	eventually(t, 10*time.Second, "the connection to be marked lost", func() bool { return !a.Stats().Connected })
	if _, err := a.PublishAt(context.Background(), &pubsub.Message{Topic: "room:1", Event: "x", Payload: []byte(`{}`)}); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("PublishAt while disconnected: %v", err)
	}
	if _, err := a.ReadHistory(context.Background(), "room:1", pubsub.HistoryQuery{Last: 1}); err == nil {
		t.Fatal("ReadHistory while Redis is down: no error")
	}
	if r.count() != 0 {
		t.Fatal("a failed history publish was delivered locally")
	}
}
