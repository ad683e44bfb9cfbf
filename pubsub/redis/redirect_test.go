package redis

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

// migrateSlot moves slot from master from to master to as a resharding
// does: the target importing it, the source migrating it, its keys
// MIGRATEd, then SETSLOT NODE on the target, the source and the other
// masters. mid runs, if not nil, once the keys have moved and before the
// slot has.
func migrateSlot(t *testing.T, c *testCluster, slot, from, to int, mid func()) {
	t.Helper()
	ctx := context.Background()
	do := func(i int, args ...any) {
		t.Helper()
		if err := c.masters[i].Do(ctx, args...).Err(); err != nil {
			t.Fatalf("%v on master %d: %v", args, i, err)
		}
	}
	do(to, "cluster", "setslot", slot, "importing", c.ids[from])
	do(from, "cluster", "setslot", slot, "migrating", c.ids[to])
	keys, err := c.masters[from].ClusterGetKeysInSlot(ctx, slot, 1000).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) > 0 {
		addr := c.servers[to].Addr()
		i := strings.LastIndexByte(addr, ':')
		args := []any{"migrate", addr[:i], addr[i+1:], "", 0, 5000, "keys"}
		for _, k := range keys {
			args = append(args, k)
		}
		do(from, args...)
	}
	if mid != nil {
		mid()
	}
	order := []int{to, from, 3 - from - to}
	for _, i := range order {
		do(i, "cluster", "setslot", slot, "node", c.ids[to])
	}
	// The source's gossip can take the slot back from the target before
	// the source's own SETSLOT NODE lands, when the source's config epoch
	// is the higher (seen: the target at epoch 1 lost the slot to the
	// source at 2, and the masters disagreed for good). A resharding tool
	// then bumps the target's epoch and sets the slot again.
	agreed := func() bool {
		for i := range c.masters {
			if c.ownerSeenBy(t, i, slot) != to {
				return false
			}
		}
		return true
	}
	for deadline := time.Now().Add(10 * time.Second); !agreed(); {
		if time.Now().After(deadline) {
			t.Fatalf("the masters still disagree on slot %d's owner 10 s after the move", slot)
		}
		t.Logf("the masters disagree on slot %d's owner after the move: bumping the target's config epoch", slot)
		do(to, "cluster", "bumpepoch")
		for _, i := range order {
			do(i, "cluster", "setslot", slot, "node", c.ids[to])
		}
		time.Sleep(100 * time.Millisecond) // gossip: no event to await
	}
}

// TestFirstPublishAfterSlotMove: after a topic's slot moved to another
// master, a node whose slot map still names the old one publishes to it
// at the first try (the old master answers MOVED, the writer sends the
// publish to the new one), and the subscribers get every broadcast once,
// in order, plain topic and topic with history alike.
func TestFirstPublishAfterSlotMove(t *testing.T) {
	c := startCluster(t)
	a := clusterNode(t, c, "a", openGate("a"))
	b := clusterNode(t, c, "b", openGate("b"))
	for _, n := range []*PubSub{a, b} {
		n.SetHistoryPolicy(roomHistory(100, time.Minute))
	}
	plain, hist := &recorder{id: "lobby"}, &recorder{id: "room"}
	mustSubscribe(t, b, "lobby", plain)
	mustSubscribe(t, b, "room:1", hist)
	syncAll(t, b)
	publish(t, a, "lobby", "p0")
	h0 := publishAt(t, a, "room:1", "h0")
	plain.waitCount(t, 1)
	hist.waitCount(t, 1)

	// One slot after the other, each publish meeting a map that names
	// the old master: a's go-redis reloads its map on the first MOVED.
	move := func(topic string) {
		t.Helper()
		ch := b.shardChannel(topic)
		slot := keySlot(ch)
		from := c.owner(t, slot)
		to := (from + 1) % 3
		if got := a.slots.master(context.Background(), ch); got != c.servers[from].Addr() {
			t.Fatalf("a's map names %s for %s before the move, want master %d", got, topic, from)
		}
		migrateSlot(t, c, slot, from, to, nil)
		eventually(t, 10*time.Second, "b to subscribe "+topic+" again on its slot's new master", func() bool {
			return shardNumSub(t, c.masters[to], ch) == 1
		})
	}
	redirects := func(want uint64) {
		t.Helper()
		if n := a.Stats().PublishRedirects; n != want {
			t.Fatalf("%d publishes redirected, want %d", n, want)
		}
	}
	move("lobby")
	publish(t, a, "lobby", "p1")
	redirects(1)
	eventually(t, 5*time.Second, "a's map to name lobby's new master", func() bool {
		return a.slots.master(context.Background(), a.shardChannel("lobby")) == c.servers[c.owner(t, keySlot(a.shardChannel("lobby")))].Addr()
	})
	publish(t, a, "lobby", "p2")
	redirects(1)
	move("room:1")
	h1 := publishAt(t, a, "room:1", "h1")
	redirects(2)
	h2 := publishAt(t, a, "room:1", "h2")
	if h1 != (pubsub.Position{Epoch: h0.Epoch, Offset: 2}) || h2.Offset != 3 {
		t.Fatalf("positions after the move: %v, %v (before: %v)", h1, h2, h0)
	}
	publish(t, a, "lobby", "end")
	plain.waitCount(t, 4)
	hist.waitCount(t, 3)
	if got := plain.events(); !slices.Equal(got, []string{"p0", "p1", "p2", "end"}) {
		t.Errorf("plain topic delivered %v, want p0 p1 p2 end", got)
	}
	if got := posEvents(hist.messages()); !slices.Equal(got, []posEvent{{h0, "h0"}, {h1, "h1"}, {h2, "h2"}}) {
		t.Errorf("history topic delivered %v", got)
	}
	if n := a.Stats().PublishErrors; n != 0 {
		t.Errorf("%d publishes failed", n)
	}
}

// TestPublishDuringSlotMigration: while a topic's slot is being
// migrated, once its history keys have moved, the old master answers the
// history script ASK; the writer runs it on the new master (ASKING),
// where the history goes on at the next offset.
func TestPublishDuringSlotMigration(t *testing.T) {
	c := startCluster(t)
	a := clusterNode(t, c, "a", openGate("a"))
	b := clusterNode(t, c, "b", openGate("b"))
	for _, n := range []*PubSub{a, b} {
		n.SetHistoryPolicy(roomHistory(100, time.Minute))
	}
	r := &recorder{id: "r"}
	mustSubscribe(t, b, "room:1", r)
	syncAll(t, b)
	h0 := publishAt(t, a, "room:1", "h0")
	r.waitCount(t, 1)

	ch := b.shardChannel("room:1")
	slot := keySlot(ch)
	from := c.owner(t, slot)
	to := (from + 1) % 3
	var h1 pubsub.Position
	migrateSlot(t, c, slot, from, to, func() {
		h1 = publishAt(t, a, "room:1", "h1")
	})
	if h1 != (pubsub.Position{Epoch: h0.Epoch, Offset: 2}) {
		t.Fatalf("published during the migration at %v, want %s:2", h1, h0.Epoch)
	}
	if n := a.Stats().PublishRedirects; n != 1 {
		t.Fatalf("%d publishes redirected, want 1 (the ASK)", n)
	}
	eventually(t, 10*time.Second, "b to subscribe again on the slot's new master", func() bool {
		return shardNumSub(t, c.masters[to], ch) == 1
	})
	h2 := publishAt(t, a, "room:1", "h2")
	r.waitCount(t, 2)
	if m := r.messages()[r.count()-1]; m.Event != "h2" || m.Pos != h2 || h2.Offset != 3 {
		t.Fatalf("after the migration: %s at %v (published at %v)", m.Event, m.Pos, h2)
	}
	// b's map followed the move when its shard set subscribed again:
	// its read goes to the new master at once.
	res := readHistory(t, b, "room:1", pubsub.HistoryQuery{Since: h0})
	if got := posEvents(res.Messages); !slices.Equal(got, []posEvent{{h1, "h1"}, {h2, "h2"}}) {
		t.Fatalf("history since %v: %v", h0, got)
	}
}

// TestRedirectKeepsOrder: a publish answered MOVED by its slot's old
// master, while the slot's next publish already waits on the new
// master's writer, still reaches the subscribers first: the old writer
// sends it again before its batch completes, which the next one waits
// for.
func TestRedirectKeepsOrder(t *testing.T) {
	c := startCluster(t)
	a := node(t, c.servers[0], "a", func(o *Options) { o.URL = c.url(); o.PublishTimeout = 5 * time.Second })
	a.SetGate(openGate("a"))
	b := clusterNode(t, c, "b", openGate("b"))
	r := &recorder{id: "r"}
	mustSubscribe(t, b, "lobby", r)
	syncAll(t, b)
	publish(t, a, "lobby", "m0")
	r.waitCount(t, 1)

	ch := a.shardChannel("lobby")
	slot := keySlot(ch)
	from := c.owner(t, slot)
	to := (from + 1) % 3
	migrateSlot(t, c, slot, from, to, nil)
	eventually(t, 10*time.Second, "b to subscribe again on the slot's new master", func() bool {
		return shardNumSub(t, c.masters[to], ch) == 1
	})
	// a's go-redis map still names the old master. m1 goes to its
	// writer, and waits there while the old master is paused; m2 is
	// routed as a reloaded map would route it, to the new master's
	// writer, behind m1's.
	oldAddr, newAddr := c.servers[from].Addr(), c.servers[to].Addr()
	real := *a.slots.lookup.Load()
	route := func(addr string) {
		setMaster(a, func(ctx context.Context, key string) string {
			if key == ch {
				return addr
			}
			return real(ctx, key)
		})
	}
	route(oldAddr)
	wOld := writerAt(a, oldAddr) // m0's
	if wOld == nil {
		t.Fatal("no writer for the old master")
	}
	before := wOld.enqueued.Load()
	pause(t, c, from, 500*time.Millisecond)
	m1 := publishAsync(a, "lobby", "m1")
	eventually(t, time.Second, "m1 taken by the old master's writer", func() bool {
		return wOld.enqueued.Load() == before+1 && a.writers.pending.Load() == 0
	})
	var newBefore uint64
	if w := writerAt(a, newAddr); w != nil {
		newBefore = w.enqueued.Load()
	}
	route(newAddr)
	m2 := publishAsync(a, "lobby", "m2")
	eventually(t, time.Second, "m2 queued on the new master's writer", func() bool {
		w := writerAt(a, newAddr)
		return w != nil && w.enqueued.Load() > newBefore
	})
	for _, done := range []<-chan error{m1, m2} {
		if err := <-done; err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
	// m1 at least (m2 too when it left before go-redis had read its map
	// again).
	if n := a.Stats().PublishRedirects; n < 1 {
		t.Fatalf("%d publishes redirected, want m1's", n)
	}
	publish(t, a, "lobby", "end")
	r.waitCount(t, 4)
	if got := r.events(); !slices.Equal(got, []string{"m0", "m1", "m2", "end"}) {
		t.Errorf("delivered %v, want m0 m1 m2 end", got)
	}
}
