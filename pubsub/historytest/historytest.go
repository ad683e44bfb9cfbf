package historytest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

// Options describe the implementation under test.
type Options struct {
	// MinTTL is the shortest history TTL the implementation honours; the
	// expiry test gives a topic this TTL and waits for it to pass. Zero
	// means one second.
	MinTTL time.Duration
	// Timeout bounds every wait for a delivery or an expiry. Zero means
	// ten seconds.
	Timeout time.Duration
}

// The suite's policy gives history to topics by prefix: small keeps
// smallSize broadcasts, big keeps bigSize (more than any test publishes),
// ttl keeps smallSize for Options.MinTTL; any other topic keeps none.
const (
	smallPrefix = "historytest:small:"
	bigPrefix   = "historytest:big:"
	ttlPrefix   = "historytest:ttl:"
	plainPrefix = "historytest:plain:"

	smallSize = 10
	bigSize   = 1000
	longTTL   = time.Minute
)

// Run runs the contract suite. newHistory returns a fresh, empty History
// for one subtest and arranges its Close with t.Cleanup; the suite sets its
// policy.
func Run(t *testing.T, newHistory func(t *testing.T) pubsub.History, o Options) {
	if o.MinTTL <= 0 {
		o.MinTTL = time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	s := &suite{opt: o, newHistory: newHistory}
	t.Run("PolicyDecides", s.policyDecides)
	t.Run("OffsetsCountFromOne", s.offsetsCountFromOne)
	t.Run("ReadBeforeFirstBroadcast", s.readBeforeFirstBroadcast)
	t.Run("ConcurrentPublishers", s.concurrentPublishers)
	t.Run("ReadQueries", s.readQueries)
	t.Run("PositionErrors", s.positionErrors)
	t.Run("TrimmedPositionTooOld", s.trimmedPositionTooOld)
	t.Run("NoHistoryTopic", s.noHistoryTopic)
	t.Run("BroadcastFrom", s.broadcastFrom)
	t.Run("RecoverySeam", s.recoverySeam)
	t.Run("TTLExpiry", s.ttlExpiry)
}

type suite struct {
	opt        Options
	newHistory func(t *testing.T) pubsub.History
}

// open returns a fresh History with the suite's policy.
func (s *suite) open(t *testing.T) pubsub.History {
	t.Helper()
	h := s.newHistory(t)
	ttl := s.opt.MinTTL
	h.SetHistoryPolicy(func(topic string) pubsub.HistoryOptions {
		switch {
		case strings.HasPrefix(topic, smallPrefix):
			return pubsub.HistoryOptions{Size: smallSize, TTL: longTTL}
		case strings.HasPrefix(topic, bigPrefix):
			return pubsub.HistoryOptions{Size: bigSize, TTL: longTTL}
		case strings.HasPrefix(topic, ttlPrefix):
			return pubsub.HistoryOptions{Size: smallSize, TTL: ttl}
		}
		return pubsub.HistoryOptions{}
	})
	return h
}

// topic returns a topic name no other run uses.
func topic(prefix string) string {
	return prefix + strconv.FormatUint(rand.Uint64(), 36)
}

func ctx(t *testing.T) context.Context { return t.Context() }

// sub is a Subscriber that hands each delivery to a channel. Deliver must
// not block, so a full channel is recorded and fails the test.
type sub struct {
	id       string
	msgs     chan *pubsub.Message
	overflow atomic.Bool
}

func newSub(id string) *sub { return &sub{id: id, msgs: make(chan *pubsub.Message, 8192)} }

func (s *sub) SubscriberID() string { return s.id }

func (s *sub) Deliver(m *pubsub.Message) {
	select {
	case s.msgs <- m:
	default:
		s.overflow.Store(true)
	}
}

// next awaits s's next delivery.
func (s *sub) next(t *testing.T, timeout time.Duration) *pubsub.Message {
	t.Helper()
	return await(t, s.msgs, timeout, s.id+": delivery")
}

// observer is a sub that follows positions: it is told of the broadcasts
// it published with broadcast_from semantics.
type observer struct {
	*sub
	excluded chan *pubsub.Message
}

func newObserver(id string) *observer {
	return &observer{sub: newSub(id), excluded: make(chan *pubsub.Message, 64)}
}

func (o *observer) Excluded(m *pubsub.Message) {
	select {
	case o.excluded <- m:
	default:
		o.overflow.Store(true)
	}
}

func await(t *testing.T, ch <-chan *pubsub.Message, timeout time.Duration, what string) *pubsub.Message {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case m := <-ch:
		return m
	case <-timer.C:
		t.Fatalf("%s: nothing within %v", what, timeout)
		return nil
	}
}

func subscribe(t *testing.T, h pubsub.History, topic string, s pubsub.Subscriber) {
	t.Helper()
	if err := h.Subscribe(topic, s); err != nil {
		t.Fatalf("Subscribe(%q): %v", topic, err)
	}
	t.Cleanup(func() { h.Unsubscribe(topic, s) })
}

func publishAt(t *testing.T, h pubsub.History, m *pubsub.Message) pubsub.Position {
	t.Helper()
	pos, err := h.PublishAt(ctx(t), m)
	if err != nil {
		t.Fatalf("PublishAt(%q, %q): %v", m.Topic, m.Event, err)
	}
	return pos
}

func read(t *testing.T, h pubsub.History, topic string, q pubsub.HistoryQuery) pubsub.HistoryResult {
	t.Helper()
	res, err := h.ReadHistory(ctx(t), topic, q)
	if err != nil {
		t.Fatalf("ReadHistory(%q, %+v): %v", topic, q, err)
	}
	return res
}

// offsets returns the offsets of msgs, failing if one is of another epoch.
func offsets(t *testing.T, epoch string, msgs []*pubsub.Message) []uint64 {
	t.Helper()
	out := make([]uint64, len(msgs))
	for i, m := range msgs {
		if m.Pos.Epoch != epoch {
			t.Fatalf("message %d has position %s, want epoch %q", i, m.Pos, epoch)
		}
		out[i] = m.Pos.Offset
	}
	return out
}

// span returns the offsets from..to.
func span(from, to uint64) []uint64 {
	var out []uint64
	for o := from; o <= to; o++ {
		out = append(out, o)
	}
	return out
}

func (s *suite) policyDecides(t *testing.T) {
	h := s.open(t)
	small, plain := topic(smallPrefix), topic(plainPrefix)
	if got := h.HistoryOptions(small); got.Size != smallSize || got.TTL != longTTL {
		t.Fatalf("HistoryOptions(%q) = %+v, want the policy's {%d %v}", small, got, smallSize, longTTL)
	}
	if got := h.HistoryOptions(plain); got.Enabled() {
		t.Fatalf("HistoryOptions(%q) = %+v, want none", plain, got)
	}
	h.SetHistoryPolicy(nil)
	if got := h.HistoryOptions(small); got.Enabled() {
		t.Fatalf("with a nil policy HistoryOptions(%q) = %+v, want none", small, got)
	}
	if pos := publishAt(t, h, &pubsub.Message{Topic: small, Event: "e"}); !pos.IsZero() {
		t.Fatalf("with a nil policy PublishAt gave %s, want no position", pos)
	}
	if _, err := h.ReadHistory(ctx(t), small, pubsub.HistoryQuery{Last: 1}); !errors.Is(err, pubsub.ErrNoHistory) {
		t.Fatalf("with a nil policy ReadHistory: %v, want ErrNoHistory", err)
	}
}

func (s *suite) offsetsCountFromOne(t *testing.T) {
	h := s.open(t)
	a, b := topic(bigPrefix), topic(bigPrefix)
	sa := newSub("sa")
	subscribe(t, h, a, sa)
	var epoch string
	for i := uint64(1); i <= 5; i++ {
		pos := publishAt(t, h, &pubsub.Message{Topic: a, Event: fmt.Sprint(i)})
		if i == 1 {
			epoch = pos.Epoch
			if !pubsub.ValidEpoch(epoch) {
				t.Fatalf("epoch %q is not a valid epoch", epoch)
			}
		}
		if pos != (pubsub.Position{Epoch: epoch, Offset: i}) {
			t.Fatalf("broadcast %d got position %s, want %s:%d", i, pos, epoch, i)
		}
		m := sa.next(t, s.opt.Timeout)
		if m.Pos != pos || m.Event != fmt.Sprint(i) {
			t.Fatalf("delivered %q at %s, want %q at %s", m.Event, m.Pos, fmt.Sprint(i), pos)
		}
	}
	if res := read(t, h, a, pubsub.HistoryQuery{}); res.Top != (pubsub.Position{Epoch: epoch, Offset: 5}) || len(res.Messages) != 0 {
		t.Fatalf("ReadHistory with an empty query = %d messages, Top %s; want none, Top %s:5", len(res.Messages), res.Top, epoch)
	}
	// Offsets are per topic: another topic starts at 1 too.
	if pos := publishAt(t, h, &pubsub.Message{Topic: b, Event: "x"}); pos.Offset != 1 {
		t.Fatalf("first broadcast of a second topic got %s, want offset 1", pos)
	}
}

func (s *suite) readBeforeFirstBroadcast(t *testing.T) {
	h := s.open(t)
	tp := topic(bigPrefix)
	res := read(t, h, tp, pubsub.HistoryQuery{Last: 10})
	if len(res.Messages) != 0 || res.Top.Offset != 0 || !pubsub.ValidEpoch(res.Top.Epoch) {
		t.Fatalf("read of a topic never broadcast to: %d messages, Top %q; want none and <epoch>:0", len(res.Messages), res.Top)
	}
	// A client told Top must find the first broadcast right after it.
	pos := publishAt(t, h, &pubsub.Message{Topic: tp, Event: "first"})
	if pos != (pubsub.Position{Epoch: res.Top.Epoch, Offset: 1}) {
		t.Fatalf("first broadcast after a read that gave Top %s got %s: a client told Top would see a new epoch", res.Top, pos)
	}
	got := read(t, h, tp, pubsub.HistoryQuery{Since: res.Top})
	if len(got.Messages) != 1 || got.Messages[0].Event != "first" {
		t.Fatalf("read since %s returned %d messages, want the first broadcast", res.Top, len(got.Messages))
	}
}

func (s *suite) concurrentPublishers(t *testing.T) {
	const publishers, each = 4, 200
	h := s.open(t)
	tp := topic(bigPrefix)
	subs := []*sub{newSub("c0"), newSub("c1"), newSub("c2")}
	for _, sb := range subs {
		subscribe(t, h, tp, sb)
	}
	var wg sync.WaitGroup
	posOf := make([][]pubsub.Position, publishers)
	errs := make(chan error, publishers)
	for g := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				pos, err := h.PublishAt(context.Background(), &pubsub.Message{Topic: tp, Event: "e", Payload: fmt.Appendf(nil, `"%d/%d"`, g, i)})
				if err != nil {
					errs <- err
					return
				}
				posOf[g] = append(posOf[g], pos)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("PublishAt: %v", err)
	}
	epoch := posOf[0][0].Epoch
	// One publisher's broadcasts get increasing offsets.
	for g, ps := range posOf {
		for i := 1; i < len(ps); i++ {
			if ps[i].Epoch != epoch || ps[i].Offset <= ps[i-1].Offset {
				t.Fatalf("publisher %d: broadcast %d got %s after %s", g, i, ps[i], ps[i-1])
			}
		}
	}
	total := uint64(publishers * each)
	res := read(t, h, tp, pubsub.HistoryQuery{Since: pubsub.Position{Epoch: epoch}})
	if res.Top != (pubsub.Position{Epoch: epoch, Offset: total}) {
		t.Fatalf("Top = %s after %d broadcasts, want %s:%d", res.Top, total, epoch, total)
	}
	if got := offsets(t, epoch, res.Messages); !slices.Equal(got, span(1, total)) {
		t.Fatalf("history holds offsets %v, want 1..%d", got, total)
	}
	payloadAt := make(map[uint64]string, total)
	for _, m := range res.Messages {
		payloadAt[m.Pos.Offset] = string(m.Payload)
	}
	for g, ps := range posOf {
		for i, p := range ps {
			if want := fmt.Sprintf(`"%d/%d"`, g, i); payloadAt[p.Offset] != want {
				t.Fatalf("history has %s at %s, PublishAt gave that position to %s", payloadAt[p.Offset], p, want)
			}
		}
	}
	for _, sb := range subs {
		for want := uint64(1); want <= total; want++ {
			m := sb.next(t, s.opt.Timeout)
			if m.Pos != (pubsub.Position{Epoch: epoch, Offset: want}) {
				t.Fatalf("%s: delivery at %s, want %s:%d: subscribers must see offsets consecutively", sb.id, m.Pos, epoch, want)
			}
			if string(m.Payload) != payloadAt[want] {
				t.Fatalf("%s: delivery at %s carries %s, history has %s", sb.id, m.Pos, m.Payload, payloadAt[want])
			}
		}
		if sb.overflow.Load() {
			t.Fatalf("%s: deliveries overflowed the test's buffer", sb.id)
		}
	}
}

func (s *suite) readQueries(t *testing.T) {
	h := s.open(t)
	tp := topic(bigPrefix)
	var epoch string
	for i := 1; i <= 10; i++ {
		m := &pubsub.Message{Topic: tp, Event: "ev" + fmt.Sprint(i), Payload: fmt.Appendf(nil, `{"i":%d}`, i)}
		if i == 4 {
			m.Binary, m.Payload, m.From = true, []byte{0, 1, 2}, "somebody"
		}
		epoch = publishAt(t, h, m).Epoch
	}
	at := func(o uint64) pubsub.Position { return pubsub.Position{Epoch: epoch, Offset: o} }
	for _, c := range []struct {
		name string
		q    pubsub.HistoryQuery
		want []uint64
	}{
		{"Last 3", pubsub.HistoryQuery{Last: 3}, span(8, 10)},
		{"Last beyond retained", pubsub.HistoryQuery{Last: 100}, span(1, 10)},
		{"Last 0", pubsub.HistoryQuery{}, nil},
		{"Since start", pubsub.HistoryQuery{Since: at(0)}, span(1, 10)},
		{"Since 4", pubsub.HistoryQuery{Since: at(4)}, span(5, 10)},
		{"Since 4 Limit 2", pubsub.HistoryQuery{Since: at(4), Limit: 2}, span(5, 6)},
		{"Since 8 Limit 5", pubsub.HistoryQuery{Since: at(8), Limit: 5}, span(9, 10)},
		{"Since Top", pubsub.HistoryQuery{Since: at(10)}, nil},
	} {
		res := read(t, h, tp, c.q)
		if res.Top != at(10) {
			t.Fatalf("%s: Top = %s, want %s", c.name, res.Top, at(10))
		}
		if got := offsets(t, epoch, res.Messages); !slices.Equal(got, c.want) {
			t.Fatalf("%s: offsets %v, want %v", c.name, got, c.want)
		}
	}
	res := read(t, h, tp, pubsub.HistoryQuery{Since: at(2), Limit: 3})
	for i, m := range res.Messages {
		o := uint64(i + 3)
		want := pubsub.Message{Topic: tp, Event: "ev" + fmt.Sprint(o), Payload: fmt.Appendf(nil, `{"i":%d}`, o), Pos: at(o)}
		if o == 4 {
			want.Binary, want.Payload = true, []byte{0, 1, 2}
		}
		if m.Topic != want.Topic || m.Event != want.Event || string(m.Payload) != string(want.Payload) ||
			m.Binary != want.Binary || m.Pos != want.Pos || m.From != "" {
			t.Fatalf("message at %s = {%q %q %q binary=%v from=%q}, want {%q %q %q binary=%v from=\"\"}",
				at(o), m.Topic, m.Event, m.Payload, m.Binary, m.From, want.Topic, want.Event, want.Payload, want.Binary)
		}
		// Messages are the reader's own: changing one changes no other read.
		m.Event = "changed"
	}
	again := read(t, h, tp, pubsub.HistoryQuery{Since: at(2), Limit: 3})
	for _, m := range again.Messages {
		if m.Event == "changed" {
			t.Fatalf("a change to a returned message showed in a later read: messages must be fresh copies")
		}
	}
}

func (s *suite) positionErrors(t *testing.T) {
	h := s.open(t)
	tp := topic(bigPrefix)
	var top pubsub.Position
	for range 3 {
		top = publishAt(t, h, &pubsub.Message{Topic: tp, Event: "e"})
	}
	foreign := "foreign" + strconv.FormatUint(rand.Uint64()%1e9, 10)
	for _, c := range []struct {
		since pubsub.Position
		want  error
	}{
		{pubsub.Position{Epoch: foreign, Offset: 1}, pubsub.ErrEpochChanged},
		{pubsub.Position{Epoch: foreign, Offset: 0}, pubsub.ErrEpochChanged},
		{pubsub.Position{Epoch: top.Epoch, Offset: top.Offset + 1}, pubsub.ErrPositionAhead},
		{pubsub.Position{Epoch: top.Epoch, Offset: top.Offset + 1000}, pubsub.ErrPositionAhead},
	} {
		res, err := h.ReadHistory(ctx(t), tp, pubsub.HistoryQuery{Since: c.since})
		if !errors.Is(err, c.want) {
			t.Fatalf("read since %s: %v, want %v", c.since, err, c.want)
		}
		if res.Top != top {
			t.Fatalf("read since %s failed with Top %s, want %s: the caller goes on from Top", c.since, res.Top, top)
		}
		if len(res.Messages) != 0 {
			t.Fatalf("read since %s failed yet returned %d messages", c.since, len(res.Messages))
		}
	}
}

func (s *suite) trimmedPositionTooOld(t *testing.T) {
	h := s.open(t)
	tp := topic(smallPrefix)
	// Stores may keep a few more than Size (approximate trimming): publish
	// until the first broadcasts are gone, within a bound.
	const bound = 5000
	var top pubsub.Position
	var retained []*pubsub.Message
	for published := 0; ; {
		for range smallSize {
			top = publishAt(t, h, &pubsub.Message{Topic: tp, Event: "e"})
			published++
		}
		retained = read(t, h, tp, pubsub.HistoryQuery{Last: bound}).Messages
		if len(retained) > 0 && retained[0].Pos.Offset > 2 {
			break
		}
		if published >= bound {
			t.Fatalf("after %d broadcasts to a topic of Size %d the history still holds offset %s", published, smallSize, retained[0].Pos)
		}
	}
	first := retained[0].Pos.Offset
	if got := offsets(t, top.Epoch, retained); !slices.Equal(got, span(first, top.Offset)) {
		t.Fatalf("retained offsets %v, want %d..%d without a hole", got, first, top.Offset)
	}
	if len(retained) < smallSize {
		t.Fatalf("history retains %d broadcasts, fewer than its Size %d", len(retained), smallSize)
	}
	if got := read(t, h, tp, pubsub.HistoryQuery{Last: smallSize}).Messages; !slices.Equal(offsets(t, top.Epoch, got), span(top.Offset-smallSize+1, top.Offset)) {
		t.Fatalf("Last %d gave offsets %v", smallSize, offsets(t, top.Epoch, got))
	}
	// The position just before the oldest retained broadcast is complete;
	// one older is not.
	edge := pubsub.Position{Epoch: top.Epoch, Offset: first - 1}
	if got := read(t, h, tp, pubsub.HistoryQuery{Since: edge}); !slices.Equal(offsets(t, top.Epoch, got.Messages), span(first, top.Offset)) {
		t.Fatalf("read since %s (the oldest retained is %d) gave %v", edge, first, offsets(t, top.Epoch, got.Messages))
	}
	for _, old := range []uint64{first - 2, 0} {
		since := pubsub.Position{Epoch: top.Epoch, Offset: old}
		res, err := h.ReadHistory(ctx(t), tp, pubsub.HistoryQuery{Since: since})
		if !errors.Is(err, pubsub.ErrPositionTooOld) {
			t.Fatalf("read since %s (the oldest retained is %d): %v, want ErrPositionTooOld", since, first, err)
		}
		if res.Top != top || len(res.Messages) != 0 {
			t.Fatalf("read since %s failed with Top %s and %d messages, want Top %s and none", since, res.Top, len(res.Messages), top)
		}
	}
}

func (s *suite) noHistoryTopic(t *testing.T) {
	h := s.open(t)
	tp := topic(plainPrefix)
	sb := newSub("p")
	subscribe(t, h, tp, sb)
	if pos := publishAt(t, h, &pubsub.Message{Topic: tp, Event: "a"}); !pos.IsZero() {
		t.Fatalf("PublishAt on a topic without history gave %s", pos)
	}
	if err := h.Publish(ctx(t), &pubsub.Message{Topic: tp, Event: "b"}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"a", "b"} {
		m := sb.next(t, s.opt.Timeout)
		if m.Event != want || !m.Pos.IsZero() {
			t.Fatalf("delivered %q at %q, want %q without a position", m.Event, m.Pos, want)
		}
	}
	res, err := h.ReadHistory(ctx(t), tp, pubsub.HistoryQuery{Last: 5})
	if !errors.Is(err, pubsub.ErrNoHistory) {
		t.Fatalf("ReadHistory of a topic without history: %v, want ErrNoHistory", err)
	}
	if !res.Top.IsZero() || len(res.Messages) != 0 {
		t.Fatalf("ReadHistory of a topic without history gave Top %q and %d messages", res.Top, len(res.Messages))
	}
}

func (s *suite) broadcastFrom(t *testing.T) {
	h := s.open(t)
	tp := topic(bigPrefix)
	a, b, c := newObserver("a"), newSub("b"), newSub("c")
	for _, sb := range []pubsub.Subscriber{a, b, c} {
		subscribe(t, h, tp, sb)
	}
	p1 := publishAt(t, h, &pubsub.Message{Topic: tp, Event: "1"})
	p2 := publishAt(t, h, &pubsub.Message{Topic: tp, Event: "2", From: "a"})
	p3 := publishAt(t, h, &pubsub.Message{Topic: tp, Event: "3", From: "c"})
	p4 := publishAt(t, h, &pubsub.Message{Topic: tp, Event: "4"})
	expect := func(who string, m *pubsub.Message, event string, pos pubsub.Position) {
		t.Helper()
		if m.Event != event || m.Pos != pos {
			t.Fatalf("%s: got %q at %s, want %q at %s", who, m.Event, m.Pos, event, pos)
		}
	}
	expect("a", a.next(t, s.opt.Timeout), "1", p1)
	expect("a excluded", await(t, a.excluded, s.opt.Timeout, "a: exclusion"), "2", p2)
	expect("a", a.next(t, s.opt.Timeout), "3", p3)
	expect("a", a.next(t, s.opt.Timeout), "4", p4)
	for _, want := range []struct {
		e string
		p pubsub.Position
	}{{"1", p1}, {"2", p2}, {"3", p3}, {"4", p4}} {
		expect("b", b.next(t, s.opt.Timeout), want.e, want.p)
	}
	// c does not follow positions: it just misses what it sent.
	expect("c", c.next(t, s.opt.Timeout), "1", p1)
	expect("c", c.next(t, s.opt.Timeout), "2", p2)
	expect("c", c.next(t, s.opt.Timeout), "4", p4)

	// On a topic without history the excluded observer is told too, of
	// a message without a position.
	plain := topic(plainPrefix)
	subscribe(t, h, plain, a)
	publishAt(t, h, &pubsub.Message{Topic: plain, Event: "x", From: "a"})
	publishAt(t, h, &pubsub.Message{Topic: plain, Event: "y"})
	if m := a.next(t, s.opt.Timeout); m.Event != "y" {
		t.Fatalf("a got %q on a topic without history, want only %q", m.Event, "y")
	}
	if m := await(t, a.excluded, s.opt.Timeout, "a: exclusion without history"); m.Event != "x" || !m.Pos.IsZero() {
		t.Fatalf("a was told of %q at %q on a topic without history, want %q without a position", m.Event, m.Pos, "x")
	}
}

func (s *suite) recoverySeam(t *testing.T) {
	// The client saw position last, then went away while broadcasts went
	// on; it subscribes again and reads what it missed since last, while a
	// publisher goes on broadcasting. Broadcasts made after the read are
	// certain to come live, so the test ends whatever the interleaving.
	const before, racing, after = 10, 300, 10
	const final = before + racing + after
	h := s.open(t)
	tp := topic(bigPrefix)
	var last pubsub.Position
	for range before {
		last = publishAt(t, h, &pubsub.Message{Topic: tp, Event: "before"})
	}
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for i := range racing {
			if _, err := h.PublishAt(context.Background(), &pubsub.Message{Topic: tp, Event: "racing"}); err != nil {
				done <- err
				return
			}
			if i == racing/4 {
				close(started)
			}
		}
		done <- nil
	}()
	select {
	case <-started:
	case err := <-done:
		if err != nil {
			t.Fatalf("PublishAt: %v", err)
		}
		done <- nil // finished already (started is closed too): keep it for below
	}
	sb := newSub("rejoin")
	subscribe(t, h, tp, sb)
	res, err := h.ReadHistory(ctx(t), tp, pubsub.HistoryQuery{Since: last})
	if err != nil {
		t.Fatalf("read since %s: %v", last, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("PublishAt: %v", err)
	}
	for range after {
		publishAt(t, h, &pubsub.Message{Topic: tp, Event: "after"})
	}
	seen := make(map[uint64]int)
	for _, m := range res.Messages {
		if m.Pos.Epoch != last.Epoch {
			t.Fatalf("read since %s returned %s", last, m.Pos)
		}
		seen[m.Pos.Offset]++
	}
	var prev uint64
	for prev < final {
		m := sb.next(t, s.opt.Timeout)
		if m.Pos.Epoch != last.Epoch || (prev != 0 && m.Pos.Offset != prev+1) {
			t.Fatalf("live delivery at %s after offset %d: live deliveries must be consecutive", m.Pos, prev)
		}
		if prev == 0 && m.Pos.Offset > res.Top.Offset+1 {
			t.Fatalf("first live delivery at %s, but the read stopped at Top %s: a hole at the seam", m.Pos, res.Top)
		}
		prev = m.Pos.Offset
		seen[m.Pos.Offset]++
	}
	for o := last.Offset + 1; o <= final; o++ {
		if seen[o] == 0 {
			t.Fatalf("offset %d reached the client neither by ReadHistory (up to Top %s) nor live: a hole at the seam", o, res.Top)
		}
	}
	if want := final - before; len(seen) != want {
		t.Fatalf("client saw %d distinct offsets after %s, want %d", len(seen), last, want)
	}
}

func (s *suite) ttlExpiry(t *testing.T) {
	h := s.open(t)
	tp := topic(ttlPrefix)
	publishAt(t, h, &pubsub.Message{Topic: tp, Event: "1"})
	old := publishAt(t, h, &pubsub.Message{Topic: tp, Event: "2"})
	// Reads do not keep a history alive: only broadcasts do.
	deadline := time.Now().Add(s.opt.Timeout + s.opt.MinTTL)
	for {
		res := read(t, h, tp, pubsub.HistoryQuery{Last: 5})
		if res.Top.Epoch != old.Epoch {
			if len(res.Messages) != 0 {
				t.Fatalf("a new epoch %s holds %d messages of the old one", res.Top, len(res.Messages))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("history of TTL %v still in epoch %q after %v", s.opt.MinTTL, old.Epoch, s.opt.Timeout+s.opt.MinTTL)
		}
		time.Sleep(s.opt.MinTTL / 4) // polling an expiry: there is no event to await
	}
	if _, err := h.ReadHistory(ctx(t), tp, pubsub.HistoryQuery{Since: old}); !errors.Is(err, pubsub.ErrEpochChanged) {
		t.Fatalf("read since %s after expiry: %v, want ErrEpochChanged", old, err)
	}
	pos := publishAt(t, h, &pubsub.Message{Topic: tp, Event: "3"})
	if pos.Epoch == old.Epoch || pos.Offset != 1 {
		t.Fatalf("first broadcast after expiry got %s, want offset 1 of a new epoch", pos)
	}
}
