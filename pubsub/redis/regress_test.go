package redis

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/pubsub"
)

// TestHistoryThatGoesBackMovesToANewEpoch simulates a failover to a
// replica that had not received a topic's last broadcasts: the history's
// keys are put back (RESTORE of a DUMP taken earlier) to where they stood
// three broadcasts before. The next broadcasts get offsets subscribers
// already hold; they must reach the subscribers of both nodes in an epoch
// they do not hold, never as duplicates, and the history must move to a
// new epoch, so that a recovery since a lost position is told so.
func TestHistoryThatGoesBackMovesToANewEpoch(t *testing.T) {
	srv := startRedis(t)
	a := historyNode(t, srv, "a", 100, time.Minute, true)
	b := historyNode(t, srv, "b", 100, time.Minute, true)
	ra, rb := &recorder{id: "ra"}, &recorder{id: "rb"}
	mustSubscribe(t, a, "room:1", ra)
	mustSubscribe(t, b, "room:1", rb)
	syncAll(t, a, b)

	ctx := context.Background()
	ins := inspector(t, srv)
	keys := a.historyKeys("room:1")
	var dumps []string
	var last pubsub.Position
	for i := 1; i <= 10; i++ {
		last = publishAt(t, a, "room:1", "old"+strconv.Itoa(i))
		if i == 7 {
			for _, k := range keys {
				d, err := ins.Dump(ctx, k).Result()
				if err != nil {
					t.Fatal(err)
				}
				dumps = append(dumps, d)
			}
		}
	}
	ra.waitCount(t, 10)
	rb.waitCount(t, 10)
	for i, k := range keys {
		if err := ins.RestoreReplace(ctx, k, time.Minute, dumps[i]).Err(); err != nil {
			t.Fatal(err)
		}
	}

	// Redis now gives offset 8 again, in the same epoch.
	pos := publishAt(t, b, "room:1", "new8")
	if pos != (pubsub.Position{Epoch: last.Epoch, Offset: 8}) {
		t.Fatalf("publish after the restore got %v, want %s:8", pos, last.Epoch)
	}
	for _, r := range []*recorder{ra, rb} {
		r.waitCount(t, 11)
		m := r.messages()[10]
		if m.Event != "new8" || m.Pos.Epoch == last.Epoch || m.Pos.IsZero() || m.Pos.Offset != 8 {
			t.Fatalf("%s: the regressed broadcast came as %s at %v; want new8 in an epoch other than %s", r.id, m.Event, m.Pos, last.Epoch)
		}
	}
	for _, n := range []*PubSub{a, b} {
		if got := n.Stats().HistoryRegressions; got != 1 {
			t.Fatalf("%s: HistoryRegressions %d, want 1", n.NodeID(), got)
		}
	}

	// Both nodes saw it; one of them moved the history. A recovery since
	// a lost position, or since the marker, is told the epoch changed.
	eventually(t, 5*time.Second, "the history to leave the lost epoch", func() bool {
		e, err := ins.HGet(ctx, keys[1], "epoch").Result()
		return err == nil && e != last.Epoch
	})
	marker := ra.messages()[10].Pos
	for _, since := range []pubsub.Position{last, {Epoch: last.Epoch, Offset: 7}, marker} {
		res, err := a.ReadHistory(ctx, "room:1", pubsub.HistoryQuery{Since: since})
		if !errors.Is(err, pubsub.ErrEpochChanged) || len(res.Messages) != 0 || res.Top.Offset != 0 {
			t.Fatalf("since %v: %+v, %v; want ErrEpochChanged at the top of an empty epoch", since, res, err)
		}
	}
	if n, err := ins.Exists(ctx, keys[0]).Result(); err != nil || n != 0 {
		t.Fatalf("the lost epoch's stream is still there (%d, %v)", n, err)
	}

	// The next broadcast starts the new epoch, which subscribers take as
	// one more epoch change, and which no node takes for a regression.
	next := publishAt(t, a, "room:1", "next")
	if next.Epoch == last.Epoch || next.Epoch == marker.Epoch || next.Offset != 1 {
		t.Fatalf("after the move: %v", next)
	}
	for _, r := range []*recorder{ra, rb} {
		r.waitCount(t, 12)
		if m := r.messages()[11]; m.Event != "next" || m.Pos != next {
			t.Fatalf("%s: got %s at %v, want next at %v", r.id, m.Event, m.Pos, next)
		}
	}
	for _, n := range []*PubSub{a, b} {
		if got := n.Stats().HistoryRegressions; got != 1 {
			t.Fatalf("%s: HistoryRegressions %d after the move, want 1", n.NodeID(), got)
		}
	}
}

// TestHistoryTrackTellsRegressionsFromReorders feeds the tracker the
// deliveries that go back legitimately (one overtaken by a later one on
// another connection, a redelivery) and a regression.
func TestHistoryTrackTellsRegressionsFromReorders(t *testing.T) {
	srv := startRedis(t)
	p := historyNode(t, srv, "a", 100, time.Minute, true)
	env := func(origin string, seq, off uint64) *envelope {
		return &envelope{origin: origin, seq: seq, pos: pubsub.Position{Epoch: "e1", Offset: off}}
	}
	as := func(want uint64, e *envelope) {
		t.Helper()
		if got := p.track("room:1", e); got != e.pos {
			t.Fatalf("%s/%d at %v delivered at %v", e.origin, e.seq, e.pos, got)
		}
		if n := p.Stats().HistoryRegressions; n != want {
			t.Fatalf("after %v: %d regressions, want %d", e.pos, n, want)
		}
	}
	as(0, env("x", 1, 1))
	as(0, env("x", 3, 3)) // 2 overtaken
	as(0, env("y", 1, 2)) // fills in
	as(0, env("x", 3, 3)) // redelivered
	as(0, env("y", 1, 2)) // redelivered
	for off := uint64(4); off < 4+trackWindow; off++ {
		as(0, env("x", off, off))
	}
	// A new message at an offset already delivered.
	got := p.track("room:1", env("z", 1, 30))
	if got.Epoch == "e1" || got.Offset != 30 || p.Stats().HistoryRegressions != 1 {
		t.Fatalf("regressed broadcast delivered at %v, %d regressions", got, p.Stats().HistoryRegressions)
	}
	// The rest of the lost epoch follows in the marker epoch, past the
	// old top too; a new epoch is taken as it comes.
	for _, off := range []uint64{31, 40} {
		if next := p.track("room:1", env("z", off, off)); next != (pubsub.Position{Epoch: got.Epoch, Offset: off}) {
			t.Fatalf("lost epoch's %d delivered at %v, want in %s", off, next, got.Epoch)
		}
	}
	fresh := &envelope{origin: "z", seq: 50, pos: pubsub.Position{Epoch: "e2", Offset: 1}}
	if pos := p.track("room:1", fresh); pos != fresh.pos || p.Stats().HistoryRegressions != 1 {
		t.Fatalf("new epoch delivered at %v", pos)
	}
	// Below the window, a message never delivered here is a regression
	// too: it cannot be told from one.
	other := "room:2"
	p.track(other, &envelope{origin: "x", seq: 1, pos: pubsub.Position{Epoch: "e3", Offset: 100}})
	if pos := p.track(other, &envelope{origin: "x", seq: 2, pos: pubsub.Position{Epoch: "e3", Offset: 100 - trackWindow}}); pos.Epoch == "e3" {
		t.Fatalf("offset %d below a top of 100 delivered at %v", 100-trackWindow, pos)
	}
	// Neither topic has a local subscriber: the sweep forgets them.
	p.sweepTracks()
	p.regress.mu.Lock()
	left := len(p.regress.topics)
	p.regress.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d topics tracked after the sweep, want 0", left)
	}
}

// TestHistoryGoesBackOnCluster: on a Redis Cluster during the switch to
// sharded pub/sub, a topic's broadcasts reach a node on two connections
// (SPUBLISH from a node whose Gate allows it, PUBLISH from one whose Gate
// does not) and may overtake each other; none of that is a regression.
// Then the slot's master goes back three broadcasts: that is one.
func TestHistoryGoesBackOnCluster(t *testing.T) {
	c := startCluster(t)
	policy := roomHistory(100, time.Minute)
	a := clusterNode(t, c, "a", openGate("a"))
	// b's and s's Gates have heard of a node that reads positions but not
	// shard channels: b PUBLISHes, with positions, while a SPUBLISHes, and
	// s does not follow positions until its Gate is through the switch.
	reads := BuildReads()
	reads[FormShard] = 1
	mixed := func(id string) *Gate {
		g := NewGate(id, time.Hour, time.Now().Add(-2*time.Hour))
		g.Announce("old", reads, time.Now())
		return g
	}
	b := clusterNode(t, c, "b", mixed("b"))
	sGate := mixed("s")
	s := clusterNode(t, c, "s", sGate)
	for _, n := range []*PubSub{a, b, s} {
		n.SetHistoryPolicy(policy)
	}
	r := &recorder{id: "r"}
	mustSubscribe(t, s, "room:1", r)
	syncAll(t, s)

	const n = 60
	var last pubsub.Position
	published := func() (classic, sharded int) {
		for _, m := range c.masters {
			classic += commandCalls(t, m, "publish")
			sharded += commandCalls(t, m, "spublish")
		}
		return classic, sharded
	}
	classic0, sharded0 := published()
	// Both at once, so that their broadcasts interleave in offsets.
	var wg sync.WaitGroup
	for _, from := range []*PubSub{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n / 2 {
				if _, err := from.PublishAt(context.Background(), &pubsub.Message{Topic: "room:1", Event: from.NodeID() + strconv.Itoa(i), Payload: []byte(`{}`)}); err != nil {
					t.Errorf("PublishAt on %s: %v", from.NodeID(), err)
				}
			}
		}()
	}
	wg.Wait()
	r.waitCount(t, n)
	overtaken := 0
	got := r.messages()
	for i, m := range got {
		if i > 0 && m.Pos.Offset < got[i-1].Pos.Offset {
			overtaken++
		}
		if m.Pos.Offset > last.Offset {
			last = m.Pos
		}
	}
	t.Logf("%d of %d broadcasts arrived after a later one", overtaken, n)
	if classic, sharded := published(); classic-classic0 < n/2 || sharded-sharded0 < n/2 {
		t.Fatalf("%d PUBLISH and %d SPUBLISH for %d broadcasts, want half each", classic-classic0, sharded-sharded0, n)
	}
	if got := s.Stats().HistoryRegressions; got != 0 {
		t.Fatalf("%d regressions counted while the topic travelled on both kinds of pub/sub", got)
	}
	for _, m := range r.messages() {
		if m.Pos.Epoch != last.Epoch {
			t.Fatalf("%s delivered at %v, outside epoch %s", m.Event, m.Pos, last.Epoch)
		}
	}

	// The old node is gone: s follows positions from here.
	sGate.Forget("old")
	ctx := context.Background()
	keys := s.historyKeys("room:1")
	master := c.masters[c.owner(t, keySlot(keys[0]))]
	var dumps []string
	for _, k := range keys {
		d, err := master.Dump(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		dumps = append(dumps, d)
	}
	for i := 1; i <= 3; i++ {
		publishAt(t, a, "room:1", "lost"+strconv.Itoa(i))
	}
	r.waitCount(t, n+3)
	for i, k := range keys {
		if err := master.RestoreReplace(ctx, k, time.Minute, dumps[i]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	pos := publishAt(t, a, "room:1", "again")
	if pos != (pubsub.Position{Epoch: last.Epoch, Offset: n + 1}) {
		t.Fatalf("publish after the restore got %v, want %s:%d", pos, last.Epoch, n+1)
	}
	r.waitCount(t, n+4)
	if m := r.messages()[n+3]; m.Event != "again" || m.Pos.Epoch == last.Epoch || m.Pos.Offset != n+1 {
		t.Fatalf("the regressed broadcast came as %s at %v", m.Event, m.Pos)
	}
	if got := s.Stats().HistoryRegressions; got != 1 {
		t.Fatalf("%d regressions, want 1", got)
	}
	eventually(t, 5*time.Second, "the history to leave the lost epoch", func() bool {
		_, err := s.ReadHistory(ctx, "room:1", pubsub.HistoryQuery{Since: last})
		return errors.Is(err, pubsub.ErrEpochChanged)
	})
}

// rollBack publishes n broadcasts on topic from p and puts the history's
// keys back where they stood after the at-th (RESTORE of a DUMP), as a
// failover to a replica that had not received the rest would. It
// returns the position of the last broadcast published.
func rollBack(t *testing.T, p *PubSub, ins *goredis.Client, topic string, n, at int) pubsub.Position {
	t.Helper()
	ctx := context.Background()
	keys := p.historyKeys(topic)
	var dumps []string
	var last pubsub.Position
	for i := 1; i <= n; i++ {
		last = publishAt(t, p, topic, "old"+strconv.Itoa(i))
		if i == at {
			for _, k := range keys {
				d, err := ins.Dump(ctx, k).Result()
				if err != nil {
					t.Fatal(err)
				}
				dumps = append(dumps, d)
			}
		}
	}
	for i, k := range keys {
		if err := ins.RestoreReplace(ctx, k, time.Minute, dumps[i]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	return last
}

// TestHistoryGoesBackSeenAtPublish: a node that only publishes to a
// topic, with no subscriber of it anywhere, sees its history go back in
// the history script's answer, counts it and moves the history to a new
// epoch. A node that publishes to a topic it has subscribers of sees the
// same on both paths (the answer, the delivery) and counts it once.
func TestHistoryGoesBackSeenAtPublish(t *testing.T) {
	srv := startRedis(t)
	a := historyNode(t, srv, "a", 100, time.Minute, true)
	ins := inspector(t, srv)
	ctx := context.Background()

	last := rollBack(t, a, ins, "room:quiet", 10, 7)
	if n := a.Subscribers("room:quiet"); n != 0 {
		t.Fatalf("%d subscribers of the quiet topic", n)
	}
	if pos := publishAt(t, a, "room:quiet", "new8"); pos != (pubsub.Position{Epoch: last.Epoch, Offset: 8}) {
		t.Fatalf("publish after the restore got %v, want %s:8", pos, last.Epoch)
	}
	if got := a.Stats().HistoryRegressions; got != 1 {
		t.Fatalf("HistoryRegressions %d once the publish returned, want 1", got)
	}
	eventually(t, 5*time.Second, "the history to leave the lost epoch", func() bool {
		e, err := ins.HGet(ctx, a.historyKeys("room:quiet")[1], "epoch").Result()
		return err == nil && e != last.Epoch
	})
	res, err := a.ReadHistory(ctx, "room:quiet", pubsub.HistoryQuery{Since: pubsub.Position{Epoch: last.Epoch, Offset: 7}})
	if !errors.Is(err, pubsub.ErrEpochChanged) || len(res.Messages) != 0 {
		t.Fatalf("since a lost position: %+v, %v; want ErrEpochChanged", res, err)
	}
	next := publishAt(t, a, "room:quiet", "next")
	if next.Epoch == last.Epoch || next.Offset != 1 {
		t.Fatalf("after the move: %v", next)
	}
	if got := a.Stats().HistoryRegressions; got != 1 {
		t.Fatalf("HistoryRegressions %d after the move, want 1", got)
	}

	r := &recorder{id: "r"}
	mustSubscribe(t, a, "room:busy", r)
	syncAll(t, a)
	last = rollBack(t, a, ins, "room:busy", 5, 3)
	r.waitCount(t, 5)
	publishAt(t, a, "room:busy", "new4")
	r.waitCount(t, 6)
	if m := r.messages()[5]; m.Event != "new4" || m.Pos.Epoch == last.Epoch || m.Pos.Offset != 4 {
		t.Fatalf("the regressed broadcast came as %s at %v; want new4 in an epoch other than %s", m.Event, m.Pos, last.Epoch)
	}
	if got := a.Stats().HistoryRegressions; got != 2 {
		t.Fatalf("HistoryRegressions %d, want 2: one per topic, whichever path saw it", got)
	}
}
