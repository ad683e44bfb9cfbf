package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/channelsd/channelsd/test/harness"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// TestRedisClusterFailover runs, on two nodes behind the load balancer
// sharing a Redis Cluster of three masters and their replicas as managed
// services run it (TLS on every link, the nodes logged in as an ACL user
// allowed only what channelsd runs), rooms keeping history: broadcasts
// over TLS, a node given a wrong password, the long-poll scenarios of one
// Redis, unchanged (round robin, a session across its node's drain),
// then what only a cluster does to a busy room: its slot migrates to
// another master, and its master dies and its replica takes over. Each
// logs how long each part took. Last, no Redis node refused the nodes a
// command through it all.
func TestRedisClusterFailover(t *testing.T) {
	const drainWindow = 2 * time.Second
	cl := harness.Start(t, harness.Options{Nodes: 2, RedisCluster: true, LogLevel: "info",
		RedisClusterTLS: true, RedisClusterUser: channelsdUser(),
		Env:  map[string]string{"CHANNELS_DRAIN_WINDOW": drainWindow.String()},
		Args: []string{historyRule, "--report-interval=500ms"},
	})
	lb := cl.StartLoadBalancer(harness.LBOptions{})
	awaitPositions(t, cl, 1, 2)
	t.Run("BroadcastOverTLS", func(t *testing.T) { testBroadcastOverTLS(t, cl.For(t)) })
	t.Run("WrongPassword", func(t *testing.T) { testWrongPassword(t, cl.For(t)) })
	t.Run("LongPollBehindRoundRobin", func(t *testing.T) { testLongPollBehindRoundRobin(t, cl.For(t), lb) })
	t.Run("LongPollAcrossDrain", func(t *testing.T) { testLongPollAcrossDrain(t, cl.For(t), lb) })
	t.Run("SlotMigration", func(t *testing.T) { testSlotMigration(t, cl.For(t)) })
	// One Redis master stays dead.
	t.Run("MasterKilled", func(t *testing.T) { testMasterKilled(t, cl.For(t)) })
	t.Run("NoCommandDenied", func(t *testing.T) { testNoCommandDenied(t, cl.For(t)) })
}

// roomClients connects, for each topic, one recovering client on each
// node (users "<topic>@<node>").
func roomClients(ctx context.Context, t *testing.T, cl *harness.Cluster, topics ...string) map[string][]*recoverer {
	t.Helper()
	recs := map[string][]*recoverer{}
	for _, topic := range topics {
		for i := 1; i <= cl.N(); i++ {
			rec := newRecoverer(topic, topic+"@"+strconv.Itoa(i))
			dialRecovering(ctx, t, cl.Node(i).WSURL(), rec, wsclient.Options{})
			recs[topic] = append(recs[topic], rec)
		}
	}
	return recs
}

func allOf(m map[string][]*recoverer) []*recoverer {
	var all []*recoverer
	for _, topic := range slices.Sorted(maps.Keys(m)) {
		all = append(all, m[topic]...)
	}
	return all
}

// shardSubscribers is PUBSUB SHARDNUMSUB of channel on its master.
func shardSubscribers(ctx context.Context, t *testing.T, cl *harness.Cluster, channel string) int64 {
	t.Helper()
	rc, ok := cl.RedisClient().(*goredis.ClusterClient)
	if !ok {
		t.Fatal("the cluster's Redis is not a Redis Cluster")
	}
	n, err := rc.PubSubShardNumSub(ctx, channel).Result()
	if err != nil {
		t.Fatalf("PUBSUB SHARDNUMSUB %s: %v", channel, err)
	}
	return n[channel]
}

// metricSum is a counter summed over the cluster's nodes.
func metricSum(t *testing.T, cl *harness.Cluster, name string) float64 {
	t.Helper()
	var sum float64
	for i := 1; i <= cl.N(); i++ {
		sum += cl.Metric(t, i, name)
	}
	return sum
}

// testSlotMigration: a room's slot, with its history stream and meta,
// moves to another master (SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT
// NODE) while two publishers, one through each node, post to it. Redis
// unsubscribes both nodes from the room's shard channel on the old
// master; they subscribe it again on the new one, and the clients get
// every broadcast, once and in order: live, or recovered from the
// history after a hole.
func testSlotMigration(t *testing.T, cl *harness.Cluster) {
	ctx := timeout(t, 2*time.Minute)
	awaitPositions(t, cl, 1, 2)
	const topic = "room:migrating"
	channel := "channelsd:t:{" + topic + "}"
	slot := cl.RedisKeySlot(channel)
	src, err := cl.RedisSlotMaster(ctx, slot)
	if err != nil {
		t.Fatal(err)
	}
	// Another master: the one serving a slot of another third.
	var dst harness.RedisClusterMaster
	for _, s := range []int{0, 8000, 16000} {
		if m, err := cl.RedisSlotMaster(ctx, s); err == nil && m.Index != src.Index {
			dst = m
			break
		}
	}
	if dst.Index == 0 {
		t.Fatalf("no master other than redis%d", src.Index)
	}
	recs := roomClients(ctx, t, cl, topic)[topic]
	var pubs []*publisher
	for i := 1; i <= cl.N(); i++ {
		pubs = append(pubs, newPublisher(fmt.Sprintf("M%d", i), func() string { return cl.Node(i).HTTPURL() }, []string{topic}, 20*time.Millisecond).start(ctx))
	}
	defer func() {
		for _, p := range pubs {
			p.finish()
		}
	}()
	for _, rec := range recs {
		awaitReceived(t, rec, 20, 20*time.Second)
	}
	resubs := metricSum(t, cl, "channelsd_redis_shard_resubscribes_total")
	gaps := metricSum(t, cl, "channelsd_history_gaps_total")

	began := time.Now()
	moved, err := cl.MigrateRedisSlot(ctx, slot, dst.Index)
	if err != nil {
		t.Fatalf("migrating slot %d: %v", slot, err)
	}
	migrated := time.Since(began)
	// Both nodes subscribe the channel again, on its new master.
	var subscribers int64
	for {
		if subscribers = shardSubscribers(ctx, t, cl, channel); subscribers == int64(cl.N()) {
			break
		}
		if time.Since(began) > 10*time.Second {
			t.Fatalf("%s has %d shard subscribers on its new master 10 s after the migration, want %d", channel, subscribers, cl.N())
		}
		time.Sleep(20 * time.Millisecond) // polling Redis
	}
	resubscribed := time.Since(began)
	if m, err := cl.RedisSlotMaster(ctx, slot); err != nil || m.Index != dst.Index {
		t.Fatalf("slot %d is on %+v (%v) after the migration, want redis%d", slot, m, err, dst.Index)
	}
	time.Sleep(time.Second) // publishing after the migration, not a synchronisation
	var last []int
	for _, p := range pubs {
		last = append(last, p.finish())
	}
	awaitCaughtUp(t, recs, pubs, 30*time.Second)
	tl := account(recs, pubs)
	resubsNow := metricSum(t, cl, "channelsd_redis_shard_resubscribes_total")
	gapsNow := metricSum(t, cl, "channelsd_history_gaps_total")
	t.Logf("TestRedisClusterFailover/SlotMigration: slot %d (%s) moved redis%d -> redis%d with %d keys in %v; both nodes subscribed on the new master %v after it began; "+
		"%v shard resubscribes, %v channels failed on a hole (and recovered); published %v; %s",
		slot, topic, src.Index, dst.Index, moved, migrated.Round(time.Millisecond), resubscribed.Round(time.Millisecond),
		resubsNow-resubs, gapsNow-gaps, last, tl)
	if moved < 2 {
		t.Errorf("the migration moved %d keys, want the room's history stream and meta at least", moved)
	}
	if resubsNow-resubs < float64(cl.N()) {
		t.Errorf("the nodes subscribed shard channels again %v times after the migration, want at least once each", resubsNow-resubs)
	}
	if !tl.ok() || tl.learned > 0 {
		t.Errorf("not every broadcast once and in order across the migration: %s; e.g. %v", tl, tl.examples)
	}
}

// awaitPresenceOf merges the presence_state and presence_diff events of
// topic queued in ws until the view holds key.
func awaitPresenceOf(ctx context.Context, ws *wsclient.Client, topic, key string) error {
	var view presenceMap
	for view == nil || len(view[key]) == 0 {
		m, err := ws.Await(ctx, func(m wsclient.Message) bool {
			return m.Err == nil && m.Topic == topic && (m.Event == "presence_state" || m.Event == "presence_diff")
		})
		if err != nil {
			return err
		}
		if m.Event == "presence_state" {
			var p presenceMap
			if err := json.Unmarshal(m.Payload, &p); err != nil {
				return err
			}
			if view == nil {
				view = presenceMap{}
			}
			syncState(view, p)
			continue
		}
		var d presenceDiff
		if err := json.Unmarshal(m.Payload, &d); err != nil {
			return err
		}
		if view != nil {
			applyDiff(view, d)
		}
	}
	return nil
}

// presenceProbe joins topic as a new user on node 2, then as another on
// node 1, and reports whether each sees the other within a second.
func presenceProbe(ctx context.Context, cl *harness.Cluster, topic string, try int) error {
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var socks [2]*wsclient.Client
	users := [2]string{fmt.Sprintf("w%d", try), fmt.Sprintf("p%d", try)}
	defer func() {
		for _, ws := range socks {
			if ws != nil {
				_ = ws.Close()
			}
		}
	}()
	for k, node := range []int{2, 1} {
		ws, err := wsclient.Dial(pctx, cl.Node(node).WSURL(), wsclient.Options{Params: map[string]string{"user": users[k]}})
		if err != nil {
			return err
		}
		socks[k] = ws
		r, err := ws.Join(pctx, topic, map[string]string{"user": users[k]})
		if err != nil {
			return err
		}
		if r.Status != "ok" {
			return fmt.Errorf("join: %s", r)
		}
	}
	if err := awaitPresenceOf(pctx, socks[1], topic, users[0]); err != nil {
		return fmt.Errorf("node 1's client does not see node 2's: %w", err)
	}
	if err := awaitPresenceOf(pctx, socks[0], topic, users[1]); err != nil {
		return fmt.Errorf("node 2's client does not see node 1's: %w", err)
	}
	return nil
}

// testMasterKilled: three rooms, one on each master, with a recovering
// client on each node and a publisher through each node posting to all
// three. The master of the busiest room's slot gets SIGKILL; its replica
// takes over after the cluster-node-timeout. Within the failover time
// plus 3 s the room's broadcasts reach its clients again and presence
// works again in it (a client joining on one node and one on the other
// see each other); the other rooms' broadcasts go on (no silence of 1 s);
// and every client gets every acknowledged broadcast
// once and in order, or is told by a join reply that it cannot (recovered
// false, with its reason, when the replica had not received the last
// writes): never a silent hole.
func testMasterKilled(t *testing.T, cl *harness.Cluster) {
	ctx := timeout(t, 2*time.Minute)
	awaitPositions(t, cl, 1, 2)
	// One room per master; the first one's master dies.
	var topics []string
	var victim harness.RedisClusterMaster
	var slot int
	seen := map[int]bool{}
	for i := 0; len(topics) < 3 && i < 100; i++ {
		topic := fmt.Sprintf("room:fo-%d", i)
		s := cl.RedisKeySlot("channelsd:t:{" + topic + "}")
		m, err := cl.RedisSlotMaster(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		if seen[m.Index] {
			continue
		}
		seen[m.Index] = true
		if len(topics) == 0 {
			victim, slot = m, s
		}
		topics = append(topics, topic)
	}
	if len(topics) < 3 {
		t.Fatalf("rooms on %d masters only: %v", len(topics), topics)
	}
	busy, others := topics[0], topics[1:]
	recs := roomClients(ctx, t, cl, topics...)
	var pubs []*publisher
	for i := 1; i <= cl.N(); i++ {
		pubs = append(pubs, newPublisher(fmt.Sprintf("F%d", i), func() string { return cl.Node(i).HTTPURL() }, topics, 20*time.Millisecond).start(ctx))
	}
	defer func() {
		for _, p := range pubs {
			p.finish()
		}
	}()
	for _, rec := range allOf(recs) {
		awaitReceived(t, rec, 10, 20*time.Second)
	}
	if err := presenceProbe(ctx, cl, busy, 0); err != nil {
		t.Fatalf("presence in %s before the kill: %v", busy, err)
	}

	// Times count from when the master has exited: until then it may
	// still acknowledge publishes.
	began := time.Now()
	cl.KillRedisClusterNode(victim.Index)
	killed := time.Now()
	t.Logf("killed redis%d, master of slot %d (%s): exited %v after the SIGKILL was asked for", victim.Index, slot, busy, killed.Sub(began).Round(time.Millisecond))
	type result struct {
		at  time.Duration
		err error
	}
	var wg sync.WaitGroup
	var failover, presence result
	var promoted harness.RedisClusterMaster
	wg.Go(func() {
		fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		promoted, failover.err = cl.AwaitRedisFailover(fctx, slot, victim.Index)
		failover.at = time.Since(killed)
	})
	probes := 0
	wg.Go(func() {
		for probes = 1; ; probes++ {
			err := presenceProbe(ctx, cl, busy, probes)
			if err == nil {
				presence.at = time.Since(killed)
				return
			}
			if time.Since(killed) > 30*time.Second {
				presence.err = fmt.Errorf("%d probes: last: %w", probes, err)
				return
			}
		}
	})
	// Fan-out is back when a broadcast acknowledged after the kill has
	// reached every client of the room.
	var fanout result
	for {
		if at, ok := firstWholeAfter(recs[busy], pubs, killed); ok {
			fanout.at = at.Sub(killed)
			break
		}
		if time.Since(killed) > 30*time.Second {
			fanout.err = fmt.Errorf("no broadcast acknowledged after the kill reached every client of %s in 30 s", busy)
			break
		}
		time.Sleep(20 * time.Millisecond) // polling what the clients' goroutines record
	}
	wg.Wait()
	if failover.err != nil {
		t.Fatal(failover.err)
	}
	if fanout.err != nil {
		t.Fatal(fanout.err)
	}
	if presence.err != nil {
		t.Fatalf("presence in %s after the kill: %v", busy, presence.err)
	}
	// The other rooms' broadcasts kept arriving from the kill until the
	// busy room was back (a window that has passed).
	window := max(fanout.at, presence.at, failover.at)
	var longest, longestAt time.Duration
	for _, topic := range others {
		for _, rec := range recs[topic] {
			if g, at := longestGap(rec, killed, killed.Add(window)); g > longest {
				longest, longestAt = g, at
			}
		}
	}
	time.Sleep(time.Second) // publishing after the failover, not a synchronisation
	var last []int
	for _, p := range pubs {
		last = append(last, p.finish())
	}
	all := allOf(recs)
	awaitCaughtUp(t, all, pubs, 30*time.Second)
	tl := account(all, pubs)
	busyTl := account(recs[busy], pubs)
	t.Logf("TestRedisClusterFailover/MasterKilled: redis%d (master of %s) killed; redis%d serves slot %d %v after the kill; fan-out in %s back %v after the kill; "+
		"presence back %v after it (%d probes); other rooms' longest silence %v (from %v after it) in the %v after it; published %v; %s: %s; all rooms: %s",
		victim.Index, busy, promoted.Index, slot, failover.at.Round(time.Millisecond), busy, fanout.at.Round(time.Millisecond),
		presence.at.Round(time.Millisecond), probes, longest.Round(time.Millisecond), longestAt.Round(time.Millisecond), window.Round(time.Millisecond), last, busy, busyTl, tl)
	if limit := failover.at + 3*time.Second; fanout.at > limit || presence.at > limit {
		t.Errorf("%s: fan-out back %v and presence %v after the kill, want both within the failover's %v + 3 s",
			busy, fanout.at.Round(time.Millisecond), presence.at.Round(time.Millisecond), failover.at.Round(time.Millisecond))
	}
	// Each publisher posts to each room every 60 ms. A node sends each
	// master's slots' publishes through a writer of its own (the Ordering
	// section of package pubsub/redis), so the rooms on the other masters
	// share nothing with the dead one on their way: no batch of theirs
	// waits for its connection to fail. What is left of their silence is
	// the publishers' pace and the scheduling of containers on a busy
	// machine; a wait for the dead master (up to the publish timeout,
	// 2 s) would pass 1 s.
	if longest > time.Second {
		t.Errorf("the rooms on the other masters went %v without a broadcast during the failover", longest.Round(time.Millisecond))
	}
	if !tl.ok() {
		t.Errorf("a broadcast was silently skipped, doubled, reordered or misplaced: %s; e.g. %v", tl, tl.examples)
	}
}

// firstWholeAfter returns when the first broadcast acknowledged with a
// publish begun after since had reached every one of recs (the latest
// arrival), if one has.
func firstWholeAfter(recs []*recoverer, pubs []*publisher, since time.Time) (time.Time, bool) {
	type key struct {
		from string
		n    int
	}
	arrived := make([]map[key]time.Time, len(recs))
	for i, r := range recs {
		_, got, _, _, _ := r.snapshot()
		arrived[i] = map[key]time.Time{}
		for _, a := range got {
			if _, ok := arrived[i][key{a.From, a.N}]; !ok {
				arrived[i][key{a.From, a.N}] = a.At
			}
		}
	}
	var best time.Time
	for _, p := range pubs {
		acks, _, _ := p.ledger()
		for n, a := range acks {
			if a.Topic != recs[0].topic || !a.Start.After(since) {
				continue
			}
			var whole time.Time
			ok := true
			for i := range recs {
				at, has := arrived[i][key{p.name, n}]
				if !has {
					ok = false
					break
				}
				if at.After(whole) {
					whole = at
				}
			}
			if ok && (best.IsZero() || whole.Before(best)) {
				best = whole
			}
		}
	}
	return best, !best.IsZero()
}

// longestGap is the longest time between from and to in which rec
// received no numbered broadcast, and when, after from, it began.
func longestGap(rec *recoverer, from, to time.Time) (time.Duration, time.Duration) {
	_, got, _, _, _ := rec.snapshot()
	var ats []time.Time
	for _, a := range got {
		if a.At.After(from) && a.At.Before(to) {
			ats = append(ats, a.At)
		}
	}
	slices.SortFunc(ats, func(a, b time.Time) int { return a.Compare(b) })
	prev, longest, began := from, time.Duration(0), time.Duration(0)
	for _, at := range append(ats, to) {
		if at.Sub(prev) > longest {
			longest, began = at.Sub(prev), prev.Sub(from)
		}
		prev = at
	}
	return longest, began
}
